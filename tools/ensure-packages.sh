#!/usr/bin/env bash
# ensure-packages.sh PACKAGE...
#
# Installs those of the Debian packages named that are not installed yet, and
# says which; uses sudo when not run as root. Nothing happens when all are
# there. On a system without dpkg it only lists what the build needs.
set -euo pipefail

missing=()
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "ensure-packages: not a Debian-like system; make sure you have the equivalents of: $*" >&2
  exit 0
fi
for package in "$@"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "ensure-packages: these packages are missing and there is no sudo: ${missing[*]}" >&2
    echo "ensure-packages: as root, run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo)
fi

# apt's own output is kept, and shown only when something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "ensure-packages: installing ${missing[*]}"
if ! "${as_root[@]}" apt-get update -qq >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-packages: apt-get update failed; trying the install anyway" >&2
fi
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
     apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-packages: could not install ${missing[*]}; install them yourself and run make again" >&2
  exit 1
fi
echo "ensure-packages: installed ${missing[*]}"

#!/usr/bin/env bash
# ensure-packages.sh PACKAGE...
#
# Installs those of the Debian packages named that are not installed yet, and
# says which; uses sudo when not run as root. Nothing happens when all are
# there. On a system without apt it names, in words, what is missing.
set -euo pipefail

# What each package gives, in words, and a command or file that shows it is
# there: for machines without dpkg and apt.
describe() {
  case $1 in
    g++) echo "g++|a C++ compiler with C++23's <expected> (g++ 12 or newer)" ;;
    g++-aarch64-linux-gnu) echo "aarch64-linux-gnu-g++|a C++ cross compiler for aarch64 Linux (g++ 12 or newer) with arm64 kernel headers" ;;
    xxd) echo "xxd|xxd (it comes with vim)" ;;
    doctest-dev) echo "/usr/include/doctest/doctest.h|the doctest unit-test header (doctest/doctest.h)" ;;
    qemu-system-arm) echo "qemu-system-aarch64|QEMU's arm64 system emulator (qemu-system-aarch64)" ;;
    qemu-user-static) echo "qemu-aarch64-static|QEMU's arm64 user-mode emulator (qemu-aarch64-static)" ;;
    cpio) echo "cpio|cpio" ;;
    gdb) echo "gdb|gdb" ;;
    gdb-multiarch) echo "gdb-multiarch|gdb with arm64 support (gdb-multiarch)" ;;
    tmux) echo "tmux|tmux, a terminal the tests type at (Ctrl-C, --pause)" ;;
    debian-archive-keyring) echo "/usr/share/keyrings/debian-archive-keyring.gpg|the Debian archive keyring, which checks the arm64 kernel download" ;;
    *) echo "$1|$1" ;;
  esac
}
present() { [ -e "$1" ] || command -v "$1" >/dev/null 2>&1; }

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  lacking=()
  for package in "$@"; do
    IFS='|' read -r probe words <<<"$(describe "$package")"
    present "$probe" || lacking+=("$words")
  done
  [ ${#lacking[@]} -eq 0 ] && exit 0
  echo "ensure-packages: this system has no apt, so install these yourself, then run make again:" >&2
  printf '  - %s\n' "${lacking[@]}" >&2
  exit 1
fi

missing=()
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

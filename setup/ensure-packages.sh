#!/usr/bin/env bash
# ensure-packages.sh PACKAGE...
#
# Installs those of the Debian packages named that are not installed yet, and
# says which, how many MB that downloads, and how far it is; uses sudo when
# not run as root. Nothing happens when all are there. The Makefile names
# the packages: each target gives the ones it needs, the first time it needs
# them. On a system without apt it names, in words, what is missing.
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
    gpg) echo "gpg|gpg (GnuPG): the tests of the kernel download sign a mirror of their own" ;;
    gpg-agent) echo "gpg-agent|gpg-agent, which keeps gpg's secret keys" ;;
    xz-utils) echo "xz|xz, which packs the tests' own package list" ;;
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

# apt's own output is kept, and shown only when something fails. What is
# shown while it works is its progress: what it fetches, how many MB, how far.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }

# say_progress DOWNLOAD [INSTALL]: apt's progress, read from its status
# lines on stdin (APT::Status-Fd: "dlstatus:FILE:PERCENT:..." while it
# downloads, "pmstatus:PACKAGE:PERCENT:..." while dpkg unpacks and sets up),
# as a line every 5 s: "ensure-packages: downloading DOWNLOAD: 40%", then
# "ensure-packages: unpacking and setting up INSTALL: 40%". Whole lines, at
# a terminal too: the kernel's download may be saying its own beside it.
say_progress() {
  local download=$1 install=${2:-} kind percent doing last_said=$SECONDS
  while IFS=: read -r kind _ percent _; do
    case $kind in
      dlstatus) doing="downloading $download" ;;
      pmstatus) doing="unpacking and setting up $install" ;;
      *) continue ;;
    esac
    if [ $((SECONDS - last_said)) -ge 5 ]; then
      echo "ensure-packages: $doing: ${percent%%.*}%"
      last_said=$SECONDS
    fi
  done
}

# install_missing: what apt will download (its URIs and sizes), in one
# line, then the install, saying how far it is.
install_missing() {
  local uris count megabytes
  uris=$(apt_get install --print-uris -qq --no-install-recommends "${missing[@]}" 2>"$log") || return 1
  count=$(grep -c "^'" <<<"$uris" || true)
  megabytes=$(awk "/^'/ { bytes += \$3 } END { printf \"%.1f\", bytes / 1e6 }" <<<"$uris")
  echo "ensure-packages: installing ${missing[*]}: $count packages with what they need, $megabytes MB to download"
  apt_get install -y -qq --no-install-recommends -o APT::Status-Fd=3 "${missing[@]}" 3>&1 >"$log" 2>&1 |
    say_progress "$megabytes MB" "$count packages"
}

# apt's package lists are read first (apt-get update), so that what is
# installed is the mirror's current version, with its security updates.
SECONDS=0
echo "ensure-packages: reading Debian's package lists (apt-get update)"
if ! apt_get update -qq -o APT::Status-Fd=3 3>&1 >"$log" 2>&1 | say_progress "the package lists"; then
  cat "$log" >&2
  echo "ensure-packages: apt-get update failed; trying the install anyway" >&2
fi
if ! install_missing; then
  cat "$log" >&2
  echo "ensure-packages: could not install ${missing[*]}; install them yourself and run make again" >&2
  exit 1
fi
echo "ensure-packages: installed ${missing[*]} in $SECONDS s"

#!/usr/bin/env bash
# fetch-kernel.sh CACHE_DIR
#
# Puts Debian's arm64 Linux kernel at CACHE_DIR/vmlinuz, downloading it once.
# The emulated arm64 machine boots this kernel: it has KVM built in, so inside
# the emulated machine there is a real arm64 /dev/kvm.
#
# The download uses this machine's own apt sources but a private apt state in
# CACHE_DIR/apt: the machine's apt configuration and package lists are never
# changed, and no root is needed.
#
# To use a kernel you already have, set KVM_HELLO_KERNEL=/path/to/arm64/Image
# and this script is not run.
set -euo pipefail

cache=${1:?usage: fetch-kernel.sh CACHE_DIR}
kernel="$cache/vmlinuz"
[ -s "$kernel" ] && exit 0

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/deb"
: > "$apt_dir/status"

# Private state: lists, cache and dpkg status live under $apt_dir; the sources
# are the machine's own (read only). Only arm64 package lists are fetched.
apt_opts=(
  -o APT::Architecture=arm64
  -o APT::Architectures::=arm64
  -o Dir::State="$apt_dir"
  -o Dir::State::Lists="$apt_dir/lists"
  -o Dir::State::status="$apt_dir/status"
  -o Dir::Cache="$apt_dir"
  -o Dir::Cache::archives="$apt_dir/archives"
  -o Debug::NoLocking=1
  -o Acquire::Languages=none
  -o APT::Sandbox::User="$(id -un)"
)

fail() {
  echo "fetch-kernel: $*" >&2
  echo "fetch-kernel: to use your own arm64 kernel instead: make run KVM_HELLO_KERNEL=/path/to/Image" >&2
  exit 1
}

echo "fetch-kernel: downloading Debian's arm64 kernel once into $cache (private apt state, your apt setup is untouched)"
apt-get "${apt_opts[@]}" -qq update || fail "apt-get update for arm64 failed (do your apt sources serve arm64?)"

# linux-image-arm64 is a meta package; the real kernel is the package it depends on.
real=$(apt-cache "${apt_opts[@]}" depends linux-image-arm64 2>/dev/null |
       awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$real" ] || fail "no arm64 kernel package (linux-image-arm64) in your apt sources"

(cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" -qq download "$real") || fail "apt-get download $real failed"
deb=$(ls "$apt_dir/deb"/*.deb | head -n 1)

extract="$apt_dir/extract"
rm -rf "$extract" && mkdir -p "$extract"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$extract" --wildcards './boot/vmlinuz-*'
image=$(ls "$extract"/boot/vmlinuz-* | head -n 1)
[ -s "$image" ] || fail "$deb holds no /boot/vmlinuz"
mv "$image" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
echo "$real" > "$cache/kernel-package"
megabytes() { du -sb "$@" | awk '{ total += $1 } END { printf "%.1f", total / 1e6 }'; }
downloaded="$(megabytes "$apt_dir/lists" "$apt_dir/deb") MB (package lists, unpacked, $(megabytes "$apt_dir/lists") MB, $(basename "$deb") $(megabytes "$deb") MB)"
# Keep only the kernel: the lists and the .deb are not needed again.
rm -rf "$extract" "$apt_dir"
echo "fetch-kernel: downloaded $downloaded; kept $kernel ($(megabytes "$kernel") MB)"

#!/usr/bin/env bash
# fetch-kernel.sh SUITE FLAVOUR DIR
#
# Puts the arm64 Linux kernel of one Debian release at DIR/vmlinuz,
# downloading it once: SUITE is a Debian suite (bookworm, trixie, sid,
# bookworm-backports, ...), FLAVOUR the kernel flavour (arm64, or arm64-16k
# for 16 KiB pages). The emulated arm64 machine boots this kernel: Debian's
# arm64 kernels have KVM built in, so inside the machine there is a real
# arm64 /dev/kvm. DIR/package names the package it came from.
#
# The download is apt's, with its signature checks: the suite's Release file
# must be signed by a key of the Debian archive keyring
# (/usr/share/keyrings/debian-archive-keyring.gpg, package
# debian-archive-keyring). apt runs with a private state and a private sources
# list under DIR/apt (tools/private-apt.sh): the machine's apt configuration,
# sources and package lists are never changed, and no root is needed. The mirror is the first
# Debian mirror of the machine's own sources, or deb.debian.org;
# KVM_HELLO_MIRROR=URL chooses another. A stable release's security suite is
# asked too: its kernel updates come that way.
#
# To use a kernel you already have instead: KVM_HELLO_KERNEL=/path/to/Image.
set -euo pipefail

usage="usage: fetch-kernel.sh SUITE FLAVOUR DIR"
suite=${1:?$usage} flavour=${2:?$usage} dir=${3:?$usage}
kernel="$dir/vmlinuz"
[ -s "$kernel" ] && exit 0

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
fail() {
  echo "fetch-kernel: $*" >&2
  echo "fetch-kernel: to boot an arm64 kernel you have instead: make run KVM_HELLO_KERNEL=/path/to/Image" >&2
  exit 1
}
[ -r "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring): apt could not check the download"

# The machine's Debian mirror, when its sources name one; otherwise Debian's own.
machine_mirror() {
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}'
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '/^deb / {print ($2 ~ /^\[/ ? $3 : $2)}'
}
mirror=${KVM_HELLO_MIRROR:-$(machine_mirror | grep -E '/debian/?$' | head -n 1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
# A stable release's kernel updates come through its security suite: ask it too.
security=""
case $suite in
  bullseye | bookworm | trixie)
    if [ -z "${KVM_HELLO_MIRROR:-}" ]; then
      security=$(machine_mirror | grep -E '/debian-security/?$' | head -n 1 || true)
      security=${security:-http://deb.debian.org/debian-security}
    fi ;;
esac

apt_dir="$dir/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir/sources" "$apt_dir/deb"
stanza() { printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n\n' "$1" "$2" "$keyring"; }
{
  stanza "$mirror" "$suite"
  [ -z "$security" ] || stanza "$security" "$suite-security"
} > "$apt_dir/sources/debian.sources"
# shellcheck source=tools/private-apt.sh
. "$(dirname "$0")/private-apt.sh"
private_apt "$apt_dir" "$apt_dir/sources"

echo "fetch-kernel: downloading Debian $suite's linux-image-$flavour once into $dir (from $mirror, signature checked; your apt setup is untouched)"
apt-get "${apt_opts[@]}" -qq update >"$apt_dir/update.log" 2>&1 ||
  fail "apt-get update of $mirror $suite (arm64) failed: $(grep -E '^(E|W):' "$apt_dir/update.log" | head -n 3)
fetch-kernel: the kernel comes from a Debian mirror that serves arm64 (KVM_HELLO_MIRROR=URL names another one)"

# linux-image-FLAVOUR is a meta package; the kernel is the package it depends
# on. From Linux 7.x Debian splits that one too: linux-image-VERSION is empty
# and depends on linux-binary-VERSION, which holds the kernel image.
depends_on() {
  { apt-cache "${apt_opts[@]}" depends "$1" 2>/dev/null || true; } | awk -v p="$2" '$1 == "Depends:" && $2 ~ p {print $2; exit}'
}
image_package=$(depends_on "linux-image-$flavour" '^linux-image-[0-9]')
[ -n "$image_package" ] || fail "Debian $suite has no arm64 kernel package linux-image-$flavour at $mirror"
packages=("$image_package")
binary_package=$(depends_on "$image_package" '^linux-binary-')
[ -z "$binary_package" ] || packages+=("$binary_package")

(cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}") ||
  fail "apt-get download ${packages[*]} failed"

extract="$apt_dir/extract"
mkdir -p "$extract"
for deb in "$apt_dir"/deb/*.deb; do
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$extract" --wildcards --no-wildcards-match-slash \
    './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz' 2>/dev/null || true
done
image=$(ls "$extract"/boot/vmlinuz-* "$extract"/usr/lib/modules/*/vmlinuz 2>/dev/null | head -n 1 || true)
[ -s "$image" ] || fail "${packages[*]} hold no kernel image (looked in /boot and /usr/lib/modules)"
mv "$image" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
version=$(apt-cache "${apt_opts[@]}" show "$image_package" | awk '/^Version:/ {print $2; exit}')
echo "$image_package $version (Debian $suite, from $mirror${security:+ and $security})" > "$dir/package"

megabytes() { du -sb "$@" | awk '{ total += $1 } END { printf "%.1f", total / 1e6 }'; }
downloaded="$(megabytes "$apt_dir/lists" "$apt_dir/deb") MB (package lists $(megabytes "$apt_dir/lists") MB unpacked, $(basename -a "$apt_dir"/deb/*.deb | tr '\n' ' ')$(megabytes "$apt_dir/deb") MB)"
# Keep only the kernel: the lists and the packages are not needed again.
rm -rf "$apt_dir"
echo "fetch-kernel: downloaded $downloaded; kept $kernel ($(megabytes "$kernel") MB): $image_package $version"

#!/usr/bin/env bash
# sanitizer-runtime.sh OUT_DIR CACHE_DIR
#
# Puts in OUT_DIR the arm64 sanitizer runtimes, libasan.so.8 and libubsan.so.1,
# that the sanitized kvm-hello (cross-built, dynamically linked) finds in the
# emulated machine's /lib.
#
# First choice: the cross compiler's own copies in /usr/aarch64-linux-gnu/lib,
# if a cross-built ASan program starts with them (tried under
# qemu-aarch64-static). Debian 13's do not: gcc-14-cross 14.2.0-19cross1 built
# them without optimisation, and at -O0 GCC (no top-level reordering) emits
# the variable __interception::real_strcat right after the top-level asm of
# the interceptor before it, which switched to .text: the variable lands in
# read-only code, __asan_init's first store to it (before main) is a SIGSEGV,
# and nothing is printed. Then: Debian's arm64 packages of the same version
# (libasan8, libubsan1, what an arm64 Debian machine runs), downloaded once
# into CACHE_DIR with a private apt state (tools/private-apt.sh).
set -euo pipefail

out=${1:?usage: sanitizer-runtime.sh OUT_DIR CACHE_DIR}
cache=${2:?usage: sanitizer-runtime.sh OUT_DIR CACHE_DIR}
cross_lib=/usr/aarch64-linux-gnu/lib
libraries=(libasan.so.8 libubsan.so.1)
packages=(libasan8 libubsan1)

fail() {
  echo "sanitizer-runtime: $*" >&2
  exit 1
}

# Every choice is tried under QEMU's user mode: without it, each would look broken.
command -v qemu-aarch64-static >/dev/null 2>&1 ||
  fail "qemu-aarch64-static is not installed, so no runtime can be tried;" \
    "install the package qemu-user-static (make test installs it first), then run make again"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# starts LIBRARY_DIR: does a cross-built ASan+UBSan program start and exit 0
# with the runtimes in LIBRARY_DIR? (LeakSanitizer is off: it cannot work under
# qemu-user, which is not what is asked here.)
printf 'int main() { return 0; }\n' > "$work/probe.cpp"
aarch64-linux-gnu-g++ -fsanitize=address,undefined -o "$work/probe" "$work/probe.cpp"
starts() {
  # (In a subshell, whose stderr takes the shell's own "Segmentation fault".)
  (ASAN_OPTIONS=detect_leaks=0 LD_LIBRARY_PATH="$1" qemu-aarch64-static -L /usr/aarch64-linux-gnu "$work/probe"
   exit $?) >/dev/null 2>&1
}

install_from() {
  mkdir -p "$out"
  for library in "${libraries[@]}"; do cp -L "$1/$library" "$out/$library"; done
}

if starts "$cross_lib"; then
  install_from "$cross_lib"
  exit 0
fi

# The cross packages' version, 14.2.0-19cross1, is the arm64 packages' 14.2.0-19.
cross_version=$(dpkg-query -W -f='${Version}' libasan8-arm64-cross 2>/dev/null) ||
  fail "the cross compiler's libasan.so.8 cannot start a program, and libasan8-arm64-cross is not installed"
version=${cross_version%cross*}
fetched="$cache/sanitizer-runtime-$version"

if ! starts "$fetched"; then
  echo "sanitizer-runtime: the cross compiler's libasan.so.8 ($cross_version) crashes at start;" \
    "downloading Debian's arm64 libasan8 and libubsan1 $version once into $cache"
  # Debian's own arm64 packages, from this machine's apt sources, with a private state.
  # shellcheck source=tools/private-apt.sh
  . "$(dirname "$0")/private-apt.sh"
  apt_dir="$work/apt"
  private_apt "$apt_dir"
  mkdir -p "$apt_dir/deb"
  apt-get "${apt_opts[@]}" -qq update || fail "apt-get update for arm64 failed (do your apt sources serve arm64?)"
  wanted=()
  for package in "${packages[@]}"; do
    # The same version, or else the same upstream version (another Debian revision).
    available=$(apt-cache "${apt_opts[@]}" madison "$package" | awk -F' *[|] *' '{print $2}')
    pick=$(grep -Fx -m 1 "$version" <<<"$available" || grep -F -m 1 "${version%-*}-" <<<"$available" || true)
    [ -n "$pick" ] || fail "no arm64 $package $version in your apt sources (there: $(echo $available))"
    wanted+=("$package=$pick")
  done
  (cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" -qq download "${wanted[@]}") ||
    fail "apt-get download ${wanted[*]} failed"
  for deb in "$apt_dir"/deb/*.deb; do dpkg-deb -x "$deb" "$work/extract"; done
  mkdir -p "$fetched.tmp"
  for library in "${libraries[@]}"; do
    cp -L "$work/extract/usr/lib/aarch64-linux-gnu/$library" "$fetched.tmp/$library"
  done
  rm -rf "$fetched" && mv "$fetched.tmp" "$fetched"
  starts "$fetched" || fail "Debian's arm64 ${wanted[*]} do not start a program either"
fi
install_from "$fetched"

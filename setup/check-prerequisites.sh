#!/usr/bin/env bash
# check-prerequisites.sh HOST_CXX ARM64_CXX [ARM64_UAPI_DIR]
#
# After the packages are installed: can the compilers build kvm-hello? Each
# must have C++23's <expected> (g++ 12 or newer), and the arm64 one must see
# arm64's KVM headers (<asm/kvm.h>); ARM64_UAPI_DIR, when given, is where the
# build machine's unit tests find them (the cross compiler's copy). A
# compiler given as "" is not checked: make run needs only the arm64 one, the
# unit tests the build machine's too. Says what to install for the first
# thing missing, and fails.
set -uo pipefail
host_cxx=$1 arm64_cxx=$2 uapi=${3:-}

fail() {
  echo "check-prerequisites: $*" >&2
  exit 1
}
# Does `compiler` compile this C++ (read from stdin) with -std=c++23?
compiles() { "$1" -std=c++23 -fsyntax-only -x c++ - >/dev/null 2>&1; }

for cxx in "$host_cxx" "$arm64_cxx"; do
  [ -n "$cxx" ] || continue
  command -v "$cxx" >/dev/null || fail "there is no $cxx: install it (Debian: apt-get install ${cxx%%-[0-9]*})"
  if ! printf '#include <expected>\n#if __cpp_lib_expected < 202202L\n#error\n#endif\n' | compiles "$cxx"; then
    fail "$cxx ($("$cxx" -dumpversion)) has no C++23 <expected>: kvm-hello needs g++ 12 or newer (or clang 16 with" \
      "libstdc++ 12). On Ubuntu 22.04: apt-get install g++-12 g++-12-aarch64-linux-gnu, then" \
      "make CXX=g++-12 ARM64_CXX=aarch64-linux-gnu-g++-12"
  fi
done
if [ -n "$arm64_cxx" ] && ! printf '#include <linux/kvm.h>\n#ifndef KVM_ARM_VCPU_PSCI_0_2\n#error\n#endif\n' | compiles "$arm64_cxx"; then
  fail "$arm64_cxx does not see arm64's KVM headers (<asm/kvm.h> with KVM_ARM_VCPU_PSCI_0_2): install" \
    "linux-libc-dev (natively on arm64) or linux-libc-dev-arm64-cross (with the cross compiler)"
fi
if [ -n "$uapi" ] && [ ! -r "$uapi/asm/kvm.h" ]; then
  fail "$uapi/asm/kvm.h is missing: the unit tests need arm64's KVM headers there (linux-libc-dev-arm64-cross)"
fi
exit 0

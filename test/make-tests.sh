#!/usr/bin/env bash
# make-tests.sh: the Makefile as a user meets it. Where kvm-hello runs is
# decided by the compiler's architecture and the KVM device (fake compilers
# stand in for other machines' here); a bad setting stops make with a
# message; a guest that assembles to nothing reaches kvm-hello's own check;
# a guest's .elf is kept; a guest file named in ARGS is found; the program's
# stdout and stderr stay apart. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The sub-makes are a user's, not parts of the make that runs this: none of
# its flags, and none of the KVM_HELLO_* settings it exports.
as_user() {
  local unset=(-u MAKEFLAGS -u MAKELEVEL -u MFLAGS)
  for name in $(env | sed -n 's/^\(KVM_HELLO_[A-Z_]*\)=.*/\1/p'); do unset+=(-u "$name"); done
  env "${unset[@]}" "$@"
}
mk() { as_user make --no-print-directory "$@" 2>&1; }

passed=0 failed=0
check() {  # check DESCRIPTION TEXT EXPECTED: TEXT holds EXPECTED
  if [[ $2 == *"$3"* ]]; then
    passed=$((passed + 1)); echo "make-tests: ok: $1"
  else
    failed=$((failed + 1)); printf 'make-tests: FAILED: %s\n  expected: %s\n  got: %s\n' "$1" "$3" "$2"
  fi
}

# A compiler that says it builds for MACHINE and otherwise is the real g++.
fake_compiler() {
  printf '#!/bin/sh\n[ "$1" = -dumpmachine ] && { echo %s; exit 0; }\nexec g++ "$@"\n' "$2" >"$work/$1"
  chmod +x "$work/$1"
}
fake_compiler arm64-g++ aarch64-linux-gnu
fake_compiler x86-g++ x86_64-linux-gnu
: >"$work/kvm"

check "an x86 compiler: the emulated machine" "$(mk host CXX="$work/x86-g++")" \
  "kvm-hello runs in the emulated arm64 machine: $work/x86-g++ builds for x86_64-linux-gnu, not arm64"
check "an arm64 compiler and a KVM device: natively" "$(mk host CXX="$work/arm64-g++" KVM_DEVICE="$work/kvm")" \
  "kvm-hello runs natively: $work/arm64-g++ builds for aarch64-linux-gnu, and $work/kvm exists"
check "an arm64 compiler without a KVM device: the emulated machine" \
  "$(mk host CXX="$work/arm64-g++" KVM_DEVICE="$work/none")" "and $work/none does not exist"
check "KVM_HELLO_MACHINE=emulated chooses by hand" \
  "$(mk host CXX="$work/arm64-g++" KVM_DEVICE="$work/kvm" KVM_HELLO_MACHINE=emulated)" \
  "kvm-hello runs in the emulated arm64 machine: KVM_HELLO_MACHINE=emulated says so"
check "KVM_HELLO_MACHINE=native with an x86 compiler stops make" \
  "$(mk host CXX="$work/x86-g++" KVM_HELLO_MACHINE=native)" \
  "KVM_HELLO_MACHINE=native needs an arm64 compiler; $work/x86-g++ builds for x86_64-linux-gnu"
check "a KVM_HELLO_MACHINE that is neither stops make" "$(mk host KVM_HELLO_MACHINE=remote)" \
  'KVM_HELLO_MACHINE is "remote": it must be native or emulated'
check "the 16K-page flavour picks a CPU with the 16K granule" \
  "$(mk host CXX="$work/x86-g++" KVM_HELLO_FLAVOUR=arm64-16k)" "linux-image-arm64-16k, -cpu neoverse-n1"

# Prerequisites: what a machine lacks is named, with what to install.
printf '#!/bin/sh\nfor a; do shift; [ "$a" = -std=c++23 ] && a=-std=c++20; set -- "$@" "$a"; done\nexec g++ "$@"\n' \
  >"$work/old-g++"
chmod +x "$work/old-g++"
check "a compiler without C++23's <expected> is named, with what to install" \
  "$(setup/check-prerequisites.sh "$work/old-g++" g++ 2>&1)" "has no C++23 <expected>: kvm-hello needs g++ 12 or newer"
mkdir -p "$work/no-uapi"
check "missing arm64 KVM headers are named" \
  "$(setup/check-prerequisites.sh g++ "${ARM64_CXX:-aarch64-linux-gnu-g++}" "$work/no-uapi" 2>&1)" \
  "$work/no-uapi/asm/kvm.h is missing"
mkdir -p "$work/bin"
check "without apt, the packages are named in words" \
  "$(PATH="$work/bin" /bin/bash setup/ensure-packages.sh qemu-system-arm doctest-dev 2>&1)" \
  "QEMU's arm64 system emulator (qemu-system-aarch64)"

# A guest with no instructions at all: kvm-hello's message and status, not objcopy's.
: >"$work/nothing.S"
out=$(mk run GUEST="$work/nothing.S")
check "GUEST=nothing.S reaches kvm-hello's own check" "$out" "it is empty: a guest needs at least one instruction"
check "... and make fails with kvm-hello's status 18" "$out" "Error 18"
check "GUEST's .elf is kept for gdb and the line table" "$(ls build/your-guest/)" "nothing.elf"

# A guest file of the build machine's, named in ARGS: kvm-hello runs it, also
# in the emulated machine (run-in-vm.sh puts it there, at the path given).
mk build/test/guests/psci_version.bin build/test/guests/psci_version.lines >/dev/null
cp build/test/guests/psci_version.bin build/test/guests/psci_version.lines "$work/"
check "ARGS='--guest FILE', a relative path: that guest runs" \
  "$(mk -s run ARGS="--guest build/test/guests/psci_version.bin -q")" "guest output: 1."
check "ARGS='--guest=FILE --guest-lines FILE', absolute paths in /tmp: the guest runs, its lines are read" \
  "$(mk -s run ARGS="--guest=$work/psci_version.bin --guest-lines $work/psci_version.lines -q --step-guest")" \
  "psci_version.S:"
out=$(mk -s run ARGS="--guest build/no-such-guest.bin")
check "ARGS='--guest FILE', no such file: kvm-hello's own message" "$out" \
  "kvm-hello: --guest build/no-such-guest.bin: cannot open it: ENOENT"
check "... and its status 19" "$out" "Error 19"

check_not() {  # check_not DESCRIPTION TEXT UNEXPECTED: TEXT does not hold UNEXPECTED
  if [[ $2 != *"$3"* ]]; then
    passed=$((passed + 1)); echo "make-tests: ok: $1"
  else
    failed=$((failed + 1)); printf 'make-tests: FAILED: %s\n  unexpected: %s\n  got: %s\n' "$1" "$3" "$2"
  fi
}

# stdout and stderr stay apart, into files as into a terminal (under emulation
# both leave the machine on its one console, and /init marks stderr's lines);
# into one file, the error comes after what was printed before it.
as_user make --no-print-directory -s run GUEST=test/guests/stp_mmio.S >"$work/stdout" 2>"$work/stderr"
stdout=$(cat "$work/stdout") stderr=$(cat "$work/stderr")
error="kvm-hello: step 9 (run_guest): KVM_RUN failed with ENOSYS"
check "stdout holds the steps" "$stdout" "[9/9] run_guest"
check_not "... and not the error line" "$stdout" "$error"
check_not "... nor the register dump" "$stdout" "registers (read with KVM_GET_ONE_REG"
check "stderr holds the error line" "$stderr" "$error"
check "... and the register dump" "$stderr" "registers (read with KVM_GET_ONE_REG"
check_not "... and not the steps" "$stderr" "[9/9] run_guest"
as_user make --no-print-directory -s run GUEST=test/guests/stp_mmio.S >"$work/both" 2>&1
both=$(tr -s ' \n' ' ' <"$work/both")
check "stdout and stderr into one file: the steps, then the dump, then the error, then make's word" "$both" \
  "[9/9] run_guest run the guest until it powers off: KVM_RUN registers (read with KVM_GET_ONE_REG"
check "... the error last before make's" "$both" "use plain ldr/str make: *** [Makefile"

echo "$passed passed, $failed failed"

#!/usr/bin/env bash
# make-tests.sh: the Makefile as a user meets it. Where kvm-hello runs is
# decided by the compiler's architecture and the KVM device (fake compilers
# stand in for other machines' here); a bad setting stops make with a
# message; GUEST= runs the file as it is now, whatever its name, folder or
# age, and a mistyped one is one line; a failed run's status is said in
# words under its own target; a guest's .elf is kept; make's own output stays
# short; a guest file named in ARGS is found; the program's stdout and stderr
# stay apart; make lint passes, and fails on a planted mistake; each target
# installs only the packages it needs. Prints "N passed, M failed".
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
verdict() {  # verdict DESCRIPTION OK EXPECTED GOT
  if [ "$2" = yes ]; then
    passed=$((passed + 1)); echo "make-tests: ok: $1"
  else
    failed=$((failed + 1)); printf 'make-tests: FAILED: %s\n  expected: %s\n  got: %s\n' "$1" "$3" "$4"
  fi
}
check() {  # check DESCRIPTION TEXT EXPECTED: TEXT holds EXPECTED
  verdict "$1" "$([[ $2 == *"$3"* ]] && echo yes)" "$3" "$2"
}
check_lacks() {  # check_lacks DESCRIPTION TEXT UNWANTED: TEXT does not hold UNWANTED
  verdict "$1" "$([[ $2 != *"$3"* ]] && echo yes)" "no $3" "$2"
}
check_equal() {  # check_equal DESCRIPTION TEXT EXPECTED: TEXT is EXPECTED
  verdict "$1" "$([[ $2 == "$3" ]] && echo yes)" "$3" "$2"
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
check "KVM_HELLO_HOST_CPUS: the emulated machine's CPUs" \
  "$(mk host CXX="$work/x86-g++" KVM_HELLO_HOST_CPUS=2)" "-cpu cortex-a57, 2 CPUs"
check "KVM_HELLO_SMP, its old name, still works" "$(mk host CXX="$work/x86-g++" KVM_HELLO_SMP=3)" "-cpu cortex-a57, 3 CPUs"
check "the emulated machine has a GICv3 by default" "$(mk host CXX="$work/x86-g++")" "-cpu cortex-a57, 1 CPU, GICv3"
check "KVM_HELLO_GIC=2: a GICv2" "$(mk host CXX="$work/x86-g++" KVM_HELLO_GIC=2)" "-cpu cortex-a57, 1 CPU, GICv2"
for gic in 4 v3 "" "2 3"; do
  check "KVM_HELLO_GIC=\"$gic\" stops make, saying what it may be" "$(mk host CXX="$work/x86-g++" KVM_HELLO_GIC="$gic")" \
    "KVM_HELLO_GIC is \"$gic\": it must be 3 (a GICv3, the default) or 2 (a GICv2)"
done

check "ALSO_HOST of two words stops make, saying what it must be" "$(mk host ALSO_HOST="sid arm64")" \
  'ALSO_HOST="sid arm64": it must be five words, as a line of test/hosts.txt: suite flavour cpu CPUs GIC'

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

# make's own output: make help names the real cache folder; an initramfs is
# one line; a make that a recipe starts (as `make test` starts `make gdb`)
# shares its parent's jobs without a warning.
out=$(mk help XDG_CACHE_HOME="$work/cache")
check "make help names the cache folder itself" "$out" "remove the downloaded kernels from $work/cache/kvm-hello"
check_lacks "... not a make variable" "$out" '$(CACHE)'
printf 'parent:\n\t+@$(MAKE) -s -C %s host\n' "$PWD" >"$work/parent.mk"
check_lacks "a make started by a recipe, under -j3, keeps the jobserver" "$(mk -j3 -f "$work/parent.mk")" "jobserver"

# GUEST=: the file as it is now, whatever its name, folder or age. What
# kvm-hello is given is build/your-guest/NAME.bin and NAME.lines: natively it
# opens them there; under emulation tools/run-in-vm.sh copies them into the
# machine at that path when it boots (make run, trace, bench and gdb alike).
emulated=$([[ $(mk host) == *"in the emulated arm64 machine"* ]] && echo yes)
given() {  # given FILE: FILE (NAME.bin, NAME.lines) as kvm-hello is given it
  cat "build/your-guest/$1"
}
first_word() { given "$@" | od -An -tx4 | awk '{print $1; exit}'; }
guest() {  # guest FILE IMMEDIATE: a guest of one instruction, movz w0, #IMMEDIATE
  mkdir -p "$(dirname "$1")"
  printf '        .text\n        .global _start\n_start:\n        movz    w0, #%s\n' "$2" >"$1"
}
old() { touch -d 2000-01-01 "$@"; }
guest "$work/a/own.S" 0x1111
guest "$work/b/own.S" 0x2222 && old "$work/b/own.S"
mk all GUEST="$work/a/own.S" >/dev/null
b_relative=$(realpath --relative-to=. "$work/b/own.S")  # ../../tmp/..., from here
rm -f build/run.cpio  # made again below: how many lines does that take?
out=$(mk all GUEST="$b_relative")
check_equal "GUEST=b/own.S after a/own.S, older, by a relative path with '..': b's image" \
  "$(first_word own.bin)" 52844440  # movz w0, #0x2222
check "... and b's line table" "$(given own.lines)" "movz    w0, #0x2222"
check "... and make gdb gives kvm-hello the same file" "$(mk -n gdb GUEST="$b_relative")" "--guest build/your-guest/own.bin"
[ -z "$emulated" ] || check_equal "an initramfs is made in one line" "$(grep -c '^initramfs build/run.cpio$' <<<"$out")" 1
check_lacks "... and not its shell commands" "$out" "for pair in"
check_equal "the same GUEST again: nothing rebuilt, nothing said" "$(mk all GUEST="$b_relative")" ""
guest "$work/b/own.S" 0x3333 && old "$work/b/own.S"
check_equal "b/own.S edited, its time kept old, by its absolute path: the new image" \
  "$(mk all GUEST="$work/b/own.S" >/dev/null; first_word own.bin)" 52866660
guest "$work/my dir/own guest.S" 0x4444
mk all GUEST="$work/my dir/../my dir/own guest.S" >/dev/null
check_equal "a path with spaces and '..': that file's image" "$(first_word own_guest.bin)" 52888880
check "... and its line table, named after it" "$(given own_guest.lines)" $'own guest.S\n0x10000 4 movz    w0, #0x4444'
guest "$work/inc/own.S" IMMEDIATE
sed -i '1i #include "immediate.inc"' "$work/inc/own.S" && old "$work/inc/own.S"
echo '#define IMMEDIATE 0x1111' >"$work/inc/immediate.inc"
mk all GUEST="$work/inc/own.S" >/dev/null
echo '#define IMMEDIATE 0x2222' >"$work/inc/immediate.inc"
check_equal "a file the guest includes changed: the new image" \
  "$(mk all GUEST="$work/inc/own.S" >/dev/null; first_word own.bin)" 52844440

# A mistyped GUEST=: one line naming it and what to do, and make fails.
out=$(mk run GUEST=nope.S)
status=$?
check_equal "GUEST=nope.S: one line naming it, and what to do" "$out" \
  "Makefile:$(grep -n 'error GUEST=' Makefile | cut -d: -f1): *** GUEST=nope.S: there is no such file (a relative path starts at $PWD); give the path of your guest's assembly source, for example make run GUEST=test/guests/spin.S.  Stop."
check_equal "... and make fails" "$([ "$status" != 0 ] && echo failed)" failed
check "GUEST=test: a folder" "$(mk trace GUEST=test)" "GUEST=test: it is a folder"

# LESSON=: 2 (or 3) gives kvm-hello --lesson 2 (3), for run, trace and gdb, with GUEST= and ARGS= after it; 1 is the
# default and adds nothing; another stops make in one line.
check "LESSON=2: make run gives kvm-hello --lesson 2" "$(mk -n run LESSON=2)" "--lesson 2 "
check "LESSON=2 with GUEST= and ARGS=: the lesson, the guest, the options" \
  "$(mk -n gdb LESSON=2 GUEST="$b_relative" ARGS=-v)" "--lesson 2 --guest build/your-guest/own.bin"
check "... and make trace LESSON=2 steps lesson 2's guest" "$(mk -n trace LESSON=2)" "--lesson 2  --step-guest"
check_lacks "LESSON=1, the default: no --lesson" "$(mk -n run LESSON=1)" "--lesson"
check "LESSON=3: make run gives kvm-hello --lesson 3" "$(mk -n run LESSON=3)" "--lesson 3 "
check "LESSON=3 with GUEST= and ARGS=: the lesson, the guest, the options" \
  "$(mk -n gdb LESSON=3 GUEST="$b_relative" ARGS=-v)" "--lesson 3 --guest build/your-guest/own.bin"
check "... and make trace LESSON=3 steps lesson 3's guest, each vCPU" "$(mk -n trace LESSON=3)" "--lesson 3  --step-guest"
out=$(mk run LESSON=4)
check "LESSON=4: one line, and what to do" "$out" \
  "*** LESSON=4: kvm-hello has lessons 1, 2 and 3; for example make run LESSON=2.  Stop."

# A guest with no instructions at all: kvm-hello's message and status, not
# objcopy's; make names the target that ran it, and the status in words.
: >"$work/nothing.S"
out=$(mk trace GUEST="$work/nothing.S")
status=$?
check "GUEST=nothing.S reaches kvm-hello's own check" "$out" "it is empty: a guest needs at least one instruction"
check "... and the status in kvm-hello's words, under make trace's name" "$out" \
  "make trace: kvm-hello exited with status 18: the guest image is empty or larger than guest RAM"
check "... and make fails with kvm-hello's status 18, for trace" "$out" ": trace] Error 18"
check_equal "... and make's own status is not 0" "$([ "$status" != 0 ] && echo failed)" failed
check "GUEST's .elf is kept for gdb and the line table" "$(ls build/your-guest/)" "nothing.elf"

# A lesson's guest files made on the way to its headers are kept: make
# does not delete them (.SECONDARY), and says no "rm" after a run. (In a
# build folder of its own: headers made anew in build/ would make every
# later make rebuild the programs, beside the suites that run them.)
lesson_build=$work/lesson-build
out=$(mk BUILD="$lesson_build" "$lesson_build/lesson2_guest_image.h" "$lesson_build/lesson2_guest_lines.h")
check_lacks "a lesson's guest made for its headers: make removes nothing" "$out" "rm $lesson_build/"
check_equal "... and its .bin and .lines stay" \
  "$(ls "$lesson_build/lesson2/guest.bin" "$lesson_build/lesson2/guest.lines" 2>&1)" \
  "$lesson_build/lesson2/guest.bin
$lesson_build/lesson2/guest.lines"

# make timings' recorder: make's SHELL, one record per recipe line, with
# its status; a failing line still fails make.
printf 'all:\n\ttrue\n\tfalse\n' >"$work/timed.mk"
out=$(as_user env KVM_HELLO_TIMINGS_LOG="$work/timed.log" make --no-print-directory -f "$work/timed.mk" \
  SHELL="$PWD/tools/timed-shell.sh" 2>&1)
status=$?
check_equal "tools/timed-shell.sh: each recipe line recorded with its status" \
  "$(cut -f3,4 "$work/timed.log" | tr '\t\n' ' |')" "0 true|1 false|"
check_equal "... and the failing line fails make" "$([ "$status" != 0 ] && echo failed)" failed
check "tools/timings.sh: an unknown scenario is refused" "$(tools/timings.sh nonsense 2>&1)" \
  "timings: unknown argument nonsense (try --help)"

# Off arm64, before make test installs qemu-aarch64-static (make run does
# not), the words for a status come from kvm-hello --help run in the
# emulated machine (QEMU_USER= stands for a machine without it).
if [ -n "$emulated" ] && [[ $(g++ -dumpmachine) != aarch64* ]]; then
  check "without qemu-aarch64-static, make trace still says status 18 in kvm-hello's words" \
    "$(mk trace GUEST="$work/nothing.S" QEMU_USER=)" \
    "make trace: kvm-hello exited with status 18: the guest image is empty or larger than guest RAM"
fi

# Each target installs what it needs, the first time it needs it: what a new
# machine's make would install (make -n, in a build folder of its own), as
# one line of package names.
installs() {  # installs MAKE-ARGUMENTS...
  echo " $(mk -n BUILD="$work/new-build" "$@" | sed -n 's|^setup/ensure-packages.sh ||p' | tr '\n' ' ')"
}
for machine in emulated native; do
  on=(CXX="$work/x86-g++")
  [ "$machine" = native ] && on=(CXX="$work/arm64-g++" KVM_DEVICE="$work/kvm")
  run_installs=$(installs run "${on[@]}")
  check "make run ($machine) installs a compiler for arm64" "$run_installs" \
    "$([ "$machine" = native ] && echo " g++ " || echo " g++-aarch64-linux-gnu ")"
  for package in doctest-dev tmux gdb gdb-multiarch qemu-user-static; do
    check_lacks "... and not $package, which only the tests or gdb need" "$run_installs" " $package "
  done
  check "the unit tests ($machine) install doctest-dev" "$(installs "${on[@]}" "$work/new-build/unit-tests")" \
    " doctest-dev "
  gdb_installs=$(installs gdb "${on[@]}")
  check "make gdb ($machine) installs gdb" "$gdb_installs" "$([ "$machine" = native ] && echo " gdb " || echo " gdb-multiarch ")"
  check_lacks "... and not doctest-dev" "$gdb_installs" " doctest-dev "
done
check_lacks "off arm64, make run does not install the build machine's own g++" "$(installs run CXX="$work/x86-g++")" " g++ "

# Off arm64, the sanitized kvm-hello's runtime is chosen by trying each one
# under qemu-aarch64-static (tools/sanitizer-runtime.sh). On a new machine
# after make run, which does not install it, make test must install it
# before it tries one: else every runtime looks broken, and make test fails.
runtime=$(mk -n BUILD="$work/new-build" CXX="$work/x86-g++" "$work/new-build/arm64-sanitizer-runtime/.done" |
  sed -n -e 's|^setup/ensure-packages.sh .* qemu-user-static.*|install qemu-user-static|p' \
    -e 's|^tools/sanitizer-runtime.sh .*|try a sanitizer runtime|p' | tr '\n' '|')
check_equal "off arm64, make installs qemu-user-static before it tries a sanitizer runtime under it" \
  "$runtime" "install qemu-user-static|try a sanitizer runtime|"
out=$(PATH="$work/bin" /bin/bash tools/sanitizer-runtime.sh "$work/runtime" "$work/cache" 2>&1)
status=$?
check_equal "tools/sanitizer-runtime.sh without qemu-aarch64-static: says so, status 1, tries nothing" \
  "$status|$out|$(ls "$work/runtime" "$work/cache" 2>/dev/null)" \
  "1|sanitizer-runtime: qemu-aarch64-static is not installed, so no runtime can be tried; install the package qemu-user-static (make test installs it first), then run make again|"

# The emulated machine's CPUs reach QEMU, also under the setting's old name
# (a stand-in QEMU that only keeps its arguments); a status that is not
# kvm-hello's own is said to be so.
if [ -n "$emulated" ]; then
  mkdir -p "$work/qemu"
  printf '#!/bin/sh\necho "$@" >%s/qemu/arguments\n' "$work" >"$work/qemu/qemu-system-aarch64"
  chmod +x "$work/qemu/qemu-system-aarch64"
  out=$(PATH="$work/qemu:$PATH" mk run KVM_HELLO_SMP=3)
  check "KVM_HELLO_SMP=3 (the old name): QEMU is given -smp 3" "$(cat "$work/qemu/arguments")" " -smp 3 "
  check "... and a GICv3 by default" "$(cat "$work/qemu/arguments")" "-M virt,virtualization=on,gic-version=3 "
  check "a machine that stops early: its status is not kvm-hello's, and make run says so" "$out" \
    "is not one of kvm-hello's (kvm-hello --help lists them): the lines above say what stopped it"
  PATH="$work/qemu:$PATH" mk run KVM_HELLO_GIC=2 >/dev/null
  check "KVM_HELLO_GIC=2: QEMU is given gic-version=2" "$(cat "$work/qemu/arguments")" \
    "-M virt,virtualization=on,gic-version=2 "
  rm -f "$work/qemu/arguments"
  out=$(PATH="$work/qemu:$PATH" KVM_HELLO_GIC=1 tools/run-in-vm.sh build/run.cpio build/run.cpio /kvm-hello 2>&1)
  status=$?
  check_equal "run-in-vm.sh with KVM_HELLO_GIC=1: one line saying what it may be" "$out" \
    'run-in-vm: KVM_HELLO_GIC is "1": it must be 3 (a GICv3, the default) or 2 (a GICv2)'
  check_equal "... status 2, and QEMU never started" "$status $(ls "$work/qemu")" "2 qemu-system-aarch64"
  # The note on Linux 7.x with several CPUs under QEMU before 10.0, from a
  # stand-in QEMU that says its version and reports the host it is told to.
  mkdir -p "$work/qemu-says"
  printf '#!/bin/sh\nif [ "$1" = --version ]; then echo "QEMU emulator version $QEMU_SAYS"; exit; fi\n%s\n' \
    "printf 'kvm-hello-vm: host: %s\\r\\nkvm-hello-vm: exit status 0\\r\\n' \"\$HOST_SAYS\"" \
    >"$work/qemu-says/qemu-system-aarch64"
  chmod +x "$work/qemu-says/qemu-system-aarch64"
  on_host() {  # on_host QEMU_VERSION HOST_LINE: run-in-vm.sh's stderr, then its status
    PATH="$work/qemu-says:$PATH" QEMU_SAYS=$1 HOST_SAYS=$2 tools/run-in-vm.sh build/run.cpio build/run.cpio /kvm-hello \
      2>&1 >/dev/null
    echo "status $?"
  }
  sid_on_2="Linux 7.2.13+deb14-arm64 (Debian 7.2.13-1), Cortex-A76, 2 CPUs, 4 KiB pages, GICv3, KVM VHE: the kernel runs at EL2"
  check "Linux 7.x on 2 CPUs under QEMU 7.2: run-in-vm.sh says what may happen there" \
    "$(on_host "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)" "$sid_on_2")" \
    "run-in-vm: note: Linux 7.x on 2 CPUs under QEMU 7.2.22: now and then a program dies with SIGSEGV after its vCPU"
  check_equal "... and not under QEMU 10.0" "$(on_host "10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)" "$sid_on_2")" "status 0"
  check_equal "... nor on 1 CPU" "$(on_host 7.2.22 "${sid_on_2/2 CPUs/1 CPU}")" "status 0"
  check_equal "... nor with Linux 6.12" "$(on_host 7.2.22 "${sid_on_2/7.2.13/6.12.118}")" "status 0"
fi

# A guest file of the build machine's, named in ARGS: kvm-hello runs it, also
# in the emulated machine (run-in-vm.sh puts it there, at the path given).
mk build/test/guests/psci_version.bin build/test/guests/psci_version.lines >/dev/null
cp build/test/guests/psci_version.bin build/test/guests/psci_version.lines "$work/"
check "ARGS='--guest FILE', a relative path: that guest runs" \
  "$(mk -s run ARGS="--guest build/test/guests/psci_version.bin -q")" "guest output: 1."
check "ARGS='--guest=FILE --guest-lines FILE', absolute paths in /tmp: the guest runs, its lines are read" \
  "$(mk -s run ARGS="--guest=$work/psci_version.bin --guest-lines $work/psci_version.lines -q --step-guest")" \
  "psci_version.S:"
out=$(mk -s run ARGS="--guest build/no-such-guest.bin" KVM_HELLO_GIC=2)
check "ARGS='--guest FILE', no such file: kvm-hello's own message" "$out" \
  "kvm-hello: --guest build/no-such-guest.bin: cannot open it: ENOENT"
check "... and its status 19" "$out" "Error 19"
[ -z "$emulated" ] || check "... in a machine booted with KVM_HELLO_GIC=2, whose host line names the GICv2 it found" \
  "$out" ", GICv2, KVM "

# stdout and stderr stay apart, into files as into a terminal (under emulation
# both leave the machine on its one console, and /init marks stderr's lines);
# into one file, the error comes after what was printed before it.
as_user make --no-print-directory -s run GUEST=test/guests/stp_mmio.S >"$work/stdout" 2>"$work/stderr"
stdout=$(cat "$work/stdout") stderr=$(cat "$work/stderr")
error="kvm-hello: step 9 (run_guest): KVM_RUN failed with ENOSYS"
check "stdout holds the steps" "$stdout" "[9/9] run_guest"
[ -z "$emulated" ] || check "... after the host line, which names the default GICv3, read from the machine's device tree" \
  "$stdout" ", GICv3, KVM "
check_lacks "... and not the error line" "$stdout" "$error"
check_lacks "... nor the register dump" "$stdout" "registers (read with KVM_GET_ONE_REG"
check "stderr holds the error line" "$stderr" "$error"
check "... and the register dump" "$stderr" "registers (read with KVM_GET_ONE_REG"
check_lacks "... and not the steps" "$stderr" "[9/9] run_guest"
as_user make --no-print-directory -s run GUEST=test/guests/stp_mmio.S >"$work/both" 2>&1
both=$(tr -s ' \n' ' ' <"$work/both")
check "stdout and stderr into one file: the steps, then the dump, then the error, then make's word" "$both" \
  "[9/9] run_guest run the guest until it powers off: KVM_RUN registers (read with KVM_GET_ONE_REG"
check "... the error last, then make run's words for its status" "$both" \
  "use plain ldr/str make run: kvm-hello exited with status 20: KVM_RUN failed make: *** [Makefile"

# The kernel download (tools/fetch-kernel.sh), from a mirror of our own
# signed by a key of our own (KVM_HELLO_KEYRING names its keyring): the
# newest kernel arrives when every link of the chain holds (InRelease signed,
# the package list's SHA256 the one it gives, the package's SHA256 the one
# the list gives); a change to any link, or a signature by another key or
# for another suite, is refused in words, and no kernel is kept.
mirror=$work/mirror
gpg_home=$work/gnupg
mkdir -p "$gpg_home" && chmod 700 "$gpg_home"
with_gpg() { gpg --homedir "$gpg_home" --batch --quiet --pinentry-mode loopback --passphrase '' "$@"; }
with_gpg --quick-gen-key "kvm-hello test mirror" ed25519 sign never
with_gpg --quick-gen-key "someone else" ed25519 sign never
with_gpg --export "kvm-hello test mirror" >"$work/mirror-keyring.gpg"
# package NAME VERSION FILE DEPENDS: a .deb holding FILE (text: its own name)
# and its stanza of the package list.
package() {
  local root=$work/package-root deb=pool/$1_$2_arm64.deb
  rm -rf "$root" && mkdir -p "$root/DEBIAN" "$root/$(dirname "$3")" "$mirror/pool"
  printf 'Package: %s\nVersion: %s\nArchitecture: arm64\nMaintainer: t <t@t>\nDescription: t\n' "$1" "$2" \
    >"$root/DEBIAN/control"
  echo "kernel of $1" >"$root/$3"
  dpkg-deb -Zxz --root-owner-group -b "$root" "$mirror/$deb" >/dev/null
  printf 'Package: %s\nVersion: %s\nDepends: %s\nFilename: %s\nSize: %s\nSHA256: %s\n\n' "$1" "$2" "$4" "$deb" \
    "$(stat -c %s "$mirror/$deb")" "$(sha256sum "$mirror/$deb" | cut -d' ' -f1)"
}
# sign SUITE [KEY]: the suite's InRelease, naming the package list's SHA256.
sign() {
  local dists=$mirror/dists/$1 list=main/binary-arm64/Packages.xz
  printf 'Suite: %s\nCodename: %s\nSHA256:\n %s %s %s\n' "$1" "$1" "$(sha256sum "$dists/$list" | cut -d' ' -f1)" \
    "$(stat -c %s "$dists/$list")" "$list" >"$dists/Release"
  rm -f "$dists/InRelease" && with_gpg --local-user "${2:-kvm-hello test mirror}" --clearsign -o "$dists/InRelease" "$dists/Release"
}
mkdir -p "$mirror/dists/testing/main/binary-arm64" "$mirror/dists/stable/main/binary-arm64"
{
  package linux-image-arm64 1.0-1 usr/share/doc/x "linux-image-1.0-arm64 (= 1.0-1)"
  package linux-image-1.0-arm64 1.0-1 boot/vmlinuz-1.0-arm64 "initramfs-tools | linux-initramfs-tool"
  package linux-image-arm64 2.0-1 usr/share/doc/x "linux-base, linux-image-2.0-arm64 (= 2.0-1)"
  package linux-image-2.0-arm64 2.0-1 usr/share/doc/x "linux-binary-2.0-arm64 (= 2.0-1), linux-modules-2.0-arm64"
  package linux-binary-2.0-arm64 2.0-1 usr/lib/modules/2.0-arm64/vmlinuz ""
} >"$work/packages"
xz <"$work/packages" >"$mirror/dists/testing/main/binary-arm64/Packages.xz"
sign testing
# stable: Linux 6's layout only, the kernel in linux-image's /boot.
awk -v RS= -v ORS='\n\n' '/Version: 1.0-1/' "$work/packages" | xz >"$mirror/dists/stable/main/binary-arm64/Packages.xz"
sign stable
fetch_kernel() {  # fetch_kernel SUITE: fetch-kernel.sh's output, and its status
  rm -rf "$work/kernel"
  KVM_HELLO_MIRROR="file://$mirror" KVM_HELLO_KEYRING="$work/mirror-keyring.gpg" \
    tools/fetch-kernel.sh "$1" arm64 "$work/kernel" 2>&1
  echo "status $?"
}
kept() { cat "$work/kernel/vmlinuz" 2>/dev/null || echo "no kernel kept"; }
out=$(fetch_kernel testing)
check "fetch-kernel.sh: every link of the chain holds: the newest kernel arrives (Linux 7's linux-binary)" \
  "$out $(kept)" "status 0 kernel of linux-binary-2.0-arm64"
check "... and it names the package it came from" "$(cat "$work/kernel/package" 2>/dev/null)" "linux-image-2.0-arm64 2.0-1"
check "fetch-kernel.sh: Linux 6's layout, the kernel in linux-image's /boot" "$(fetch_kernel stable) $(kept)" \
  "status 0 kernel of linux-image-1.0-arm64"
cp -r "$mirror" "$work/mirror-whole"
printf 'x' >>"$mirror/pool/linux-binary-2.0-arm64_2.0-1_arm64.deb"
out=$(fetch_kernel testing)
check "fetch-kernel.sh: a package whose SHA256 is not the list's is refused" "$out" \
  "the mirror's file is not the one its signed list names"
check_equal "... and no kernel is kept" "$(kept) ${out##*status }" "no kernel kept 1"
cp "$work/mirror-whole/pool/"* "$mirror/pool/"
{ head -c 8 /dev/zero; cat "$work/mirror-whole/dists/testing/main/binary-arm64/Packages.xz"; } \
  >"$mirror/dists/testing/main/binary-arm64/Packages.xz"
out=$(fetch_kernel testing)
check "fetch-kernel.sh: a package list whose SHA256 is not the signed one's is refused" "$out" \
  "Packages.xz failed (the mirror's file is not the one its signed list names"
check_equal "... and no kernel is kept" "$(kept) ${out##*status }" "no kernel kept 1"
cp "$work/mirror-whole/dists/testing/main/binary-arm64/Packages.xz" "$mirror/dists/testing/main/binary-arm64/"
sed -i 's/^Suite: testing/Suite: changed/' "$mirror/dists/testing/InRelease"
out=$(fetch_kernel testing)
check "fetch-kernel.sh: an InRelease changed after it was signed is refused" "$out" \
  "/dists/testing/InRelease was refused (not signed by a key of $work/mirror-keyring.gpg"
check_equal "... and no kernel is kept" "$(kept) ${out##*status }" "no kernel kept 1"
sign testing "someone else"
out=$(fetch_kernel testing)
check "fetch-kernel.sh: an InRelease signed by a key not in the keyring is refused" "$out" \
  "/dists/testing/InRelease was refused (not signed by a key of $work/mirror-keyring.gpg"
check_equal "... and no kernel is kept" "$(kept) ${out##*status }" "no kernel kept 1"
sign testing
ln -s testing "$mirror/dists/unstable"
out=$(fetch_kernel unstable)
check "fetch-kernel.sh: another suite's signed InRelease, served for this one, is refused" "$out" \
  "/dists/unstable/InRelease is signed, but for another suite than unstable"
check_equal "... and no kernel is kept" "$(kept) ${out##*status }" "no kernel kept 1"
rm "$mirror/dists/unstable"
check "fetch-kernel.sh: the mirror made whole again, the kernel arrives" "$(fetch_kernel testing) $(kept)" \
  "status 0 kernel of linux-binary-2.0-arm64"

# make test's suites side by side (test/run-suite.sh): one line as each starts
# and ends; a failed one's whole output in one piece; test/summarize.sh adds
# the totals up, a suite that ended without its totals counting as a failure.
suites=$work/suites
out=$(test/run-suite.sh "$suites" passing bash -c 'echo "[doctest] test cases: 3 | 3 passed | 0 failed | 0 skipped"')
check "run-suite.sh: a suite that passed, in two lines: started, then ended with its totals" \
  "$(wc -l <<<"$out") $(tail -n 1 <<<"$out")" "2 == passing: ended in "
check "... its totals" "$out" ": [doctest] test cases: 3 | 3 passed | 0 failed | 0 skipped"
out=$(test/run-suite.sh "$suites" failing bash -c 'echo first line; echo "1 passed, 1 failed"; exit 1')
check "run-suite.sh: a suite that failed shows its whole output" "$out" $'FAILED (exit status 1)'
check "... every line of it, then where it ends" "$out" $'first line\n1 passed, 1 failed\n== failing: end of its output'
test/run-suite.sh "$suites" crashed bash -c 'echo half a suite; kill -SEGV $$' >/dev/null 2>&1
out=$(test/summarize.sh "$suites")
status=$?
check "summarize.sh: a suite that ended without its totals is a failure, and its log's end is shown" "$out" \
  $'crashed ended without a test summary (exit status 139); its log ends:\nsummary:   | half a suite'
check_equal "... the last line adds all up" "$(tail -n 1 <<<"$out") $status" "4 passed, 2 failed 1"

# test/hosts.txt: every line a host of five words, GIC the last; a GICv2 among them.
printf 'trixie arm64 cortex-a57 1\n' >"$work/hosts.txt"
out=$(test/test-hosts.sh "$work/hosts.txt" 2>&1)
status=$?
check_equal "make test-hosts: a host line without its GIC is refused, before any test" "$status: $out" \
  "2: test-hosts: $work/hosts.txt:1 is not a host: it must be five words, suite flavour cpu CPUs GIC (CPUs a number, GIC 3 or 2)"
check_equal "test/hosts.txt has a GICv2 host" "$(awk '!/^#/ && $5 == 2 { found = 1 } END { print found + 0 }' test/hosts.txt)" 1

# make lint: the project's sources pass; a planted mistake fails it, named by
# its check (the same file without the mistake passes: the mistake is what
# fails). The planted files are in the tree, under .clang-tidy, as a source is.
out=$(mk lint)
check "make lint: the project's sources pass clang-tidy's checks" "$out" "lint: clang-tidy-19 found nothing in"
planted=build/lint-planted
rm -rf "$planted" build/lint/"$planted" && mkdir -p "$planted"
plant() {  # plant NAME BODY: a source that includes the lesson, with BODY
  printf '#include "kvm_hello.hpp"\n%s\n' "$2" >"$planted/$1.cpp"
}
plant used_result $'kvm_hello::Result<int> answer() { return 42; }\nint main() { return answer() ? 0 : 1; }'
plant dropped_result $'kvm_hello::Result<int> answer() { return 42; }\nint main() { answer(); }'
plant swappable_fds $'int attach(int vm_fd, int vcpu_fd) { if (vm_fd < 0) return -1; return vcpu_fd; }\nint main() { return attach(3, 4); }'
# Each planted file by a make lint of its own, the three side by side (each
# has its own build/lint/ file): their output in $work/lint-NAME, each
# make's status in lint_status[NAME].
declare -A lint_pid lint_status
for name in used_result dropped_result swappable_fds; do
  mk lint LINT_SOURCES="$planted/$name.cpp" >"$work/lint-$name" &
  lint_pid[$name]=$!
done
for name in "${!lint_pid[@]}"; do
  wait "${lint_pid[$name]}"
  lint_status[$name]=$?
done
check "make lint: a Result that is used passes" "$(cat "$work/lint-used_result")" "found nothing in 1 sources"
check_equal "... and make succeeds" "${lint_status[used_result]}" 0
out=$(cat "$work/lint-dropped_result")
check "make lint: a dropped Result fails it, on its line" "$out" \
  "dropped_result.cpp:3:14: error: the value returned by this function should not be disregarded"
check "... named by its check" "$out" "[bugprone-unused-return-value"
check_lacks "... and not because it did not compile" "$out" "clang-diagnostic-error"
check_equal "... and make fails" "${lint_status[dropped_result]}" 2
check "make lint: two int fds side by side fail it" "$(cat "$work/lint-swappable_fds")" \
  "2 adjacent parameters of 'attach' of similar type ('int') are easily swapped by mistake"
rm -rf "$planted" build/lint/"$planted"

echo "$passed passed, $failed failed"

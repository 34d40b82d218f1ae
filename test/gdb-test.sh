#!/usr/bin/env bash
# gdb-test.sh FIRST GDB-LAUNCHER...
#
# Drives gdb in batch mode through kvm-hello with gdb/steps.gdb's
# breakpoints and checks what a user would see: every step function stops in
# order, `print` and `bt` work there, and the program still finishes cleanly.
# FIRST is the command that starts the program: `run` for a local gdb,
# `continue` for gdb attached to the emulated machine (tools/gdb-in-vm.sh).
# Prints "N passed, M failed".
#
# Under emulation the program's output comes from the machine's console, at
# its own pace, and can land in the middle of a line of gdb's: the machine's
# console goes to a file of its own (KVM_HELLO_VM_CONSOLE, which
# tools/gdb-in-vm.sh honours), so that gdb's lines are read whole.
set -uo pipefail
first=$1
shift
log=$(mktemp)
console=$(mktemp)
trap 'rm -f "$log" "$console"' EXIT
export KVM_HELLO_VM_CONSOLE=$console

commands=(-batch -ex "$first" -ex "print path")
for _ in $(seq 8); do commands+=(-ex continue); done
commands+=(-ex "bt 2" -ex continue)
timeout 300 "$@" "${commands[@]}" >"$log" 2>&1
cat "$log"
[ -s "$console" ] && { echo "-- the program's output:"; cat "$console"; }
cat "$console" >>"$log"

passed=0 failed=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then
    passed=$((passed + 1)); echo "gdb-test: ok: $1"
  else
    failed=$((failed + 1)); echo "gdb-test: FAILED: $1"
  fi
}
# "Breakpoint 3, kvm_hello::NAME (...)", or with several vCPUs "Thread 2 hit Breakpoint 3, ...".
stops=$(sed -n 's/^\(Thread [0-9.]* hit \)\{0,1\}Breakpoint [0-9.]*, kvm_hello::\([a-z_]*\).*/\2/p' "$log" | tr '\n' ' ')
# The step functions, in order, as gdb/steps.gdb names them (test/docs_tests.cpp checks
# that file against kvm_hello.hpp's step table).
expected=$(sed -n 's/^break kvm_hello::\([a-z_]*\)$/\1/p' "$(dirname "$0")/../gdb/steps.gdb" | tr '\n' ' ')
check "the nine step functions stop in order (saw: $stops)" test "$stops" = "$expected"
check "print shows the device path at open_kvm" grep -q '^\$1 = 0x[0-9a-f]* "/dev/kvm"$' "$log"
check "bt at run_guest shows walk_through (main.cpp) as its caller" grep -q '^#1 .* in walk_through (' "$log"
check "the program ran to its clean shutdown" grep -q '^shutdown: the guest powered off' "$log"
echo "$passed passed, $failed failed"

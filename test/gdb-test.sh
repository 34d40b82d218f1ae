#!/usr/bin/env bash
# gdb-test.sh FIRST
#
# `make gdb` in its batch form (GDB_ARGS="-batch -x FILE"), as a user without
# a terminal runs it, and what it must show: every step function of
# gdb/steps.gdb stops in order, `print` and `bt` work there, and the program
# still finishes cleanly; then the same with GUEST= and ARGS= (another guest,
# kvm-hello's own options); then gdb's output and the program's redirected
# into one file, as `make gdb > FILE` does: complete and in order. FIRST is
# the command that starts the program: `run` for a local gdb, `continue` for
# gdb attached to the emulated machine (tools/gdb-in-vm.sh). Prints
# "N passed, M failed".
#
# Under emulation the program's output comes from the machine's console, at
# its own pace, and can land in the middle of a line of gdb's: the machine's
# console goes to a file of its own (KVM_HELLO_VM_CONSOLE, which
# tools/gdb-in-vm.sh honours), so that gdb's lines are read whole; except in
# the one-file case, which is about that very mixing.
set -uo pipefail
first=$1
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KVM_HELLO_VM_CONSOLE=$work/console

passed=0 failed=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then
    passed=$((passed + 1)); echo "gdb-test: ok: $1"
  else
    failed=$((failed + 1)); echo "gdb-test: FAILED: $1"
  fi
}

# debug NAME [MAKE ARGUMENTS...]: `make gdb` with the commands of $work/NAME.gdb;
# gdb's output in $work/NAME.log, with the program's after it.
debug() {
  local name=$1
  shift
  : >"$KVM_HELLO_VM_CONSOLE"
  timeout 300 make --no-print-directory -s gdb GDB_ARGS="-batch -x $work/$name.gdb" "$@" >"$work/$name.log" 2>&1
  echo "-- gdb, $name:" && cat "$work/$name.log"
  if [ -s "$KVM_HELLO_VM_CONSOLE" ]; then
    echo "-- the program's output:" && cat "$KVM_HELLO_VM_CONSOLE"
    cat "$KVM_HELLO_VM_CONSOLE" >>"$work/$name.log"
  fi
}

# The step functions a lesson calls, in the order its walk-through announces
# them ("[6/15] create_vcpu ...", and lesson 2's step 15 inside step 9,
# "... step 15, inject_spi, ..."), read from that lesson's golden output;
# gdb/steps.gdb has a breakpoint on every step function (test/docs_tests.cpp
# checks that file against kvm_hello.hpp's step table). And the ones a log
# stopped at: "Breakpoint 3, kvm_hello::NAME (...)", or with several
# threads "Thread 2 hit Breakpoint 3, ..." (QEMU's gdb stub) or, natively,
# "Thread 2 "vcpu 0" hit Breakpoint 9.1, ..." (with the thread's name).
announced() {
  sed -n -e 's/^\[[0-9]*\/[0-9]*\] \([a-z_]*\) .*/\1/p' -e 's/.*: step [0-9]*, \([a-z_]*\), .*/\1/p' "$1" | tr '\n' ' '
}
expected=$(announced test/golden/default.txt)
expected_lesson2=$(announced test/golden/lesson2.txt)
expected_lesson3=$(announced test/golden/lesson3.txt)
stops() { sed -n 's/^\(Thread [0-9.]*\( "[^"]*"\)\{0,1\} hit \)\{0,1\}Breakpoint [0-9.]*, kvm_hello::\([a-z_]*\).*/\3/p' "$1" | tr '\n' ' '; }

# The walk-through: a stop at each step, print and bt on the way.
{
  echo "$first"
  echo "print path"
  for _ in $(seq 8); do echo continue; done
  echo "bt 3"
  echo continue
} >"$work/steps.gdb"
debug steps
check "the nine step functions stop in order (saw: $(stops "$work/steps.log"))" test "$(stops "$work/steps.log")" = "$expected"
check "print shows the device path at open_kvm" grep -q '^\$1 = 0x[0-9a-f]* "/dev/kvm"$' "$work/steps.log"
check "bt at run_guest: walk_run, the run both lessons share, called by walk_through (main.cpp)" \
  grep -q '^#2 .* in walk_through (' "$work/steps.log"
check "the program ran to its clean shutdown" grep -q '^shutdown: the guest powered off' "$work/steps.log"

# Lesson 2 (`make gdb LESSON=2`): its six steps stop too, in KVM's order, with
# inject_spi inside run_guest, when the guest rings its doorbell.
{
  echo "$first"
  for _ in $(seq 14); do echo continue; done
  echo "bt"
  echo continue
} >"$work/lesson2.gdb"
debug lesson2 LESSON=2 ARGS=-q
check "LESSON=2: the fifteen step functions stop in the walk-through's order (saw: $(stops "$work/lesson2.log"))" \
  test "$(stops "$work/lesson2.log")" = "$expected_lesson2"
check "LESSON=2: bt at inject_spi: called from inside run_guest, when the guest rang" \
  bash -c "sed -n '/kvm_hello::inject_spi/,\$p' '$work/lesson2.log' | grep -Eq '^#[0-9]+ .* in kvm_hello::run_guest'"
check "LESSON=2: the program ran to its clean shutdown" grep -q '^shutdown: the guest powered off' "$work/lesson2.log"

# Lesson 3 (`make gdb LESSON=3`): its steps stop too. Natively each stops as
# often as the walk-through announces it (6, 7 and 16 once per vCPU, 17 and 9
# once per thread), in its order up to the first thread; after that, vCPU 0's
# thread reaching run_guest and the main thread starting vCPU 1's come in
# either order. In the emulated machine each breakpoint stops once
# (tools/gdb-in-vm.sh: "enable once"): each step at its first call, in the
# walk-through's order. Each run_guest stop is on a vCPU's own thread (its
# caller: run_vcpu_thread, start_vcpu_thread's), as `bt` there shows
# (breakpoint 9 is run_guest's: the ninth of gdb/steps.gdb).
in_any_order() { tr ' ' '\n' | sed '/^$/d' | sort | tr '\n' ' '; }
first_stops() { tr ' ' '\n' | sed '/^$/d' | head -n "$1" | tr '\n' ' '; }
first_calls() { tr ' ' '\n' | sed '/^$/d' | awk '!seen[$0]++' | tr '\n' ' '; }
if [ "$first" = continue ]; then expected_lesson3=$(echo "$expected_lesson3" | first_calls); fi
{
  echo "commands 9"
  echo "bt 4"
  echo "end"
  echo "$first"
  for _ in $(seq $(($(echo "$expected_lesson3" | wc -w) - 1))); do echo continue; done
  echo continue
} >"$work/lesson3.gdb"
debug lesson3 LESSON=3 ARGS=-q
if [ "$first" = continue ]; then
  check "LESSON=3, emulated: each step function stops at its first call, in the walk-through's order (saw: $(stops "$work/lesson3.log"))" \
    test "$(stops "$work/lesson3.log")" = "$expected_lesson3"
else
  check "LESSON=3: every step function stops as often as the walk-through announces it (saw: $(stops "$work/lesson3.log"))" \
    test "$(stops "$work/lesson3.log" | in_any_order)" = "$(echo "$expected_lesson3" | in_any_order)"
  check "LESSON=3: up to the first thread, in the walk-through's order" \
    test "$(stops "$work/lesson3.log" | first_stops 17)" = "$(echo "$expected_lesson3" | first_stops 17)"
fi
check "LESSON=3: each run_guest stop is on a vCPU's thread (bt: run_vcpu_thread)" \
  test "$(grep -c ' in kvm_hello::detail::run_vcpu_thread' "$work/lesson3.log")" = "$(stops "$work/lesson3.log" | tr ' ' '\n' | grep -c '^run_guest$')"
check "LESSON=3: the program ran to its clean shutdown" grep -q '^shutdown: the guest powered off' "$work/lesson3.log"

# The gdb sessions the docs show, each in the block after a "<!-- gdb-session -->"
# line: every line of gdb's there (the "(gdb) " lines are commands) is one the
# walk-through printed, in the same order. In them NNN stands for a line
# number, an address of 6 hex digits or more for any address, and "..." for
# anything, gdb's own "..." too; "Breakpoint 9.1," may be gdb's "Breakpoint 9,",
# and may follow "Thread N hit " or "Thread N "NAME" hit " (with several threads).
documented=(README.md docs/16-seeing-inside.md)
shown() { awk 'prev == "<!-- gdb-session -->" && $0 == "```" {on = 1; prev = ""; next}
               on && $0 == "```" {on = 0} on && !/^\(gdb\) / && NF {print} {prev = $0}' "$1"; }
as_pattern() {
  sed -E -e 's/[][\\.*^$(){}+?|]/\\&/g' -e 's/\\\.\\\.\\\./.*/g' -e 's/NNN/[0-9]+/g' -e 's/0x[0-9a-f]{6,}/0x[0-9a-f]+/g' \
    -e 's/^Breakpoint ([0-9]+)(\\\.[0-9]+)?,/(Thread [0-9.]+( "[^"]*")? hit )?Breakpoint \1(\\.[0-9]+)?,/' -e 's/^/^/' -e 's/$/$/'
}
# printed_in_order PATTERNS LOG: there are patterns, and each matches a line of
# LOG after the line the one before it matched.
printed_in_order() {
  awk 'NR == FNR {pattern[++n] = $0; next} i < n && $0 ~ pattern[i + 1] {i++}
       END {if (n == 0) print "gdb-test: no session shown"; else if (i < n) print "gdb-test: gdb printed no line like: " pattern[i + 1]
            exit i < n || n == 0}' "$1" "$2"
}
# The session the docs show also steps with `next`. Under emulation gdb's
# single steps are QEMU's, of one CPU of the machine, not of kvm-hello's
# thread: on a machine of several CPUs a step can stop in the kernel instead
# (docs/16-seeing-inside.md says so), so this session boots the machine with
# one CPU, as the default host has (natively the setting is not read).
{
  echo "$first"
  echo "print path"
  echo "next"
  echo "print fd"
  for _ in $(seq 8); do echo continue; done
  echo "bt 3"
  echo continue
} >"$work/session.gdb"
debug session KVM_HELLO_HOST_CPUS=1
for doc in "${documented[@]}"; do
  shown "$doc" | as_pattern >"$work/shown.patterns"
  check "$doc: its gdb session is what gdb printed ($(wc -l <"$work/shown.patterns") lines)" \
    printed_in_order "$work/shown.patterns" "$work/session.log"
done

# Another guest, and kvm-hello's own options: GUEST= and ARGS= reach it under gdb too.
{
  echo "$first"
  for _ in $(seq 9); do echo continue; done
} >"$work/guest.gdb"
debug guest GUEST=test/guests/psci_version.S ARGS=-q
check "GUEST= and ARGS= under gdb: the steps stop in order (saw: $(stops "$work/guest.log"))" \
  test "$(stops "$work/guest.log")" = "$expected"
check "GUEST= under gdb: that guest ran (its PSCI version printed)" grep -q '^guest output: 1\.[0-9]\\n$' "$work/guest.log"
check "ARGS=-q under gdb: kvm-hello was quiet (no step lines)" bash -c "! grep -q '^\[1/9\]' '$work/guest.log'"
# `make gdb > FILE`, as a user keeps a session: gdb's output and the program's
# in one file, nothing lost (a file reopened by path would start again at its
# beginning, over gdb's first lines), each in its order. The program's lines
# come at the machine's pace and can land inside one of gdb's (the host line,
# before step 1): it is taken out before gdb's stops are read.
{
  echo "$first"
  for _ in $(seq 9); do echo continue; done
} >"$work/file.gdb"
env -u KVM_HELLO_VM_CONSOLE timeout 300 make --no-print-directory -s gdb GDB_ARGS="-batch -x $work/file.gdb" \
  ARGS=-q >"$work/file.log" 2>&1
echo "-- gdb and the program, into one file:" && cat "$work/file.log"
sed -z 's/kvm-hello-vm: host: [^\n]*\n//' "$work/file.log" >"$work/file-gdb.log"
line_of() { grep -n -m 1 -F -- "$2" "$1" | cut -d: -f1; }  # line_of FILE TEXT: the first line holding TEXT
in_order() {  # in_order FILE TEXT...: each TEXT is there, on a later line than the one before
  local at previous=0 text
  for text in "${@:2}"; do
    at=$(line_of "$1" "$text")
    [ -n "$at" ] && [ "$at" -gt "$previous" ] || return 1
    previous=$at
  done
}
check "make gdb > FILE: gdb's first lines are kept (its breakpoints set)" grep -q '^Breakpoint 1 at 0x' "$work/file.log"
check "make gdb > FILE: the steps stop in order (saw: $(stops "$work/file-gdb.log"))" \
  test "$(stops "$work/file-gdb.log")" = "$expected"
check "make gdb > FILE: gdb's lines, then the program's output after the last stop" \
  in_order "$work/file.log" "Breakpoint 1 at 0x" "Breakpoint 1, kvm_hello::open_kvm" ", kvm_hello::run_guest<" \
  'guest output: hello\n' "shutdown: the guest powered off"
if [ "$first" = continue ]; then
  check "make gdb > FILE, emulated: what gdb's first stop is, said before gdb starts" \
    in_order "$work/file.log" "gdb-in-vm: gdb attaches before the machine has run anything" "Breakpoint 1 at 0x"
  check "make gdb > FILE, emulated: ... and that first stop" grep -qx '0x0000000040000000 in ?? ()' "$work/file.log"
fi
echo "$passed passed, $failed failed"

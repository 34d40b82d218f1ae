#!/usr/bin/env bash
# terminal-test.sh: `make run` at a terminal, typed as a person types it.
# Ctrl-C stops a running guest cleanly (its registers, status 130, which make
# reports as "Error 130"), also after Ctrl-Z and `fg`, and the terminal's
# Ctrl-C is back afterwards; --pause waits for Enter at each step and the
# lines stay in their columns;
# Ctrl-C at gdb's prompt is gdb's alone; an error line is coloured, and goes
# with stderr. Under emulation that is the way through QEMU's console to the
# program inside the machine (tools/run-in-vm.sh, tools/vm-init.cpp,
# tools/gdb-in-vm.sh).
# Prints "N passed, M failed".
#
# The terminal is tmux's (a server of our own), running an interactive bash
# whose prompt shows the last exit status. Every wait is for something to
# appear on the screen, bounded; a machine that is busy only makes it slower.
set -uo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
server=kvm-hello-terminal-test-$$
at_terminal() { tmux -L "$server" "$@"; }
trap 'at_terminal kill-server 2>/dev/null; rm -rf "$work"' EXIT

passed=0 failed=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then
    passed=$((passed + 1)); echo "terminal-test: ok: $1"
  else
    failed=$((failed + 1)); echo "terminal-test: FAILED: $1"
  fi
}

# The terminal: 250 columns, so that no line of kvm-hello's wraps. The shell
# is a user's: none of the make flags of the make that runs this test.
env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS -u NO_COLOR tmux -L "$server" -f /dev/null \
  new-session -d -s test -x 250 -y 50 "env PS1='[status \$?] ' bash --norc --noprofile -i"
# tmux needs a pseudo-terminal (/dev/ptmx, and /dev/pts mounted): a chroot
# that binds /dev but not /dev/pts has none, and then nothing here can run.
if ! at_terminal has-session -t test 2>/dev/null; then
  echo "terminal-test: tmux could not open a terminal: this machine gives no pseudo-terminal" \
    "(is /dev/pts mounted? a chroot needs its own: mount -t devpts devpts /dev/pts)"
  echo "0 passed, 1 failed"
  exit 1
fi
terminal=$(at_terminal display-message -p -t test '#{pane_tty}')

# What the terminal shows, its scrolled-off lines too; -e: with colours.
screen() { at_terminal capture-pane -p -J -S - -E - -t test "$@"; }
shows() { screen | grep -q -E -- "$1"; }  # shows REGEX: a line matches (grep -E)
lacks() { ! shows "$1"; }
shows_in_colour() { screen -e | grep -q -E -- "$1"; }
# wait_for SECONDS COMMAND...: until COMMAND succeeds; says so and fails after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1))
  until "${@:2}"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "terminal-test: waited $1 s in vain for: ${*:2}"
      return 1
    fi
    sleep 0.2
  done
}
# The prompt, "[status N] " (a screen's line has no trailing blanks).
prompts() { screen | grep -c -E '^\[status [0-9]+\]( |$)'; }
last_status() { screen | grep -E '^\[status [0-9]+\]( |$)' | tail -n 1 | grep -q -E "^\[status $1\]( |\$)"; }
only_a_prompt() { [ "$(at_terminal capture-pane -p -t test | grep -c .)" = 1 ] && last_status '[0-9]+'; }
# type_command LINE: a clean screen (and no history), then LINE typed at the
# prompt; `finished` says when the shell prompts again.
type_command() {
  at_terminal send-keys -t test "clear" Enter
  wait_for 30 only_a_prompt
  at_terminal clear-history -t test
  at_terminal send-keys -t test -l "$1"
  at_terminal send-keys -t test Enter
  prompts_when_done=2
}
finished() { [ "$(prompts)" -ge "$prompts_when_done" ]; }
intr_key() { stty -F "$terminal" -a | grep -o 'intr = [^;]*'; }
ctrl_c_is_the_machines() { [ "$(intr_key)" = "intr = <undef>" ]; }
show_screen() { echo "-- the terminal, $1:"; screen; }

wait_for 30 last_status 0 || { echo "terminal-test: the shell did not start"; echo "0 passed, 1 failed"; exit 1; }

# A guest that makes one MMIO exit and then spins: once its exit is on the
# screen, kvm-hello is surely inside its run loop, where Ctrl-C stops the guest.
cat >"$work/speak_then_spin.S" <<'EOF'
#include "kvm_hello.hpp"
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w0, #'.'
        strb    w0, [x1]
spin:   b       spin
EOF
spinning="make run GUEST=$work/speak_then_spin.S ARGS='--timeout 600'"
running='exit 1: KVM_EXIT_MMIO'

# Ctrl-C while the guest runs.
type_command "$spinning"
wait_for 600 shows "$running"
emulated=$(shows '^kvm-hello-vm: host: ' && echo yes)
[ -z "$emulated" ] || wait_for 60 ctrl_c_is_the_machines
at_terminal send-keys -t test C-c
wait_for 120 finished
show_screen "Ctrl-C"
check "Ctrl-C: kvm-hello stops the guest and says so, at the start of a line" \
  shows '^kvm-hello: step 9 \(run_guest\): Ctrl-C stopped the guest'
check "Ctrl-C: the registers first" shows '^registers \(read with KVM_GET_ONE_REG'
check "Ctrl-C: make reports the program's status 130" shows '^make: \*\*\* \[.*\] Error 130$'
check "Ctrl-C: make itself was not interrupted before the program ended" lacks 'Interrupt'
check "Ctrl-C: afterwards the terminal's Ctrl-C is Ctrl-C again ($(intr_key))" test "$(intr_key)" = "intr = ^C"

# Ctrl-Z, then fg, then Ctrl-C: the run goes on after the stop, and Ctrl-C still stops the guest.
type_command "$spinning"
wait_for 600 shows "$running"
at_terminal send-keys -t test C-z
wait_for 60 shows 'Stopped +make run'
stopped=$(shows 'Stopped +make run' && echo yes)
at_terminal send-keys -t test "fg" Enter
prompts_when_done=3  # the prompt at which fg was typed is one more
wait_for 60 shows '^make run GUEST='   # bash names the job it continues
[ -z "$emulated" ] || wait_for 60 ctrl_c_is_the_machines
echo "terminal-test: Ctrl-C pressed with the terminal's $(intr_key)"
at_terminal send-keys -t test C-c
wait_for 120 finished
show_screen "Ctrl-Z, fg, Ctrl-C"
check "Ctrl-Z stops the job" test "$stopped" = yes
check "... fg continues it, and Ctrl-C then stops the guest" shows '^kvm-hello: step 9 \(run_guest\): Ctrl-C stopped the guest'
check "... with status 130" shows '^make: \*\*\* \[.*\] Error 130$'

# --pause: Enter after each step, each time the program asks; the lines stay in their columns.
type_command "make run ARGS='--pause -q'"
asked=0
asks() { screen | grep -c 'press Enter to go on'; }
asks_again() { finished || [ "$(asks)" -gt "$asked" ]; }
while [ "$asked" -lt 20 ] && wait_for 300 asks_again && ! finished; do
  asked=$((asked + 1))
  at_terminal send-keys -t test Enter
done
wait_for 60 finished
show_screen "--pause"
check "--pause: it asked for Enter at each of the 9 steps (asked $asked times)" test "$asked" = 9
check "--pause: each ask in its column" test "$(screen | grep -c '^      -- press Enter to go on$')" = 9
check "--pause: then the guest ran to its clean shutdown" shows '^shutdown: the guest powered off'
check "--pause: ... status 0" last_status 0

# make gdb: Ctrl-C at gdb's prompt is gdb's; the program goes on to its end.
type_command "make gdb ARGS=-q"
wait_for 300 shows '^\(gdb\)'
at_terminal send-keys -t test "$([ -n "$emulated" ] && echo continue || echo run)" Enter
wait_for 300 shows '^Breakpoint 1, '
at_terminal send-keys -t test C-c
wait_for 60 shows 'Quit$'   # gdb's word for a Ctrl-C at its prompt
at_terminal send-keys -t test "disable" Enter
at_terminal send-keys -t test "continue" Enter
wait_for 300 shows '^shutdown: the guest powered off'
wait_for 60 shows 'exited normally'
at_terminal send-keys -t test "quit" Enter
wait_for 120 finished
show_screen "make gdb, Ctrl-C at its prompt"
check "make gdb: Ctrl-C at gdb's prompt leaves the program running (to its clean shutdown)" \
  shows '^shutdown: the guest powered off'
check "... the machine was not stopped by it" lacks 'terminating on signal'

# An error at a terminal: coloured, and on stderr (2>/dev/null hides it).
type_command "make run GUEST=test/guests/stp_mmio.S ARGS=-q"
wait_for 300 finished
show_screen "an error"
check "an error line at a terminal is coloured (red)" \
  shows_in_colour $'^\e\\[31mkvm-hello: step 9 \\(run_guest\\): KVM_RUN failed with ENOSYS'
type_command "make run GUEST=test/guests/stp_mmio.S ARGS=-q 2>/dev/null"
wait_for 300 finished
show_screen "an error, 2>/dev/null"
check "2>/dev/null: the error line is not shown" lacks '^kvm-hello: step 9'
check "2>/dev/null: and the run still failed (make's status 2)" last_status 2
echo "$passed passed, $failed failed"

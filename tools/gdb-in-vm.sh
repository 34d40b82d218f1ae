#!/usr/bin/env bash
# gdb-in-vm.sh KERNEL INITRAMFS PROGRAM [ARGUMENTS...]
#
# Debugs PROGRAM (a path inside the initramfs, and beside this script's
# caller as build/PROGRAM with its symbols) while it runs, with ARGUMENTS,
# inside the emulated arm64 machine. QEMU's gdb stub listens on 127.0.0.1 and
# QEMU waits (-S) until gdb-multiarch has connected and set the breakpoints
# of gdb/steps.gdb; then `continue` boots the machine and stops at step 1.
# GDB_ARGS: more options for gdb, e.g. "-batch -x commands.gdb" to run the
# commands of a file without a terminal (`make gdb GDB_ARGS=...`).
# The program's output goes where gdb's does: the same terminal, or the same
# open file (`make gdb > FILE`: one file offset, so neither overwrites the
# other), or else to the file KVM_HELLO_VM_CONSOLE names (the machine's console
# comes at its own pace, and can land in the middle of one of gdb's lines:
# test/gdb-test.sh reads them apart).
#
# Breakpoints are on virtual addresses, whichever process is running: the
# debug build is linked at its own address (see the Makefile), so nothing else
# in the machine runs code there.
set -euo pipefail
kernel=$1 initramfs=$2 program=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
port=${KVM_HELLO_GDB_PORT:-$((20000 + RANDOM % 20000))}
read -r -a gdb_args <<<"${GDB_ARGS:-}"

# The machine runs in a session of its own (setsid): Ctrl-C at gdb is gdb's
# (it stops the program, or the command being typed), and the terminal's
# SIGINT would otherwise reach QEMU too, which ends the machine on it.
if [ -n "${KVM_HELLO_VM_CONSOLE:-}" ]; then exec 4>"$KVM_HELLO_VM_CONSOLE"; else exec 4>&1; fi
KVM_HELLO_GDB_PORT=$port setsid "$here/run-in-vm.sh" "$kernel" "$initramfs" "/$(basename -- "$program")" "$@" >&4 &
machine=$!
trap 'kill "$machine" 2>/dev/null || true' EXIT

# Wait for the stub to listen before gdb connects.
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

# "enable once": each step's breakpoint stops the program once, then is
# disabled; the steps run once each, so nothing is lost, and gdb never has
# to step past a breakpoint it stopped at. On a busy machine
# QEMU's gdb stub (7.2 at least) now and then reports gdb's one-instruction
# step past a breakpoint as done with the PC unmoved (seen with gdb's
# `set debug infrun 1`); with the breakpoint still enabled, gdb would then
# announce the same breakpoint a second time.
steps=$(grep -c '^break ' "$here/../gdb/steps.gdb")
echo "gdb-in-vm: gdb attaches before the machine has run anything: its first stop, 0x0000000040000000 in ?? ()," \
  "is the machine's first instruction (QEMU's boot code at the start of RAM, before the kernel);" \
  "\`continue\` boots the kernel, which runs $(basename -- "$program"), and stops at step 1."
gdb-multiarch -q -ex "target remote 127.0.0.1:$port" -x "$here/../gdb/steps.gdb" -ex "enable once 1-$steps" \
  "${gdb_args[@]}" "$program"
wait "$machine" || true

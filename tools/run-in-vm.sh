#!/usr/bin/env bash
# run-in-vm.sh KERNEL INITRAMFS [NAME=VALUE...] PROGRAM [ARGS...]
#
# Boots the emulated arm64 machine and runs PROGRAM (a path inside the
# initramfs) with ARGS there, NAME=VALUE in its environment; shows what it
# prints and exits with its status.
#
# The machine: QEMU's "virt" board with virtualization=on, so QEMU emulates
# EL2 and the arm64 Linux kernel inside boots with KVM: its /dev/kvm is a real
# arm64 KVM. The CPU model is cortex-a57: models with pointer authentication
# (such as "max") boot several times slower under emulation.
# tools/vm-init.cpp is /init: it runs PROGRAM and reports its exit status.
#
# KVM_HELLO_VM_TIMEOUT (seconds, default 300) bounds the whole boot.
set -euo pipefail

usage="usage: run-in-vm.sh KERNEL INITRAMFS [NAME=VALUE...] PROGRAM [ARGS...]"
kernel=${1:?$usage}
initramfs=${2:?$usage}
shift 2
environment=()
while [ $# -ge 1 ] && [[ $1 == [A-Za-z_]*=* ]]; do
  environment+=("$1")
  shift
done
[ $# -ge 1 ] || { echo "run-in-vm: no program given; $usage" >&2; exit 2; }

marker='kvm-hello-vm: exit status '

# Inside, the program's output goes to the machine's console, a terminal: say
# NO_COLOR there when our own output is not a terminal, or when it is set here.
# (Kernel command line words with "=" before "--" become /init's environment.)
if [ ! -t 1 ] || [ -n "${NO_COLOR:-}" ]; then environment+=("NO_COLOR=1"); fi
# Keyboard input reaches the program only through the machine's console, whose
# input is ours: our terminal when we have one (then `kvm-hello --pause` can
# wait for Enter; Ctrl-C still stops QEMU), otherwise nothing, and then
# KVM_HELLO_NO_INPUT tells /init to give the program /dev/null instead.
input=/dev/stdin
if [ ! -t 0 ]; then
  input=/dev/null
  environment+=("KVM_HELLO_NO_INPUT=1")
fi
# Programs that measure time (kvm-hello --bench) must say their CPU is emulated.
environment+=("KVM_HELLO_EMULATED=QEMU-TCG-$(uname -m)-host")
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The serial console writes \r\n; what comes after the marker is the
# kernel powering off, not ours to show. Every stage passes each line on at
# once (sed -u, tee, a read loop; not awk, which may read ahead in blocks), so
# interactive output is not held back.
show_until_marker() {
  local line shown=1
  while IFS= read -r line; do
    [[ $line == "$marker"* ]] && shown=0
    if [ "$shown" = 1 ]; then printf '%s\n' "$line"; fi
  done
}
# The kernel command line: its console on the serial port, our /init, quiet;
# cryptomgr.notests skips the crypto self-tests, about 0.2 s of a 1.1 s boot
# under emulation (measured with initcall_debug), for code nothing here uses.
cmdline="console=ttyAMA0 rdinit=/init quiet loglevel=1 cryptomgr.notests"

# KVM_HELLO_GDB_PORT: QEMU's gdb stub on that loopback port, waiting for gdb.
debug=()
if [ -n "${KVM_HELLO_GDB_PORT:-}" ]; then debug=(-gdb "tcp:127.0.0.1:$KVM_HELLO_GDB_PORT" -S); fi

set +e
timeout --foreground "${KVM_HELLO_VM_TIMEOUT:-300}" \
  qemu-system-aarch64 \
    -M virt,virtualization=on,gic-version=3 -cpu cortex-a57 -smp 1 -m 256 \
    -nodefaults -display none -monitor none -serial stdio -no-reboot \
    -kernel "$kernel" -initrd "$initramfs" "${debug[@]}" \
    -append "$cmdline ${environment[*]} -- $*" <"$input" |
  sed -u 's/\r$//' | tee "$log" | show_until_marker
qemu_status=${PIPESTATUS[0]}
set -e

status=$(sed -n "s/^${marker}\([0-9][0-9]*\)\$/\1/p" "$log" | tail -n 1)
if [ -z "$status" ]; then
  if [ "$qemu_status" = 124 ]; then
    echo "run-in-vm: the emulated machine did not finish within ${KVM_HELLO_VM_TIMEOUT:-300} s and was stopped" >&2
  else
    echo "run-in-vm: the emulated machine stopped (QEMU status $qemu_status) before $1 reported its exit status" >&2
  fi
  exit 125
fi
exit "$status"

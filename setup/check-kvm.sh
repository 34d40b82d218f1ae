#!/usr/bin/env bash
# check-kvm.sh [DEVICE]
#
# Before the native test suites run: can this user open DEVICE (default
# /dev/kvm)? If not, says why and what to do, once, and fails, instead of
# every test failing with the same message.
set -uo pipefail
device=${1:-/dev/kvm}
if [ ! -e "$device" ]; then
  why="$device does not exist: this arm64 kernel has no KVM (it needs CONFIG_KVM and to be booted at EL2)"
elif [ ! -r "$device" ] || [ ! -w "$device" ]; then
  why="you may not open $device: join its group (usually \`sudo usermod -aG kvm \$USER\`, then log in again)"
else
  exit 0
fi
echo "kvm-hello: the tests against real KVM need a KVM this user may open, and $why." >&2
echo "kvm-hello: or run every test inside the emulated arm64 machine: make test KVM_HELLO_MACHINE=emulated" >&2
exit 1

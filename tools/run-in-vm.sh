#!/usr/bin/env bash
# run-in-vm.sh KERNEL INITRAMFS [NAME=VALUE...] PROGRAM [ARGS...]
#
# Boots the emulated arm64 machine and runs PROGRAM (a path inside the
# initramfs) with ARGS there, NAME=VALUE in its environment; shows what it
# prints and exits with its status.
#
# The machine: QEMU's "virt" board with virtualization=on, so QEMU emulates
# EL2 and the arm64 Linux kernel inside boots with KVM: its /dev/kvm is a real
# arm64 KVM. tools/vm-init.cpp is /init: it prints one line naming the host
# (kernel, CPU, vCPUs, page size, KVM's mode, all read inside the machine),
# runs PROGRAM and reports its exit status. What PROGRAM writes to stdout
# comes to our stdout, and what it writes to stderr to our stderr.
#
# The host it emulates, from the environment (the Makefile passes them on):
#   KVM_HELLO_CPU   QEMU's -cpu model (default cortex-a57: no pointer
#                   authentication to emulate, the fastest boot). For "max",
#                   QEMU's cheaper implementation-defined pointer
#                   authentication is chosen (pauth-impdef=on): the
#                   architected algorithm (QARMA) makes every boot several
#                   times slower under emulation.
#   KVM_HELLO_HOST_CPUS  CPUs of the emulated machine (default 1)
#   KVM_HELLO_GIC   its interrupt controller (QEMU's gic-version): 3 for a
#                   GICv3 (the default), 2 for a GICv2. KVM inside offers a
#                   vGICv3 on the first, a vGICv2 on the second: QEMU's GICv3
#                   has no GICv2 compatibility (no GICV region), so KVM there
#                   says "GICv3: no GICV resource entry" and disables its
#                   vGICv2 (vgic_v3_probe, arch/arm64/kvm/vgic/vgic-v3.c)
# Ctrl-C: KVM_HELLO_CTRL_C=program (make run sets it) gives Ctrl-C at our
# terminal to PROGRAM once /init runs; otherwise it stops the machine.
# To look at the boot itself: KVM_HELLO_BOOT_LOG=1 prints the kernel's log
# before the host line, and KVM_HELLO_KERNEL_ARGS adds words to the kernel's
# command line (initcall_debug printk.time=1, say, shows what took long).
# Time bounds, in seconds:
#   KVM_HELLO_BOOT_TIMEOUT  until /init reports the host (default 60): a
#                           kernel that cannot boot on this CPU prints
#                           nothing, and would otherwise hang
#   KVM_HELLO_VM_TIMEOUT    the whole run (default 300)
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
[ -r "$kernel" ] || { echo "run-in-vm: no kernel at $kernel" >&2; exit 2; }

cpu=${KVM_HELLO_CPU:-cortex-a57}
smp=${KVM_HELLO_HOST_CPUS:-1}
gic=${KVM_HELLO_GIC:-3}
case $gic in
  2 | 3) ;;
  *) echo "run-in-vm: KVM_HELLO_GIC is \"$gic\": it must be 3 (a GICv3, the default) or 2 (a GICv2)" >&2; exit 2 ;;
esac
boot_limit=${KVM_HELLO_BOOT_TIMEOUT:-60}
run_limit=${KVM_HELLO_VM_TIMEOUT:-300}
qemu_cpu=$cpu
[ "$cpu" != max ] || qemu_cpu=max,pauth-impdef=on

# What /init writes on the console for us, each at the start of a line.
vm_prefix='kvm-hello-vm: '
host_marker="${vm_prefix}host: "
status_marker="${vm_prefix}exit status "
stderr_marker="${vm_prefix}stderr: "

# Inside, the program's output goes to the machine's console, a terminal: say
# NO_COLOR there when our own output is not a terminal, or when it is set here.
# (Kernel command line words with "=" before "--" become /init's environment.)
if [ ! -t 1 ] || [ -n "${NO_COLOR:-}" ]; then environment+=("NO_COLOR=1"); fi
# The program's stderr comes through /init, marked, on the same console (see
# tools/vm-init.cpp): a terminal inside when ours is one.
if [ -t 2 ]; then environment+=("KVM_HELLO_STDERR_TERMINAL=1"); fi
# Keyboard input reaches the program only through the machine's console, whose
# input is ours: our terminal when we have one (then `kvm-hello --pause` can
# wait for Enter), otherwise nothing, and then KVM_HELLO_NO_INPUT tells /init
# to give the program /dev/null instead.
input=/dev/stdin
if [ ! -t 0 ]; then
  input=/dev/null
  environment+=("KVM_HELLO_NO_INPUT=1")
fi
# Ctrl-C on our terminal sends SIGINT to every process of the job: make, this
# script and QEMU, which stops the machine there and then (we say so, and end
# with status 130). That is what the tests want, and what a person wants
# while the machine boots. For a program a person runs (make run, trace,
# bench: KVM_HELLO_CTRL_C=program), once /init runs Ctrl-C is an ordinary key
# on our terminal (stty intr undef): QEMU passes it to the machine's console as
# the byte 0x03, and the console's line discipline there sends SIGINT to the
# console's foreground process group, /init's, which the program is in too
# (see tools/vm-init.cpp): kvm-hello stops the guest, shows its registers and
# ends with status 130, which becomes ours (make: "Error 130"); before the
# program starts, /init does not start it. Ctrl-Z and Ctrl-\ keep their
# meaning here. QEMU takes the terminal modes it finds as the ones to come back
# to: after Ctrl-Z and `fg` (SIGCONT) it sets its own again from them, and it
# puts them back when it ends. So it must find Ctrl-C ordinary: it is made so
# before QEMU starts, given back for the boot once QEMU has set its modes
# (ctrl_c_for_the_boot), and made ordinary again when /init reports the host.
# On exit, the modes we found.
terminal_modes="" intr_key=""
if [ -t 0 ] && [ "${KVM_HELLO_CTRL_C:-}" = program ]; then
  terminal_modes=$(stty -g)
  intr_key=$(stty -a | sed -n 's/.*intr = \([^;]*\);.*/\1/p')
  stty intr undef
fi
ctrl_c_for_the_boot() {
  [ -n "$terminal_modes" ] || return 0
  local before tries
  before=$(stty -g)
  for tries in $(seq 100); do  # QEMU sets its modes as it starts; 5 s at most
    [ "$(stty -g)" = "$before" ] && kill -0 "$qemu" 2>/dev/null || break
    sleep 0.05
  done
  stty intr "$intr_key"
}
program=$1
on_interrupt() {
  echo "run-in-vm: Ctrl-C (SIGINT)$([ "${booted:-0}" = 1 ] || echo " before $program started"): the emulated machine was stopped" >&2
  exit 130
}
trap on_interrupt INT
# Programs that measure time (kvm-hello --bench) must say their CPU is emulated.
environment+=("KVM_HELLO_EMULATED=QEMU-TCG-$cpu-on-$(uname -m)")

# The kernel command line: its console on the serial port, our /init, quiet.
# The rest skips work under emulation for what nothing here uses (found with
# initcall_debug): cryptomgr.notests, the crypto self-tests (about 0.2 s of a
# 1.1 s boot); initcall_blacklist, the jitter entropy source's self-test, the
# built-in certificates for module signatures (no module is loaded), the PCI
# host bridge (the machine's devices are all MMIO), IPv6 and BPF's TCP
# congestion hooks: together about 14% of a Debian 13 boot (measured with
# farm-bench, in pairs).
skip="jent_mod_init,load_system_certificate_list,gen_pci_driver_init,inet6_init,bpf_tcp_ca_kfunc_init"
cmdline="console=ttyAMA0 rdinit=/init quiet loglevel=1 cryptomgr.notests initcall_blacklist=$skip"
cmdline+=" ${KVM_HELLO_KERNEL_ARGS:-}"
if [ -n "${KVM_HELLO_BOOT_LOG:-}" ]; then environment+=("KVM_HELLO_BOOT_LOG=1"); fi

# KVM_HELLO_GDB_PORT: QEMU's gdb stub on that loopback port, waiting for gdb
# (the boot then waits for the person at gdb: no boot time limit).
debug=()
if [ -n "${KVM_HELLO_GDB_PORT:-}" ]; then
  debug=(-gdb "tcp:127.0.0.1:$KVM_HELLO_GDB_PORT" -S)
  boot_limit=0
fi

work=$(mktemp -d)
console="$work/console"
mkfifo "$console"
qemu=0
cleanup() {
  if [ "$qemu" != 0 ]; then
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true  # QEMU puts back the terminal modes it found: before we put back ours
  fi
  [ -z "$terminal_modes" ] || stty "$terminal_modes"
  rm -rf "$work"
}
trap cleanup EXIT

# The files the program is told to read (kvm-hello's --guest FILE and
# --guest-lines FILE, or --guest=FILE) are on this machine: each that is a
# readable file goes into the machine too, at the path the program will open
# there (a relative path from /, its working directory there; not under /dev,
# /proc or /sys, which are the machine's own), so that it runs there as it
# would here; a directory is made there as a directory. What is not there is
# not there either, and the program says so. They go into a second initramfs,
# after the first: the kernel unpacks one after the other.
files_named() {  # files_named ARGUMENT...: the values of --guest and --guest-lines
  local previous="" argument
  for argument in "$@"; do
    case $previous in --guest | --guest-lines) printf '%s\n' "$argument" ;; esac
    case $argument in --guest=* | --guest-lines=*) printf '%s\n' "${argument#*=}" ;; esac
    previous=$argument
  done
}
largest_file=$((64 << 20))
add_files() {  # add_files ARGUMENT...: the initramfs to boot, with the files named
  local file inside files="$work/files" size
  while IFS= read -r file; do
    inside=$(realpath -m -s -- "/$file")
    case $inside in /dev/* | /proc/* | /sys/*) continue ;; esac
    if [ -d "$file" ]; then
      mkdir -p "$files$inside"
    elif [ -f "$file" ] && [ -r "$file" ]; then
      size=$(stat -L -c %s -- "$file")
      if [ "$size" -gt "$largest_file" ]; then
        echo "run-in-vm: $file is $size bytes: too large to put into the emulated machine ($largest_file at most)" >&2
        exit 2
      fi
      mkdir -p "$files$(dirname -- "$inside")"
      cp -L -- "$file" "$files$inside"
    fi
  done < <(files_named "$@")
  [ -d "$files" ] || return 0
  (cd "$files" && find . | cpio -o -H newc --quiet) >"$work/files.cpio"
  cat -- "$initramfs" "$work/files.cpio" >"$work/initramfs"
  initramfs=$work/initramfs
}
add_files "$@"

qemu-system-aarch64 \
  -M virt,virtualization=on,gic-version="$gic" -cpu "$qemu_cpu" -smp "$smp" -m 256 \
  -nodefaults -display none -monitor none -serial stdio -no-reboot \
  -kernel "$kernel" -initrd "$initramfs" "${debug[@]}" \
  -append "$cmdline ${environment[*]} -- $*" <"$input" >"$console" 2>&1 &
qemu=$!
exec 3<"$console"
ctrl_c_for_the_boot

# Each console line as it comes (the serial console writes \r\n), to our
# stdout, or to our stderr when /init marked it as the program's stderr, until
# the exit status; what comes after it is the kernel powering off, not ours to
# show. A marker can come after what the console echoed of a key pressed (^C)
# on the same line: that part is shown on a line of its own. Until /init has
# reported the host, a read waits at most until the boot's deadline.
status="" booted=0 timed_out=""
started=$SECONDS
# What is known to go wrong on the host that just booted, from its line (and
# QEMU's version): said once, on stderr. Linux 7.x on two or more emulated
# CPUs under QEMU older than 10.0 (seen with Debian 12's 7.2): now and then
# KVM finds a vCPU's registers still loaded when its thread comes back from
# WFI, and the program dies with SIGSEGV; see docs/15-without-arm64.md.
emulation_caveats() {  # emulation_caveats HOST_LINE
  local qemu_version cpus
  [[ $1 =~ host:\ Linux\ ([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 7 ] || return 0
  [[ $1 =~ ,\ ([0-9]+)\ CPUs, ]] && cpus=${BASH_REMATCH[1]} || return 0
  qemu_version=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p') || return 0
  [ -n "$qemu_version" ] && [ "${qemu_version%%.*}" -lt 10 ] || return 0
  echo "run-in-vm: note: Linux 7.x on $cpus CPUs under QEMU $qemu_version: now and then a program dies with" \
    "SIGSEGV after its vCPU waited in WFI (lessons 2 and 3); seen under QEMU 7.2, not under QEMU 10.0 nor on 1 CPU" \
    "(docs/15-without-arm64.md, \"QEMU 7.2, Linux 7.x and several CPUs\")" >&2
}
while :; do
  limit=$((started + run_limit - SECONDS))
  if [ "$booted" = 0 ] && [ "$boot_limit" != 0 ]; then limit=$((started + boot_limit - SECONDS)); fi
  if [ "$limit" -le 0 ]; then timed_out=$([ "$booted" = 0 ] && echo boot || echo run); break; fi
  if IFS= read -r -t "$limit" -u 3 line; then
    :
  elif [ $? -gt 128 ]; then
    continue  # the time is up: the test at the top of the loop says so
  else
    break  # QEMU has gone
  fi
  line=${line%$'\r'}
  if [[ $line == ?*"$vm_prefix"* ]]; then
    before=${line%%"$vm_prefix"*}
    case ${line:${#before}} in
      "$status_marker"* | "$stderr_marker"* | "$host_marker"*) printf '%s\n' "$before"; line=${line:${#before}} ;;
    esac
  fi
  case $line in
    "$status_marker"*) status=${line#"$status_marker"}; break ;;
    "$stderr_marker"*) printf '%s\n' "${line#"$stderr_marker"}" >&2; continue ;;
    "$host_marker"*) booted=1; [ -z "$terminal_modes" ] || stty intr undef; printf '%s\n' "$line"
      emulation_caveats "$line"; continue ;;
  esac
  printf '%s\n' "$line"
done

if [ -n "$status" ]; then
  wait "$qemu" 2>/dev/null || true
  qemu=0
  exit "$status"
fi
case $timed_out in
  boot)
    echo "run-in-vm: the emulated machine did not boot within $boot_limit s: the kernel printed nothing and /init never ran." >&2
    echo "run-in-vm: the kernel may not run on this CPU (-cpu $cpu): a 16K-page kernel needs a CPU with the 16K granule" \
      "(KVM_HELLO_CPU=neoverse-n1, cortex-a76 or max; cortex-a57 and cortex-a72 have none)." >&2
    echo "run-in-vm: try another KVM_HELLO_CPU or kernel; on a very busy machine, a larger KVM_HELLO_BOOT_TIMEOUT." >&2 ;;
  run) echo "run-in-vm: the emulated machine did not finish within $run_limit s and was stopped (KVM_HELLO_VM_TIMEOUT)" >&2 ;;
  *)
    wait "$qemu" && qemu_status=0 || qemu_status=$?
    qemu=0
    echo "run-in-vm: the emulated machine stopped (QEMU status $qemu_status) before $program reported its exit status" >&2 ;;
esac
exit 125

#!/usr/bin/env bash
# native-arm64.sh [PROJECT_DIR]
#
# Runs the project's NATIVE arm64 path (what the Makefile chooses for an arm64
# compiler and a /dev/kvm: g++, doctest and gdb on arm64, a real /dev/kvm, the
# program linked dynamically) on a machine that is not arm64. It boots an emulated arm64 machine (qemu-system-aarch64 -M
# virt,virtualization=on: QEMU emulates EL2, so the kernel inside has KVM)
# whose root file system is a Debian 12 arm64 system with everything the
# native path needs already installed: no network is needed inside. The
# project's committed files (`git archive HEAD` of PROJECT_DIR, by default the
# repository this script is in) are copied fresh into the home of user `dev`
# (in group kvm), and a command is run there as that user would run it; its
# output streams to this terminal and its exit status is this script's.
#
# For example:
#   tools/native-arm64.sh                                           # make test
#   KVM_HELLO_NATIVE_COMMAND='make run ARGS=-v' tools/native-arm64.sh
#
# Settings (environment variables):
#   KVM_HELLO_NATIVE_COMMAND       the command, run in the project dir (default: make test)
#   KVM_HELLO_NATIVE_USER          dev (default) or root
#   KVM_HELLO_NATIVE_MEMORY        QEMU -m (default: 4G)
#   KVM_HELLO_NATIVE_SMP           QEMU -smp (default: the number of host cores)
#   KVM_HELLO_NATIVE_CPU           QEMU -cpu (default: cortex-a57, as tools/run-in-vm.sh)
#   KVM_HELLO_NATIVE_GIC           QEMU's gic-version: 3 (default) or 2, as KVM_HELLO_GIC for tools/run-in-vm.sh
#   KVM_HELLO_NATIVE_KVM           on (default), or off: no virtualization=on, so no /dev/kvm inside
#   KVM_HELLO_NATIVE_BOOT_TIMEOUT  seconds until the root's /sbin/native-init runs (default: 180)
#   KVM_HELLO_NATIVE_TIMEOUT       seconds for the whole run, boot included (default: 3600)
#   KVM_HELLO_NATIVE_MIRROR        Debian mirror for the first build (default: http://deb.debian.org/debian)
#
# Needs: Debian or Ubuntu with apt-get, root or sudo (only for the packages
# and the first build), network to a Debian mirror (only for the first build).
# Installs on this machine: qemu-system-arm, debootstrap, debian-archive-keyring,
# qemu-user-static (registered with binfmt_misc, so the root's package scripts
# can run here), e2fsprogs, git.
#
# Caches in ~/.cache/kvm-hello/native-arm64 ($XDG_CACHE_HOME if set): root.img
# (the root file system, ext4, about 1 GB used), vmlinuz and initrd.img (the
# root's own kernel, whose modules are in root.img). Runs never change
# root.img: QEMU keeps their writes in a temporary overlay (snapshot=on).
# Delete the directory to rebuild. The command's exit status is returned;
# 125 means the machine failed (did not boot, timed out, crashed).
#
# Time, measured on 2 x86 cores: the first build 9 minutes (17 with other
# work running: it is mostly emulated package set-up); then each run boots in
# 6-7 s, `make run` takes about 3.5 minutes and `make test` about 45 (compiling
# under emulation is slow). KVM_HELLO_NATIVE_KVM=off gives an arm64 machine
# without KVM, where the Makefile falls back to its emulated machine (QEMU
# inside QEMU: very slow).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "${1:-$here/..}" && pwd)
command=${KVM_HELLO_NATIVE_COMMAND:-make test}
user=${KVM_HELLO_NATIVE_USER:-dev}
memory=${KVM_HELLO_NATIVE_MEMORY:-4G}
smp=${KVM_HELLO_NATIVE_SMP:-$(nproc)}
cpu=${KVM_HELLO_NATIVE_CPU:-cortex-a57}
gic=${KVM_HELLO_NATIVE_GIC:-3}
kvm=${KVM_HELLO_NATIVE_KVM:-on}
boot_timeout=${KVM_HELLO_NATIVE_BOOT_TIMEOUT:-180}
run_timeout=${KVM_HELLO_NATIVE_TIMEOUT:-3600}
mirror=${KVM_HELLO_NATIVE_MIRROR:-http://deb.debian.org/debian}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kvm-hello/native-arm64

# What the root holds: every package the Makefile's native branch names
# (read from it: its BUILD_PACKAGES, TEST_PACKAGES and GDB_PACKAGES lines, so
# the two cannot drift apart; the job runs make test, which needs them all),
# make lint's (its LINT_PACKAGES line: make test runs make lint), more a
# contributor expects, and a kernel (its modules drive the root disk:
# virtio-blk and ext4 are modules in Debian's arm64 kernel).
native_packages=$(sed -n -e '/^ifeq (\$(KVM_HELLO_MACHINE),native)/,/^else/s/^ *[A-Z]*_PACKAGES *:= *//p' \
  -e 's/^LINT_PACKAGES *:= *//p' "$here/../Makefile" | tr '\n' ' ')
[ -n "${native_packages// /}" ] || { echo "native-arm64: no native *_PACKAGES lines found in $here/../Makefile" >&2; exit 2; }
read -r -a native_packages <<<"$native_packages"
packages=(build-essential make git ca-certificates linux-image-arm64 "${native_packages[@]}")
# Kernel modules the initrd loads to mount the root disk (with their dependencies).
initrd_modules=(virtio_pci virtio_blk ext4)

say() { echo "native-arm64: $*" >&2; }
case $user in dev | root) ;; *) say "KVM_HELLO_NATIVE_USER must be dev or root, not '$user'"; exit 2 ;; esac
case $kvm in on | off) ;; *) say "KVM_HELLO_NATIVE_KVM must be on or off, not '$kvm'"; exit 2 ;; esac
case $gic in 2 | 3) ;; *) say "KVM_HELLO_NATIVE_GIC must be 3 (a GICv3, the default) or 2 (a GICv2), not '$gic'"; exit 2 ;; esac
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The boot: the kernel, then the initrd's /init, then /sbin/native-init on the root disk.
#
# The initrd is Debian's (initramfs-tools collects the modules above, their
# dependencies and klibc's small tools) with this /init instead of Debian's,
# which starts udev: that takes about 14 s under emulation. This one loads
# the modules, mounts the root disk and starts /sbin/native-init there.
initrd_init="#!/bin/sh
mkdir -p /dev /proc /sys /root
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
modprobe -a ${initrd_modules[*]}
n=0
while [ ! -e /dev/vda ] && [ \$n -lt 50 ]; do sleep 0.1; n=\$((n + 1)); done
mount -t ext4 -o rw /dev/vda /root || { echo 'native-arm64: cannot mount the root disk /dev/vda'; exit 1; }
for fs in dev proc sys; do mount -o move /\$fs /root/\$fs; done
exec run-init /root /sbin/native-init"

# /sbin/native-init: the root's first process, instead of systemd. It mounts
# the rest of what programs expect, says "booted", runs the job that this
# script put on the second disk (a tar: the project and job.sh), prints its
# exit status for this script to read (QEMU's own status cannot carry it) and
# powers the machine off.
native_init='#!/bin/sh
PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin
export PATH
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
hostname native-arm64
# udev would give /dev/kvm to group kvm; there is no udev here.
if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi
echo "native-arm64: booted"
mkdir -p /run/job && tar -x -f /dev/vdb -C /run/job && bash /run/job/job.sh </dev/null
echo "native-arm64: exit status $?"
sync
echo o > /proc/sysrq-trigger
sleep 60'

# ---- Once: the arm64 Debian root -------------------------------------------
build_root() {
  local root="$cache/root.build" began=$SECONDS
  say "building the arm64 Debian 12 root once into $cache (about 10 minutes)"
  # Let this machine run arm64 programs (the root's package scripts) through
  # qemu-aarch64-static; the F flag makes that work inside the chroot too.
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
      as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    as_root sh -c 'cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register'
  fi
  as_root rm -rf "$root" && mkdir -p "$cache"
  # Debian's base system: stage 1 (native) downloads and unpacks it.
  as_root debootstrap --foreign --arch=arm64 --variant=minbase bookworm "$root" "$mirror"
  # Before any kernel package is set up: an initrd with only the modules the
  # root disk needs (small, so it boots fast), gzip (no zstd in the root).
  as_root mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
  printf 'MODULES=list\nCOMPRESS=gzip\n' | as_root tee "$root/etc/initramfs-tools/conf.d/native-arm64" >/dev/null
  printf '%s\n' "${initrd_modules[@]}" | as_root tee "$root/usr/share/initramfs-tools/modules.d/native-arm64" >/dev/null
  # Stage 2 runs the root's own (arm64, emulated) programs: it sets the base up.
  as_root chroot "$root" /debootstrap/debootstrap --second-stage
  # Then apt inside the root installs the rest (debootstrap's own resolver
  # cannot: it does not follow virtual packages, which gdb needs).
  as_root chroot "$root" /bin/sh -ec "apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages[*]}"
  # The user (in group kvm, as on a real machine), our init, and no apt cache.
  as_root chroot "$root" /bin/sh -ec 'groupadd -f -r kvm; useradd -m -s /bin/bash -G kvm dev; apt-get clean'
  echo "$native_init" | as_root tee "$root/sbin/native-init" >/dev/null
  as_root chmod 755 "$root/sbin/native-init"
  # The initrd: Debian's, unpacked, with our /init, packed again.
  echo "$initrd_init" | as_root tee "$root/tmp/init" >/dev/null
  as_root chroot "$root" /bin/sh -ec 'mkdir /tmp/initrd && cd /tmp/initrd
    zcat /initrd.img | cpio -i -d --quiet
    install -m 755 /tmp/init init
    find . | cpio -o -H newc --quiet | gzip > /tmp/initrd.img'
  # The kernel and initrd boot from outside; the image holds the rest.
  as_root mv "$root/tmp/initrd.img" "$cache/initrd.img"
  as_root rm -rf "$root/tmp/initrd" "$root/tmp/init"
  as_root cp -L "$root/vmlinuz" "$cache/vmlinuz"   # (a link to /boot/vmlinuz-VERSION)
  # An ext4 image made from the directory (no mount needed), with 4 GB free
  # for builds; the file is sparse.
  local size_mb=$(( $(as_root du -sm "$root" | cut -f1) + 4096 ))
  as_root rm -f "$cache/root.img.tmp"
  as_root mkfs.ext4 -q -L native-arm64 -d "$root" "$cache/root.img.tmp" "${size_mb}M"
  as_root rm -rf "$root"
  as_root mv "$cache/root.img.tmp" "$cache/root.img"   # last but one: root.img means "built"
  echo "${packages[*]}" | as_root tee "$cache/root.packages" >/dev/null  # ... for these packages
  as_root chown -R "$(id -u):$(id -g)" "$cache"
  say "built $cache/root.img in $((SECONDS - began)) s ($(du -sh --apparent-size "$cache/root.img" | cut -f1), $(du -sh "$cache/root.img" | cut -f1) on disk)"
}

"$here/../setup/ensure-packages.sh" qemu-system-arm debootstrap debian-archive-keyring qemu-user-static e2fsprogs git
# A root built for another list of packages (an older Makefile's) is built
# again: the Makefile would stop at its package check inside.
if [ ! -s "$cache/root.img" ]; then
  build_root
elif [ "$(cat "$cache/root.packages" 2>/dev/null)" != "${packages[*]}" ]; then
  say "$cache/root.img holds other packages ($(cat "$cache/root.packages" 2>/dev/null || echo "not recorded")) than these: ${packages[*]}"
  build_root
fi

# ---- Each run: the job disk -------------------------------------------------
work=$(mktemp -d)
# On any exit (Ctrl-C too) the machine is stopped and the job's files removed.
stop_machine() { if [ -s "$work/qemu.pid" ]; then kill "$(cat "$work/qemu.pid")" 2>/dev/null || true; fi; }
trap 'stop_machine; wait; rm -rf "$work"' EXIT
trap 'say "interrupted: stopping the machine"; exit 130' INT TERM

# job.sh runs as root inside: the project goes to the user's home, then the
# command runs there as that user, through a login shell (runuser -l).
environment="export KVM_HELLO_EMULATED=QEMU-TCG-$(uname -m)-host TERM=${TERM:-dumb}"
# (the console inside is a terminal: say NO_COLOR when ours is not one)
if [ ! -t 1 ] || [ -n "${NO_COLOR:-}" ]; then environment+=" NO_COLOR=1"; fi
cat > "$work/job.sh" <<EOF
set -e
home=\$(getent passwd $user | cut -d: -f6)
mv /run/job/kvm-hello "\$home/kvm-hello"
chown -R $user: "\$home/kvm-hello"
exec runuser -l $user -c $(printf '%q' "$environment; cd kvm-hello && $command")
EOF
git -C "$project" archive --format=tar --prefix=kvm-hello/ HEAD > "$work/job.tar"
tar -r -f "$work/job.tar" -C "$work" job.sh

# ---- Each run: boot, run, report --------------------------------------------
machine=virt,gic-version=$gic
[ "$kvm" = off ] || machine+=,virtualization=on
cmdline="console=ttyAMA0 quiet loglevel=1"
cmdline+=" cryptomgr.notests panic=-1"   # (panic: QEMU exits at once, -no-reboot)
qemu=(qemu-system-aarch64 -M "$machine" -cpu "$cpu" -smp "$smp" -m "$memory"
  -nodefaults -display none -monitor none -serial stdio -no-reboot -pidfile "$work/qemu.pid"
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" -append "$cmdline"
  -drive "file=$cache/root.img,format=raw,if=virtio,snapshot=on"
  -drive "file=$work/job.tar,format=raw,if=virtio,readonly=on")

booted='native-arm64: booted'
marker='native-arm64: exit status '
log="$work/console.log"
# Shows the console from "booted" to the exit status line, each line at once
# (the console writes \r\n).
show() {
  local line shown=0
  while IFS= read -r line; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >> "$log"
    [[ $line == "$marker"* ]] && shown=0
    [ "$shown" = 1 ] && printf '%s\n' "$line"
    [[ $line == "$booted" ]] && shown=1
  done
  return 0
}

say "booting arm64 ($machine, -cpu $cpu -smp $smp -m $memory) to run as $user: $command"
start=$SECONDS boot_timed_out=
: > "$log"
{ qemu_status=0
  timeout "$run_timeout" "${qemu[@]}" </dev/null 2>&1 || qemu_status=$?
  { echo "$qemu_status" > "$work/qemu.status"; } 2>/dev/null; } | show &
pipeline=$!
# The boot bound: "booted" must appear in time, or the machine is stopped.
until grep -q "^$booted" "$log"; do
  if ! kill -0 "$pipeline" 2>/dev/null; then break; fi
  if (( SECONDS - start >= boot_timeout )); then
    boot_timed_out=1
    stop_machine
    break
  fi
  sleep 0.2
done
boot_seconds=$((SECONDS - start))
wait "$pipeline" || true
rm -f "$work/qemu.pid"   # QEMU has exited

status=$(sed -n "s/^${marker}\([0-9][0-9]*\)\$/\1/p" "$log" | tail -n 1)
if [ -z "$status" ]; then
  if [ -n "$boot_timed_out" ]; then
    say "the machine did not boot within $boot_timeout s (KVM_HELLO_NATIVE_BOOT_TIMEOUT) and was stopped"
  elif [ "$(cat "$work/qemu.status" 2>/dev/null)" = 124 ]; then
    say "the run did not finish within $run_timeout s (KVM_HELLO_NATIVE_TIMEOUT) and was stopped"
  else
    say "the machine stopped (QEMU status $(cat "$work/qemu.status" 2>/dev/null)) before the command's exit status"
  fi
  say "the console's last lines:"
  tail -n 30 "$log" >&2
  exit 125
fi
say "booted in ${boot_seconds} s; the whole run took $((SECONDS - start)) s; exit status $status"
exit "$status"

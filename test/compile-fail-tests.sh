#!/usr/bin/env bash
# compile-fail-tests.sh: mistakes kvm_hello.hpp's types turn into compile
# errors, and what the compiler says about each. Every case is a line that
# must not compile, with -Wall -Wextra -Werror as the project builds, and a
# pattern its message must hold: the contract not satisfied (MadeOn,
# MmioDevice, ExitCallback, StepCallback), the type expected, nodiscard, or
# the check of a consteval constructor (a register's size, reg::x's bound,
# an MMIO access's length). The same
# lines written right compile first, so a failure here is the mistake's and
# not a typo's. Compiled by $ARM64_CXX (the compiler of arm64's KVM headers;
# default aarch64-linux-gnu-g++). Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
cxx=${ARM64_CXX:-aarch64-linux-gnu-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0 failed=0
verdict() {  # verdict DESCRIPTION OK DETAIL
  if [ "$2" = yes ]; then
    passed=$((passed + 1)); echo "compile-fail: ok: $1"
  else
    failed=$((failed + 1)); printf 'compile-fail: FAILED: %s\n%s\n' "$1" "$3"
  fi
}

# A translation unit with the fds, a device and a vCPU in scope, and BODY in a function.
program() {
  cat <<EOF
#include "kvm_hello.hpp"
namespace kh = kvm_hello;
struct NotADevice {};
void mistake(const kh::KvmFd& kvm, const kh::VmFd& vm, kh::Vcpu& vcpu) {
  kh::HelloDevice device;
  $1
  (void)kvm, (void)vm, (void)vcpu, (void)device;
}
EOF
}
compile() {  # compile NAME BODY: the compiler's messages in $work/NAME.log; its status
  program "$2" >"$work/$1.cpp"
  "$cxx" -std=c++23 -Wall -Wextra -Werror -fsyntax-only -I. "$work/$1.cpp" >"$work/$1.log" 2>&1
}

# NAME  PATTERN-IN-THE-MESSAGE (grep -E)  RIGHT  WRONG
cases=(
  "KVM_RUN on the /dev/kvm fd" "satisfaction of .MadeOn<.*VcpuFd.*F = kvm_hello::KvmFd"
  "(void)kh::call(kh::Step::run_guest, vcpu.fd, kh::request::run);"
  "(void)kh::call(kh::Step::run_guest, kvm, kh::request::run);"

  "KVM_CREATE_VCPU on the vCPU's fd" "satisfaction of .MadeOn<.*VmFd.*F = kvm_hello::VcpuFd"
  "(void)kh::call(kh::Step::create_vcpu, vm, kh::request::create_vcpu, 1UL);"
  "(void)kh::call(kh::Step::create_vcpu, vcpu.fd, kh::request::create_vcpu, 1UL);"

  "create_vcpu with its fds swapped" "error: .*const kvm_hello::KvmFd&.* from .*kvm_hello::VmFd"
  "(void)kh::create_vcpu(kvm, vm, 0);"
  "(void)kh::create_vcpu(vm, kvm, 0);"

  "init_vcpu's result dropped" "error: ignoring return value of .*init_vcpu.*nodiscard"
  "if (!kh::init_vcpu(vm, vcpu.fd)) return;"
  "kh::init_vcpu(vm, vcpu.fd);"

  "run_guest with a device that has no handle(MmioAccess&)" "satisfaction of .MmioDevice<Device>. \\[with Device = NotADevice\\]"
  "(void)kh::run_guest(vcpu, device, kh::default_time_limit, [](const kh::Exit&) {});"
  "NotADevice other; (void)kh::run_guest(vcpu, other, kh::default_time_limit, [](const kh::Exit&) {});"

  "run_guest with an exit callback that does not take a const Exit&" "satisfaction of .ExitCallback<OnExit>"
  "(void)kh::run_guest(vcpu, device, kh::default_time_limit, [](const kh::Exit&) {});"
  "(void)kh::run_guest(vcpu, device, kh::default_time_limit, [](int) {});"

  "build_machine with a step callback that does not take a Step" "satisfaction of .StepCallback<AfterStep>"
  "(void)kh::build_machine({}, \"/dev/kvm\", [](kh::Step) {});"
  "(void)kh::build_machine({}, \"/dev/kvm\", [](const kh::Exit&) {});"

  "v0 (128 bits) as a register of 8 bytes" "this id's KVM_REG_SIZE is not sizeof\\(T\\)"
  "(void)kh::RegisterId<kh::Uint128>{kh::core_register_id(offsetof(kvm_regs, fp_regs.vregs), KVM_REG_SIZE_U128)};"
  "(void)kh::RegisterId<std::uint64_t>{kh::core_register_id(offsetof(kvm_regs, fp_regs.vregs), KVM_REG_SIZE_U128)};"

  "reg::x(32), which would be pc" "reg::x\\(n\\): n is 0 to 30"
  "(void)kh::reg::x(30);"
  "(void)kh::reg::x(32);"

  "an MMIO access of 16 bytes" "an MMIO access is 1, 2, 4 or 8 bytes"
  "kh::MmioAccess wide{kh::mmio_answer, 8, false, {}}; device.handle(wide);"
  "kh::MmioAccess wide{kh::mmio_answer, 16, false, {}}; device.handle(wide);"
)

# Every right line in one translation unit: they compile, with no warning.
right=""
for ((i = 0; i < ${#cases[@]}; i += 4)); do right+="${cases[i + 2]}"$'\n  '; done
if compile right "$right"; then
  verdict "the right lines compile" yes
else
  verdict "the right lines compile" no "$(cat "$work/right.log")"
fi

for ((i = 0; i < ${#cases[@]}; i += 4)); do
  name=${cases[i]} pattern=${cases[i + 1]}
  if compile "case$i" "${cases[i + 3]}"; then
    verdict "$name does not compile" no "  it compiled: ${cases[i + 3]}"
  elif ! grep -q -E -- "$pattern" "$work/case$i.log"; then
    verdict "$name does not compile, and the message says why" no "  no line matches: $pattern
$(head -n 30 "$work/case$i.log")"
  else
    verdict "$name does not compile, and the message says why" yes
    grep -m 1 -E -- "$pattern" "$work/case$i.log" | sed -E 's/^[^ ]*(kvm_hello.hpp|case[0-9]+.cpp)/\1/' | cut -c 1-230 |
      sed 's/^/    /'
  fi
done

echo "$passed passed, $failed failed"

// SPDX-License-Identifier: MIT
// own_names_tests.cpp: a program may have functions of its own named as the
// header's are, taking the kernel's structs (which live in the global
// namespace), declared before the header is included or after. The header's
// calls still go to its own functions: it writes them kvm_hello::name(...),
// so argument-dependent lookup cannot add the program's to the candidates.
// This file compiling is most of the test.
#include <linux/kvm.h>

#include <cstdint>

// A program's own, declared before the header (as a header of its own would be).
static int own_calls = 0;
int decode_exit(const kvm_run&) { return ++own_calls; }
kvm_vcpu_init with_psci_0_2(kvm_vcpu_init init) {
  ++own_calls;
  return init;
}
// A catch-all `call`: a Request names a kernel struct, so it would be a candidate
// (and, taking anything exactly, the better one) for an unqualified call(...).
template <class... Anything>
int call(Anything&&...) {
  return ++own_calls;
}

#include <doctest/doctest.h>
#include <sys/mman.h>

#include "kvm_hello.hpp"

namespace kh = kvm_hello;

// And one declared after it, found when a template of the header is instantiated.
int keep_running(const kvm_run&) { return ++own_calls; }

TEST_CASE("a program's own decode_exit, with_psci_0_2 and call leave the header's calls alone") {
  // A vCPU that is none: fd -1, and a page of our own for its kvm_run.
  auto page = kh::map_memory(kh::Step::create_vcpu, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  REQUIRE(page);
  kh::Vcpu vcpu{kh::VcpuFd{-1}, std::move(*page), 0};
  kh::HelloDevice device;
  const auto ran = kh::run_guest(vcpu, device, kh::default_time_limit, [](const kh::Exit&) {});
  REQUIRE_FALSE(ran);
  CHECK(ran.error().call == "KVM_RUN");  // the header's own call(), which made the ioctl
  // A real failure, not a stop: EBADF from the kernel. Under qemu-aarch64 (the unit tests on x86), an
  // ioctl it does not know fails with the emulator's own errno, which its versions choose differently
  // (ENOSYS in Debian 12's QEMU 7.2; another in Debian 13's), so only "failed, not interrupted" is checked.
  CHECK(ran.error().err != 0);
  CHECK(ran.error().err != EINTR);
  const auto value = kh::get_register(kh::Step::run_guest, vcpu.fd, kh::reg::pc);
  REQUIRE_FALSE(value);
  CHECK(value.error().call == "KVM_GET_ONE_REG");
  CHECK(kh::with_features({}, kh::first_vcpu_features).features[0] == 1u << KVM_ARM_VCPU_PSCI_0_2);
  CHECK(kh::decode_exit(vcpu.run()).index() == std::variant_size_v<kh::Exit> - 1);  // OtherExit: reason 0
  CHECK(own_calls == 0);
  // The program's own are still there for it to call.
  CHECK(decode_exit(vcpu.run()) == 1);
  CHECK(keep_running(vcpu.run()) == 2);
}

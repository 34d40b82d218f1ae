// SPDX-License-Identifier: MIT
// vcpu_threads.cpp: Part III of kvm_hello.hpp's threads, built with
// ThreadSanitizer (make: build/vcpu-threads-tsan). Two vCPUs of one VM, each
// on its own thread (start_vcpu_thread) writing to one locked device, the
// guest's CPU_ON, SYSTEM_OFF and the kick of the other (stop_vcpus), several
// times; then the stops that come from elsewhere: a request from the main
// thread while both run, and a vCPU left in KVM_RUN that its own deadline
// ends. ThreadSanitizer reports any data race on stderr and ends the program
// with status 66 (TSAN_OPTIONS=halt_on_error=1 exitcode=66, set by
// test/e2e_tests.cpp, which runs it against real KVM).
//
// It prints a line per check ("ok: ..." or "FAILED: ...") and exits 0 when
// every check holds, 1 otherwise.
#include <cstdio>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kvm_hello.hpp"
#include "test_guests.h"  // two_vcpus_bin[]: test/guests/two_vcpus.S

namespace kh = kvm_hello;
using std::chrono::milliseconds;

namespace {

int failures = 0;
void check(bool holds, const std::string& what) {
  std::printf("%s: %s\n", holds ? "ok" : "FAILED", what.c_str());
  failures += holds ? 0 : 1;
}

// Every vCPU's OUT bytes, apart, behind one lock.
class OutputByVcpu {
 public:
  struct View {
    OutputByVcpu& device;
    std::uint32_t id;
    void handle(kh::MmioAccess& access) {
      const std::scoped_lock lock(device.mutex_);
      if (access.is_write && access.address == kh::mmio_out) device.text_[id].push_back(static_cast<char>(access.data[0]));
      if (!access.is_write) access.data = {};
    }
  };
  std::string of(std::uint32_t id) {
    const std::scoped_lock lock(mutex_);
    return text_[id];
  }

 private:
  std::mutex mutex_;
  std::map<std::uint32_t, std::string> text_;
};

// Lesson 3's machine for two_vcpus.S: steps 1-5, 10, 11, 6 and 7 twice (vCPU 1 powered off), 8 for vCPU 0, 12.
struct TwoVcpus {
  kh::KvmFd kvm;
  kh::VmFd vm;
  kh::GuestMemory memory;
  kh::Vgic vgic{};
  std::vector<kh::Vcpu> vcpus;
};
kh::Result<TwoVcpus> build() {
  TwoVcpus m;
  auto kvm = kh::open_kvm();
  if (!kvm) return std::unexpected(kvm.error());
  m.kvm = std::move(*kvm);
  const auto caps = kh::check_capabilities(m.kvm);
  if (!caps) return std::unexpected(caps.error());
  auto vm = kh::create_vm(m.kvm, kh::vm_type_for(caps->ipa_limit).value());
  if (!vm) return std::unexpected(vm.error());
  m.vm = std::move(*vm);
  auto memory = kh::setup_guest_memory(m.vm, std::span<const std::uint8_t>(two_vcpus_bin, two_vcpus_bin_len));
  if (!memory) return std::unexpected(memory.error());
  m.memory = std::move(*memory);
  const auto version = kh::probe_vgic(m.vm);
  if (!version) return std::unexpected(version.error());
  auto vgic = kh::create_vgic(m.vm, *version);
  if (!vgic) return std::unexpected(vgic.error());
  m.vgic = std::move(*vgic);
  for (std::uint32_t id = 0; id < 2; ++id) {
    auto vcpu = kh::create_vcpu(m.kvm, m.vm, id);
    if (!vcpu) return std::unexpected(vcpu.error());
    const auto init = kh::init_vcpu(m.vm, vcpu->fd, id == 0 ? kh::first_vcpu_features : kh::other_vcpu_features);
    if (!init) return std::unexpected(init.error());
    m.vcpus.push_back(std::move(*vcpu));
  }
  if (const auto set = kh::set_boot_registers(m.vcpus[0].fd); !set) return std::unexpected(set.error());
  if (const auto init = kh::init_vgic(m.vgic); !init) return std::unexpected(init.error());
  return m;
}

std::vector<kh::VcpuThread> start_all(TwoVcpus& m, OutputByVcpu& device, milliseconds limit1) {
  std::vector<kh::VcpuThread> threads;
  for (kh::Vcpu& vcpu : m.vcpus) {
    auto thread = kh::start_vcpu_thread(
        vcpu,
        [&device](kh::Vcpu& v, const kh::VcpuStopper& stopper) {
          OutputByVcpu::View view{device, v.id};
          return kh::run_guest(v, stopper, view, [](const kh::Exit&) {});
        },
        vcpu.id == 0 ? milliseconds(30000) : limit1);
    if (thread) threads.push_back(std::move(*thread));
  }
  return threads;
}

}  // namespace

int main() {
  for (int run = 1; run <= 5; ++run) {  // the clean path: CPU_ON, CPU_OFF, SYSTEM_OFF, the kick
    auto m = build();
    if (!m) return std::printf("FAILED: the machine: step %d, errno %d\n", static_cast<int>(m.error().step), m.error().err), 1;
    OutputByVcpu device;
    std::vector<kh::VcpuThread> threads = start_all(*m, device, milliseconds(30000));
    check(threads.size() == 2, "run " + std::to_string(run) + ": two threads");
    if (threads.size() != 2) break;
    const std::size_t first = kh::wait_for_first_to_end(threads);
    const auto results = kh::stop_vcpus(threads, kh::StopReason::powered_off);
    check(first == 0 && results[0] && results[1], "run " + std::to_string(run) + ": vCPU 0 powered off, vCPU 1 kicked");
    check(device.of(0) == "0\n" && device.of(1) == "1\n", "run " + std::to_string(run) + ": each vCPU's line");
  }
  {  // Ctrl-C's way: a request from another thread while both run (vCPU 1 may not have started yet)
    auto m = build();
    OutputByVcpu device;
    std::vector<kh::VcpuThread> threads = start_all(*m, device, milliseconds(30000));
    for (kh::VcpuThread& thread : threads) thread.request_stop(kh::StopReason::interrupted);
    const auto results = kh::stop_vcpus(threads, kh::StopReason::interrupted);
    bool each_ended = results.size() == 2;
    for (const auto& result : results) {
      each_ended = each_ended && (result || result.error().problem == kh::Problem::interrupted);
    }
    check(each_ended, "a request while both run: each ends, interrupted or already powered off");
  }
  {  // the kick forgotten: vCPU 1's own deadline ends it
    auto m = build();
    OutputByVcpu device;
    std::vector<kh::VcpuThread> threads = start_all(*m, device, milliseconds(1000));
    const auto first = threads[0].join();
    const auto left = threads[1].join();  // no request, no kick
    check(first && !left && left.error().problem == kh::Problem::watchdog_expired && left.error().vcpu == 1u,
          "vCPU 1 never kicked: its deadline ends it, naming vCPU 1");
  }
  return failures == 0 ? 0 : 1;
}

// SPDX-License-Identifier: MIT
// two_vms_two_threads.cpp: a program of its own that uses kvm_hello.hpp as a
// library, the way lessons 2 and 3 will: two VMs at once, each run on a
// thread of its own with its own deadline, while the main thread only waits;
// and all the while the program keeps SIGALRM for itself (its own handler, its
// own alarm()). The header must leave that alone and still stop each vCPU on
// time. Then a third vCPU, stopped by the main thread's request, as lesson
// 3's vCPUs will be when one of them powers the machine off. It uses
// SIGUSR1 for nothing, but picks SIGUSR2 as the kick, to show how.
//
// It prints a line per check ("ok: ..." or "FAILED: ...") and exits 0 when
// every check holds, 1 otherwise. test/e2e_tests.cpp runs it against real KVM.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <span>
#include <thread>

#define KVM_HELLO_KICK_SIGNAL SIGUSR2  // before the #include: the header's kick is SIGUSR2 here
#include "kvm_hello.hpp"
#include "test_guests.h"  // spin_bin[]: a guest that never powers off (test/guests/spin.S)

namespace kh = kvm_hello;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

volatile sig_atomic_t alarms = 0;  // this program's own SIGALRM: how many came
void on_alarm(int) { alarms = alarms + 1; }

// What one vCPU's run came to, and how long it took.
struct Ran {
  kh::Result<kh::RunStats> result = std::unexpected(kh::Error{kh::Step::open_kvm});
  milliseconds took{};
};

// Steps 1 to 8 for the spin guest, then step 9 with `limit`: on the calling thread.
Ran run_spin_guest(milliseconds limit) {
  auto machine = kh::build_machine(std::span<const std::uint8_t>(spin_bin, spin_bin_len));
  if (!machine) return {std::unexpected(machine.error()), {}};
  kh::HelloDevice device;
  const auto start = Clock::now();
  Ran ran{kh::run_guest(machine->vcpu, device, limit, [](const kh::Exit&) {}), {}};
  ran.took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  return ran;
}

int failures = 0;
void check(bool holds, const char* what) {
  std::printf("%s: %s\n", holds ? "ok" : "FAILED", what);
  failures += holds ? 0 : 1;
}

// The run stopped at its deadline: not before it, and not much later (a
// margin for a busy, emulated machine: a run that is never stopped ends only
// when the test kills this program).
void check_stopped_at(const Ran& ran, milliseconds limit, const char* which) {
  const bool by_deadline = !ran.result && ran.result.error().problem == kh::Problem::watchdog_expired;
  std::printf("%s: %s after %lld ms (deadline %lld ms)\n", which,
              by_deadline ? "stopped by its deadline" : "NOT stopped by its deadline",
              static_cast<long long>(ran.took.count()), static_cast<long long>(limit.count()));
  check(by_deadline, "the vCPU was stopped by its own deadline");
  check(ran.took >= limit, "not before its deadline");
  check(ran.took < limit + milliseconds(10'000), "and soon after it");
}

// A vCPU stopped by another thread's request. The machine and the stopper
// belong to this thread, which joins the vCPU's thread before either goes:
// the stopper is used until the request returns, and it writes to kvm_run.
void check_stopped_by_request() {
  auto machine = kh::build_machine(std::span<const std::uint8_t>(spin_bin, spin_bin_len));
  if (!machine) return check(false, "steps 1 to 8 for a third VM");
  kh::Vcpu& vcpu = machine->vcpu;
  std::optional<kh::VcpuStopper> stopper;  // made on the vCPU's thread: its kicks go there
  std::atomic<bool> made{false};
  kh::Result<kh::RunStats> result = std::unexpected(kh::Error{kh::Step::run_guest});
  {
    std::jthread vcpu_thread([&] {
      stopper.emplace(vcpu.run());
      made = true;
      kh::HelloDevice device;
      result = kh::run_guest(vcpu, *stopper, device, [](const kh::Exit&) {});
    });
    while (!made) std::this_thread::sleep_for(milliseconds(1));
    std::this_thread::sleep_for(milliseconds(200));  // most likely inside KVM_RUN by now; if not, immediate_exit
    stopper->request(kh::StopReason::powered_off);
  }  // joined
  check(result.has_value(), "a vCPU asked to stop because the machine powered off ends cleanly");
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  struct sigaction action {};
  action.sa_handler = on_alarm;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  if (::sigaction(SIGALRM, &action, nullptr) != 0) {
    std::perror("two-vms-two-threads: sigaction(SIGALRM)");
    return 2;
  }
  const auto start = Clock::now();
  ::alarm(1);  // the program's own alarm: it must come, whatever the VMs do

  constexpr milliseconds short_limit{300}, long_limit{1500};
  Ran first, second;
  {
    std::jthread a([&] { first = run_spin_guest(short_limit); });
    std::jthread b([&] { second = run_spin_guest(long_limit); });
  }  // the main thread only waits here (jthread joins)
  check_stopped_at(first, short_limit, "vCPU on thread a");
  check_stopped_at(second, long_limit, "vCPU on thread b");

  while (alarms == 0 && Clock::now() - start < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  check(alarms == 1, "the program's own alarm() came, once, to its own SIGALRM handler");

  check_stopped_by_request();

  struct sigaction now {};
  ::sigaction(SIGALRM, nullptr, &now);
  check(now.sa_handler == on_alarm, "SIGALRM's handler is still the program's");
  ::sigaction(SIGINT, nullptr, &now);
  check(now.sa_handler == SIG_DFL, "SIGINT is as the program left it");
  ::sigaction(SIGUSR1, nullptr, &now);
  check(now.sa_handler == SIG_DFL, "SIGUSR1 is as the program left it: the kick is SIGUSR2 here");
  ::sigaction(SIGUSR2, nullptr, &now);
  check(now.sa_handler != SIG_DFL && (now.sa_flags & SA_RESTART) != 0, "SIGUSR2 has the kick's handler, SA_RESTART");
  std::printf("%s\n", failures == 0 ? "all checks hold" : "some checks failed");
  return failures == 0 ? 0 : 1;
}

// SPDX-License-Identifier: MIT
// program/ctrl_c.hpp: Ctrl-C stops the guest; kvm-hello then shows its
// registers and ends with status 130.
//
// Ctrl-C makes the terminal send SIGINT. While a CtrlCStops lives, SIGINT
// asks one vCPU to stop (kvm_hello::StopReason::interrupted); before and
// after, SIGINT does what it did before (by default: it ends the program).
// The handler does only what a signal handler may: it reads a lock-free
// pointer and calls VcpuStopper::request(), which uses lock-free atomics and
// pthread_kill() alone. SA_RESTART: a printf that Ctrl-C interrupts is
// restarted, not lost, and KVM_RUN returns EINTR all the same (kvm_hello.hpp,
// "Stopping a vCPU").
//
// Why a handler, not a thread waiting in sigwait(): such a thread needs
// SIGINT blocked in every thread from the start of the program, and a way to
// wake it when the run ends; the handler needs neither. In kvm-hello it runs
// on the main thread: in lessons 1 and 2 the vCPU's own, in lesson 3 the one
// that waits for the vCPUs' threads, which block every signal but the kick,
// as a Deadline's thread blocks every one.
#pragma once

#include <signal.h>

#include <atomic>
#include <cerrno>

#include "kvm_hello.hpp"

namespace kh = kvm_hello;

namespace ctrl_c_detail {
inline std::atomic<kh::VcpuStopper*> target{nullptr};  // the vCPU Ctrl-C stops, if any
inline std::atomic<kh::VcpuThread*> thread_target{nullptr};  // or the vCPU thread (lesson 3's first vCPU)
static_assert(std::atomic<kh::VcpuStopper*>::is_always_lock_free, "the SIGINT handler needs a lock-free pointer");
static_assert(std::atomic<kh::VcpuThread*>::is_always_lock_free, "the SIGINT handler needs a lock-free pointer");

inline void on_sigint(int) {
  const int saved = errno;
  if (kh::VcpuStopper* stopper = target.load()) stopper->request(kh::StopReason::interrupted);
  if (kh::VcpuThread* thread = thread_target.load()) thread->request_stop(kh::StopReason::interrupted);
  errno = saved;
}
}  // namespace ctrl_c_detail

// While it lives, Ctrl-C (SIGINT) asks `stopper`'s vCPU to stop; the
// destructor puts back the SIGINT handler and the vCPU that were there
// before, so they nest. status() says whether sigaction succeeded.
class CtrlCStops {
 public:
  explicit CtrlCStops(kh::VcpuStopper& stopper) : previous_target_(ctrl_c_detail::target.exchange(&stopper)) {
    install();
  }
  // Lesson 3: Ctrl-C stops this vCPU's thread (VcpuThread::request_stop,
  // async-signal-safe); the walk-through then stops the others.
  explicit CtrlCStops(kh::VcpuThread& thread)
      : previous_target_(ctrl_c_detail::target.load()),
        previous_thread_(ctrl_c_detail::thread_target.exchange(&thread)) {
    install();
  }
  CtrlCStops(const CtrlCStops&) = delete;
  CtrlCStops& operator=(const CtrlCStops&) = delete;
  ~CtrlCStops() {
    if (failed_with_ == 0) ::sigaction(SIGINT, &previous_, nullptr);
    ctrl_c_detail::target.store(previous_target_);
    ctrl_c_detail::thread_target.store(previous_thread_);
  }

  // The Error when the handler could not be installed (sigaction's errno).
  [[nodiscard]] kh::Result<void> status() const {
    if (failed_with_ != 0) {
      return std::unexpected(kh::Error{kh::Step::run_guest, kh::Problem::call_failed, "sigaction", failed_with_});
    }
    return {};
  }

 private:
  void install() {
    struct sigaction action {};
    action.sa_handler = ctrl_c_detail::on_sigint;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (::sigaction(SIGINT, &action, &previous_) != 0) failed_with_ = errno;
  }

  kh::VcpuStopper* previous_target_;
  kh::VcpuThread* previous_thread_ = ctrl_c_detail::thread_target.load();
  struct sigaction previous_ {};
  int failed_with_ = 0;
};

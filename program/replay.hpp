// SPDX-License-Identifier: MIT
// program/replay.hpp: a stuck guest run again from the start, in a second VM,
// one instruction at a time, to find what its registers have lost: the
// instruction that took its first exception, or the function id of an hvc or
// smc that KVM refused. program/inspect.hpp says what it found (Replay).
//
// Why the re-run goes where the first run went: it is the same image in a VM
// made by the same steps (kvm_hello::build_machine), so every register starts
// the same; and every MMIO read gets the same answer, because HelloDevice
// answers by address alone (ANSWER gives host_answer, anything else
// unmapped_read_value). What can differ is what the guest reads from the CPU
// itself, its counter (CNTVCT_EL0) say: the registers the re-run ends with
// are compared with the first run's (same_way() in inspect.hpp).
//
// How it sees the first exception: before each instruction, PC and ESR_EL1
// are known. An instruction that completes ends in KVM_EXIT_DEBUG (a
// software step). One that takes an exception shows up one of three ways: at
// the next KVM_EXIT_DEBUG with PC in the vectors and ELR_EL1 pointing at it
// (the CPU stepped into the handler: ESR_EL1 is its own syndrome); at the
// next KVM_EXIT_DEBUG with PC and ELR_EL1 both in the vectors (fetching the
// handler faulted, KVM injected that fault, then reported the step); or
// never, when fetching the handler faults over and over inside the kernel.
// The emulated CPU of `make run` shows the last two, run to run. So after a
// while (`patience`, a kvm_hello::Deadline started again at each step)
// without an exit PC is read. Either way PC in the vectors is not enough: a
// branch can go there too (`br x0` with x0 = 0, when VBAR_EL1 is 0), and
// ELR_EL1 then still reads 0, its value from INIT, which is in those
// vectors. What only an exception does is write ESR_EL1 (every synchronous
// exception and SError taken to EL1 does, and so does KVM as it injects one:
// inject_abt64() and inject_undef64() in arch/arm64/kvm/inject_fault.c, 6.1
// to 7.2; this guest gets no interrupts): PC in the vectors with ESR_EL1
// changed, that instruction took the first exception. (An MSR may write
// VBAR_EL1 or ESR_EL1 itself: both are read again after each system register
// access.)
#pragma once

#include <chrono>
#include <cstring>
#include <optional>
#include <span>
#include <string>

#include "kvm_hello.hpp"
#include "program/ctrl_c.hpp"
#include "program/describe.hpp"
#include "program/inspect.hpp"
#include "program/messages.hpp"

namespace kh = kvm_hello;

// The re-run's bounds: it ends, and soon.
struct ReplayBounds {
  unsigned instructions = 100'000;
  std::chrono::milliseconds time{5000};
  // How long one instruction may take before PC is looked at. A step takes
  // microseconds (milliseconds under emulation, more on a busy machine); this
  // only decides how soon a fault loop is noticed: a step that was merely
  // slow is run on.
  std::chrono::milliseconds patience{200};
};

namespace replay_detail {

// How one single-stepped instruction ended.
struct Stepped {
  enum class Kind { done, no_exit, interrupted, powered_off, stopped, failed } kind;
  std::string why = {};  // stopped, failed
};

// KVM_RUN until the next KVM_EXIT_DEBUG, HelloDevice answering any MMIO on
// the way as run_guest() does; no_exit when `deadline`, started again here
// with `patience`, asked `stopper` to stop first.
inline Stepped step_one(kh::Vcpu& vcpu, const kh::VcpuStopper& stopper, kh::Deadline& deadline,
                        kh::HelloDevice& device, std::chrono::milliseconds patience, std::string_view kvm_device) {
  kvm_run& run = vcpu.run();
  deadline.restart(patience);
  for (;;) {
    const auto entered = kh::call(kh::Step::run_guest, vcpu.fd, kh::request::run);
    if (!entered) {
      if (entered.error().err != EINTR) {
        return {Stepped::Kind::failed, failure_for(entered.error(), kvm_device).message};
      }
      switch (stopper.reason()) {
        case kh::StopReason::none: continue;  // another signal: go back in
        case kh::StopReason::deadline: return {Stepped::Kind::no_exit};
        case kh::StopReason::interrupted: return {Stepped::Kind::interrupted};
        case kh::StopReason::powered_off: return {Stepped::Kind::powered_off};
      }
    }
    kh::Exit exit = kh::decode_exit(run);
    if (auto* access = std::get_if<kh::MmioAccess>(&exit)) {
      device.handle(*access);
      if (!access->is_write) std::memcpy(run.mmio.data, access->data.data(), access->length);
      continue;  // the next KVM_RUN completes the access, then the step
    }
    if (std::holds_alternative<kh::DebugExit>(exit)) return {Stepped::Kind::done};
    const auto* event = std::get_if<kh::SystemEvent>(&exit);
    if (event != nullptr && event->type == KVM_SYSTEM_EVENT_SHUTDOWN) return {Stepped::Kind::powered_off};
    return {Stepped::Kind::stopped, describe_exit(exit)};
  }
}

}  // namespace replay_detail

// Runs `image` again from the start in a second VM on `kvm_device`,
// single-stepped, until it finds what `goal` asks for, or reaches a bound.
// Its calls are not traced. It always returns what happened: a VM that
// cannot be made or run is End::failed, with the message.
inline Replay replay_guest(std::span<const std::uint8_t> image, std::string_view kvm_device, const ReplayGoal& goal,
                           const ReplayBounds& bounds = {}) {
  using End = Replay::End;
  using Kind = replay_detail::Stepped::Kind;
  Replay replay;
  const auto started = std::chrono::steady_clock::now();
  const auto failed = [&](const kh::Error& error) {
    replay.end = End::failed;
    replay.why = failure_for(error, kvm_device).message;
    replay.took = std::chrono::steady_clock::now() - started;
    return replay;
  };
  auto machine = kh::build_machine(image, std::string(kvm_device).c_str());
  if (!machine) return failed(machine.error());
  const kh::VcpuFd& vcpu = machine->vcpu.fd;
  if (const auto on = kh::enable_single_step(machine->kvm, vcpu); !on) return failed(on.error());
  // What stops a step: its patience running out (a Deadline, started again
  // at each step), and Ctrl-C.
  if (const auto kick = kh::install_kick_handler(); !kick) return failed(kick.error());
  kh::VcpuStopper stopper(machine->vcpu.run());
  const CtrlCStops ctrl_c(stopper);
  if (const auto on = ctrl_c.status(); !on) return failed(on.error());
  kh::Deadline deadline(stopper, bounds.patience);
  if (const auto watching = deadline.status(); !watching) return failed(watching.error());
  const GuestView ram{machine->memory.host.bytes()};  // the re-run's RAM, as it is now
  kh::HelloDevice device;
  std::uint64_t pc = kh::boot_registers.pc;                // the instruction about to run
  std::optional<std::uint64_t> previous, before_previous;  // the last two it completed
  auto vbar = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::vbar_el1);
  if (!vbar) return failed(vbar.error());
  auto esr = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::esr_el1);  // as no exception left it
  if (!esr) return failed(esr.error());
  // Whether an exception was taken since `esr` was read: PC is in the vectors, and ESR_EL1 changed.
  const auto took_exception = [&](std::uint64_t now_pc, std::uint64_t now_esr) {
    return in_vector_table(now_pc, *vbar) && now_esr != *esr;
  };
  const auto finish = [&](End end) {
    replay.end = end;
    replay.pc = pc;
    replay.previous_pc = previous;
    replay.took = std::chrono::steady_clock::now() - started;
    if (const auto regs = kh::read_registers(vcpu)) replay.last = *regs;
    return replay;
  };
  for (;;) {
    const auto left = bounds.time - (std::chrono::steady_clock::now() - started);
    if (left <= std::chrono::nanoseconds::zero()) return finish(End::time_limit);
    if (replay.instructions >= bounds.instructions) return finish(End::instruction_limit);
    const auto encoding = ram.instruction_at(pc);
    const bool call = encoding && (is_hvc(*encoding) || is_smc(*encoding));
    std::uint64_t function_id = 0;  // a call's x0, before KVM answers in it
    if (call) {
      const auto x0 = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::x(0));
      if (!x0) return failed(x0.error());
      function_id = *x0;
    }
    const auto patience = std::min(bounds.patience, std::chrono::ceil<std::chrono::milliseconds>(left));
    const replay_detail::Stepped stepped =
        replay_detail::step_one(machine->vcpu, stopper, deadline, device, patience, kvm_device);
    const auto now = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::pc);
    if (!now) return failed(now.error());
    switch (stepped.kind) {
      case Kind::done: break;
      case Kind::no_exit: {
        // An exception without a step: the instruction took one whose handler faults forever.
        const auto now_esr = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::esr_el1);
        if (!now_esr) return failed(now_esr.error());
        if (took_exception(*now, *now_esr)) return finish(End::exception);
        pc = *now;  // (unchanged: it was slow, or waits in WFI)
        continue;
      }
      case Kind::interrupted: return finish(End::interrupted);
      case Kind::powered_off: return finish(End::powered_off);
      case Kind::stopped: replay.why = stepped.why; return finish(End::stopped_otherwise);
      case Kind::failed: replay.why = stepped.why; return finish(End::failed);
    }
    ++replay.instructions;
    before_previous = previous;
    previous = pc;
    pc = *now;
    if (call) {
      const auto x0 = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::x(0));
      if (!x0) return failed(x0.error());
      if (*x0 == static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED)) {
        replay.refused = RefusedCall{*previous, *encoding, function_id};
        if (goal.kind == ReplayGoal::Kind::refused_call && *previous == goal.call_address) {
          return finish(End::refused_call);
        }
      }
    }
    if (in_vector_table(pc, *vbar)) {
      const auto regs = kh::read_registers(vcpu);
      if (!regs) return failed(regs.error());
      if (took_exception(pc, regs->esr_el1)) {
        // ESR_EL1 is that exception's own when ELR_EL1 points at the instruction (or after it, for an SVC);
        // when ELR_EL1 is in the vectors already, a fault there, in the same step, overwrote it (KVM
        // reports the step after injecting that fault).
        if (regs->elr_el1 == *previous || regs->elr_el1 == *previous + 4) replay.entry = *regs;
        --replay.instructions;
        pc = *previous;
        previous = before_previous;
        return finish(End::exception);
      }
    }
    if (encoding && is_system_register_access(*encoding)) {  // an MSR may have written VBAR_EL1 or ESR_EL1
      vbar = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::vbar_el1);
      if (!vbar) return failed(vbar.error());
      esr = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::esr_el1);
      if (!esr) return failed(esr.error());
    }
  }
}

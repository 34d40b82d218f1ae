// SPDX-License-Identifier: MIT
// program/interrupts.hpp: what kvm-hello says about lesson 2's interrupts:
// each one as the guest reports it, each ring of its doorbell, and, after
// the run, what no exit showed (the guest asleep in KVM, woken by KVM).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/inspect.hpp"
#include "program/output.hpp"

namespace kh = kvm_hello;

// What an INTID of lesson 2 or 3 is, for people.
inline std::string describe_intid(std::uint32_t intid) {
  if (intid == kh::timer_intid) return "INTID " + std::to_string(intid) + ", the virtual timer's PPI";
  if (intid == kh::spi_line) return "INTID " + std::to_string(intid) + ", the SPI we raised with KVM_IRQ_LINE";
  if (intid == kh::spi_irqfd) return "INTID " + std::to_string(intid) + ", the SPI our irqfd raised";
  if (intid == kh::sgi_intid) return "INTID " + std::to_string(intid) + ", an SGI: another vCPU sent it";
  return "INTID " + std::to_string(intid) + ", which no one here sent";
}

// The virtual timer's registers, as KVM_GET_ONE_REG names them (<asm/kvm.h>;
// KVM reads each by name, whatever encoding the macro holds: the uapi's
// KVM_REG_ARM_TIMER_CVAL and _CNT have each other's, and stay so for
// compatibility: kvm_arm_timer_get_reg in arch/arm64/kvm/arch_timer.c in
// Linux 6.1 and 6.12, kvm_one_reg_to_id in sys_regs.c in 7.2). KVM sets
// CTL's ISTATUS as it reads it, when the deadline has passed (read_timer_ctl).
inline constexpr kh::reg::U64 timer_control_register{KVM_REG_ARM_TIMER_CTL};          // CNTV_CTL_EL0
inline constexpr kh::reg::U64 timer_deadline_register{KVM_REG_ARM_TIMER_CVAL};        // CNTV_CVAL_EL0
inline constexpr std::uint64_t timer_enable = 1, timer_imask = 2, timer_istatus = 4;  // CNTV_CTL_EL0's bits

// The virtual timer as the guest left it when it reported a tick.
struct TimerState {
  std::uint64_t control;   // CNTV_CTL_EL0
  std::uint64_t deadline;  // CNTV_CVAL_EL0
  // Its output is high: enabled, condition met (ISTATUS), not masked.
  bool output_high() const {
    return (control & timer_enable) != 0 && (control & timer_istatus) != 0 && (control & timer_imask) == 0;
  }
};

// Whether two reports of the timer's interrupt are one interrupt taken twice:
// the deadline did not move between them, and the timer's output stayed high
// at both. A guest that takes a tick and then arms the next one never does
// this, however slow the machine: the rule counts, it does not time.
constexpr bool same_deadline_taken_again(const TimerState& before, const TimerState& now) {
  return before.deadline == now.deadline && before.output_high() && now.output_high();
}

// A vCPU that waits in WFI, and no interrupt came: its PMR, read from KVM,
// and KVM's counts of its sleep. Call it while no vCPU of the VM runs.
inline std::vector<std::string> explain_asleep(const kh::Vgic& vgic, const kh::Vcpu& vcpu) {
  std::vector<std::string> lines;
  const auto pmr = kh::read_priority_mask(vgic, vcpu);
  const char* reg = vgic.version == kh::GicVersion::v3 ? "ICC_PMR_EL1" : "GICC_PMR";
  if (!pmr) {
    lines.push_back(std::string("Could not read the vCPU's PMR from KVM: ") + std::string(pmr.error().call) +
                    " failed with errno " + std::to_string(pmr.error().err) + ".");
  } else if (*pmr == 0) {
    lines.push_back(
        std::string("KVM says this vCPU's PMR is 0 (") + reg +
        ", read with KVM_GET_DEVICE_ATTR on the GIC's fd). PMR is 0: no interrupt can be signalled at "
        "any priority. An interrupt is signalled only if its priority is lower than PMR "
        "(kvm_vgic_vcpu_pending_irq, arch/arm64/kvm/vgic/vgic.c), and no priority is lower than 0. "
        "KVM starts PMR at 0: the guest must write it before it waits (lesson2/guest.S and lesson3/guest.S write " +
        hex(0xf0) + ", letting priorities 0 to " + hex(0xef) + " through).");
  } else {
    lines.push_back(std::string("KVM says this vCPU's PMR is ") + hex(*pmr) + " (" + reg +
                    "): interrupts of a priority below it can be signalled, so look at the other conditions above.");
  }
  const auto stats = kh::read_vcpu_statistics(vcpu.fd);
  if (!stats) return lines;
  const auto value = [&](std::string_view name) -> std::string {
    for (const kh::VcpuStatistic& stat : *stats) {
      if (stat.name == name) return std::to_string(stat.value);
    }
    return "(not on this kernel)";
  };
  lines.push_back("KVM's counts for this vCPU: wfi_exit_stat " + value("wfi_exit_stat") +
                  " (WFIs that trapped: the vCPU slept in KVM_RUN, no exit came to us), halt_wakeup " +
                  value("halt_wakeup") +
                  " (times KVM woke it, found nothing it could signal, and let it sleep again).");
  return lines;
}

// Says, after each exit, what lesson 2's device just recorded: a tick of
// the guest's timer, an SPI taken, a ring of the doorbell and what it sent.
// Times are from when the guest first ran; they are shown, and vary.
// At each tick it reads the vCPU's timer (KVM_GET_ONE_REG, not traced), to
// catch an interrupt storm: the same deadline taken again (say_storm()).
// After a run that failed, explain_stop() says what the interrupts show.
class InterruptReporter {
 public:
  InterruptReporter(const Output& out, const kh::InterruptDevice& device, const kh::Irqfd& irqfd, const kh::Vgic& vgic,
                    const kh::Vcpu& vcpu)
      : out_(out),
        device_(device),
        irqfd_(irqfd),
        vgic_(vgic),
        vcpu_(vcpu),
        started_(std::chrono::steady_clock::now()) {}

  // After each exit: each event the device recorded since the last call.
  void report() {
    const auto events = device_.events();
    for (; seen_ < events.size(); ++seen_) say(events[seen_]);
  }
  // The same, and, once in a storm, the handler's runs past the device's
  // record (it keeps the first event_limit): counted from the exit itself.
  void report(const kh::Exit& exit) {
    const std::size_t before = seen_;
    report();
    const auto* access = std::get_if<kh::MmioAccess>(&exit);
    if (seen_ != before || storm_runs_ == 0 || access == nullptr || !access->is_write) return;
    std::uint32_t intid = 0;
    std::memcpy(&intid, access->data.data(), std::min<std::size_t>(access->length, sizeof intid));
    if (access->address == kh::mmio_irq && intid == kh::timer_intid) ++storm_runs_;
  }
  unsigned ticks() const { return ticks_; }

  // After a failed run (the watchdog, Ctrl-C): what the interrupts say. A
  // storm, counted; or, for a guest asleep in WFI, its PMR as KVM has it,
  // and KVM's counts of its sleep.
  std::vector<std::string> explain_stop(const kh::Error& error, const kh::Registers& regs,
                                        const GuestView& guest) const {
    const bool stopped = error.problem == kh::Problem::watchdog_expired || error.problem == kh::Problem::interrupted;
    if (!stopped) return {};
    if (storm_runs_ > 0) {
      return {"The guest's handler took INTID 27 again and again for one deadline, tick " + std::to_string(ticks_) +
              "'s: " + std::to_string(storm_runs_) +
              " times, each reported in an MMIO exit, and the guest's own code never ran again (the storm said "
              "above)."};
    }
    if (waits_in_wfi_at(regs, guest) == 0) return {};
    return explain_asleep(vgic_, vcpu_);
  }

 private:
  // The timer as the guest left it, or nothing when KVM would not say.
  std::optional<TimerState> read_timer() const {
    const auto control = kh::get_register(kh::Step::run_guest, vcpu_.fd, timer_control_register);
    const auto deadline = kh::get_register(kh::Step::run_guest, vcpu_.fd, timer_deadline_register);
    if (!control || !deadline) return std::nullopt;
    return TimerState{*control, *deadline};
  }

  // Says once that the timer's interrupt was taken twice for one deadline.
  void say_storm(const TimerState& timer) const {
    out_.say(Verbosity::normal,
             "tick %u came for the same deadline as tick %u: CNTV_CVAL_EL0 is still %s, and CNTV_CTL_EL0 %s says "
             "the timer is enabled, its condition met (ISTATUS) and its output not masked (IMASK 0): "
             "an interrupt storm",
             ticks_ + 1, ticks_, hex(timer.deadline).c_str(), hex(timer.control).c_str());
    out_.say(Verbosity::normal,
             "the timer's output is a level: it stays high until CVAL moves or IMASK is set. The guest's handler "
             "ended the interrupt (EOI) with it still high, so the GIC signals INTID 27 again, and each EOI lets it "
             "be taken again, without end: the guest's own code, which would move CVAL, never runs. The fix: set "
             "CNTV_CTL_EL0.IMASK before the EOI, as lesson2/guest.S does. (The handler's next runs are counted, "
             "not shown.)");
  }

  void say(const kh::InterruptEvent& event) {
    const std::string at = format_duration(event.at - started_) + " into the run";
    if (event.kind == kh::InterruptEvent::Kind::took) {
      if (event.value == kh::timer_intid && storm_runs_ > 0) {
        ++storm_runs_;
        return;
      }
      if (event.value == kh::timer_intid) {
        ++ticks_;
        const auto timer = read_timer();
        if (timer && last_timer_ && same_deadline_taken_again(*last_timer_, *timer)) {
          --ticks_;  // not a tick: the last one again
          say_storm(*timer);
          storm_runs_ = 2;
          return;
        }
        last_timer_ = timer;
        const std::string gap =
            last_tick_ ? ", " + format_duration(event.at - *last_tick_) + " after the one before" : "";
        last_tick_ = event.at;
        out_.say(Verbosity::normal, "tick %u: the guest's handler took %s (%s%s)", ticks_,
                 describe_intid(event.value).c_str(), at.c_str(), gap.c_str());
        return;
      }
      out_.say(Verbosity::normal, "the guest's handler took %s (%s)", describe_intid(event.value).c_str(), at.c_str());
      return;
    }
    if (event.value == kh::doorbell_line) {
      out_.say(Verbosity::normal,
               "doorbell %u: the guest asks for SPI %u: step 15, inject_spi, KVM_IRQ_LINE "
               "(SPI, INTID %u) level 1 then 0, before it runs again",
               event.value, kh::spi_line, kh::spi_line);
    } else if (event.value == kh::doorbell_irqfd) {
      out_.say(Verbosity::normal,
               "doorbell %u: the guest asks for SPI %u: we write 1 to eventfd %d (step 14's "
               "irqfd), and KVM raises gsi %u, SPI %u, for us",
               event.value, kh::spi_irqfd, irqfd_.event.get(), irqfd_.gsi, kh::spi_irqfd);
    } else {
      out_.say(Verbosity::normal, "doorbell %u: no request we know (%u: KVM_IRQ_LINE, %u: the irqfd): nothing sent",
               event.value, kh::doorbell_line, kh::doorbell_irqfd);
    }
  }

  const Output& out_;
  const kh::InterruptDevice& device_;
  const kh::Irqfd& irqfd_;
  const kh::Vgic& vgic_;
  const kh::Vcpu& vcpu_;
  std::chrono::steady_clock::time_point started_;
  std::optional<TimerState> last_timer_;  // at the last tick
  unsigned storm_runs_ = 0;               // once a storm: the handler's runs for tick ticks_'s deadline
  std::size_t seen_ = 0;
  unsigned ticks_ = 0;
  std::optional<std::chrono::steady_clock::time_point> last_tick_;
};

// The INTIDs the guest took, in order: "27 27 27 40 41".
inline std::string list_intids(const std::vector<std::uint32_t>& intids) {
  if (intids.empty()) return "none";
  std::string text;
  for (const std::uint32_t intid : intids) text += (text.empty() ? "" : " ") + std::to_string(intid);
  return text;
}

// What the exits did not show: where the guest was between its ticks.
inline std::vector<std::string> explain_sleep(unsigned ticks) {
  if (ticks == 0) return {};
  return {
      "between its ticks the guest waited in WFI, and no exit came to us: KVM trapped the WFI",
      "(kvm_handle_wfx), put this program's thread to sleep inside KVM_RUN (kvm_vcpu_halt), and",
      "when the timer's deadline passed, a host timer KVM had armed for it woke the thread",
      "(kvm_bg_timer_expire); KVM then found the timer's interrupt pending and let the guest",
      "take it. KVM_RUN returned only for the guest's report, an MMIO exit (-v: KVM's counts)",
  };
}

// -v: what KVM counted of lesson 2's work, from the vCPU's statistics: the
// GIC's registers it answered, the WFIs that trapped, the wake-ups, the
// polls before sleeping, the time asleep.
inline std::vector<std::string> describe_interrupt_statistics(const std::vector<kh::VcpuStatistic>& stats) {
  const auto value = [&](std::string_view name) -> std::optional<std::uint64_t> {
    for (const kh::VcpuStatistic& stat : stats) {
      if (stat.name == name) return stat.value;
    }
    return std::nullopt;
  };
  const auto text = [&](std::string_view name) {
    const auto found = value(name);
    return std::string(name) + " " + (found ? std::to_string(*found) : "(not on this kernel)");
  };
  const auto asleep = value("halt_wait_ns");
  return {
      "the GIC: " + text("mmio_exit_kernel") +
          " (the guest's loads and stores to the GIC's frames, answered by "
          "the vGIC inside the kernel; a GICv2's CPU interface is the host's GICV frame mapped into the guest, "
          "no exit at all, unless that frame is not page-aligned and KVM traps it instead: vgic_v2_probe())",
      "asleep: " + text("wfi_exit_stat") +
          " (WFIs that trapped into KVM: a WFI with an interrupt already "
          "pending does not wait), " +
          text("halt_wakeup") + " (times KVM woke the sleeping vCPU)",
      "        " + text("halt_attempted_poll") + ", " + text("halt_successful_poll") +
          " (KVM first polls a short while before it sleeps)" +
          (asleep ? "; " + format_duration(std::chrono::nanoseconds(*asleep)) + " asleep (halt_wait_ns)" : ""),
  };
}

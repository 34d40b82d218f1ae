// SPDX-License-Identifier: MIT
// program/interrupts.hpp: what kvm-hello says about lesson 2's interrupts:
// each one as the guest reports it, each ring of its doorbell, and, after
// the run, what no exit showed (the guest asleep in KVM, woken by KVM).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/output.hpp"

namespace kh = kvm_hello;

// What an INTID of lesson 2 is, for people.
inline std::string describe_intid(std::uint32_t intid) {
  if (intid == kh::timer_intid) return "INTID " + std::to_string(intid) + ", the virtual timer's PPI";
  if (intid == kh::spi_line) return "INTID " + std::to_string(intid) + ", the SPI we raised with KVM_IRQ_LINE";
  if (intid == kh::spi_irqfd) return "INTID " + std::to_string(intid) + ", the SPI our irqfd raised";
  return "INTID " + std::to_string(intid) + ", which no one here sent";
}

// Says, after each exit, what lesson 2's device just recorded: a tick of
// the guest's timer, an SPI taken, a ring of the doorbell and what it sent.
// Times are from when the guest first ran; they are shown, and vary.
class InterruptReporter {
 public:
  InterruptReporter(const Output& out, const kh::InterruptDevice& device, const kh::Irqfd& irqfd)
      : out_(out), device_(device), irqfd_(irqfd), started_(std::chrono::steady_clock::now()) {}

  // After each exit: each event the device recorded since the last call.
  void report() {
    const auto events = device_.events();
    for (; seen_ < events.size(); ++seen_) say(events[seen_]);
  }
  unsigned ticks() const { return ticks_; }

 private:
  void say(const kh::InterruptEvent& event) {
    const std::string at = format_duration(event.at - started_) + " into the run";
    if (event.kind == kh::InterruptEvent::Kind::took) {
      if (event.value == kh::timer_intid) {
        ++ticks_;
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
  std::chrono::steady_clock::time_point started_;
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

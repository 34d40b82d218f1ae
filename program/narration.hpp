// SPDX-License-Identifier: MIT
// program/narration.hpp: --pause, the walk-through told step by step: after
// each step, what now exists and what comes next; then a wait for Enter.
#pragma once

#include <unistd.h>

#include <array>
#include <cstdio>
#include <string_view>
#include <utility>

#include "kvm_hello.hpp"

namespace kh = kvm_hello;

// After each of lesson 1's steps, in step order (kvm_hello::steps).
inline constexpr std::array<std::string_view, kh::lesson1_step_count> narration{
    "We hold a file descriptor for /dev/kvm, the door into KVM. Next we ask which API version it speaks.",
    "It speaks version 12, the only stable KVM API. Next we check each capability we rely on, so that a missing one "
    "stops us here, by name.",
    "Everything we need is there. Next we create the VM; on arm64 its type carries the guest's physical address size.",
    "The VM exists but is empty: no memory, no vCPU. Next we give it RAM: memory of our own, registered at "
    "guest-physical 0x10000.",
    "Guest RAM holds the guest's code; a load or store outside it will become an MMIO exit. Next we create the vCPU "
    "and map its struct kvm_run.",
    "The vCPU exists, but an arm64 vCPU cannot be used before it is initialised. Next comes KVM_ARM_VCPU_INIT with "
    "the preferred target and PSCI 0.2.",
    "The vCPU is reset: EL1, interrupts masked, PC 0, the MMU off. Next we point PC at the guest's first instruction "
    "and SP_EL1 at the top of its RAM.",
    "All is ready. Next KVM_RUN enters the guest; each time it returns, kvm_run says why.",
    "The guest powered itself off: the VM is finished. Its fds and memory are released as their owners go out of "
    "scope.",
};

// After lesson 2's steps where it differs from lesson 1: the steps of Part
// II, and where lesson 2 goes on to another step than lesson 1 does.
inline constexpr std::array<std::pair<kh::Step, std::string_view>, 7> lesson2_narration{{
    {kh::Step::setup_guest_memory,
     "Guest RAM holds the guest's code. Next we ask KVM which interrupt controller, a GICv3 or a GICv2, it can "
     "emulate for this VM."},
    {kh::Step::probe_vgic,
     "KVM can emulate this GIC for the VM. Next we create it, and place its frames in the guest's memory map, "
     "before any vCPU exists."},
    {kh::Step::create_vgic,
     "The GIC exists inside KVM, its frames placed (a GICv3's redistributor for each vCPU is registered as the "
     "vCPU is created). Next comes the vCPU."},
    {kh::Step::set_boot_registers,
     "PC, SP_EL1 and x0 are set. Next we ask KVM which interrupt the vCPU's virtual timer raises."},
    {kh::Step::read_timer_irq,
     "The timer raises the PPI the guest enables. Next we initialise the GIC: every vCPU exists now, so its size "
     "can be fixed."},
    {kh::Step::init_vgic,
     "The GIC is ready, and no vCPU can be added now. Next we wire an eventfd to SPI 41, so that a write to it "
     "interrupts the guest."},
    {kh::Step::attach_irqfd,
     "The irqfd is wired. Next KVM_RUN enters the guest; when it rings the doorbell, we inject SPI 40 with "
     "KVM_IRQ_LINE (step 15), or write to the irqfd."},
}};

// After lesson 3's steps where it differs from lesson 2: the vCPUs, all
// created (and initialised) before the vGIC is; their power states, read
// once before the threads start; the stop, once the guest is off. Steps 6
// and 7 pause for each vCPU, so their words hold for either.
inline constexpr std::array<std::pair<kh::Step, std::string_view>, 7> lesson3_narration{{
    {kh::Step::create_vgic,
     "The GIC exists inside KVM, its frames placed. Next come the vCPUs, every one of them before the GIC is "
     "initialised: a vCPU created after that is refused (EBUSY)."},
    {kh::Step::create_vcpu,
     "This vCPU exists, its kvm_run mapped (with a GICv3, its redistributor is registered too). Next "
     "KVM_ARM_VCPU_INIT: vCPU 0 as in lesson 1, any other with POWER_OFF as well."},
    {kh::Step::init_vcpu,
     "vCPU 0 is reset and will run once its thread calls KVM_RUN; any other is STOPPED until the guest's CPU_ON. "
     "Next the next vCPU, until all exist; then vCPU 0's registers."},
    {kh::Step::set_boot_registers,
     "vCPU 0's PC, SP_EL1 and x0 are set; every other gets its PC and x0 from the guest's CPU_ON. Next we ask KVM "
     "which interrupt the virtual timer raises."},
    {kh::Step::init_vgic,
     "The GIC is ready for every vCPU, and no vCPU can be added now. Next we read each vCPU's power state."},
    {kh::Step::read_mp_state,
     "vCPU 0 is RUNNABLE, every other STOPPED. Next a thread for each vCPU calls KVM_RUN: a STOPPED one sleeps "
     "inside KVM until the guest's CPU_ON; when the guest powers off, we stop the other threads."},
    {kh::Step::stop_vcpus,
     "Every vCPU's thread has ended and been joined: none outlives the VM. Next each power state once more; then "
     "the fds and memory are released as their owners go out of scope."},
}};

// The words after `step` in `lesson`: empty when there are none. A lesson
// says what it says differently, and the lesson before it says the rest.
inline std::string_view narration_after(kh::Step step, int lesson) {
  for (const auto& [which, text] : lesson3_narration) {
    if (lesson == 3 && which == step) return text;
  }
  for (const auto& [which, text] : lesson2_narration) {
    if (lesson >= 2 && which == step) return text;
  }
  const auto n = static_cast<std::size_t>(step);
  return n >= 1 && n <= narration.size() ? narration[n - 1] : std::string_view{};
}

// After a step of `lesson`: tell it, then wait for Enter when a person is at the keyboard.
inline void pause_after(kh::Step step, bool pausing, int lesson = 1) {
  const std::string_view text = narration_after(step, lesson);
  if (!pausing || text.empty()) return;
  std::printf("      -- %.*s\n", static_cast<int>(text.size()), text.data());
  if (::isatty(STDIN_FILENO) != 1) return;  // not a terminal: run straight through
  std::printf("      -- press Enter to go on\n");
  for (int c = std::getchar(); c != '\n' && c != EOF; c = std::getchar()) {
  }
}

// SPDX-License-Identifier: MIT
// program/narration.hpp: --pause, the walk-through told step by step: after
// each step, what now exists and what comes next; then a wait for Enter.
#pragma once

#include <unistd.h>

#include <array>
#include <cstdio>
#include <string_view>

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

// After a step: tell it, then wait for Enter when a person is at the keyboard.
inline void pause_after(kh::Step step, bool pausing) {
  if (!pausing || static_cast<std::size_t>(step) > narration.size()) return;
  const std::string_view text = narration[static_cast<std::size_t>(step) - 1];
  std::printf("      -- %.*s\n", static_cast<int>(text.size()), text.data());
  if (::isatty(STDIN_FILENO) != 1) return;  // not a terminal: run straight through
  std::printf("      -- press Enter to go on\n");
  for (int c = std::getchar(); c != '\n' && c != EOF; c = std::getchar()) {
  }
}

// SPDX-License-Identifier: MIT
// program/stepper.hpp: --step-guest, the guest one instruction at a time:
// each instruction before it runs (address, encoding, line of guest.S), and
// after it the registers it changed. Exits appear in between, in place. It
// was asked for: its lines show at every verbosity, -q too.
#pragma once

#include <string>

#include "kvm_hello.hpp"
#include "program/inspect.hpp"
#include "program/output.hpp"

namespace kh = kvm_hello;

// "x1 0x0 -> 0x1100, x2 ...": the registers one instruction changed (pc aside).
inline std::string register_changes(const kh::Registers& before, const kh::Registers& after) {
  std::string text;
  const auto note = [&text](std::string_view name, std::uint64_t was, std::uint64_t now) {
    if (was != now) text += (text.empty() ? "" : ", ") + std::string(name) + " " + hex(was) + " -> " + hex(now);
  };
  for (std::size_t n = 0; n < before.x.size(); ++n) note("x" + std::to_string(n), before.x[n], after.x[n]);
  for (const kh::RegisterInfo& info : kh::named_registers) {
    if (info.field != nullptr && info.field != &kh::Registers::pc)
      note(info.name, before.*info.field, after.*info.field);
  }
  return text;
}

class GuestStepper {
 public:
  GuestStepper(int vcpu_fd, GuestView guest, const Output& out) : vcpu_fd_(vcpu_fd), guest_(guest), out_(out) {}

  // Before the first KVM_RUN: show the first instruction.
  kh::Result<void> start() {
    auto regs = kh::read_registers(vcpu_fd_);
    if (!regs) return std::unexpected(regs.error());
    before_ = *regs;
    show_instruction(before_.pc);
    return {};
  }

  // At each KVM_EXIT_DEBUG: one instruction is done.
  void stepped() {
    const auto now = kh::read_registers(vcpu_fd_);
    if (!now) return;
    const std::string changes = register_changes(before_, *now);
    if (!changes.empty()) out_.say(Verbosity::quiet, "                 %s", changes.c_str());
    before_ = *now;
    show_instruction(now->pc);
  }

  unsigned instructions() const { return shown_; }

 private:
  void show_instruction(std::uint64_t pc) {
    ++shown_;
    const std::uint32_t encoding = guest_.instruction_at(pc).value_or(0);
    const GuestLine* line = guest_.line_at(pc);
    char text[512];
    if (line != nullptr) {
      const std::string place = guest_.source->file + ":" + std::to_string(line->line);
      std::snprintf(text, sizeof text, "guest %s  %08x  %-11s %s", hex(pc).c_str(), encoding, place.c_str(),
                    line->text.c_str());
    } else {
      std::snprintf(text, sizeof text, "guest %s  %08x", hex(pc).c_str(), encoding);
    }
    out_.say(Verbosity::quiet, "%s", text);
  }

  int vcpu_fd_;
  GuestView guest_;
  const Output& out_;
  kh::Registers before_;
  unsigned shown_ = 0;
};

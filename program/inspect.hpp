// SPDX-License-Identifier: MIT
// program/inspect.hpp: what the guest's state says once it has stopped: the
// register dump, and why a run failed (stuck in its exception vectors,
// spinning, an smc refused, an instruction KVM cannot decode), read from its
// registers and its RAM.
#pragma once

#include <linux/psci.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/format.hpp"
#include "program/kernel_version.hpp"

namespace kh = kvm_hello;

// ---- The guest's code: its bytes, and its lines of source ---------------------

// One guest instruction's line of source.
struct GuestLine {
  std::uint64_t address;
  int line;
  std::string text;
};

// A guest's source, by instruction address: the table program/guest-lines.sh
// makes at build time from the assembler's debug line information.
struct GuestSource {
  std::string file;  // "guest.S"; empty when there is no table
  std::vector<GuestLine> lines;

  const GuestLine* find(std::uint64_t address) const {
    for (const GuestLine& line : lines) {
      if (line.address == address) return &line;
    }
    return nullptr;
  }
};

// Reads guest-lines.sh's text: the file's name, then "ADDRESS LINE TEXT" lines.
inline GuestSource parse_guest_source(std::string_view text) {
  GuestSource source;
  std::size_t at = 0;
  const auto next_line = [&]() -> std::optional<std::string_view> {
    if (at >= text.size()) return std::nullopt;
    const std::size_t end = std::min(text.find('\n', at), text.size());
    const std::string_view line = text.substr(at, end - at);
    at = end + 1;
    return line;
  };
  if (const auto name = next_line()) source.file = std::string(*name);
  while (const auto line = next_line()) {
    const std::string copy(*line);
    char* rest = nullptr;
    const std::uint64_t address = std::strtoull(copy.c_str(), &rest, 16);
    char* after_number = nullptr;
    const long number = std::strtol(rest, &after_number, 10);
    if (rest == copy.c_str() || after_number == rest) continue;  // not a line of the table
    std::string_view source_text(after_number);
    if (source_text.starts_with(' ')) source_text.remove_prefix(1);
    source.lines.push_back({address, static_cast<int>(number), std::string(source_text)});
  }
  return source;
}

// What the guest was doing: the instruction at an address, and its line of source when known.
struct GuestView {
  std::span<const std::uint8_t> ram;
  const GuestSource* source = nullptr;

  std::optional<std::uint32_t> instruction_at(std::uint64_t address) const {
    // (Written so that no sum can wrap around: a broken guest's PC may be anything.)
    if (address < kh::ram_base || ram.size() < 4 || address - kh::ram_base > ram.size() - 4) return std::nullopt;
    std::uint32_t encoding = 0;
    std::memcpy(&encoding, ram.data() + (address - kh::ram_base), sizeof encoding);
    return encoding;
  }
  const GuestLine* line_at(std::uint64_t address) const { return source != nullptr ? source->find(address) : nullptr; }
  // "0x10004 (guest.S:22: adr x2, message)", or just the address.
  std::string where(std::uint64_t address) const {
    const GuestLine* line = line_at(address);
    if (line == nullptr) return hex(address);
    return hex(address) + " (" + source->file + ":" + std::to_string(line->line) + ": " + line->text + ")";
  }
};

// ---- Exception vectors --------------------------------------------------------

// Where a guest is after taking an exception: its vector table at VBAR_EL1 is
// 0x800 bytes, 16 entries of 0x80. PC in there means ESR_EL1, ELR_EL1 and
// FAR_EL1 describe that exception. Before the first one, the architecture
// leaves ESR_EL1 and FAR_EL1 UNKNOWN, and KVM fills them with
// unknown_register_value; ELR_EL1, which INIT does not reset, reads 0.
inline constexpr std::uint64_t vector_table_size = 0x800;
constexpr bool in_exception_vectors(const kh::Registers& regs) {
  return regs.pc >= regs.vbar_el1 && regs.pc < regs.vbar_el1 + vector_table_size;
}
// What KVM writes into system registers whose reset value is UNKNOWN
// (reset_unknown() in the kernel's arch/arm64/kvm/sys_regs.h); e2e_tests.cpp
// reads it back from ESR_EL1 after KVM_ARM_VCPU_INIT.
inline constexpr std::uint64_t unknown_register_value = 0x1de7ec7edbadc0de;

// Whether the guest has taken an exception since KVM_ARM_VCPU_INIT: ESR_EL1
// holds a syndrome instead of KVM's marker for UNKNOWN, or PC is in the
// vectors. (A handler that ran and moved on leaves ESR_EL1 set, PC elsewhere.)
constexpr bool exception_taken(const kh::Registers& regs) {
  return regs.esr_el1 != unknown_register_value || in_exception_vectors(regs);
}

// The vector table's 16 entries: four groups of 0x200 bytes (where the
// exception came from), each of four 0x80-byte entries (what kind it is).
inline std::string vector_entry_name(std::uint64_t offset) {
  static constexpr const char* from[] = {"current EL on SP_EL0", "current EL on SP_ELx", "lower EL, AArch64",
                                         "lower EL, AArch32"};
  static constexpr const char* kind[] = {"synchronous", "IRQ", "FIQ", "SError"};
  if (offset >= vector_table_size) return "outside the table";
  return "offset " + hex(offset & ~std::uint64_t{0x7f}) + " (" + kind[(offset / 0x80) % 4] + ", from the " +
         from[offset / 0x200] + ")";
}

// ---- The register dump ---------------------------------------------------------

// x0-x30, then the registers that say where the guest is.
inline std::string format_registers(const kh::Registers& regs) {
  std::string text;
  char cell[40];
  for (std::size_t n = 0; n < regs.x.size(); ++n) {
    std::snprintf(cell, sizeof cell, "%4s 0x%016" PRIx64, ("x" + std::to_string(n)).c_str(), regs.x[n]);
    text += (n % 4 == 0 ? "      " : "  ") + std::string(cell) + (n % 4 == 3 || n + 1 == regs.x.size() ? "\n" : "");
  }
  text += "        pc " + hex(regs.pc) + "  pstate " + describe_pstate(regs.pstate) + "\n";
  text += "    sp_el1 " + hex(regs.sp_el1) + "  sp_el0 " + hex(regs.sp_el0) + "\n";
  if (exception_taken(regs)) {  // these say which exception, where, and why
    const std::string far = regs.far_el1 == unknown_register_value ? "not written (no abort)" : hex(regs.far_el1);
    text += "   esr_el1 " + describe_esr(regs.esr_el1) + "\n";
    text += "   elr_el1 " + hex(regs.elr_el1) + " (the instruction it happened at)  far_el1 " + far + "  vbar_el1 " +
            hex(regs.vbar_el1) +
            (in_exception_vectors(regs) ? " (PC is in these vectors)\n" : " (PC is outside them: a handler went on)\n");
  } else {
    text += "  vbar_el1 " + hex(regs.vbar_el1) + " (PC is not in its vectors: no exception taken, so ESR_EL1,\n" +
            "            ELR_EL1 and FAR_EL1 say nothing)\n";
  }
  return text;
}

// After SYSTEM_OFF, x0-x3 hold what KVM preloaded as the call's return value.
inline std::vector<std::string> explain_power_off_registers(const kh::Registers& regs) {
  if (regs.x[0] != static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE)) return {};
  return {"x0 = -6 (PSCI_RET_INTERNAL_FAILURE), x1-x3 = 0: KVM preloads SYSTEM_OFF's return value,",
          "which the guest would see only if it ran on after its hvc: a stopped vCPU does not"};
}

// ---- Why a run failed ---------------------------------------------------------

// Why a guest that called smc got -1 back, on this kernel.
inline std::string explain_smc_refused(std::uint64_t at, KernelVersion kernel) {
  std::string line = "the guest called smc at " + hex(at) + " and got x0 = -1 (PSCI NOT_SUPPORTED): ";
  if (!kernel.at_least(6, 4)) {
    return line + "Linux before 6.4 does not take smc as a PSCI call (handle_smc in arch/arm64/kvm/handle_exit.c " +
           "answers every smc with -1); call PSCI with hvc";
  }
  return line + "KVM does not know the function id that was in x0";
}

// What a guest that never stops is doing, from the instruction at PC and the
// one before it (KVM steps PC past an instruction it handled): "" when
// nothing there says.
inline std::string explain_what_it_does(const kh::Registers& regs, const GuestView& guest, KernelVersion kernel) {
  const auto at = guest.instruction_at(regs.pc);
  const auto before = guest.instruction_at(regs.pc - 4);
  if (before && is_smc(*before) && regs.x[0] == static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED)) {
    return explain_smc_refused(regs.pc - 4, kernel) + ".";
  }
  const auto waits_at = at && is_wfi(*at) ? regs.pc : before && is_wfi(*before) ? regs.pc - 4 : 0;
  if (waits_at != 0) {
    return "It waits in WFI at " + hex(waits_at) +
           " for an interrupt, and none will come: this VM has no interrupt controller (kvm-hello creates no "
           "vGIC) and the guest has set no timer.";
  }
  if ((at && is_wfe(*at)) || (before && is_wfe(*before))) {
    return "It waits in WFE for an event no one sends, and spins on: alone on its CPU the vCPU runs WFE "
           "untrapped (KVM clears HCR_EL2.TWE), else KVM takes it as a hint to yield (kvm_handle_wfx).";
  }
  if (at && is_branch_to_self(*at)) {
    return "The instruction there is b " + hex(regs.pc) +
           ", a branch to itself: the guest spins in place, inside KVM_RUN, until the watchdog stops it.";
  }
  return "";
}

// Lines that explain a failed run from the guest's registers: why it never
// powered off, or which instruction KVM could not decode.
inline std::vector<std::string> diagnose(const kh::Error& error, const kh::Registers& regs, const GuestView& guest,
                                         KernelVersion kernel = running_kernel()) {
  std::vector<std::string> lines;
  const bool stopped = error.problem == kh::Problem::watchdog_expired || error.problem == kh::Problem::interrupted;
  if (stopped && in_exception_vectors(regs)) {
    lines.push_back("PC " + hex(regs.pc) + " is in the exception vectors at VBAR_EL1 " + hex(regs.vbar_el1) + ", " +
                    vector_entry_name(regs.pc - regs.vbar_el1) + ": the guest took an exception.");
    lines.push_back("ESR_EL1 says why: " + describe_esr(regs.esr_el1) + "; ELR_EL1 says where: " + hex(regs.elr_el1) +
                    ".");
    if (!guest.instruction_at(regs.vbar_el1)) {
      lines.push_back(
          "The vectors are outside guest RAM, so fetching the handler faults too, again and again, "
          "inside the kernel: KVM_RUN never returns, and only the watchdog gets control back.");
    }
    if (regs.elr_el1 - regs.vbar_el1 < vector_table_size) {
      lines.push_back(
          "ELR_EL1 is in the vectors too: each fault overwrote it, and the first exception's address "
          "is lost; --step-guest shows the instruction that started it.");
    }
  } else if (stopped) {
    lines.push_back("PC " + guest.where(regs.pc) + ": the guest is running there and never called PSCI SYSTEM_OFF.");
    if (const std::string doing = explain_what_it_does(regs, guest, kernel); !doing.empty()) lines.push_back(doing);
  }
  if (error.problem == kh::Problem::call_failed && error.err == ENOSYS && error.step == kh::Step::run_guest) {
    if (const auto encoding = guest.instruction_at(regs.pc)) {
      const auto kind = classify_mmio_instruction(*encoding);
      char text[32];
      std::snprintf(text, sizeof text, "%08x", *encoding);
      lines.push_back("the instruction at PC " + guest.where(regs.pc) + " is " + text + ", " +
                      std::string(describe_mmio_instruction(kind)) + ".");
      lines.push_back(
          "For MMIO, the hardware describes only plain single-register loads and stores to KVM; "
          "for this one it gives no description (no valid syndrome), so KVM cannot emulate it.");
    }
  }
  return lines;
}

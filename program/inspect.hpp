// SPDX-License-Identifier: MIT
// program/inspect.hpp: what the guest's state says once it has stopped: the
// register dump, and why a run failed (stuck in its exception vectors,
// spinning, an smc refused, an instruction KVM cannot decode), read from its
// registers and its RAM.
#pragma once

#include <linux/psci.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
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
  std::span<const std::uint8_t> image = {};  // the bytes loaded at ram_base: the guest's code, to run it again
  bool has_vgic = false;                     // lesson 2: the VM has an in-kernel GIC (its re-run would not)
  // Lesson 2: more lines for a run that failed, from what only its program
  // knows (the vGIC's state, the interrupts it saw: program/interrupts.hpp).
  std::function<std::vector<std::string>(const kh::Error&, const kh::Registers&)> explain_more = {};

  bool in_ram(std::uint64_t address) const { return address >= kh::ram_base && address - kh::ram_base < ram.size(); }
  bool past_image(std::uint64_t address) const { return in_ram(address) && address - kh::ram_base >= image.size(); }

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
constexpr bool in_vector_table(std::uint64_t address, std::uint64_t vbar) {
  return address >= vbar && address - vbar < vector_table_size;
}
constexpr bool in_exception_vectors(const kh::Registers& regs) { return in_vector_table(regs.pc, regs.vbar_el1); }
// PC and ELR_EL1 both in the vectors: an exception taken in the vectors
// themselves wrote ELR_EL1 (and ESR_EL1), over the first exception's.
constexpr bool first_exception_lost(const kh::Registers& regs) {
  return in_exception_vectors(regs) && in_vector_table(regs.elr_el1, regs.vbar_el1);
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
    text += "   elr_el1 " + hex(regs.elr_el1) +
            (first_exception_lost(regs) ? " (in the vectors: a fault there overwrote the first exception's)"
                                        : " (the instruction it happened at)") +
            "  far_el1 " + far + "  vbar_el1 " + hex(regs.vbar_el1) +
            (in_exception_vectors(regs) ? " (PC is in these vectors)\n" : " (PC is outside them: a handler went on)\n");
  } else {
    text += "  vbar_el1 " + hex(regs.vbar_el1) + " (PC is not in its vectors: no exception taken, so ESR_EL1,\n" +
            "            ELR_EL1 and FAR_EL1 say nothing)\n";
  }
  return text;
}

// After SYSTEM_OFF, x0-x3 hold what KVM preloaded as the call's return value
// (kvm_psci_0_2_call in arch/arm64/kvm/psci.c), which no one sees:
// kvm_prepare_system_event stopped the vCPU (KVM_MP_STATE_STOPPED).
inline std::vector<std::string> explain_power_off_registers(const kh::Registers& regs) {
  if (regs.x[0] != static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE)) return {};
  return {"x0 = -6 (PSCI_RET_INTERNAL_FAILURE), x1-x3 = 0: KVM preloads SYSTEM_OFF's return value,",
          "which the guest would see only if it ran on after its call: SYSTEM_OFF stopped the vCPU, and kvm-hello "
          "does not start it again"};
}

// A SYSTEM_OFF made with an hvc whose immediate is not 0: it worked, though
// SMCCC reserves those immediates, because KVM's handle_hvc (in
// arch/arm64/kvm/handle_exit.c) never reads it; handle_smc does.
inline std::vector<std::string> explain_power_off_call(const kh::Registers& regs, const GuestView& guest) {
  const auto call = guest.instruction_at(regs.pc - 4);  // KVM stepped PC past the call
  if (!call || !is_hvc(*call) || call_immediate(*call) == 0) return {};
  return {"the guest called SYSTEM_OFF with hvc #" + std::to_string(call_immediate(*call)) + " at " + hex(regs.pc - 4) +
              ": KVM ignores an hvc's immediate (handle_hvc in arch/arm64/kvm/handle_exit.c),",
          "but SMCCC reserves every other immediate, and KVM does check an smc's (handle_smc, Linux 6.4 and later): "
          "write hvc #0"};
}

// What the registers say after the guest powered off.
inline std::vector<std::string> explain_power_off(const kh::Registers& regs, const GuestView& guest) {
  std::vector<std::string> lines = explain_power_off_registers(regs);
  for (std::string& line : explain_power_off_call(regs, guest)) lines.push_back(std::move(line));
  return lines;
}

// ---- A call KVM refused --------------------------------------------------------

// An hvc or smc the guest made that came back with x0 = -1 (NOT_SUPPORTED).
struct RefusedCall {
  std::uint64_t address;                     // of the hvc or smc
  std::uint32_t encoding;                    // which, and its immediate
  std::optional<std::uint64_t> function_id;  // x0 before it, when known (a re-run finds it)
};

// Why KVM does not know a function id (x0 of an hvc, or of an smc #0 from
// Linux 6.4), on this kernel. PSCI's range reaches KVM's PSCI code, which
// answers a function it does not implement with PSCI_RET_NOT_SUPPORTED; any
// other id KVM does not offer, the SMCCC handler refuses before that.
inline std::string why_function_unknown(std::uint64_t id, KernelVersion kernel) {
  if (is_in_psci_range(id)) {
    std::string why = hex(id) + " is in PSCI's range, but no PSCI function KVM implements: kvm_psci_0_2_call " +
                      "(arch/arm64/kvm/psci.c) answers PSCI_RET_NOT_SUPPORTED";
    const std::uint64_t as_32_bit = id & ~std::uint64_t{0x40000000};  // without the SMC64 bit
    if (as_32_bit != id && !function_name(as_32_bit).empty()) {
      why += "; " + std::string(function_name(as_32_bit)) + " is " + hex(as_32_bit) + ", and has no 64-bit form";
    }
    return why;
  }
  return hex(id) + " is no function KVM offers (PSCI's are 0x84000000-0x8400001f and 0xc4000000-0xc400001f): " +
         (kernel.at_least(6, 4) ? "kvm_smccc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it, as "
                                  "kvm_smccc_get_action allows it no handler"
                                : "kvm_hvc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it, as "
                                  "kvm_hvc_call_allowed says no");
}

// Why a guest's hvc or smc got -1 back, on this kernel: "the guest called ... and got x0 = -1 ...: why".
inline std::string explain_refused_call(const RefusedCall& call, KernelVersion kernel) {
  const bool smc = is_smc(call.encoding);
  const unsigned immediate = call_immediate(call.encoding);
  std::string line = std::string("the guest called ") + (smc ? "smc" : "hvc") + " #" + std::to_string(immediate) +
                     " at " + hex(call.address) +
                     (call.function_id ? " with function id " + describe_function_id(*call.function_id) : "") +
                     " and got x0 = -1 (NOT_SUPPORTED): ";
  if (smc && !kernel.at_least(6, 4)) {
    return line + "Linux before 6.4 does not take smc as a PSCI call (handle_smc in arch/arm64/kvm/handle_exit.c " +
           "answers every smc with -1); call PSCI with hvc";
  }
  if (smc && immediate != 0) {
    return line + "handle_smc (arch/arm64/kvm/handle_exit.c) answers an smc whose immediate is not 0 with -1 " +
           "without reading x0, as SMCCC reserves those immediates; write smc #0";
  }
  if (!call.function_id) return line + "KVM does not know the function id that was in x0";
  return line + why_function_unknown(*call.function_id, kernel);
}

// The call at `at` if it is an hvc or smc that x0 says was refused.
inline std::optional<RefusedCall> refused_call_at(std::uint64_t at, const kh::Registers& regs, const GuestView& guest) {
  const auto encoding = guest.instruction_at(at);
  if (!encoding || !(is_hvc(*encoding) || is_smc(*encoding))) return std::nullopt;
  if (regs.x[0] != static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED)) return std::nullopt;
  return RefusedCall{at, *encoding, std::nullopt};
}

// ---- What a re-run found ------------------------------------------------------
//
// A guest whose vectors fault over and over has lost its first exception's
// address and syndrome, and a refused call has lost its function id (x0 now
// holds the -1). The guest is deterministic, so running it again from the
// start one instruction at a time finds them (program/replay.hpp does it);
// what it found:

struct Replay {
  enum class End {
    exception,          // the instruction at `pc` (or the fetch from it) took the first exception
    refused_call,       // the call sought came back refused; `refused` holds its function id
    powered_off,        // the guest powered off instead: it did not run the same way twice
    stopped_otherwise,  // it stopped for another reason: `why`
    instruction_limit,  // the bounds of the re-run, reached first
    time_limit,
    interrupted,  // Ctrl-C
    failed,       // the second VM could not be made or run: `why`
  };
  End end = End::failed;
  unsigned instructions = 0;                 // instructions the re-run completed
  std::uint64_t pc = 0;                      // where it ended: the instruction that took the exception, say
  std::optional<std::uint64_t> previous_pc;  // the instruction completed before that one
  std::optional<kh::Registers> entry;        // the registers as the exception entered the vectors, when seen
  std::optional<RefusedCall> refused;        // the last refused call on the way, with its function id
  std::optional<kh::Registers> last;         // the registers where the re-run ended
  std::chrono::nanoseconds took{};
  std::string why;  // stopped_otherwise, failed
};

// What the re-run is to find, for a guest stopped with these registers
// (nothing when the registers say all there is).
struct ReplayGoal {
  enum class Kind { first_exception, refused_call } kind;
  std::uint64_t call_address = 0;  // refused_call: the hvc or smc whose function id was lost
};

// ---- Why a run failed ---------------------------------------------------------

// Where a stopped guest waits in WFI: the WFI at PC, or the one just before
// it (KVM steps PC past a WFI it trapped); 0 when it does not.
inline std::uint64_t waits_in_wfi_at(const kh::Registers& regs, const GuestView& guest) {
  const auto at = guest.instruction_at(regs.pc);
  const auto before = guest.instruction_at(regs.pc - 4);
  return at && is_wfi(*at) ? regs.pc : before && is_wfi(*before) ? regs.pc - 4 : 0;
}

// What a guest that never stops is doing, from the instruction at PC and the
// one before it (KVM steps PC past an instruction it handled): "" when
// nothing there says.
inline std::string explain_what_it_does(const kh::Registers& regs, const GuestView& guest, KernelVersion kernel,
                                        const Replay* replay = nullptr) {
  const auto at = guest.instruction_at(regs.pc);
  const auto before = guest.instruction_at(regs.pc - 4);
  if (auto call = refused_call_at(regs.pc - 4, regs, guest)) {
    if (replay && replay->refused && replay->refused->address == call->address) call = replay->refused;
    return explain_refused_call(*call, kernel) + ".";
  }
  const auto waits_at = waits_in_wfi_at(regs, guest);
  if (waits_at != 0 && guest.has_vgic) {
    return "It waits in WFI at " + hex(waits_at) +
           " for an interrupt that never reached it. The VM has a GIC, but an interrupt wakes WFI only when "
           "it is enabled, in a group the CPU interface enables, at a priority below PMR (KVM starts PMR at 0, "
           "below which nothing is), with the distributor enabled; and the timer fires only when armed "
           "(CNTV_CTL_EL0: ENABLE set, IMASK clear).";
  }
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

// Whether the guest is caught in its exception vectors with no RAM under
// them: each fetch of the handler faults again, inside the kernel, and no
// amount of time gets it out.
inline bool faults_forever(const kh::Registers& regs, const GuestView& guest) {
  return in_exception_vectors(regs) && !guest.instruction_at(regs.pc);
}

// What a re-run from the start could find that these registers have lost:
// the first exception, or the function id of a refused call. Only for a
// guest the watchdog stopped (Ctrl-C asked to stop now).
inline std::optional<ReplayGoal> replay_goal_for(const kh::Error& error, const kh::Registers& regs,
                                                 const GuestView& guest) {
  if (error.problem != kh::Problem::watchdog_expired || guest.image.empty()) return std::nullopt;
  if (first_exception_lost(regs)) return ReplayGoal{ReplayGoal::Kind::first_exception};
  if (refused_call_at(regs.pc - 4, regs, guest)) return ReplayGoal{ReplayGoal::Kind::refused_call, regs.pc - 4};
  return std::nullopt;
}

// Where the first exception was, as the re-run found it, and why: from where
// PC went, or from the instruction's encoding, or else from the syndrome when
// the re-run saw the exception enter the vectors. (The same words either way
// where the encoding says: how a CPU reports a step into the vectors varies.)
inline std::string describe_first_exception(const Replay& replay, const GuestView& guest) {
  const std::uint64_t at = replay.pc;
  const std::string from = replay.previous_pc ? guest.where(*replay.previous_pc) : "the start";
  const std::string fetch = "the fetch from " + hex(at) + ", where " + from + " jumped";
  if (!guest.in_ram(at)) {
    return fetch + ": no memory is there (guest RAM is " + hex(kh::ram_base) + ".." +
           hex(kh::ram_base + guest.ram.size() - 1) +
           "), so KVM injects an instruction abort (EC 0x21; kvm_handle_guest_abort in arch/arm64/kvm/mmu.c).";
  }
  if (at % 4 != 0) return fetch + ": not a multiple of 4, so a PC alignment fault (EC 0x22).";
  std::string text = guest.where(at);
  if (guest.past_image(at)) {
    text += ", past the end of the guest's code (its " + std::to_string(guest.image.size()) + " bytes end at " +
            hex(kh::ram_base + guest.image.size() - 1) + "; reached from " + from + ")";
  }
  const std::uint32_t encoding = guest.instruction_at(at).value_or(0);
  char hex_encoding[16];
  std::snprintf(hex_encoding, sizeof hex_encoding, "%08x", encoding);
  std::string why = why_instruction_faults(encoding);
  if (why.empty() && replay.entry) {
    why = "ESR_EL1 then said " + describe_esr(replay.entry->esr_el1) +
          (replay.entry->far_el1 != unknown_register_value ? ", FAR_EL1 " + hex(replay.entry->far_el1) : "");
  }
  if (why.empty()) why = "the encoding alone does not say why it faulted, and its syndrome is lost";
  return text + ", encoding " + hex_encoding + ": " + why + ".";
}

// The registers a re-run that went the same way must end with: those the
// guest's own instructions set (the vectors' faults change only PC, PSTATE,
// ESR_EL1, ELR_EL1, FAR_EL1 and SPSR_EL1).
inline bool same_way(const kh::Registers& first_run, const kh::Registers& re_run) {
  return first_run.x == re_run.x && first_run.sp_el1 == re_run.sp_el1 && first_run.vbar_el1 == re_run.vbar_el1;
}

// What the re-run found, in words. `regs`: the first run's, at its end.
inline std::vector<std::string> explain_replay(const Replay& replay, const kh::Registers& regs, const GuestView& guest,
                                               KernelVersion kernel) {
  using End = Replay::End;
  const std::string rerun =
      "Run again from the start one instruction at a time (a second VM, single-stepped with "
      "KVM_SET_GUEST_DEBUG), ";
  const std::string ran = counted(replay.instructions, "instruction");
  switch (replay.end) {
    case End::exception: {
      std::vector<std::string> lines{
          rerun + "it took its first exception at instruction " + std::to_string(replay.instructions + 1) + ":",
          describe_first_exception(replay, guest)};
      if (replay.refused)
        lines.push_back("Before that, " + explain_refused_call(*replay.refused, kernel) +
                        "; the guest went on past it.");
      if (replay.last && !same_way(regs, *replay.last)) {
        lines.push_back(
            "But the re-run ended with registers other than this run's: the guest did not run the same "
            "way twice (does it read a clock?), so this run's first exception may have been elsewhere.");
      }
      return lines;
    }
    case End::refused_call: return {};  // said where the call is explained
    case End::powered_off:
      return {rerun + "it powered off after " + ran + ": the guest does not run the same way twice (does it read a " +
              "clock?), so where its first exception was stays unknown."};
    case End::stopped_otherwise:
      return {rerun + "it stopped after " + ran + " for another reason (" + replay.why +
              "): the guest does not run the same way twice."};
    case End::instruction_limit:
      return {rerun + "it took no exception in its first " + ran +
              " (the re-run's limit): the first came later; --step-guest shows every instruction."};
    case End::time_limit:
      return {rerun + "it took no exception in " + format_duration(replay.took) + " (the re-run's limit), " + ran +
              ", and was then at " + guest.where(replay.pc) + "; --step-guest shows every instruction."};
    case End::interrupted: return {"Ctrl-C stopped the re-run that looked for the first exception."};
    case End::failed: return {"Could not run the guest again to find its first exception: " + replay.why + "."};
  }
  return {};
}

// Lines that explain a failed run from the guest's registers, and from what a
// re-run found when there was one: why it never powered off, or which
// instruction KVM could not decode.
inline std::vector<std::string> diagnose(const kh::Error& error, const kh::Registers& regs, const GuestView& guest,
                                         KernelVersion kernel = running_kernel(), const Replay* replay = nullptr) {
  std::vector<std::string> lines;
  const bool stopped = error.problem == kh::Problem::watchdog_expired || error.problem == kh::Problem::interrupted;
  if (stopped && in_exception_vectors(regs)) {
    lines.push_back("PC " + hex(regs.pc) + " is in the exception vectors at VBAR_EL1 " + hex(regs.vbar_el1) + ", " +
                    vector_entry_name(regs.pc - regs.vbar_el1) + ": the guest took an exception.");
    if (faults_forever(regs, guest)) {
      lines.push_back(
          "The vectors are outside guest RAM, so fetching the handler faults too, again and again, "
          "inside the kernel: KVM_RUN never returns, and only the watchdog gets control back.");
    }
    if (!first_exception_lost(regs)) {
      lines.push_back("ESR_EL1 says why: " + describe_esr(regs.esr_el1) + "; ELR_EL1 says where: " + hex(regs.elr_el1) +
                      ".");
    } else {
      lines.push_back("ESR_EL1 and ELR_EL1 describe an exception taken in the vectors themselves (EC " +
                      hex(exception_class_of(regs.esr_el1)) + " at " + hex(regs.elr_el1) +
                      "), not the first one: its syndrome and address are lost.");
      if (replay != nullptr) {
        for (std::string& line : explain_replay(*replay, regs, guest, kernel)) lines.push_back(std::move(line));
      }
    }
  } else if (stopped) {
    lines.push_back("PC " + guest.where(regs.pc) + ": the guest is running there and never called PSCI SYSTEM_OFF.");
    if (const std::string doing = explain_what_it_does(regs, guest, kernel, replay); !doing.empty()) {
      lines.push_back(doing);
    }
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

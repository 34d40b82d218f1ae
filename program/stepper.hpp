// SPDX-License-Identifier: MIT
// program/stepper.hpp: watching the guest as it runs.
//   --step-guest: each instruction before it runs (address, encoding, line
//   of guest.S), and after it the registers it changed; exits appear in
//   between, in place. The first --step-limit instructions are shown; the
//   guest then runs on to its end, still one instruction at a time, counted.
//   --break-at: every register, each time the guest gets to one instruction:
//   a hardware breakpoint stops it there, or, when it is single-stepped
//   anyway, its PC is compared at each step.
// Both were asked for: their lines show at every verbosity, -q too.
#pragma once

#include <charconv>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/inspect.hpp"
#include "program/output.hpp"

namespace kh = kvm_hello;

// Instructions --step-guest shows one by one before the rest run unshown:
// guest.S's whole run is 40, and a guest of your own with a loop of a few
// dozen rounds still shows whole. Each step shown reads 39 registers, an
// ioctl each, which under emulation takes milliseconds: even there a guest
// that never ends gets to the limit before the watchdog's 5 s.
inline constexpr unsigned default_step_limit = 200;

// Breakpoint hits whose registers are shown; then the breakpoint is removed,
// so that one inside a loop that never ends cannot flood the terminal.
// (guest.S's loop runs 7 times.)
inline constexpr unsigned breakpoint_hits_shown = 10;

// ---- --break-at: a line of the guest's source, or an address -------------------

// The lines nearest `line`, before and after it, that have an instruction:
// "the nearest lines that have one: 23 and 26", or the one line at either end.
inline std::string nearest_lines_with_instructions(const GuestSource& source, int line) {
  std::optional<int> before, after;
  for (const GuestLine& known : source.lines) {
    if (known.line < line && (!before || known.line > *before)) before = known.line;
    if (known.line > line && (!after || known.line < *after)) after = known.line;
  }
  if (before && after) {
    return "the nearest lines that have one: " + std::to_string(*before) + " and " + std::to_string(*after);
  }
  if (!before && !after) return "no line of it has one";
  return "the nearest line that has one: " + std::to_string(before ? *before : *after);
}

// A whole number in `text`, all of it, in `base`.
inline std::optional<std::uint64_t> whole_number(std::string_view text, int base) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (text.empty() || error != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// The address --break-at WHERE names: "guest.S:28" or "28" (a line of the
// guest's source: its first instruction, from the line table), or "0x10010"
// (an instruction's address in guest RAM). Otherwise the message for a bad
// command line: no such file, no instruction on that line (naming the
// nearest lines that have one), no line table, an address outside RAM.
inline std::expected<std::uint64_t, std::string> resolve_break_at(std::string_view where, const GuestSource& source) {
  const std::string said = "--break-at " + std::string(where) + ": ";
  if (where.starts_with("0x")) {
    const auto address = whole_number(where.substr(2), 16);
    if (!address) return std::unexpected(said + "not an address: give one in hexadecimal, like 0x10010");
    if (*address < kh::ram_base || *address - kh::ram_base >= kh::ram_size) {
      return std::unexpected(said + "outside guest RAM (" + hex(kh::ram_base) + ".." +
                             hex(kh::ram_base + kh::ram_size - 1) + "), where the guest's instructions are");
    }
    if (*address % 4 != 0) return std::unexpected(said + "an instruction's address is a multiple of 4");
    return *address;
  }
  const std::size_t colon = where.rfind(':');
  const std::string_view file = colon == std::string_view::npos ? "" : where.substr(0, colon);
  const auto line = whole_number(colon == std::string_view::npos ? where : where.substr(colon + 1), 10);
  if (!line || *line == 0 || *line > 1'000'000) {
    return std::unexpected(said + "give a line of the guest's source (guest.S:28, or 28) or an address (0x10010)");
  }
  if (source.lines.empty()) {
    return std::unexpected(said + "this guest has no line table: give it with --guest-lines (make run GUEST= " +
                           "does), or give an address");
  }
  // "test/guests/spin.S:11" names spin.S too: the table knows the file's name only.
  const std::string_view name = file.substr(file.rfind('/') == std::string_view::npos ? 0 : file.rfind('/') + 1);
  if (!file.empty() && name != source.file) {
    return std::unexpected(said + "the guest's source is " + source.file + ", not " + std::string(file));
  }
  const int number = static_cast<int>(*line);
  for (const GuestLine& known : source.lines) {  // in address order: the line's first instruction
    if (known.line == number) return known.address;
  }
  return std::unexpected(said + source.file + ":" + std::to_string(number) + " has no instruction; " +
                         nearest_lines_with_instructions(source, number));
}

// ---- Stepping, and stopping at a breakpoint -------------------------------------

// "0x10010 (guest.S:28)", or the address alone when no line is known.
inline std::string address_and_line(const GuestView& guest, std::uint64_t address) {
  const GuestLine* line = guest.line_at(address);
  return hex(address) + (line ? " (" + guest.source->file + ":" + std::to_string(line->line) + ")" : "");
}

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

// What to watch, from the command line.
struct Watch {
  bool single_step = false;                  // --step-guest
  unsigned step_limit = default_step_limit;  // --step-limit: instructions shown one by one, 0 for all
  std::optional<std::uint64_t> breakpoint;   // --break-at, resolved to an address
};

// Sees each KVM_EXIT_DEBUG of a run. Single-stepping: shows the instruction
// the guest is about to run, and the registers the last one changed; at the
// breakpoint's address, all of them. With a hardware breakpoint and no
// single-stepping: all registers at each hit, then steps over the
// instruction there (single-steps it with the breakpoint off, then sets the
// breakpoint again) so that the guest goes on.
class GuestStepper {
 public:
  GuestStepper(const kh::VcpuFd& vcpu, GuestView guest, const Output& out, Watch watch, kh::CallObserver observe = {})
      : vcpu_(vcpu), guest_(std::move(guest)), out_(out), watch_(watch), observe_(observe) {}

  // Single-stepping, before the first KVM_RUN: the first instruction.
  [[nodiscard]] kh::Result<void> start() {
    auto regs = kh::read_registers(vcpu_);
    if (!regs) return std::unexpected(regs.error());
    before_ = *regs;
    reached(before_);
    return {};
  }

  // Single-stepping a vCPU whose registers mean nothing before its first
  // KVM_RUN (lesson 3's vCPU 1, powered off until the guest's CPU_ON sets
  // its PC): instead of start(), at its first step exit `note` (what ran
  // unshown before it), then the instruction it is about to run.
  void start_at_first_exit(std::string note) {
    first_exit_note_ = std::move(note);
    started_unshown_ = true;
  }

  // At each KVM_EXIT_DEBUG: a breakpoint hit, or one instruction done.
  void stopped(const kh::DebugExit& exit) {
    if (failure_) return;  // a call failed: watch no more (failure() says which)
    if (exception_class_of(exit.esr) == exception_class::breakpoint) return at_hardware_breakpoint();
    if (stepping_over_) return set_breakpoint_again();
    if (watch_.single_step) instruction_done();
  }

  // After the run: how many instructions were not shown, or that the guest
  // never got to the breakpoint.
  void finish() const {
    if (unshown_ > 0) {
      out_.say(Verbosity::quiet,
               "%u more instructions not shown: make trace ARGS='--step-limit N' shows the first N (0: all)", unshown_);
    }
    if (watch_.breakpoint && hits_ == 0) {
      out_.say(Verbosity::quiet, "%s never got to the breakpoint at %s%s", out_.vcpu.empty() ? "the guest" : "this vCPU",
               address_and_line(guest_, *watch_.breakpoint).c_str(),
               started_unshown_ ? " after its first instruction, which ran unshown (--break-at without --step-guest, "
                                  "a hardware breakpoint, stops at that one too)"
                                : "");
    }
  }

  // The first call that failed while the guest ran; after it, nothing more was watched.
  const std::optional<kh::Error>& failure() const { return failure_; }
  unsigned breakpoint_hits() const { return hits_; }

 private:
  // Single-stepping: an instruction is done; the registers it changed, then the next.
  void instruction_done() {
    if (unshown_ > 0) return unshown_instruction_done();
    const auto now = read_registers();
    if (!now) return;
    if (first_exit_note_) {  // no registers before this exit to compare with
      out_.say(Verbosity::quiet, "%s", first_exit_note_->c_str());
      first_exit_note_.reset();
    } else if (const std::string changes = register_changes(before_, *now); !changes.empty()) {
      out_.say(Verbosity::quiet, "                 %s", changes.c_str());
    }
    before_ = *now;
    reached(*now);
  }

  // Past the limit: counted, and only PC read, to compare with the breakpoint's.
  void unshown_instruction_done() {
    ++unshown_;
    if (!watch_.breakpoint || hits_ == breakpoint_hits_shown) return;
    const auto pc = kh::get_register(kh::Step::run_guest, vcpu_, kh::reg::pc);
    if (!pc) return fail(pc.error());
    if (*pc != *watch_.breakpoint) return;
    if (const auto regs = read_registers()) show_hit(*regs);
  }

  // Single-stepping: the guest is about to run the instruction at regs.pc.
  void reached(const kh::Registers& regs) {
    if (watch_.step_limit != 0 && shown_ == watch_.step_limit) {
      ++unshown_;
      out_.say(Verbosity::quiet, "(--step-limit %u reached: the guest runs on, one instruction at a time, unshown)",
               watch_.step_limit);
    } else {
      ++shown_;
      out_.say(Verbosity::quiet, "%s", instruction_line(regs.pc).c_str());
    }
    if (watch_.breakpoint && regs.pc == *watch_.breakpoint && hits_ < breakpoint_hits_shown) show_hit(regs);
  }

  // KVM_EXIT_DEBUG with EC 0x30: the registers; then step over the
  // instruction, or, after the last hit shown, remove the breakpoint.
  void at_hardware_breakpoint() {
    const auto regs = read_registers();
    if (!regs) return;
    show_hit(*regs);
    const bool removed = hits_ == breakpoint_hits_shown;
    if (const auto set = kh::set_guest_debug(vcpu_, {.single_step = !removed, .breakpoint = std::nullopt}, observe_);
        !set) {
      return fail(set.error());
    }
    stepping_over_ = !removed;
  }

  // The instruction at the breakpoint has run (a software step): set it again.
  void set_breakpoint_again() {
    stepping_over_ = false;
    if (const auto set =
            kh::set_guest_debug(vcpu_, {.single_step = false, .breakpoint = watch_.breakpoint}, observe_);
        !set) {
      fail(set.error());
    }
  }

  // All the registers, as the guest is about to run the instruction at the
  // breakpoint: one record, written at once.
  void show_hit(const kh::Registers& regs) {
    ++hits_;
    const bool hardware = !watch_.single_step;
    std::string record =
        out_.line(Verbosity::quiet, "breakpoint at %s, hit %u%s: the registers before it runs",
                  address_and_line(guest_, regs.pc).c_str(), hits_, hardware ? " (KVM_EXIT_DEBUG, EC 0x30)" : "");
    if (hardware || unshown_ > 0) {  // its line is not shown yet
      record += out_.line(Verbosity::quiet, "%s", instruction_line(regs.pc).c_str());
    }
    record += format_registers(regs);
    if (hits_ == breakpoint_hits_shown) {
      record += out_.line(Verbosity::quiet,
                          "(breakpoint hit %u times, as many as are shown: the guest runs on without it)", hits_);
    }
    out_.record(record);
  }

  // "guest 0x10000  58000201  guest.S:22  ldr     x1, =KVM_HELLO_MMIO_OUT ..."
  std::string instruction_line(std::uint64_t pc) const {
    const std::uint32_t encoding = guest_.instruction_at(pc).value_or(0);
    const GuestLine* line = guest_.line_at(pc);
    char text[512];
    if (line != nullptr) {
      const std::string where = guest_.source->file + ":" + std::to_string(line->line);
      std::snprintf(text, sizeof text, "guest %s  %08x  %-11s %s", hex(pc).c_str(), encoding, where.c_str(),
                    line->text.c_str());
    } else {
      std::snprintf(text, sizeof text, "guest %s  %08x", hex(pc).c_str(), encoding);
    }
    return text;
  }

  std::optional<kh::Registers> read_registers() {
    auto regs = kh::read_registers(vcpu_);
    if (!regs) return fail(regs.error()), std::nullopt;
    return *regs;
  }
  void fail(const kh::Error& error) {
    if (!failure_) failure_ = error;
  }

  const kh::VcpuFd& vcpu_;
  GuestView guest_;
  const Output& out_;
  Watch watch_;
  kh::CallObserver observe_;
  kh::Registers before_;
  unsigned shown_ = 0;    // instructions shown
  unsigned unshown_ = 0;  // instructions reached past the limit
  unsigned hits_ = 0;     // breakpoint hits shown
  bool stepping_over_ = false;
  std::optional<std::string> first_exit_note_;  // start_at_first_exit()'s, until that exit
  bool started_unshown_ = false;                 // start_at_first_exit() was called
  std::optional<kh::Error> failure_;
};

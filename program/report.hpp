// SPDX-License-Identifier: MIT
// program/report.hpp: what kvm-hello says as the guest runs and when it
// stops: each exit, the register dump, and a failure (its explanation, its
// message, its status).
#pragma once

#include <cstdio>
#include <optional>
#include <string>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/inspect.hpp"
#include "program/messages.hpp"
#include "program/output.hpp"
#include "program/replay.hpp"

namespace kh = kvm_hello;

// The registers a lesson's device has: which addresses, and their names.
struct KnownRegisters {
  bool (*has)(std::uint64_t address);
  const char* names;  // "OUT, ANSWER and ECHO"
};
inline constexpr KnownRegisters hello_registers{kh::HelloDevice::has_register, "OUT, ANSWER and ECHO"};
inline constexpr KnownRegisters interrupt_registers{kh::InterruptDevice::has_register,
                                                    "OUT, ANSWER, ECHO, IRQ and DOORBELL"};
inline constexpr KnownRegisters vcpus_registers{kh::VcpusDevice::has_register,
                                                "OUT, ANSWER, ECHO, IRQ, PSCI_CALL and PSCI_RESULT"};

// Prints "exit N: ..." for each exit (but KVM_EXIT_DEBUG), at most
// line_limit of them, so a guest that floods us cannot flood the terminal;
// and says once when the guest uses an address where no register is.
class ExitReporter {
 public:
  static constexpr unsigned line_limit = 100;

  explicit ExitReporter(const Output& out, KnownRegisters known = hello_registers) : out_(out), known_(known) {}

  void report(const kh::Exit& exit) {
    ++count_;
    if (count_ <= line_limit || out_.shows(Verbosity::verbose)) {
      out_.say(Verbosity::normal, "exit %u: %s", count_, describe_exit(exit).c_str());
    } else if (count_ == line_limit + 1) {
      out_.say(Verbosity::normal, "(more exits than %u: not shown one by one; -v shows them all)", line_limit);
    }
    const auto* access = std::get_if<kh::MmioAccess>(&exit);
    if (access != nullptr && !known_.has(access->address) && !said_unmapped_) {
      said_unmapped_ = true;
      out_.say(Verbosity::normal,
               "note: no register at %s (nor at any address but %s): reads there "
               "return %s, writes are dropped; said once",
               hex(access->address).c_str(), known_.names, hex(kh::HelloDevice::unmapped_read_value).c_str());
    }
    if (const std::string wide = access != nullptr ? describe_wide_out_write(*access) : ""; !wide.empty()) {
      if (!said_wide_out_) out_.say(Verbosity::normal, "note: %s; said once", wide.c_str());
      said_wide_out_ = true;
    }
  }

 private:
  const Output& out_;
  KnownRegisters known_;
  unsigned count_ = 0;
  bool said_unmapped_ = false;
  bool said_wide_out_ = false;
};

// What the guest printed, escaped (and coloured on a terminal), and how much
// of it was not kept; or that it printed nothing.
inline std::string describe_guest_output(const kh::HelloDevice& device, const Output& out) {
  if (device.output().empty()) return "(nothing: the guest wrote no byte to OUT)";
  std::string text = out.paint(colour::guest, escaped(device.output()));
  if (device.output_dropped() != 0) {
    text += " (and " + std::to_string(device.output_dropped()) + " more bytes, not kept)";
  }
  return text;
}

// The guest's registers, read with KVM_GET_ONE_REG (not traced: dozens of
// calls that would drown the trace), printed to `to`.
inline void print_registers(const kh::Registers& regs, FILE* to) {
  std::fprintf(to, "registers (read with KVM_GET_ONE_REG, not traced):\n%s", format_registers(regs).c_str());
}
inline std::optional<kh::Registers> dump_registers(const kh::Vcpu& vcpu, FILE* to) {
  const auto regs = kh::read_registers(vcpu.fd);
  if (!regs) return std::nullopt;
  print_registers(*regs, to);
  return *regs;
}

// Reports an error on stderr, after the register dump and what it says when
// a vCPU exists (and what a re-run of the guest found, when its registers
// have lost something: program/replay.hpp); returns its exit status.
inline int fail(const kh::Error& error, const Output& out, std::string_view device, const kh::Vcpu* vcpu = nullptr,
                const GuestView& guest = {}) {
  std::fflush(stdout);
  std::optional<kh::Registers> regs;
  if (vcpu != nullptr) {
    if (const auto read = kh::read_registers(vcpu->fd)) regs = *read;
  }
  const bool shown = regs && out.shows(Verbosity::normal);
  if (shown) {
    print_registers(*regs, stderr);
    std::optional<Replay> replay;
    // (A re-run is lesson 1's machine, with no GIC: it would not retrace a guest of lesson 2.)
    const auto goal = guest.has_vgic ? std::nullopt : replay_goal_for(error, *regs, guest);
    if (goal) replay = replay_guest(guest.image, device, *goal);
    for (const std::string& line : diagnose(error, *regs, guest, running_kernel(), replay ? &*replay : nullptr)) {
      std::fprintf(stderr, "      %s\n", line.c_str());
    }
    if (guest.explain_more) {
      for (const std::string& line : guest.explain_more(error, *regs)) std::fprintf(stderr, "      %s\n", line.c_str());
    }
  }
  const bool forever = regs && faults_forever(*regs, guest);
  const Failure failure = failure_for(error, device, forever ? StuckGuest::faulting_forever : StuckGuest::running,
                                      shown ? Above::registers : Above::nothing);
  const std::string message = "kvm-hello: " + failure.message;
  const bool colour = out.colour && wants_colour(STDERR_FILENO);
  std::fprintf(stderr, "%s\n", colour ? out.paint(colour::error, message).c_str() : message.c_str());
  return static_cast<int>(failure.status);
}

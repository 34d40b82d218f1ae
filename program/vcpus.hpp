// SPDX-License-Identifier: MIT
// program/vcpus.hpp: what kvm-hello says about lesson 3's vCPUs: after each
// exit of a vCPU, what lesson 3's device recorded for it (its lines, its
// interrupts, its PSCI calls and their answers in words), a stack that is
// another vCPU's; what each vCPU's thread is given (VcpuRun); each vCPU's
// power state; and, after a failed run, every vCPU's registers under its name.
#pragma once

#include <chrono>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/format.hpp"
#include "program/inspect.hpp"
#include "program/interrupts.hpp"
#include "program/messages.hpp"
#include "program/output.hpp"
#include "program/report.hpp"
#include "program/stepper.hpp"
#include "program/trace.hpp"

namespace kh = kvm_hello;

// "vCPU 1": how every line of a vCPU starts, and how errors name it.
inline std::string vcpu_name(std::uint32_t id) { return "vCPU " + std::to_string(id); }

// What a PSCI call's x0 means, in words, for the calls lesson 3's guest
// makes (the others: the return code's name). `vcpus`: how many the VM has.
inline std::string explain_psci_result(std::uint32_t function, std::int64_t x0, std::uint32_t vcpus) {
  const std::string value = std::to_string(x0);
  const std::string name(kh::psci_result_name(x0));
  if (function == kh::psci::affinity_info64 || function == PSCI_0_2_FN_AFFINITY_INFO) {
    if (x0 == kh::psci::affinity_off)
      return value + ": OFF: that vCPU is STOPPED (it called CPU_OFF, or never started)";
    if (x0 == kh::psci::affinity_on) return value + ": ON: that vCPU is not STOPPED";
  }
  std::string said = value + (name.empty() ? "" : ": " + name);
  if (function != kh::psci::cpu_on64 && function != PSCI_0_2_FN_CPU_ON) return said;
  if (x0 == kh::psci::success) {
    return said +
           ": KVM found the vCPU of that MPIDR STOPPED, recorded the entry point and the context id for its reset, "
           "made it RUNNABLE and woke its thread, inside KVM_RUN (kvm_psci_vcpu_on): no exit came to us";
  }
  if (x0 == kh::psci::invalid_parameters) {
    return said + ": no vCPU of this VM has the MPIDR the guest named in x1 (KVM gives vCPU n the MPIDR n: this VM " +
           "has vCPUs 0 to " + std::to_string(vcpus - 1) + "; kvm_mpidr_to_vcpu found none)";
  }
  if (x0 == kh::psci::already_on) {
    return said +
           ": that vCPU is not STOPPED: a CPU_ON started it already, and KVM leaves a running vCPU as it is "
           "(kvm_psci_vcpu_on)";
  }
  return said;
}

// Says, after each exit of one vCPU (on that vCPU's thread), the records
// lesson 3's device made for it since the last exit, each line starting
// with the vCPU's name (its Output's). And, once, that the vCPU's stack
// pointer is in another vCPU's stack: read from the vCPU (KVM_GET_ONE_REG,
// not traced) at each exit, its own thread's to read.
class VcpuReporter {
 public:
  VcpuReporter(const Output& out, const kh::VcpusDevice& device, const kh::Vcpu& vcpu,
               std::chrono::steady_clock::time_point started)
      : out_(out), device_(device), vcpu_(vcpu), started_(started) {}

  void report() {
    for (const kh::VcpuRecord& record : device_.records(vcpu_.id, seen_)) {
      ++seen_;
      say(record);
    }
    check_stack();
  }

 private:
  void say(const kh::VcpuRecord& record) {
    const std::string at = format_duration(record.at - started_) + " into the run";
    switch (record.kind) {
      case kh::VcpuRecord::Kind::line:
        out_.say(Verbosity::normal, "the guest says: %s", out_.paint(colour::guest, escaped(record.text)).c_str());
        return;
      case kh::VcpuRecord::Kind::took:
        out_.say(Verbosity::normal, "the guest's handler took %s (%s)", describe_intid(record.value).c_str(),
                 at.c_str());
        return;
      case kh::VcpuRecord::Kind::psci:
        out_.say(Verbosity::normal, "the guest called %s and got x0 = %s", describe_function_id(record.value).c_str(),
                 explain_psci_result(record.value, record.result, device_.vcpu_count()).c_str());
        return;
    }
  }

  // Whose stack an address is in: the vCPU n for which it lies in
  // (stack_top(n) - stack_size, stack_top(n)]; none when it is in no one's.
  std::optional<std::uint32_t> stack_owner(std::uint64_t sp) const {
    for (std::uint32_t n = 0; n < device_.vcpu_count(); ++n) {
      if (sp <= kh::stack_top(n) && sp > kh::stack_top(n) - kh::stack_size) return n;
    }
    return std::nullopt;
  }

  void check_stack() {
    if (said_stack_) return;
    const auto sp = kh::get_register(kh::Step::run_guest, vcpu_.fd, kh::reg::sp_el1);
    if (!sp) return;
    const auto owner = stack_owner(*sp);
    if (!owner || *owner == vcpu_.id) return;
    said_stack_ = true;
    out_.say(Verbosity::normal,
             "its stack pointer SP_EL1 is %s, in %s's stack (%s to %s): the two vCPUs save their registers over each "
             "other's. Each vCPU needs a stack of its own: lesson3/guest.S gives vCPU n the %s bytes below %s - n * "
             "%s",
             hex(*sp).c_str(), vcpu_name(*owner).c_str(), hex(kh::stack_top(*owner) - kh::stack_size).c_str(),
             hex(kh::stack_top(*owner)).c_str(), hex(kh::stack_size).c_str(), hex(kh::stack_top(0)).c_str(),
             hex(kh::stack_size).c_str());
  }

  const Output& out_;
  const kh::VcpusDevice& device_;
  const kh::Vcpu& vcpu_;
  std::chrono::steady_clock::time_point started_;
  std::size_t seen_ = 0;
  bool said_stack_ = false;
};

// What each vCPU's thread is given, and keeps, for lesson 3's run: its
// name, its own Output (every line starts with the name) and trace, the
// device's view for it, its reporters, and its own stepper when the vCPU is
// watched (--step-guest, --break-at).
struct VcpuRun {
  std::string name;
  Output out;
  Tracer tracer;
  kh::VcpusDevice::View view;
  ExitReporter exits;
  VcpuReporter records;
  std::optional<GuestStepper> stepper;
  VcpuRun(const Output& walk_out, kh::VcpusDevice& device, const kh::Vcpu& vcpu,
          std::chrono::steady_clock::time_point t)
      : name(vcpu_name(vcpu.id)),
        out(walk_out),
        tracer(out),
        view(device.for_vcpu(vcpu.id)),
        exits(out, vcpus_registers),
        records(out, device, vcpu, t) {
    out.vcpu = name;
  }
  VcpuRun(const VcpuRun&) = delete;
  VcpuRun& operator=(const VcpuRun&) = delete;
};

// The reason to stop the other vCPUs for, once one has ended with `result`:
// its SYSTEM_OFF, the watchdog's stop or Ctrl-C, as it was stopped itself;
// after any other failure, a plain stop.
inline kh::StopReason stop_reason_after(const kh::Result<kh::RunStats>& result) {
  if (result) return kh::StopReason::powered_off;
  if (result.error().problem == kh::Problem::watchdog_expired) return kh::StopReason::deadline;
  if (result.error().problem == kh::Problem::interrupted) return kh::StopReason::interrupted;
  return kh::StopReason::powered_off;
}

// "STOPPED (5)": a power state, by name (the trace says a call's: describe_mp_state).
inline std::string describe_power_state(kh::MpState state) {
  const std::string_view name = kh::mp_state_name(state);
  return (name.empty() ? "an unknown state" : std::string(name)) + " (" +
         std::to_string(static_cast<std::uint32_t>(state)) + ")";
}

// What one vCPU wrote, after the run: its lines (and a line it did not end).
inline std::string describe_vcpu_output(const kh::VcpusDevice& device, std::uint32_t id, const Output& out) {
  std::string text;
  for (const kh::VcpuRecord& record : device.records(id)) {
    if (record.kind == kh::VcpuRecord::Kind::line) text += record.text + "\n";
  }
  text += device.unfinished_line(id);
  if (text.empty()) return "(nothing: it wrote no byte to OUT)";
  return out.paint(colour::guest, escaped(text));
}

// The INTIDs one vCPU's handler took, in order: "27 1".
inline std::string list_vcpu_intids(const kh::VcpusDevice& device, std::uint32_t id) {
  std::vector<std::uint32_t> intids;
  for (const kh::VcpuRecord& record : device.records(id)) {
    if (record.kind == kh::VcpuRecord::Kind::took) intids.push_back(record.value);
  }
  return list_intids(intids);
}

// Reports a failed run of several vCPUs on stderr: each vCPU's registers
// and what they say (lesson 1's and 2's words for a stuck guest, its PMR
// when it waits in WFI), every line under the vCPU's name; then the error's
// line, which names the vCPU it happened on. Returns its exit status.
inline int fail_vcpus(const kh::Error& error, const Output& out, std::string_view device,
                      std::span<const kh::Vcpu> vcpus, const kh::Vgic& vgic, const GuestView& guest) {
  std::fflush(stdout);
  bool shown = false;
  for (const kh::Vcpu& vcpu : vcpus) {
    const auto regs = kh::read_registers(vcpu.fd);
    if (!regs || !out.shows(Verbosity::normal)) continue;
    shown = true;
    const std::string name = vcpu_name(vcpu.id);
    Output named = out;
    named.vcpu = name;
    std::string text = "registers (read with KVM_GET_ONE_REG, not traced):\n" + format_registers(*regs);
    std::vector<std::string> lines = diagnose(error, *regs, guest);
    if (waits_in_wfi_at(*regs, guest) != 0 &&
        (error.problem == kh::Problem::watchdog_expired || error.problem == kh::Problem::interrupted)) {
      for (std::string& line : explain_asleep(vgic, vcpu)) lines.push_back(std::move(line));
    }
    for (const std::string& line : lines) text += "      " + line + "\n";
    const std::string tagged = named.tagged(text);
    std::fwrite(tagged.data(), 1, tagged.size(), stderr);
  }
  const Failure failure = failure_for(error, device, StuckGuest::running, shown ? Above::registers : Above::nothing);
  const std::string message = "kvm-hello: " + failure.message;
  const bool colour = out.colour && wants_colour(STDERR_FILENO);
  std::fprintf(stderr, "%s\n", colour ? out.paint(colour::error, message).c_str() : message.c_str());
  return static_cast<int>(failure.status);
}

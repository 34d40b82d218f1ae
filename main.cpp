// SPDX-License-Identifier: MIT
// main.cpp: kvm-hello, the steps of kvm_hello.hpp walked through in order.
//
// For each step: announce it, call it, report a failure, say what came back.
// Read walk_through() top to bottom; main() below it only picks what to run.
// What the program adds around the steps (options, the words for exits and
// errors, the ioctl trace, the register dump, the stepper, --caps, --pause,
// --bench) lives in program/ and bench/, one idea per file.

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "kvm_hello.hpp"
#include "program/capabilities.hpp"
#include "program/command_line.hpp"
#include "program/ctrl_c.hpp"
#include "program/describe.hpp"
#include "program/guest_file.hpp"
#include "program/inspect.hpp"
#include "program/kernel_version.hpp"
#include "program/messages.hpp"
#include "program/narration.hpp"
#include "program/output.hpp"
#include "program/report.hpp"
#include "program/stepper.hpp"
#include "program/trace.hpp"

#include "bench_guest_image.h"  // made by the Makefile from bench/bench-guest.S: bench_guest_bin[]
#include "guest_image.h"        // made by the Makefile: `xxd -i guest.bin` gives guest_bin[] and guest_bin_len
#include "guest_lines.h"        // made by the Makefile: guest.S's line table (program/guest-lines.sh), as guest_lines[]

namespace kh = kvm_hello;

// The guest to run: the one built in, or the user's (--guest FILE), with its
// line table when there is one.
struct Guest {
  std::span<const std::uint8_t> image;
  const GuestSource* source;
};

// The nine steps, in order, stopping at `breakpoint` when there is one
// (--break-at). Returns the exit status.
int walk_through(const Options& options, Guest guest, std::optional<std::uint64_t> breakpoint, const Output& out) {
  Tracer tracer(out);
  const kh::CallObserver trace = tracer.observer();  // -v: every ioctl; otherwise none
  const char* device = options.kvm_device.c_str();
  const auto failed = [&](const kh::Error& error) { return fail(error, out, device); };
  if (out.shows(Verbosity::normal)) std::printf("kvm-hello: an arm64 guest says hello through KVM, step by step\n");

  out.announce(kh::Step::open_kvm);
  auto kvm = kh::open_kvm(device);
  if (!kvm) return failed(kvm.error());
  out.say(Verbosity::normal, "%s is fd %d", device, kvm->get());
  pause_after(kh::Step::open_kvm, options.pause);

  out.announce(kh::Step::check_api_version);
  const auto version = kh::check_api_version(*kvm, trace);
  if (!version) return failed(version.error());
  out.say(Verbosity::normal, "API version %d", *version);
  pause_after(kh::Step::check_api_version, options.pause);

  out.announce(kh::Step::check_capabilities);
  const auto caps = kh::check_capabilities(*kvm, trace);
  if (!caps) return failed(caps.error());
  for (std::size_t i = 0; i < kh::required_capabilities.size(); ++i) {
    const kh::Capability& cap = kh::required_capabilities[i];
    out.say(Verbosity::normal, "%-23.*s = %d  %.*s", static_cast<int>(cap.name.size()), cap.name.data(),
            caps->required[i], static_cast<int>(cap.why.size()), cap.why.data());
  }
  out.say(Verbosity::normal, "%-23.*s = %d  %s", static_cast<int>(kh::ipa_size_capability.name.size()),
          kh::ipa_size_capability.name.data(), caps->ipa_limit, "the host's largest guest-physical address, in bits");
  pause_after(kh::Step::check_capabilities, options.pause);

  out.announce(kh::Step::create_vm);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return failed(type.error());
  auto vm = kh::create_vm(*kvm, *type, trace);
  if (!vm) return failed(vm.error());
  out.say(Verbosity::normal, "type %s (IPA size %d bits): VM is fd %d", hex(*type).c_str(),
          *type == 0 ? 40 : kh::guest_ipa_bits, vm->get());
  pause_after(kh::Step::create_vm, options.pause);

  out.announce(kh::Step::setup_guest_memory);
  auto memory = kh::setup_guest_memory(*vm, guest.image, trace);
  if (!memory) return failed(memory.error());
  const GuestView view{memory->host.bytes(), guest.source, guest.image};
  out.say(Verbosity::normal, "%zu bytes of guest code copied to the start of %s bytes mapped at %p", guest.image.size(),
          hex(memory->region.memory_size).c_str(), memory->host.get());
  out.say(Verbosity::normal, "slot %u: guest-physical %s..%s", memory->region.slot,
          hex(memory->region.guest_phys_addr).c_str(),
          hex(memory->region.guest_phys_addr + memory->region.memory_size - 1).c_str());
  pause_after(kh::Step::setup_guest_memory, options.pause);

  out.announce(kh::Step::create_vcpu);
  auto vcpu = kh::create_vcpu(*kvm, *vm, /*id=*/0, trace);
  if (!vcpu) return failed(vcpu.error());
  out.say(Verbosity::normal, "vCPU %u is fd %d; its struct kvm_run is the first of %zu bytes mapped at %p", vcpu->id,
          vcpu->fd.get(), vcpu->shared.size(), vcpu->shared.get());
  pause_after(kh::Step::create_vcpu, options.pause);

  out.announce(kh::Step::init_vcpu);
  const auto init = kh::init_vcpu(*vm, vcpu->fd, kh::first_vcpu_features, trace);
  if (!init) return failed(init.error());
  out.say(Verbosity::normal, "target %s, features[0] = %s (PSCI 0.2)", describe_target(init->target).c_str(),
          hex(init->features[0]).c_str());
  const auto psci = kh::get_register(kh::Step::init_vcpu, vcpu->fd, kh::reg::psci_version, trace);
  if (!psci) return failed(psci.error());
  out.say(Verbosity::normal, "%s", describe_psci(*psci, running_kernel()).c_str());
  pause_after(kh::Step::init_vcpu, options.pause);

  out.announce(kh::Step::set_boot_registers);
  const auto set = kh::set_boot_registers(vcpu->fd, kh::boot_registers, trace);
  if (!set) return failed(set.error());
  out.say(Verbosity::normal, "PC = %s, SP_EL1 = %s", hex(kh::boot_registers.pc).c_str(),
          hex(kh::boot_registers.sp_el1).c_str());
  pause_after(kh::Step::set_boot_registers, options.pause);

  out.announce(kh::Step::run_guest);
  const auto stuck = [&](const kh::Error& error) { return fail(error, out, device, &*vcpu, view); };
  GuestStepper stepper(vcpu->fd, view, out, {options.step_guest, options.step_limit, breakpoint}, trace);
  if (options.step_guest) {
    if (const auto on = kh::enable_single_step(*kvm, vcpu->fd, trace); !on) return stuck(on.error());
    out.say(Verbosity::normal,
            "single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP); each instruction, then "
            "the registers it changed");
    if (const auto started = stepper.start(); !started) return stuck(started.error());
  } else if (breakpoint) {
    const auto set = kh::set_hardware_breakpoint(*kvm, vcpu->fd, *breakpoint, trace);
    if (!set) return stuck(set.error());
    out.say(Verbosity::normal,
            "hardware breakpoint at %s: KVM_SET_GUEST_DEBUG(ENABLE | USE_HW); the guest runs at full "
            "speed until it gets there",
            address_and_line(view, *breakpoint).c_str());
  }
  kh::HelloDevice hello;
  ExitReporter reporter(out);
  const kvm_run& run = vcpu->run();
  const auto on_exit = [&](const kh::Exit& exit) {
    out.say(Verbosity::very_verbose, "%s", describe_run_fields(run).c_str());
    if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) return stepper.stopped(*debug);
    reporter.report(exit);
  };
  // Two things stop the guest, each by asking the stopper: Ctrl-C and the
  // time limit (--timeout). Both end with the block, before the stopper.
  kh::VcpuStopper stopper(vcpu->run());
  kh::Result<kh::RunStats> stats;
  {
    const CtrlCStops ctrl_c(stopper);
    if (const auto on = ctrl_c.status(); !on) return failed(on.error());
    const kh::Deadline deadline(stopper, options.time_limit);
    if (const auto started = deadline.status(); !started) return failed(started.error());
    stats = kh::run_guest(*vcpu, stopper, hello, on_exit, trace);
  }
  stepper.finish();
  if (!stats) return stuck(stats.error());
  if (stepper.failure()) return stuck(*stepper.failure());
  pause_after(kh::Step::run_guest, options.pause);

  // The outcome: what the guest said, its registers, where the time went.
  std::printf("guest output: %s\n", describe_guest_output(hello, out).c_str());
  if (out.shows(Verbosity::normal)) {
    if (hello.answer_came_back()) {
      std::printf("the guest read %s from the host and wrote it back\n", hex(kh::host_answer).c_str());
    }
    if (const auto regs = dump_registers(*vcpu, stdout)) {
      for (const std::string& line : explain_power_off(*regs, view)) std::printf("      %s\n", line.c_str());
    }
    std::printf("summary: %s\n", describe_stats(*stats).c_str());
  }
  if (out.shows(Verbosity::verbose)) {  // the exits KVM handled itself, which we never saw
    const auto counted = kh::read_vcpu_statistics(vcpu->fd, trace);
    if (counted) {
      for (const std::string& line : describe_statistics(*counted, stats->exits))
        out.say(Verbosity::verbose, "%s", line.c_str());
    } else {
      out.say(Verbosity::verbose, "no vCPU statistics: %s", failure_for(counted.error(), device).message.c_str());
    }
  }
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %s\n", counted(stats->exits, "exit").c_str());
  return static_cast<int>(Status::ok);
}

// What to run: --help, --version, --bench and --caps branch off before the
// walk-through; --guest FILE is read before any VM exists.
int run(int argc, char** argv) {
  const auto parsed = parse_options(argc, argv);
  if (!parsed) {
    std::fprintf(stderr, "kvm-hello: %s (try --help)\n", parsed.error().c_str());
    return static_cast<int>(Status::usage);
  }
  const Options& options = *parsed;
  const Output out{options.level, wants_colour(STDOUT_FILENO)};
  if (options.help) return print_help(), 0;
  if (options.version) return std::printf("kvm-hello %s\n", KVM_HELLO_VERSION), 0;
  if (options.benchmark) {
    return run_benchmark(options.bench, options.kvm_device.c_str(),
                         options.time_limit_given ? std::optional(options.time_limit) : std::nullopt,
                         std::span(bench_guest_bin, bench_guest_bin_len), out);
  }
  if (options.caps) return show_capabilities(options.kvm_device.c_str(), out);
  // --break-at, found in the guest's line table: a line that is not there is a bad command line.
  const auto walk = [&](Guest guest) {
    if (options.break_at.empty()) return walk_through(options, guest, std::nullopt, out);
    const auto breakpoint = resolve_break_at(options.break_at, *guest.source);
    if (!breakpoint) {
      std::fprintf(stderr, "kvm-hello: %s (try --help)\n", breakpoint.error().c_str());
      return static_cast<int>(Status::usage);
    }
    return walk_through(options, guest, *breakpoint, out);
  };
  if (options.guest_file.empty()) {
    const GuestSource built_in = parse_guest_source({reinterpret_cast<const char*>(guest_lines), guest_lines_len});
    return walk({std::span(guest_bin, guest_bin_len), &built_in});
  }
  const auto unreadable = [](const std::string& option, const std::string& path, const GuestFileError& error) {
    std::fprintf(stderr, "kvm-hello: %s %s: %s\n", option.c_str(), path.c_str(), error.message.c_str());
    return static_cast<int>(error.status);
  };
  const auto image = load_guest_file(options.guest_file);
  if (!image) return unreadable("--guest", options.guest_file, image.error());
  GuestSource source;
  if (!options.guest_lines.empty()) {
    auto loaded = load_guest_source(options.guest_lines);
    if (!loaded) return unreadable("--guest-lines", options.guest_lines, loaded.error());
    source = std::move(*loaded);
  }
  return walk({*image, &source});
}

// The one failure that is not an Error value: memory for kvm-hello's own
// strings running out. operator new calls this instead of throwing
// std::bad_alloc, because throwing can itself need memory that is not there
// (libstdc++ then calls std::terminate); it says so with write(2), which
// needs none, and ends the process (the kernel closes its fds and mappings).
[[noreturn]] void out_of_memory() {
  for (const char* part : {"kvm-hello: out of memory (operator new), ", out_of_memory_advice, "\n"}) {
    if (::write(STDERR_FILENO, part, std::strlen(part)) < 0) break;
  }
  ::_exit(static_cast<int>(Status::out_of_memory));
}

int main(int argc, char** argv) {
  std::set_new_handler(out_of_memory);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as it happens, also into a pipe
  return run(argc, argv);
}

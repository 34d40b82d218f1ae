// SPDX-License-Identifier: MIT
// main.cpp: kvm-hello, the steps of kvm_hello.hpp walked through in order.
//
// For each step: announce it, call it, report a failure, say what came back.
// Read walk_through() (lesson 1) and walk_through_lesson2() top to bottom;
// the steps both lessons take alike are told once, above them; main() below
// only picks what to run.
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
#include "program/interrupts.hpp"
#include "program/kernel_version.hpp"
#include "program/messages.hpp"
#include "program/narration.hpp"
#include "program/output.hpp"
#include "program/report.hpp"
#include "program/stepper.hpp"
#include "program/trace.hpp"
#include "program/vcpus.hpp"

#include "bench_guest_image.h"  // made by the Makefile from bench/bench-guest.S: bench_guest_bin[]
#include "irq_bench_guest_image.h"  // and from bench/irq-bench-guest.S: irq_bench_guest_bin[]
#include "guest_image.h"        // made by the Makefile: `xxd -i guest.bin` gives guest_bin[] and guest_bin_len
#include "guest_lines.h"        // made by the Makefile: guest.S's line table (program/guest-lines.sh), as guest_lines[]
#include "lesson2_guest_image.h"  // made by the Makefile from lesson2/guest.S: lesson2_guest_bin[]
#include "lesson2_guest_lines.h"  // and its line table: lesson2_guest_lines[]
#include "lesson3_guest_image.h"  // made by the Makefile from lesson3/guest.S: lesson3_guest_bin[]
#include "lesson3_guest_lines.h"  // and its line table: lesson3_guest_lines[]

namespace kh = kvm_hello;

// The guest to run: the one built in, or the user's (--guest FILE), with its
// line table when there is one.
struct Guest {
  std::span<const std::uint8_t> image;
  const GuestSource* source;
};

// What every step of a walk-through is told with: the options, the output
// (which numbers the steps "[5/9]" in lesson 1, "[5/15]" in lesson 2), the
// ioctl trace (-v: every ioctl; otherwise none), and the lesson.
struct Walk {
  const Options& options;
  const Output& out;
  kh::CallObserver trace;
  int lesson;
  const char* device() const { return options.kvm_device.c_str(); }
  int failed(const kh::Error& error) const { return fail(error, out, device()); }
};

// A step's value, or the exit status its failure was reported with.
template <class T>
using Told = std::expected<T, int>;

// Steps 1 to 5, the same in both lessons: a VM with the guest's RAM.
struct VmWithRam {
  kh::KvmFd kvm;
  kh::VmFd vm;
  kh::GuestMemory memory;
};
Told<VmWithRam> walk_to_guest_ram(const Walk& walk, Guest guest) {
  const Output& out = walk.out;
  out.announce(kh::Step::open_kvm);
  auto kvm = kh::open_kvm(walk.device());
  if (!kvm) return std::unexpected(walk.failed(kvm.error()));
  out.say(Verbosity::normal, "%s is fd %d", walk.device(), kvm->get());
  pause_after(kh::Step::open_kvm, walk.options.pause, walk.lesson);

  out.announce(kh::Step::check_api_version);
  const auto version = kh::check_api_version(*kvm, walk.trace);
  if (!version) return std::unexpected(walk.failed(version.error()));
  out.say(Verbosity::normal, "API version %d", *version);
  pause_after(kh::Step::check_api_version, walk.options.pause, walk.lesson);

  out.announce(kh::Step::check_capabilities);
  const auto caps = kh::check_capabilities(*kvm, walk.trace);
  if (!caps) return std::unexpected(walk.failed(caps.error()));
  for (std::size_t i = 0; i < kh::required_capabilities.size(); ++i) {
    const kh::Capability& cap = kh::required_capabilities[i];
    out.say(Verbosity::normal, "%-23.*s = %d  %.*s", static_cast<int>(cap.name.size()), cap.name.data(),
            caps->required[i], static_cast<int>(cap.why.size()), cap.why.data());
  }
  out.say(Verbosity::normal, "%-23.*s = %d  %s", static_cast<int>(kh::ipa_size_capability.name.size()),
          kh::ipa_size_capability.name.data(), caps->ipa_limit, "the host's largest guest-physical address, in bits");
  pause_after(kh::Step::check_capabilities, walk.options.pause, walk.lesson);

  out.announce(kh::Step::create_vm);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return std::unexpected(walk.failed(type.error()));
  auto vm = kh::create_vm(*kvm, *type, walk.trace);
  if (!vm) return std::unexpected(walk.failed(vm.error()));
  out.say(Verbosity::normal, "type %s (IPA size %d bits): VM is fd %d", hex(*type).c_str(),
          *type == 0 ? 40 : kh::guest_ipa_bits, vm->get());
  pause_after(kh::Step::create_vm, walk.options.pause, walk.lesson);

  out.announce(kh::Step::setup_guest_memory);
  auto memory = kh::setup_guest_memory(*vm, guest.image, walk.trace);
  if (!memory) return std::unexpected(walk.failed(memory.error()));
  out.say(Verbosity::normal, "%zu bytes of guest code copied to the start of %s bytes mapped at %p", guest.image.size(),
          hex(memory->region.memory_size).c_str(), memory->host.get());
  out.say(Verbosity::normal, "slot %u: guest-physical %s..%s", memory->region.slot,
          hex(memory->region.guest_phys_addr).c_str(),
          hex(memory->region.guest_phys_addr + memory->region.memory_size - 1).c_str());
  pause_after(kh::Step::setup_guest_memory, walk.options.pause, walk.lesson);
  return VmWithRam{std::move(*kvm), std::move(*vm), std::move(*memory)};
}

// Steps 6 and 7, the same in every lesson: vCPU `id`, created and
// initialised with `features` (lesson 3's second: powered off).
Told<kh::Vcpu> walk_to_vcpu(const Walk& walk, const VmWithRam& machine, std::uint32_t id = 0,
                            kh::VcpuFeatures features = kh::first_vcpu_features) {
  const Output& out = walk.out;
  out.announce(kh::Step::create_vcpu);
  auto vcpu = kh::create_vcpu(machine.kvm, machine.vm, id, walk.trace);
  if (!vcpu) return std::unexpected(walk.failed(vcpu.error()));
  out.say(Verbosity::normal, "vCPU %u is fd %d; its struct kvm_run is the first of %zu bytes mapped at %p", vcpu->id,
          vcpu->fd.get(), vcpu->shared.size(), vcpu->shared.get());
  pause_after(kh::Step::create_vcpu, walk.options.pause, walk.lesson);

  out.announce(kh::Step::init_vcpu);
  const auto init = kh::init_vcpu(machine.vm, vcpu->fd, features, walk.trace);
  if (!init) return std::unexpected(walk.failed(init.error()));
  out.say(Verbosity::normal, "target %s, features[0] = %s (PSCI 0.2%s)", describe_target(init->target).c_str(),
          hex(init->features[0]).c_str(),
          features.power_off ? ", POWER_OFF: it waits, STOPPED, for the guest's PSCI CPU_ON" : "");
  const auto psci = kh::get_register(kh::Step::init_vcpu, vcpu->fd, kh::reg::psci_version, walk.trace);
  if (!psci) return std::unexpected(walk.failed(psci.error()));
  out.say(Verbosity::normal, "%s", describe_psci(*psci, running_kernel()).c_str());
  pause_after(kh::Step::init_vcpu, walk.options.pause, walk.lesson);
  return std::move(*vcpu);
}

// Step 8's call and its line, the same in both lessons (lesson 2 adds x0).
Told<void> walk_boot_registers(const Walk& walk, const kh::Vcpu& vcpu) {
  const auto set = kh::set_boot_registers(vcpu.fd, kh::boot_registers, walk.trace);
  if (!set) return std::unexpected(walk.failed(set.error()));
  walk.out.say(Verbosity::normal, "PC = %s, SP_EL1 = %s", hex(kh::boot_registers.pc).c_str(),
               hex(kh::boot_registers.sp_el1).c_str());
  return {};
}

// Steps 10 and 11, the same in lessons 2 and 3: which vGIC KVM can give,
// created and placed before any vCPU exists.
Told<kh::Vgic> walk_to_vgic(const Walk& walk, const VmWithRam& machine) {
  const Output& out = walk.out;
  out.announce(kh::Step::probe_vgic);
  const auto version = kh::probe_vgic(machine.vm, walk.trace);
  if (!version) return std::unexpected(walk.failed(version.error()));
  const auto gic = static_cast<unsigned>(*version);
  out.say(Verbosity::normal, "KVM can give this VM a GICv%u%s", gic,
          *version == kh::GicVersion::v2 ? " (a GICv3 it cannot: the test said ENODEV)" : "");
  pause_after(kh::Step::probe_vgic, walk.options.pause, walk.lesson);

  out.announce(kh::Step::create_vgic);
  auto vgic = kh::create_vgic(machine.vm, *version, walk.trace);
  if (!vgic) return std::unexpected(walk.failed(vgic.error()));
  const bool v3 = *version == kh::GicVersion::v3;
  out.say(Verbosity::normal, "GICv%u is fd %d: distributor at %s, %s at %s; no vCPU exists yet, as KVM wants", gic,
          vgic->fd.get(), hex(kh::gic_distributor_base).c_str(), v3 ? "redistributors" : "CPU interface",
          hex(v3 ? kh::gic_redistributors_base : kh::gic_cpu_interface_base).c_str());
  pause_after(kh::Step::create_vgic, walk.options.pause, walk.lesson);
  return std::move(*vgic);
}

// Step 8's x0 in lessons 2 and 3: the GIC's version, for the guest.
Told<void> walk_gic_version_for_guest(const Walk& walk, const kh::Vcpu& vcpu, kh::GicVersion version) {
  const auto gic = static_cast<unsigned>(version);
  const auto x0 = kh::set_register(kh::Step::set_boot_registers, vcpu.fd, kh::reg::x(0), gic, walk.trace);
  if (!x0) return std::unexpected(walk.failed(x0.error()));
  walk.out.say(Verbosity::normal, "x0 = %u: the GIC's version, for the guest, as firmware would tell it", gic);
  return {};
}

// Step 13, the same in lessons 2 and 3: the virtual timer's INTID, read
// from a vCPU (every vCPU's timer raises the same PPI, each its own).
Told<void> walk_timer_irq(const Walk& walk, const kh::Vcpu& vcpu) {
  walk.out.announce(kh::Step::read_timer_irq);
  const auto timer = kh::read_timer_irq(vcpu.fd, walk.trace);
  if (!timer) return std::unexpected(walk.failed(timer.error()));
  walk.out.say(Verbosity::normal, "the virtual timer raises INTID %u%s", *timer,
               *timer == kh::timer_intid ? ", a PPI: vCPU 0's own (the guest enables it)"
                                         : ": not the one the guest enables, so its ticks will not come");
  pause_after(kh::Step::read_timer_irq, walk.options.pause, walk.lesson);
  return {};
}

// Step 12, the same in lessons 2 and 3: the vGIC initialised, every vCPU created.
Told<void> walk_init_vgic(const Walk& walk, const kh::Vgic& vgic) {
  walk.out.announce(kh::Step::init_vgic);
  if (const auto init = kh::init_vgic(vgic, walk.trace); !init) return std::unexpected(walk.failed(init.error()));
  walk.out.say(Verbosity::normal, "%u interrupts (SPIs %u to %u); initialised: no vCPU can be added now",
               kh::vgic_nr_irqs, kh::first_spi, kh::vgic_nr_irqs - 1);
  pause_after(kh::Step::init_vgic, walk.options.pause, walk.lesson);
  return {};
}

// Step 9, the same in both lessons but for the device that answers the guest
// and what the program says at each exit (`on_exit`, after the exit's own
// line): runs the guest until it powers off, or a stop (Ctrl-C, --timeout),
// single-stepping it (--step-guest) or stopping at a breakpoint (--break-at)
// when asked. Returns the run's counts and times.
template <kh::MmioDevice Device, class OnExit>
Told<kh::RunStats> walk_run(const Walk& walk, const VmWithRam& machine, kh::Vcpu& vcpu, const GuestView& view,
                            std::optional<std::uint64_t> breakpoint, Device& device, KnownRegisters known,
                            OnExit&& on_exit) {
  const Output& out = walk.out;
  const Options& options = walk.options;
  out.announce(kh::Step::run_guest);
  const auto stuck = [&](const kh::Error& error) { return fail(error, out, walk.device(), &vcpu, view); };
  GuestStepper stepper(vcpu.fd, view, out, {options.step_guest, options.step_limit, breakpoint}, walk.trace);
  if (options.step_guest) {
    if (const auto on = kh::enable_single_step(machine.kvm, vcpu.fd, walk.trace); !on) {
      return std::unexpected(stuck(on.error()));
    }
    out.say(Verbosity::normal,
            "single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP); each instruction, then "
            "the registers it changed");
    if (const auto started = stepper.start(); !started) return std::unexpected(stuck(started.error()));
  } else if (breakpoint) {
    const auto armed = kh::set_hardware_breakpoint(machine.kvm, vcpu.fd, *breakpoint, walk.trace);
    if (!armed) return std::unexpected(stuck(armed.error()));
    out.say(Verbosity::normal,
            "hardware breakpoint at %s: KVM_SET_GUEST_DEBUG(ENABLE | USE_HW); the guest runs at full "
            "speed until it gets there",
            address_and_line(view, *breakpoint).c_str());
  }
  ExitReporter reporter(out, known);
  const kvm_run& run = vcpu.run();
  const auto each_exit = [&](const kh::Exit& exit) {
    out.say(Verbosity::very_verbose, "%s", describe_run_fields(run).c_str());
    if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) return stepper.stopped(*debug);
    reporter.report(exit);
    on_exit(exit);
  };
  // Two things stop the guest, each by asking the stopper: Ctrl-C and the
  // time limit (--timeout). Both end with the block, before the stopper.
  kh::VcpuStopper stopper(vcpu.run());
  kh::Result<kh::RunStats> stats;
  {
    const CtrlCStops ctrl_c(stopper);
    if (const auto on = ctrl_c.status(); !on) return std::unexpected(walk.failed(on.error()));
    const kh::Deadline deadline(stopper, options.time_limit);
    if (const auto started = deadline.status(); !started) return std::unexpected(walk.failed(started.error()));
    stats = kh::run_guest(vcpu, stopper, device, each_exit, walk.trace);
  }
  stepper.finish();
  if (!stats) return std::unexpected(stuck(stats.error()));
  if (const auto& failure = stepper.failure()) return std::unexpected(stuck(*failure));
  pause_after(kh::Step::run_guest, options.pause, walk.lesson);
  return *stats;
}

// After a run, at -v: the exits KVM handled itself, which we never saw.
// Returns the statistics, for a lesson to say more of them.
std::optional<std::vector<kh::VcpuStatistic>> say_vcpu_statistics(const Walk& walk, const kh::Vcpu& vcpu,
                                                                  const kh::RunStats& stats) {
  if (!walk.out.shows(Verbosity::verbose)) return std::nullopt;
  auto counted = kh::read_vcpu_statistics(vcpu.fd, walk.trace);
  if (!counted) {
    walk.out.say(Verbosity::verbose, "no vCPU statistics: %s",
                 failure_for(counted.error(), walk.device()).message.c_str());
    return std::nullopt;
  }
  for (const std::string& line : describe_statistics(*counted, stats.exits)) {
    walk.out.say(Verbosity::verbose, "%s", line.c_str());
  }
  return std::move(*counted);
}

// Lesson 1: the nine steps, in order, stopping at `breakpoint` when there is
// one (--break-at). Returns the exit status.
int walk_through(const Options& options, Guest guest, std::optional<std::uint64_t> breakpoint, const Output& out) {
  Tracer tracer(out);
  const Walk walk{options, out, tracer.observer(), 1};
  if (out.shows(Verbosity::normal)) std::printf("kvm-hello: an arm64 guest says hello through KVM, step by step\n");
  auto machine = walk_to_guest_ram(walk, guest);  // steps 1 to 5
  if (!machine) return machine.error();
  const GuestView view{machine->memory.host.bytes(), guest.source, guest.image};
  auto vcpu = walk_to_vcpu(walk, *machine);  // steps 6 and 7
  if (!vcpu) return vcpu.error();

  out.announce(kh::Step::set_boot_registers);
  if (const auto set = walk_boot_registers(walk, *vcpu); !set) return set.error();
  pause_after(kh::Step::set_boot_registers, options.pause);

  kh::HelloDevice hello;
  const auto stats = walk_run(walk, *machine, *vcpu, view, breakpoint, hello, hello_registers, [](const kh::Exit&) {});
  if (!stats) return stats.error();

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
  say_vcpu_statistics(walk, *vcpu, *stats);
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %s\n", counted(stats->exits, "exit").c_str());
  return static_cast<int>(Status::ok);
}

// Lesson 2: interrupts and time. Steps 1 to 5 as in lesson 1; then the
// vGIC in the order KVM wants it (created and placed before any vCPU, the
// vCPU, the timer's INTID read, the vGIC initialised once every vCPU exists,
// an irqfd wired to it); then the run, in which the guest's doorbell makes
// the device inject (step 15). Returns the exit status.
int walk_through_lesson2(const Options& options, Guest guest, std::optional<std::uint64_t> breakpoint,
                         const Output& lesson1_out) {
  Output out = lesson1_out;
  out.steps_in_walk = kh::lesson2_step_count;  // lesson 2 numbers its steps of 15: "[10/15]"
  Tracer tracer(out);
  const Walk walk{options, out, tracer.observer(), 2};
  if (out.shows(Verbosity::normal)) {
    std::printf("kvm-hello lesson 2: the guest sleeps in WFI, its timer wakes it, and we interrupt it\n");
  }
  auto machine = walk_to_guest_ram(walk, guest);  // steps 1 to 5
  if (!machine) return machine.error();
  GuestView view{machine->memory.host.bytes(), guest.source, guest.image, /*has_vgic=*/true};

  const auto vgic = walk_to_vgic(walk, *machine);  // steps 10 and 11
  if (!vgic) return vgic.error();
  auto vcpu = walk_to_vcpu(walk, *machine);  // steps 6 and 7
  if (!vcpu) return vcpu.error();

  out.announce(kh::Step::set_boot_registers);
  if (const auto set = walk_boot_registers(walk, *vcpu); !set) return set.error();
  if (const auto set = walk_gic_version_for_guest(walk, *vcpu, vgic->version); !set) return set.error();
  pause_after(kh::Step::set_boot_registers, options.pause, walk.lesson);

  if (const auto timer = walk_timer_irq(walk, *vcpu); !timer) return timer.error();  // step 13
  if (const auto init = walk_init_vgic(walk, *vgic); !init) return init.error();     // step 12

  out.announce(kh::Step::attach_irqfd);
  const auto irqfd = kh::attach_irqfd(machine->vm, kh::spi_irqfd, walk.trace);
  if (!irqfd) return walk.failed(irqfd.error());
  out.say(Verbosity::normal, "eventfd %d wired to gsi %u: a write to it raises SPI %u", irqfd->event.get(), irqfd->gsi,
          kh::spi_irqfd);
  pause_after(kh::Step::attach_irqfd, options.pause, walk.lesson);

  kh::InterruptDevice device(machine->vm, *irqfd, walk.trace);  // the doorbell injects: step 15
  InterruptReporter reporter(out, device, *irqfd, *vgic, *vcpu);
  view.explain_more = [&](const kh::Error& error, const kh::Registers& regs) {
    return reporter.explain_stop(error, regs, view);  // a storm, or PMR 0: what the interrupts say
  };
  const auto stats = walk_run(walk, *machine, *vcpu, view, breakpoint, device, interrupt_registers,
                              [&](const kh::Exit& exit) { reporter.report(exit); });
  if (!stats) return stats.error();

  // The outcome: what the guest said and took, and what no exit showed.
  std::printf("guest output: %s\n", describe_guest_output(device.hello(), out).c_str());
  std::printf("interrupts the guest took: %s\n", list_intids(device.taken()).c_str());
  if (out.shows(Verbosity::normal)) {
    for (const std::string& line : explain_sleep(reporter.ticks())) std::printf("      %s\n", line.c_str());
    std::printf("summary: %s\n", describe_stats(*stats).c_str());
  }
  if (const auto counted = say_vcpu_statistics(walk, *vcpu, *stats)) {
    for (const std::string& line : describe_interrupt_statistics(*counted))
      out.say(Verbosity::verbose, "%s", line.c_str());
  }
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %s\n", counted(stats->exits, "exit").c_str());
  return static_cast<int>(Status::ok);
}

// Step 16 for one vCPU: its power state, and what it means here.
Told<kh::MpState> walk_mp_state(const Walk& walk, const kh::Vcpu& vcpu, std::string_view meaning) {
  walk.out.announce(kh::Step::read_mp_state);
  const auto state = kh::read_mp_state(vcpu.fd, walk.trace);
  if (!state) return std::unexpected(walk.failed(kh::on_vcpu(state.error(), vcpu.id)));
  walk.out.say(Verbosity::normal, "%s: %s%.*s", vcpu_name(vcpu.id).c_str(), describe_power_state(*state).c_str(),
               static_cast<int>(meaning.size()), meaning.data());
  return *state;
}

// The first KVM_RUN of vCPU 0, here, with kvm_run.immediate_exit set: KVM
// does what it does once per VM before any vCPU runs (kvm_arch_vcpu_run_pid_change
// in arch/arm64/kvm/arm.c maps the vGIC: kvm_vgic_map_resources), then
// returns EINTR without entering the guest. So no vCPU's thread does it
// while another's guest already runs: Linux 6.1 marks the vGIC ready before
// it registers the distributor (6.12 after), and a vCPU entering the guest
// in between would find no distributor there.
Told<void> walk_ready_vgic(const Walk& walk, kh::Vcpu& vcpu) {
  vcpu.run().immediate_exit = 1;
  const auto entered = kh::call(kh::Step::start_vcpu_thread, vcpu.fd, kh::request::run, walk.trace);
  vcpu.run().immediate_exit = 0;
  if (entered || entered.error().err != EINTR) {
    const kh::Error error =
        entered ? kh::Error{kh::Step::start_vcpu_thread, kh::Problem::call_failed, "KVM_RUN", 0} : entered.error();
    return std::unexpected(walk.failed(kh::on_vcpu(error, vcpu.id)));
  }
  walk.out.say(Verbosity::normal,
               "%s: a first KVM_RUN here, with immediate_exit: KVM readied the vGIC for every vCPU and returned "
               "EINTR, before any guest code ran",
               vcpu_name(vcpu.id).c_str());
  return {};
}

// --step-guest and --break-at in lesson 3, for one vCPU: its own stepper,
// writing through its own Output (each line names the vCPU), and its
// KVM_SET_GUEST_DEBUG, set here, before its thread starts: a vCPU's ioctl
// takes its vcpu->mutex, which its thread holds inside KVM_RUN, so from
// here it would wait for the run to end. A secondary keeps it through the
// reset the guest's CPU_ON makes: kvm_reset_vcpu (arch/arm64/kvm/reset.c;
// 6.1, 6.12, 7.2) resets registers, never vcpu->guest_debug nor the
// breakpoint KVM_SET_GUEST_DEBUG gave, and single-stepping is put back on
// before the guest runs again: by kvm_arm_setup_debug before each entry
// (6.1, 6.12), by kvm_vcpu_load_debug as kvm_reset_vcpu loads the vCPU back
// (7.2; both in arch/arm64/kvm/debug.c).
Told<void> walk_watch_vcpu(const Walk& walk, const VmWithRam& machine, const kh::Vcpu& vcpu, VcpuRun& run,
                           const GuestView& view, std::optional<std::uint64_t> breakpoint) {
  const Options& options = walk.options;
  if (!options.step_guest && !breakpoint) return {};
  const auto stuck = [&](const kh::Error& error) { return walk.failed(kh::on_vcpu(error, vcpu.id)); };
  GuestStepper& stepper = run.stepper.emplace(vcpu.fd, view, run.out,
                                              Watch{options.step_guest, options.step_limit, breakpoint},
                                              run.tracer.observer());
  const bool powered_off = vcpu.id != 0;  // until the guest's CPU_ON
  if (options.step_guest) {
    if (const auto on = kh::enable_single_step(machine.kvm, vcpu.fd, run.tracer.observer()); !on) {
      return std::unexpected(stuck(on.error()));
    }
    walk.out.say(Verbosity::normal, "%s: single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP), %s", run.name.c_str(),
                 powered_off ? "kept across the reset of CPU_ON; its first instruction runs before its first step exit"
                             : "before its thread starts; each instruction, then the registers it changed");
    if (powered_off) {
      stepper.start_at_first_exit(
          "(its first instruction, at the entry point of the guest's CPU_ON, ran unshown inside KVM_RUN: KVM reset "
          "the vCPU there, x0 = the context id, and a step exits after an instruction)");
      return {};
    }
    if (const auto started = stepper.start(); !started) return std::unexpected(stuck(started.error()));
  } else {
    const auto armed = kh::set_hardware_breakpoint(machine.kvm, vcpu.fd, *breakpoint, run.tracer.observer());
    if (!armed) return std::unexpected(stuck(armed.error()));
    walk.out.say(Verbosity::normal, "%s: hardware breakpoint at %s: KVM_SET_GUEST_DEBUG(ENABLE | USE_HW)%s",
                 run.name.c_str(), address_and_line(view, *breakpoint).c_str(),
                 powered_off ? ", kept across the reset of CPU_ON" : "");
  }
  return {};
}

// Steps 17, 9 and 18 for every vCPU: a thread each, each running step 9 with
// lesson 3's device, each watched by its own stepper when asked
// (--step-guest, --break-at); once one vCPU's run ends (SYSTEM_OFF, or a
// failure), the others stopped: asked, kicked, joined. Returns each vCPU's
// result, in order.
Told<std::vector<kh::Result<kh::RunStats>>> walk_run_vcpus(const Walk& walk, const VmWithRam& machine,
                                                           std::vector<kh::Vcpu>& vcpus, kh::VcpusDevice& device,
                                                           const GuestView& view,
                                                           std::optional<std::uint64_t> breakpoint) {
  const Output& out = walk.out;
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<VcpuRun>> runs;
  runs.reserve(vcpus.size());
  for (const kh::Vcpu& vcpu : vcpus) runs.push_back(std::make_unique<VcpuRun>(out, device, vcpu, started));
  // Said before any thread starts: after, the vCPUs' own lines come.
  for (kh::Vcpu& vcpu : vcpus) {
    out.announce(kh::Step::start_vcpu_thread);
    if (vcpu.id == 0) {
      if (const auto ready = walk_ready_vgic(walk, vcpu); !ready) return std::unexpected(ready.error());
    }
    out.say(Verbosity::normal, "%s: a thread of its own, \"vcpu %u\"", runs[vcpu.id]->name.c_str(), vcpu.id);
    out.announce(kh::Step::run_guest);
    out.say(Verbosity::normal, "%s: its thread calls KVM_RUN; %s", runs[vcpu.id]->name.c_str(),
            vcpu.id == 0 ? "each line it prints starts with its name"
                         : "STOPPED, it sleeps inside KVM, and we see nothing, until the guest's CPU_ON wakes it");
    if (const auto watched = walk_watch_vcpu(walk, machine, vcpu, *runs[vcpu.id], view, breakpoint); !watched) {
      return std::unexpected(watched.error());
    }
  }
  const auto body = [&](std::uint32_t id) {
    return [&, id](kh::Vcpu& vcpu, const kh::VcpuStopper& stopper) -> kh::Result<kh::RunStats> {
      VcpuRun& run = *runs[id];
      auto stats = kh::run_guest(
          vcpu, stopper, run.view,
          [&](const kh::Exit& exit) {
            const auto* debug = std::get_if<kh::DebugExit>(&exit);
            if (debug != nullptr && run.stepper) return run.stepper->stopped(*debug);
            run.exits.report(exit);
            run.records.report();
          },
          run.tracer.observer());
      if (!run.stepper) return stats;
      run.stepper->finish();
      if (stats && run.stepper->failure()) return std::unexpected(*run.stepper->failure());
      return stats;
    };
  };
  std::vector<kh::VcpuThread> threads;
  threads.reserve(vcpus.size());
  for (kh::Vcpu& vcpu : vcpus) {
    auto thread = kh::start_vcpu_thread(vcpu, body(vcpu.id), walk.options.time_limit);
    if (!thread) return std::unexpected(walk.failed(thread.error()));  // the started ones: stopped, joined as they go
    threads.push_back(std::move(*thread));
  }
  std::vector<kh::Result<kh::RunStats>> results;
  {
    const CtrlCStops ctrl_c(threads.front());  // Ctrl-C stops vCPU 0; its end stops the others
    if (const auto on = ctrl_c.status(); !on) return std::unexpected(walk.failed(on.error()));
    const std::size_t first = kh::wait_for_first_to_end(threads);
    // It ended: joined at once, its result then known; the others asked, kicked, joined.
    const kh::Result<kh::RunStats> ended = threads[first].join();
    const kh::StopReason why = stop_reason_after(ended);
    out.announce(kh::Step::stop_vcpus);
    const std::string name = vcpu_name(vcpus[first].id);
    if (ended) {
      out.say(Verbosity::normal,
              "%s powered the VM off (PSCI SYSTEM_OFF): KVM stopped every vCPU, but only %s's KVM_RUN returned",
              name.c_str(), name.c_str());
    } else {
      out.say(Verbosity::normal, "%s's run ended first, with the error below; every other vCPU is stopped too",
              name.c_str());
    }
    results = kh::stop_vcpus(threads, why);
  }
  for (std::size_t i = 1; i < results.size(); ++i) {
    if (!results[i]) continue;
    out.say(
        Verbosity::normal, "%s: asked to stop, kicked (SIGUSR1): its KVM_RUN returned EINTR; its thread joined%s",
        vcpu_name(vcpus[i].id).c_str(),
        results[i]->exits == 0 ? ". It made no exit: it never ran, or ran without one (did the guest start it?)" : "");
  }
  return results;
}

// Lesson 3: a second vCPU. Steps 1 to 5 and the vGIC as in lesson 2; two
// vCPUs, the second initialised powered off; the first's registers only
// (the guest's CPU_ON gives the second its own); the timer's INTID and the
// vGIC initialised as in lesson 2; each vCPU's power state; a thread each,
// each vCPU single-stepped (--step-guest) or stopped at `breakpoint`
// (--break-at) on its own; once the guest has powered the VM off, the other
// vCPU stopped; each power state again. Returns the exit status.
int walk_through_lesson3(const Options& options, Guest guest, std::optional<std::uint64_t> breakpoint,
                         const Output& lesson1_out) {
  Output out = lesson1_out;
  out.steps_in_walk = kh::step_count;  // lesson 3 numbers its steps of all 18: "[16/18]"
  Tracer tracer(out);
  const Walk walk{options, out, tracer.observer(), 3};
  if (out.shows(Verbosity::normal)) {
    std::printf("kvm-hello lesson 3: two vCPUs, a thread each; the guest starts the second, and interrupts it\n");
  }
  auto machine = walk_to_guest_ram(walk, guest);  // steps 1 to 5
  if (!machine) return machine.error();
  const GuestView view{machine->memory.host.bytes(), guest.source, guest.image, /*has_vgic=*/true};
  const auto vgic = walk_to_vgic(walk, *machine);  // steps 10 and 11
  if (!vgic) return vgic.error();
  std::vector<kh::Vcpu> vcpus;  // steps 6 and 7, for each: the second powered off
  for (std::uint32_t id = 0; id < options.vcpus; ++id) {
    auto vcpu = walk_to_vcpu(walk, *machine, id, id == 0 ? kh::first_vcpu_features : kh::other_vcpu_features);
    if (!vcpu) return vcpu.error();
    vcpus.push_back(std::move(*vcpu));
  }

  out.announce(kh::Step::set_boot_registers);  // vCPU 0's only
  if (const auto set = walk_boot_registers(walk, vcpus[0]); !set) return set.error();
  if (const auto set = walk_gic_version_for_guest(walk, vcpus[0], vgic->version); !set) return set.error();
  out.say(Verbosity::normal,
          "vCPU 1's: none; the guest's CPU_ON gives it its PC and x0, the rest as a reset leaves it");
  pause_after(kh::Step::set_boot_registers, options.pause, walk.lesson);
  if (const auto timer = walk_timer_irq(walk, vcpus[0]); !timer) return timer.error();  // step 13
  if (const auto init = walk_init_vgic(walk, *vgic); !init) return init.error();        // step 12
  for (const kh::Vcpu& vcpu : vcpus) {                                                  // step 16
    const auto state = walk_mp_state(
        walk, vcpu,
        vcpu.id == 0 ? ": it runs when its thread calls KVM_RUN" : ": powered off (POWER_OFF), until CPU_ON");
    if (!state) return state.error();
  }
  pause_after(kh::Step::read_mp_state, options.pause, walk.lesson);

  kh::VcpusDevice device(options.vcpus);  // one device; each vCPU's thread sees it through its own view
  const auto results = walk_run_vcpus(walk, *machine, vcpus, device, view, breakpoint);  // steps 17, 9 and 18
  if (!results) return results.error();
  for (const auto& result : *results) {
    if (!result) return fail_vcpus(result.error(), out, walk.device(), vcpus, *vgic, view);
  }
  pause_after(kh::Step::stop_vcpus, options.pause, walk.lesson);
  for (const kh::Vcpu& vcpu : vcpus) {  // step 16 again
    const auto state = walk_mp_state(walk, vcpu, ": SYSTEM_OFF stopped every vCPU (kvm_prepare_system_event)");
    if (!state) return state.error();
  }

  // The outcome: what each vCPU said and took, and how the run ended.
  for (const kh::Vcpu& vcpu : vcpus) {
    std::printf("guest output, %s: %s\n", vcpu_name(vcpu.id).c_str(),
                describe_vcpu_output(device, vcpu.id, out).c_str());
  }
  for (const kh::Vcpu& vcpu : vcpus) {
    std::printf("interrupts %s took: %s\n", vcpu_name(vcpu.id).c_str(), list_vcpu_intids(device, vcpu.id).c_str());
  }
  if (out.shows(Verbosity::normal)) {
    for (std::size_t i = 0; i < vcpus.size(); ++i) {
      std::printf("summary, %s: %s\n", vcpu_name(vcpus[i].id).c_str(), describe_stats(*(*results)[i]).c_str());
    }
  }
  std::string exits;  // "13 exits of vCPU 0 and 10 exits of vCPU 1", each vCPU's
  for (std::size_t i = 0; i < vcpus.size(); ++i) {
    exits += (i == 0 ? "" : i + 1 == vcpus.size() ? " and " : ", ") + counted((*results)[i]->exits, "exit") + " of " +
             vcpu_name(vcpus[i].id);
  }
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %s\n", exits.c_str());
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
                         {.exits = std::span(bench_guest_bin, bench_guest_bin_len),
                          .interrupts = std::span(irq_bench_guest_bin, irq_bench_guest_bin_len)},
                         out);
  }
  if (options.caps) return show_capabilities(options.kvm_device.c_str(), out);
  // --break-at, found in the guest's line table: a line that is not there is a bad command line.
  const auto walk = [&](Guest guest) {
    const auto lesson = options.lesson == 3   ? walk_through_lesson3
                        : options.lesson == 2 ? walk_through_lesson2
                                              : walk_through;
    if (options.break_at.empty()) return lesson(options, guest, std::nullopt, out);
    const auto breakpoint = resolve_break_at(options.break_at, *guest.source);
    if (!breakpoint) {
      std::fprintf(stderr, "kvm-hello: %s (try --help)\n", breakpoint.error().c_str());
      return static_cast<int>(Status::usage);
    }
    return lesson(options, guest, *breakpoint, out);
  };
  if (options.guest_file.empty() && options.lesson == 2) {
    const GuestSource built_in =
        parse_guest_source({reinterpret_cast<const char*>(lesson2_guest_lines), lesson2_guest_lines_len});
    return walk({std::span(lesson2_guest_bin, lesson2_guest_bin_len), &built_in});
  }
  if (options.guest_file.empty() && options.lesson == 3) {
    const GuestSource built_in =
        parse_guest_source({reinterpret_cast<const char*>(lesson3_guest_lines), lesson3_guest_lines_len});
    return walk({std::span(lesson3_guest_bin, lesson3_guest_bin_len), &built_in});
  }
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

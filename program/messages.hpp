// SPDX-License-Identifier: MIT
// program/messages.hpp: every Error of kvm_hello.hpp becomes one line that
// names the step, the call, the errno and what to do, and one exit status of
// its own. failure_for() decides both, once.
#pragma once

#include <sys/utsname.h>

#include <string>
#include <string_view>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/format.hpp"

namespace kh = kvm_hello;

// ==== Exit statuses: one per kind of failure (listed by --help) ==============

enum class Status : int {
  ok = 0,
  usage = 2,
  no_kvm = 10,
  kvm_permission = 11,
  not_kvm_device = 12,
  api_version = 13,
  missing_capability = 14,
  ipa_size = 15,
  out_of_memory = 16,
  setup_failed = 17,
  bad_guest_image = 18,
  guest_file = 19,
  run_failed = 20,
  unexpected_exit = 21,
  guest_reset = 22,
  guest_crash = 23,
  watchdog = 24,
  no_vgic = 25,
  gic_setup = 26,
  injection = 27,
  vcpu_threads = 28,
  interrupted = 130,  // as a shell reports a program ended by Ctrl-C
};

struct StatusInfo {
  Status status;
  std::string_view meaning;
};

inline constexpr StatusInfo status_table[] = {
    {Status::ok, "the guest powered off cleanly"},
    {Status::usage, "bad command line"},
    {Status::no_kvm, "no KVM device (no KVM in this kernel, or not an arm64 host)"},
    {Status::kvm_permission, "permission denied on the KVM device"},
    {Status::not_kvm_device, "the device does not answer KVM ioctls"},
    {Status::api_version, "KVM API version is not 12"},
    {Status::missing_capability, "a capability this program needs is missing"},
    {Status::ipa_size, "the host cannot do the guest's physical address size"},
    {Status::out_of_memory, "out of memory"},
    {Status::setup_failed, "another failure while setting up the VM (steps 1-8)"},
    {Status::bad_guest_image, "the guest image is empty or larger than guest RAM"},
    {Status::guest_file, "the guest file (--guest) cannot be read"},
    {Status::run_failed, "KVM_RUN failed"},
    {Status::unexpected_exit, "the guest stopped for a reason this program does not handle"},
    {Status::guest_reset, "the guest asked for a reset"},
    {Status::guest_crash, "the guest reported a crash"},
    {Status::watchdog, "the watchdog stopped a guest that did not power off in time"},
    {Status::no_vgic, "the host's KVM has no in-kernel GIC (lesson 2)"},
    {Status::gic_setup, "setting up the in-kernel GIC, the timer's interrupt or an irqfd failed (steps 10-14)"},
    {Status::injection, "sending the guest an interrupt failed (KVM_IRQ_LINE, or an irqfd's write)"},
    {Status::vcpu_threads, "reading a vCPU's power state, or starting or stopping its thread, failed (steps 16-18)"},
    {Status::interrupted, "Ctrl-C stopped the guest"},
};

// What to do when memory runs out, in any step or in the program's own allocations.
inline const char* const out_of_memory_advice =
    "or of this process's address-space limit (ulimit -v): free some, or raise the limit";

constexpr bool is_missing_device(int err) { return err == ENOENT || err == ENODEV || err == ENXIO; }

// The exit status for an error: decided by what went wrong, then by errno.
constexpr Status status_for(const kh::Error& error) {
  using kh::Problem;
  switch (error.problem) {
    case Problem::wrong_api_version: return Status::api_version;
    case Problem::missing_capability: return Status::missing_capability;
    case Problem::ipa_too_small: return Status::ipa_size;
    case Problem::bad_guest_image: return Status::bad_guest_image;
    case Problem::guest_reset: return Status::guest_reset;
    case Problem::guest_crash: return Status::guest_crash;
    case Problem::unexpected_exit: return Status::unexpected_exit;
    case Problem::watchdog_expired: return Status::watchdog;
    case Problem::interrupted: return Status::interrupted;
    case Problem::no_vgic: return Status::no_vgic;
    case Problem::not_an_spi: return Status::gic_setup;
    case Problem::call_failed:
    case Problem::bad_register_size:
    case Problem::bad_statistics: break;
  }
  // pthread_create says EAGAIN when there is no memory for a thread's stack (a Deadline's).
  if (error.err == ENOMEM || (error.call == "pthread_create" && error.err == EAGAIN)) return Status::out_of_memory;
  if (error.step == kh::Step::open_kvm) {
    if (is_missing_device(error.err)) return Status::no_kvm;
    if (error.err == EACCES || error.err == EPERM) return Status::kvm_permission;
  }
  if (error.step == kh::Step::check_api_version && (error.err == ENOTTY || error.err == EINVAL)) {
    return Status::not_kvm_device;
  }
  // Ringing an irqfd (its write) is an injection, as KVM_IRQ_LINE is; the rest of Part II sets up.
  if (error.step == kh::Step::inject_spi || (error.step == kh::Step::attach_irqfd && error.call == "write")) {
    return Status::injection;
  }
  if (static_cast<int>(error.step) > kh::lesson2_step_count) return Status::vcpu_threads;
  if (static_cast<int>(error.step) > kh::lesson1_step_count) return Status::gic_setup;
  return error.step == kh::Step::run_guest ? Status::run_failed : Status::setup_failed;
}

// ==== Messages ===============================================================

// Why a machine has no KVM device, from what it is.
inline std::string why_no_kvm() {
  utsname machine{};
  ::uname(&machine);
  const std::string name = machine.machine;
  if (name != "aarch64") {
    return "this is an " + name + " machine, and KVM runs guests of its own architecture only; " +
           "`make run` runs kvm-hello inside an emulated arm64 machine instead";
  }
  return "this arm64 kernel has no KVM: it needs CONFIG_KVM and to be booted at EL2 (`dmesg | grep -i kvm` says "
         "more)";
}

// What a failed call of lesson 2 means, by step and errno, and what to do
// about it (kvm_hello.hpp's "Part II" says where KVM checks each); "" for
// one without advice of its own.
inline std::string advice_for_gic_call(const kh::Error& error) {
  using kh::Step;
  const int err = error.err;
  switch (error.step) {
    case Step::create_vcpu:
      if (err == EBUSY) return "the VM's in-kernel GIC is initialised already (init_vgic, step 12), and KVM adds no "
                               "vCPU after that: create every vCPU first, then init_vgic";
      break;
    case Step::create_vgic:
      if (err == EBUSY) return "a vCPU has run already: create the GIC before the first KVM_RUN (lesson 2 creates it "
                               "before the vCPUs)";
      if (err == EEXIST) return "this VM has its GIC already, or that frame is placed already: create and place once";
      if (err == ENODEV) return "this host's KVM cannot emulate that GIC: ask probe_vgic (step 10) which one it can";
      if (err == ENXIO) return "that frame is the other GIC version's: a GICv3 has GICD and GICR, a GICv2 GICD and GICC";
      if (err == E2BIG) return "more vCPUs than this GIC serves (a GICv2: 8), or a frame beyond the VM's addresses";
      break;
    case Step::init_vgic:
      if (err == EBUSY) return "the number of interrupts is fixed already (NR_IRQS set twice, or after CTRL_INIT), or a "
                               "vCPU is being created meanwhile: call init_vgic once, after every vCPU exists";
      if (err == EIO) return "the VM is dead: a KVM_RUN before the GIC was initialised failed, and KVM gave the VM up; "
                             "build a new VM, with init_vgic before its first KVM_RUN";
      break;
    case Step::read_timer_irq:
      if (err == ENXIO) return "this kernel's vCPUs have no such timer attribute";
      break;
    case Step::attach_irqfd:
      if (err == EAGAIN) return "the GIC is not initialised yet: attach irqfds after init_vgic (step 12)";
      if (err == EBUSY) return "this eventfd is wired to an interrupt already";
      break;
    case Step::inject_spi:
      if (err == ENXIO) return "the VM has no in-kernel GIC, or KVM_IRQ_LINE's type was CPU (0), which is for a VM "
                               "without one: create_vgic (step 11) first, and inject with type SPI";
      if (err == EINVAL) return "no such SPI: give the INTID itself, 32 and up and below the GIC's " +
                                std::to_string(kh::vgic_nr_irqs) + " interrupts, not the INTID minus 32";
      if (err == EBUSY) return "the GIC is not initialised yet: init_vgic (step 12) before injecting";
      break;
    case Step::read_mp_state:
      if (err == EINVAL) return "KVM_SET_MP_STATE takes RUNNABLE, STOPPED or SUSPENDED on arm64, no other state";
      break;
    case Step::run_guest:
      if (err == EBUSY) return "the in-kernel GIC was not initialised (init_vgic, step 12) before the first KVM_RUN, "
                               "and KVM has marked the VM dead: every later call fails with EIO; call init_vgic after "
                               "every vCPU is created and before KVM_RUN";
      if (err == ENXIO) return "a GIC frame was never placed (a GICv3's distributor or redistributors, a GICv2's "
                               "distributor or CPU interface), and KVM has marked the VM dead: place every frame "
                               "(create_vgic, step 11) before the first KVM_RUN";
      if (err == EIO) return "the VM is dead: an earlier call failed and KVM gave the VM up (kvm_vm_dead); build a new "
                             "VM";
      break;
    default: break;
  }
  return "";
}

// What a failed call means at its step, and what to do about it.
inline std::string advice_for_call(const kh::Error& error, Status status, std::string_view device) {
  const std::string dev(device);
  switch (status) {
    case Status::no_kvm: return dev + " does not exist: " + why_no_kvm();
    case Status::kvm_permission:
      return "you may not open " + dev + ": join its group (usually `sudo usermod -aG kvm $USER`, then log in again)";
    case Status::not_kvm_device: return dev + " is not a KVM device; use /dev/kvm";
    case Status::out_of_memory: return std::string("out of memory, ") + out_of_memory_advice;
    default: break;
  }
  if (std::string gic = advice_for_gic_call(error); !gic.empty()) return gic;
  switch (error.err) {
    case ENOSYS:
      if (error.step == kh::Step::run_guest) {
        return "the guest touched MMIO with an instruction KVM cannot decode (load/store pair, writeback or SIMD): "
               "use plain ldr/str";
      }
      break;
    case ENOEXEC: return "the vCPU was not initialised: KVM_ARM_VCPU_INIT (step 7) must come before any register";
    case EEXIST: return "it is there already (a memory region that overlaps, or vCPU 0 twice)";
    case EINVAL: return "the kernel rejected an argument: see the contract comment of this step in kvm_hello.hpp";
    default: break;
  }
  return "unexpected at this step: see its contract comment in kvm_hello.hpp";
}

// What an exit this program does not handle means.
inline std::string explain_unexpected_exit(std::uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_FAIL_ENTRY:
      return "KVM_RUN returned KVM_EXIT_FAIL_ENTRY: KVM could not enter the guest, because the vCPU's state is "
             "one the hardware refuses (kvm_run.fail_entry.hardware_entry_failure_reason says why); check the "
             "registers set in step 8";
    case KVM_EXIT_INTERNAL_ERROR:
      return "KVM_RUN returned KVM_EXIT_INTERNAL_ERROR: KVM met a situation it cannot handle "
             "(kvm_run.internal.suberror says which); run with -vv to see it";
    case KVM_EXIT_MMIO:
      return "KVM_RUN returned a KVM_EXIT_MMIO whose kvm_run.mmio.len is not 1, 2, 4 or 8 bytes: no arm64 load or "
             "store moves that, so this kernel's kvm_run is not laid out as this program's <linux/kvm.h> says";
    case KVM_EXIT_SYSTEM_EVENT:
      return "KVM_RUN returned a KVM_EXIT_SYSTEM_EVENT of a type this program does not handle (only SHUTDOWN, "
             "RESET and CRASH are); run with -vv to see it";
    default: break;
  }
  std::string name(exit_reason_name(reason));
  if (name.empty()) name = "exit reason " + std::to_string(reason);
  return "KVM_RUN returned " + name +
         ", which this program does not handle: see the kvm_run section of the "
         "kernel's Documentation/virt/kvm/api.rst";
}

// What the registers said of a guest the watchdog stopped: still running
// (more time might see it power off), or caught in a loop of faults that
// more time does not end.
enum class StuckGuest { running, faulting_forever };

// Whether the guest's registers (and what they say) were printed before the
// error line: not at -q, and then the line says how to see them.
enum class Above { registers, nothing };

// What is wrong, in words, for one status.
inline std::string explain(const kh::Error& error, Status status, std::string_view device,
                           StuckGuest stuck = StuckGuest::running, Above above = Above::registers) {
  const bool shown = above == Above::registers;
  using kh::Problem;
  switch (error.problem) {
    case Problem::call_failed:
      return std::string(error.call) + " failed with " + errno_text(error.err) + ": " +
             advice_for_call(error, status, device);
    case Problem::wrong_api_version:
      return "KVM_GET_API_VERSION says " + std::to_string(error.value) + ", this program needs " +
             std::to_string(kh::expected_api_version) + ": this kernel's KVM API is not the one it was written for";
    case Problem::missing_capability: {
      std::string name(capability_name(error.value));
      if (name.empty()) name = "capability " + std::to_string(error.value);
      return "KVM_CHECK_EXTENSION says the host has no " + name + ": it needs a newer kernel";
    }
    case Problem::ipa_too_small:
      return "the host supports guest-physical addresses of " + std::to_string(error.value) + " bits, fewer than the " +
             std::to_string(kh::guest_ipa_bits) + " KVM_CREATE_VM accepts";
    case Problem::bad_guest_image:
      return "the guest image is " + std::to_string(error.value) + " bytes; it must be 1 to " +
             std::to_string(kh::ram_size) + " bytes (guest RAM)";
    case Problem::guest_reset:
      return "the guest asked for a reset (PSCI SYSTEM_RESET): this program runs a guest once; "
             "end it with PSCI SYSTEM_OFF";
    case Problem::guest_crash: return "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)";
    case Problem::unexpected_exit: return explain_unexpected_exit(static_cast<std::uint32_t>(error.value));
    case Problem::watchdog_expired:
      return "the guest did not power off within " + std::to_string(error.value) +
             " ms, so the watchdog stopped it (KVM_RUN returned EINTR): " +
             (shown ? "the lines above say where it was; " : "") +
             (stuck == StuckGuest::faulting_forever
                  ? std::string("it faults again and again, so more time (--timeout) would not help: ") +
                        (shown ? "fix the instruction named above" : "run without -q to see the instruction to fix")
                  : std::string("a guest that runs longer needs --timeout") +
                        (shown ? "" : " (without -q, its registers say where it was)"));
    case Problem::interrupted:
      return std::string("Ctrl-C stopped the guest (KVM_RUN returned EINTR): ") +
             (shown ? "the registers above say where it was" : "without -q, its registers say where it was");
    case Problem::bad_register_size:
      return "the register id " + hex(error.value) + " names a register of " +
             std::to_string(kh::register_size(error.value)) +
             " bytes (its KVM_REG_SIZE), not the size of the value asked for: read or write it as a " +
             "RegisterId of that size, so that KVM copies no more than the value holds";
    case Problem::bad_statistics:
      return "the " + std::to_string(error.value) +
             "-byte file of KVM_GET_STATS_FD is not laid out as its header says (a count, size or offset past its "
             "end): nothing was read from it";
    case Problem::no_vgic:
      return std::string(error.call == "KVM_CHECK_EXTENSION"
                             ? "KVM_CHECK_EXTENSION says this host's KVM has no in-kernel GIC (KVM_CAP_IRQCHIP is 0)"
                             : "KVM_CREATE_DEVICE offers neither a GICv3 nor a GICv2 (ENODEV for both)") +
             ": lesson 2 needs one (`dmesg | grep -i vgic` says why KVM found none; the emulated machine has one); "
             "lesson 1 runs without";
    case Problem::not_an_spi:
      return "INTID " + std::to_string(error.value) + " is no SPI: an irqfd raises an SPI, INTID " +
             std::to_string(kh::first_spi) + " to " + std::to_string(kh::last_spi);
  }
  return "unknown problem";
}

// An error as the program reports it: its status and its one line.
struct Failure {
  Status status;
  std::string message;  // "step 1 (open_kvm): open failed with ENOENT ...", without the program's name
};

// "step 9 (run_guest)", and ", vCPU 1" after it when the error names its vCPU.
inline Failure failure_for(const kh::Error& error, std::string_view device, StuckGuest stuck = StuckGuest::running,
                           Above above = Above::registers) {
  const Status status = status_for(error);
  const kh::StepInfo& step = kh::step_info(error.step);
  const std::string vcpu = error.vcpu ? ", vCPU " + std::to_string(*error.vcpu) : "";
  return {status, "step " + std::to_string(static_cast<int>(error.step)) + " (" + std::string(step.name) + ")" + vcpu +
                      ": " + explain(error, status, device, stuck, above)};
}

// ==== Lesson 3: what a run of several vCPUs left behind =======================

// "RUNNABLE", or "mp_state 7" for a value KVM_GET_MP_STATE has no name for.
inline std::string mp_state_text(kh::MpState state) {
  const std::string_view name = kh::mp_state_name(state);
  return name.empty() ? "mp_state " + std::to_string(static_cast<std::uint32_t>(state)) : std::string(name);
}

// Why a guest that waited for vCPU `id` waited in vain: no thread ran it.
// `state` is its mp_state after the run (read_mp_state, step 16): RUNNABLE
// says the guest's CPU_ON started it, in KVM, and still it never ran.
inline std::string explain_vcpu_without_thread(std::uint32_t id, kh::MpState state) {
  const std::string vcpu = "vCPU " + std::to_string(id);
  const std::string now = state == kh::MpState::runnable ? " is RUNNABLE (the guest's CPU_ON started it)"
                                                         : " is " + mp_state_text(state);
  return vcpu + now + ", but no thread ever called KVM_RUN on it, so it never ran an instruction: a vCPU runs only " +
         "inside a KVM_RUN of its own, and a guest that waits for it waits forever; start a thread for every vCPU " +
         "(start_vcpu_thread, step 17)";
}

// Why vCPU `id`'s watchdog stopped it although vCPU `powered_off_by` had
// powered the machine off: its thread was left asleep in KVM_RUN, unkicked.
inline std::string explain_left_in_kvm_run(std::uint32_t id, std::uint32_t powered_off_by) {
  return "vCPU " + std::to_string(id) + " was still in KVM_RUN when its watchdog stopped it, after vCPU " +
         std::to_string(powered_off_by) +
         " had powered the machine off: PSCI SYSTEM_OFF stops every vCPU, but only the caller's KVM_RUN returns; "
         "the others sleep in KVM until a signal (kvm_vcpu_sleep). Kick them: stop_vcpus (step 18) asks each to "
         "stop, sends it the kick and joins it";
}

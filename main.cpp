// SPDX-License-Identifier: MIT
// main.cpp: walks through the steps of kvm_hello.hpp in order, announcing each
// one, reporting every exit of the guest, and turning any Error into a
// one-line message and its own exit status.
//
// Read it top to bottom from main(); the helpers above it only format.

#include <sys/stat.h>
#include <sys/utsname.h>

#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>
#include <vector>
#include <string>
#include <string_view>

#include "kvm_hello.hpp"
#include "program/capabilities.hpp"
#include "program/kernel_version.hpp"

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
    {Status::interrupted, "Ctrl-C stopped the guest"},
};

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
    case Problem::call_failed: break;
  }
  if (error.err == ENOMEM) return Status::out_of_memory;
  if (error.step == kh::Step::open_kvm) {
    if (is_missing_device(error.err)) return Status::no_kvm;
    if (error.err == EACCES || error.err == EPERM) return Status::kvm_permission;
  }
  if (error.step == kh::Step::check_api_version && (error.err == ENOTTY || error.err == EINVAL)) {
    return Status::not_kvm_device;
  }
  return error.step == kh::Step::run_guest ? Status::run_failed : Status::setup_failed;
}

// ==== Messages ===============================================================

// "ENOENT (No such file or directory)"; glibc knows the names.
inline std::string errno_text(int err) {
  const char* name = strerrorname_np(err);
  return std::string(name != nullptr ? name : "errno " + std::to_string(err)) + " (" + std::strerror(err) + ")";
}

inline std::string hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%" PRIx64, value);
  return text;
}

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

// What a failed call means at its step, and what to do about it.
inline std::string advice_for_call(const kh::Error& error, std::string_view device) {
  const std::string dev(device);
  switch (status_for(error)) {
    case Status::no_kvm: return dev + " does not exist: " + why_no_kvm();
    case Status::kvm_permission:
      return "you may not open " + dev + ": join its group (usually `sudo usermod -aG kvm $USER`, then log in again)";
    case Status::not_kvm_device: return dev + " is not a KVM device; use /dev/kvm";
    case Status::out_of_memory:
      return "out of memory, or of this process's address-space limit (ulimit -v): free some, or raise the limit";
    default: break;
  }
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
    case KVM_EXIT_SYSTEM_EVENT:
      return "KVM_RUN returned a KVM_EXIT_SYSTEM_EVENT of a type this program does not handle (only SHUTDOWN, "
             "RESET and CRASH are); run with -vv to see it";
    default: break;
  }
  std::string name(kh::exit_reason_name(reason));
  if (name.empty()) name = "exit reason " + std::to_string(reason);
  return "KVM_RUN returned " + name +
         ", which this program does not handle: see the kvm_run section of the "
         "kernel's Documentation/virt/kvm/api.rst";
}

// The one-line explanation of an error, without the program name.
inline std::string explain(const kh::Error& error, std::string_view device) {
  using kh::Problem;
  const kh::StepInfo step = kh::step_info(error.step);
  std::string line = "step " + std::to_string(static_cast<int>(error.step)) + " (" + std::string(step.name) + "): ";
  switch (error.problem) {
    case Problem::call_failed:
      return line + std::string(error.call) + " failed with " + errno_text(error.err) + ": " +
             advice_for_call(error, device);
    case Problem::wrong_api_version:
      return line + "KVM_GET_API_VERSION says " + std::to_string(error.value) + ", this program needs " +
             std::to_string(kh::expected_api_version) + ": this kernel's KVM API is not the one it was written for";
    case Problem::missing_capability: {
      std::string name(kh::capability_name(error.value));
      if (name.empty()) name = "capability " + std::to_string(error.value);
      return line + "KVM_CHECK_EXTENSION says the host has no " + name + ": it needs a newer kernel";
    }
    case Problem::ipa_too_small:
      return line + "the host supports guest-physical addresses of " + std::to_string(error.value) +
             " bits, fewer than the " + std::to_string(kh::guest_ipa_bits) + " KVM_CREATE_VM accepts";
    case Problem::bad_guest_image:
      return line + "the guest image is " + std::to_string(error.value) + " bytes; it must be 1 to " +
             std::to_string(kh::ram_size) + " bytes (guest RAM)";
    case Problem::guest_reset:
      return line +
             "the guest asked for a reset (PSCI SYSTEM_RESET): this program runs a guest once; "
             "end it with PSCI SYSTEM_OFF";
    case Problem::guest_crash: return line + "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)";
    case Problem::unexpected_exit: return line + explain_unexpected_exit(static_cast<std::uint32_t>(error.value));
    case Problem::watchdog_expired:
      return line + "the guest did not power off within " + std::to_string(error.value) +
             " ms, so the watchdog stopped it (KVM_RUN returned EINTR): the lines above say where it was; "
             "a guest that runs longer needs --timeout";
    case Problem::interrupted:
      return line + "Ctrl-C stopped the guest (KVM_RUN returned EINTR): the registers above say where it was";
  }
  return line + "unknown problem";
}

// A byte as hex and as a character, with control characters escaped: 0x68 'h', 0x0a '\n'.
inline std::string describe_byte(std::uint8_t byte) {
  char text[16];
  switch (byte) {
    case '\n': return "0x0a '\\n'";
    case '\r': return "0x0d '\\r'";
    case '\t': return "0x09 '\\t'";
    case '\'': return "0x27 '\\''";
    case '\\': return "0x5c '\\\\'";
    default: break;
  }
  if (byte >= 0x20 && byte < 0x7f) {
    std::snprintf(text, sizeof text, "0x%02x '%c'", byte, byte);
  } else {
    std::snprintf(text, sizeof text, "0x%02x '\\x%02x'", byte, byte);
  }
  return text;
}

// Text as C would write it: printable characters as they are, others escaped.
inline std::string escaped(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<std::uint8_t>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '\\') {
      out += c;
    } else {
      const std::string described = describe_byte(byte);  // "0x0a '\n'": take what is between the quotes
      out += described.substr(6, described.size() - 7);
    }
  }
  return out;
}

// One MMIO exit, as the original C program reported it: address, direction,
// length, data, and each byte as hex and character.
inline std::string describe_mmio(const kh::MmioAccess& access) {
  std::uint64_t value = 0;
  std::memcpy(&value, access.data.data(), access.length);
  std::string line = "KVM_EXIT_MMIO address=" + hex(access.address) + " is_write=" + (access.is_write ? "1" : "0") +
                     " len=" + std::to_string(access.length) + " data=" + hex(value) + " bytes:";
  for (std::uint32_t i = 0; i < access.length; ++i) line += " " + describe_byte(access.data[i]);
  if (!access.is_write) line += "  (the host's answer)";
  return line;
}

// "412 us", "1.3 ms": a duration for people.
inline std::string format_duration(std::chrono::nanoseconds time) {
  char text[32];
  const double ns = static_cast<double>(time.count());
  if (ns < 1e3) {
    std::snprintf(text, sizeof text, "%.0f ns", ns);
  } else if (ns < 1e6) {
    std::snprintf(text, sizeof text, "%.1f us", ns / 1e3);
  } else if (ns < 1e9) {
    std::snprintf(text, sizeof text, "%.1f ms", ns / 1e6);
  } else {
    std::snprintf(text, sizeof text, "%.2f s", ns / 1e9);
  }
  return text;
}

// ==== Which kernel: behaviours that changed between Linux versions ==========
//
// A few things a learner sees depend on the host kernel's version (docs/
// names the kernel source of each): the syndrome of an abort KVM injects
// (sign-extended before 6.12), SMC as a PSCI call (from 6.4), the PSCI
// version (1.3 from 6.13), the preferred target (GENERIC_V8 on every CPU
// from 6.6).

// KVM_ARM_PREFERRED_TARGET's answer, named. Linux before 6.6 answers the
// host CPU's own type on a Cortex-A53 or A57, GENERIC_V8 elsewhere; 6.6 and
// later answer GENERIC_V8 everywhere.
inline std::string describe_target(std::uint32_t target) {
  switch (target) {
    case KVM_ARM_TARGET_GENERIC_V8: return std::to_string(target) + " (KVM_ARM_TARGET_GENERIC_V8)";
    case KVM_ARM_TARGET_CORTEX_A57:
      return std::to_string(target) + " (KVM_ARM_TARGET_CORTEX_A57: Linux before 6.6 names the host's CPU)";
    case KVM_ARM_TARGET_CORTEX_A53:
      return std::to_string(target) + " (KVM_ARM_TARGET_CORTEX_A53: Linux before 6.6 names the host's CPU)";
    default: return std::to_string(target);
  }
}

// What the guest gets when it calls PSCI: the version KVM answers (read from
// the firmware register) and the instructions that reach it on this kernel.
inline std::string describe_psci(std::uint64_t version, KernelVersion kernel) {
  std::string text = "PSCI for the guest: version " + std::to_string(PSCI_VERSION_MAJOR(version)) + "." +
                     std::to_string(PSCI_VERSION_MINOR(version)) + " (KVM_REG_ARM_PSCI_VERSION";
  text += kernel.at_least(6, 13) ? ")" : "; 1.3 from Linux 6.13)";
  text += kernel.at_least(6, 4) ? ", called with hvc or smc"
                                : ", called with hvc only: before Linux 6.4 an smc returns -1 (NOT_SUPPORTED)";
  return text;
}

// ==== What the machine's state means =========================================

// PSTATE as the Arm architecture names its parts: mode (exception level and
// which stack pointer), the D A I F masks, and the N Z C V flags.
inline std::string describe_pstate(std::uint64_t pstate) {
  std::string mode;
  switch (pstate & PSR_MODE_MASK) {
    case PSR_MODE_EL0t: mode = "EL0t: EL0"; break;
    case PSR_MODE_EL1t: mode = "EL1t: EL1 on SP_EL0"; break;
    case PSR_MODE_EL1h: mode = "EL1h: EL1 on SP_EL1"; break;
    default: mode = "mode " + hex(pstate & PSR_MODE_MASK); break;
  }
  std::string masked;
  for (const auto& [bit, name] : {std::pair{PSR_D_BIT, "D"}, {PSR_A_BIT, "A"}, {PSR_I_BIT, "I"}, {PSR_F_BIT, "F"}}) {
    if (pstate & bit) masked += std::string(masked.empty() ? "" : " ") + name;
  }
  std::string flags;
  for (const auto& [bit, name] : {std::pair{PSR_N_BIT, 'N'}, {PSR_Z_BIT, 'Z'}, {PSR_C_BIT, 'C'}, {PSR_V_BIT, 'V'}}) {
    flags += (pstate & bit) ? name : static_cast<char>(name - 'A' + 'a');
  }
  return hex(pstate) + " (" + mode + "; " + (masked.empty() ? "nothing" : masked) + " masked; flags " + flags + ")";
}

inline std::string_view exception_class_name(unsigned ec) {
  namespace ec_ = kh::exception_class;
  switch (ec) {
    case ec_::unknown: return "unknown reason, e.g. an undefined instruction";
    case ec_::hvc64: return "HVC instruction";
    case ec_::instruction_abort: return "instruction abort: fetched from an address with no memory";
    case ec_::pc_alignment: return "PC not aligned";
    case ec_::data_abort: return "data abort: a load or store the host could not complete";
    case ec_::software_step: return "software step: one instruction done";
    default: return "see ESR_EL1 in the Arm Architecture Reference Manual";
  }
}

// The syndrome of an abort KVM injects, as Linux before 6.12 leaves it: built
// from a signed int (the ESR_ELx_EC_* constants were ints), so a syndrome
// with bit 31 set arrives with its upper 32 bits all ones.
constexpr bool is_sign_extended_syndrome(std::uint64_t esr) {
  return (esr >> 32) == 0xffffffff && (esr & 0x80000000) != 0;
}

inline std::string describe_esr(std::uint64_t esr) {
  const unsigned ec = kh::exception_class_of(esr);
  std::string text = hex(esr) + " (EC " + hex(ec) + ": " + std::string(exception_class_name(ec));
  if (is_sign_extended_syndrome(esr)) {
    text += "; the upper 32 bits are Linux's sign extension of the syndrome it injected, " + hex(esr & 0xffffffff) +
            ", fixed in 6.12";
  }
  return text + ")";
}

// The register dump: x0-x30, then the registers that say where the guest is.
inline std::string format_registers(const kh::Registers& regs) {
  std::string text;
  char cell[40];
  for (std::size_t n = 0; n < regs.x.size(); ++n) {
    std::snprintf(cell, sizeof cell, "%4s 0x%016" PRIx64, ("x" + std::to_string(n)).c_str(), regs.x[n]);
    text += (n % 4 == 0 ? "      " : "  ") + std::string(cell) + (n % 4 == 3 || n + 1 == regs.x.size() ? "\n" : "");
  }
  text += "        pc " + hex(regs.pc) + "  pstate " + describe_pstate(regs.pstate) + "\n";
  text += "    sp_el1 " + hex(regs.sp_el1) + "  sp_el0 " + hex(regs.sp_el0) + "\n";
  if (kh::in_exception_vectors(regs)) {  // the guest took an exception: these say which, where, and why
    text += "   esr_el1 " + describe_esr(regs.esr_el1) + "\n";
    text += "   elr_el1 " + hex(regs.elr_el1) + " (the instruction it happened at)  far_el1 " + hex(regs.far_el1) +
            "  vbar_el1 " + hex(regs.vbar_el1) + " (PC is in these vectors)\n";
  } else {
    text += "  vbar_el1 " + hex(regs.vbar_el1) + " (PC is not in its vectors: no exception taken, so ESR_EL1,\n" +
            "            ELR_EL1 and FAR_EL1 say nothing)\n";
  }
  return text;
}

// ==== Trace levels and colour ================================================

enum class Verbosity { quiet, normal, verbose, very_verbose };

struct OutputStyle {
  Verbosity level = Verbosity::normal;
  bool colour = false;  // only on a terminal, never with NO_COLOR set
};
inline OutputStyle style;

inline bool shows(Verbosity level) { return style.level >= level; }

// https://no-color.org: any non-empty NO_COLOR turns colour off.
inline bool wants_colour(int fd) {
  const char* no_colour = std::getenv("NO_COLOR");
  return ::isatty(fd) == 1 && (no_colour == nullptr || *no_colour == '\0');
}

namespace colour {
inline constexpr const char* step = "\033[1m";    // bold
inline constexpr const char* guest = "\033[32m";  // green
inline constexpr const char* error = "\033[31m";  // red
inline constexpr const char* detail = "\033[2m";  // dim
}  // namespace colour

inline std::string paint(const char* sgr, std::string_view text) {
  if (!style.colour) return std::string(text);
  return std::string(sgr) + std::string(text) + "\033[0m";
}

// A line under the current step, at `level` and above.
[[gnu::format(printf, 2, 3)]] inline void say(Verbosity level, const char* format, ...) {
  if (!shows(level)) return;
  char text[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  std::printf("      %s\n", level >= Verbosity::verbose ? paint(colour::detail, text).c_str() : text);
}

inline void announce(kh::Step step) {
  if (!shows(Verbosity::normal)) return;
  const kh::StepInfo info = kh::step_info(step);
  char text[256];
  std::snprintf(text, sizeof text, "[%d/%d] %-19.*s %.*s: %.*s", static_cast<int>(step), kh::step_count,
                static_cast<int>(info.name.size()), info.name.data(), static_cast<int>(info.title.size()),
                info.title.data(), static_cast<int>(info.calls.size()), info.calls.data());
  std::printf("%s\n", paint(colour::step, text).c_str());
}

// ==== -v: every ioctl, as it happens =========================================

// A ONE_REG id, decoded: "0x6030000000100040 (arm64 u64 core 0x40: pc)".
inline std::string describe_register_id(std::uint64_t id) {
  const kh::RegisterIdFields fields = kh::decode_register_id(id);
  std::string kind = fields.coproc == (KVM_REG_ARM_CORE >> KVM_REG_ARM_COPROC_SHIFT) ? "core"
                     : fields.coproc == (KVM_REG_ARM64_SYSREG >> KVM_REG_ARM_COPROC_SHIFT) ? "sysreg"
                     : fields.coproc == (KVM_REG_ARM_FW >> KVM_REG_ARM_COPROC_SHIFT)        ? "firmware"
                                                                                             : "coproc " + hex(fields.coproc);
  const std::string name = kh::register_name(id);
  return hex(id) + " (" + (fields.arch == KVM_REG_ARM64 ? "arm64" : "arch " + hex(fields.arch)) + " u" +
         std::to_string(fields.size_bytes * 8) + " " + kind + " " + hex(fields.index) +
         (name.empty() ? "" : ": " + name) + ")";
}

// The argument of a value request: what the number means for that request.
inline std::string describe_value(std::string_view request, unsigned long value) {
  if (request == "KVM_CHECK_EXTENSION") {
    const std::string_view name = kh::capability_name(value);
    return std::to_string(value) + (name.empty() ? "" : " " + std::string(name));
  }
  if (request == "KVM_CREATE_VM") return hex(value) + " (IPA size " + std::to_string(value & 0xff) + " bits)";
  if (request == "KVM_CREATE_VCPU") return std::to_string(value) + " (vCPU id)";
  return std::to_string(value);
}

inline std::string describe_argument(std::string_view request, const kh::CallArgument& argument) {
  struct Describe {
    std::string_view request;
    std::string operator()(std::monostate) const { return ""; }
    std::string operator()(unsigned long value) const { return ", " + describe_value(request, value); }
    std::string operator()(const kvm_userspace_memory_region* r) const {
      return ", {slot " + std::to_string(r->slot) + ", flags " + hex(r->flags) + ", guest_phys_addr " +
             hex(r->guest_phys_addr) + ", memory_size " + hex(r->memory_size) + ", userspace_addr " +
             hex(r->userspace_addr) + "}";
    }
    std::string operator()(const kvm_vcpu_init* init) const {
      return ", {target " + std::to_string(init->target) + ", features[0] " + hex(init->features[0]) + "}";
    }
    std::string operator()(const kvm_one_reg* one) const {
      std::uint64_t value = 0;
      std::memcpy(&value, reinterpret_cast<const void*>(static_cast<std::uintptr_t>(one->addr)), sizeof value);
      return ", {id " + describe_register_id(one->id) + ", value " + hex(value) + "}";
    }
    std::string operator()(const kvm_guest_debug* debug) const {
      return ", {control " + hex(debug->control) + " = ENABLE | SINGLESTEP}";
    }
  };
  return std::visit(Describe{request}, argument);
}

// The request number's four fields: "0x4020ae46 = _IOW(0xae, 0x46, 32 bytes)".
inline std::string describe_request_number(unsigned long number) {
  const kh::RequestFields fields = kh::decode_request(number);
  const char* dir = fields.dir == _IOC_NONE    ? "_IO"
                    : fields.dir == _IOC_WRITE ? "_IOW"
                    : fields.dir == _IOC_READ  ? "_IOR"
                                               : "_IOWR";
  return hex(number) + " = " + dir + "(" + hex(fields.type) + ", " + hex(fields.nr) +
         (fields.dir == _IOC_NONE ? "" : ", " + std::to_string(fields.size) + " bytes") + ")";
}

inline std::string describe_call(const kh::CallRecord& call) {
  const std::string outcome = call.result < 0 ? "-1 " + errno_text(call.err) : std::to_string(call.result);
  return "ioctl(" + std::to_string(call.fd) + ", " + std::string(call.name) +
         describe_argument(call.name, call.argument) + ") = " + outcome + "  [" + describe_request_number(call.number) +
         "]  " + format_duration(call.took);
}

inline void trace_call(const kh::CallRecord& call) { say(Verbosity::verbose, "%s", describe_call(call).c_str()); }

// Runs `read` with tracing off: for the dump's and the stepper's own register
// reads, dozens at a time, which would drown the trace.
template <class Read>
auto untraced(Read&& read) {
  const auto observer = std::exchange(kh::call_observer, nullptr);
  auto result = read();
  kh::call_observer = observer;
  return result;
}

// ==== -vv: the kvm_run fields of each exit ===================================

inline std::string describe_run_fields(const kvm_run& run) {
  std::string text = "kvm_run {exit_reason " + std::to_string(run.exit_reason) + ", immediate_exit " +
                     std::to_string(run.immediate_exit) + ", flags " + hex(run.flags);
  switch (run.exit_reason) {
    case KVM_EXIT_MMIO: {
      text += ", mmio {phys_addr " + hex(run.mmio.phys_addr) + ", data";
      char byte[4];
      for (const std::uint8_t b : run.mmio.data) {
        std::snprintf(byte, sizeof byte, " %02x", b);
        text += byte;
      }
      text += ", len " + std::to_string(run.mmio.len) + ", is_write " + std::to_string(run.mmio.is_write) + "}";
      break;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      text += ", system_event {type " + std::to_string(run.system_event.type) + ", ndata " +
              std::to_string(run.system_event.ndata) + ", data[0] " + hex(run.system_event.data[0]) + "}";
      break;
    case KVM_EXIT_DEBUG:
      text += ", debug.arch {hsr " + hex(run.debug.arch.hsr) + ", hsr_high " + hex(run.debug.arch.hsr_high) + ", far " +
              hex(run.debug.arch.far) + "}";
      break;
    case KVM_EXIT_FAIL_ENTRY:
      text += ", fail_entry {hardware_entry_failure_reason " + hex(run.fail_entry.hardware_entry_failure_reason) +
              ", cpu " + std::to_string(run.fail_entry.cpu) + "}";
      break;
    case KVM_EXIT_INTERNAL_ERROR:
      text += ", internal {suberror " + std::to_string(run.internal.suberror) + ", ndata " +
              std::to_string(run.internal.ndata) + "}";
      break;
    default: break;
  }
  return text + "}";
}

inline std::string describe_exit(const kh::Exit& exit) {
  if (const auto* access = std::get_if<kh::MmioAccess>(&exit)) return describe_mmio(*access);
  if (const auto* event = std::get_if<kh::SystemEvent>(&exit)) {
    std::string name(kh::system_event_name(event->type));
    if (event->type == KVM_SYSTEM_EVENT_SHUTDOWN) name += ": the guest called PSCI SYSTEM_OFF";
    return "KVM_EXIT_SYSTEM_EVENT type=" + std::to_string(event->type) + " (" + name + ")";
  }
  if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) {
    return "KVM_EXIT_DEBUG esr=" + describe_esr(debug->esr) + " far=" + hex(debug->far);
  }
  const auto& other = std::get<kh::OtherExit>(exit);
  std::string name(kh::exit_reason_name(other.reason));
  return (name.empty() ? "exit reason " + std::to_string(other.reason) : name) + " detail=" + hex(other.detail);
}

// Prints "exit N: ..." for each exit (but KVM_EXIT_DEBUG), at most
// line_limit of them, so a guest that floods us cannot flood the terminal;
// and says once when the guest uses an address where no register is.
class ExitReporter {
 public:
  static constexpr unsigned line_limit = 100;

  void report(const kh::Exit& exit) {
    ++count_;
    if (count_ <= line_limit || shows(Verbosity::verbose)) {
      say(Verbosity::normal, "exit %u: %s", count_, describe_exit(exit).c_str());
    } else if (count_ == line_limit + 1) {
      say(Verbosity::normal, "(more exits than %u: not shown one by one; -v shows them all)", line_limit);
    }
    const auto* access = std::get_if<kh::MmioAccess>(&exit);
    if (access != nullptr && !kh::HelloDevice::has_register(access->address) && !said_unmapped_) {
      said_unmapped_ = true;
      say(Verbosity::normal,
          "note: no register at %s (nor at any address but OUT, ANSWER and ECHO): reads there "
          "return %s, writes are dropped; said once",
          hex(access->address).c_str(), hex(kh::HelloDevice::unmapped_read_value).c_str());
    }
  }

 private:
  unsigned count_ = 0;
  bool said_unmapped_ = false;
};

// ==== --step-guest: one guest instruction at a time ==========================

// A guest instruction's line in guest.S; tools/guest-lines.sh makes the table.
struct GuestLine {
  std::uint64_t address;
  int line;
  const char* text;
};

inline const GuestLine* find_guest_line(std::span<const GuestLine> lines, std::uint64_t address) {
  for (const GuestLine& line : lines) {
    if (line.address == address) return &line;
  }
  return nullptr;
}

// "x1 0x0 -> 0x1100, x2 ...": the registers one instruction changed (pc aside).
inline std::string register_changes(const kh::Registers& before, const kh::Registers& after) {
  std::string text;
  const auto note = [&text](const std::string& name, std::uint64_t was, std::uint64_t now) {
    if (was != now) text += (text.empty() ? "" : ", ") + name + " " + hex(was) + " -> " + hex(now);
  };
  for (std::size_t n = 0; n < before.x.size(); ++n) note("x" + std::to_string(n), before.x[n], after.x[n]);
  note("sp_el0", before.sp_el0, after.sp_el0);
  note("sp_el1", before.sp_el1, after.sp_el1);
  note("pstate", before.pstate, after.pstate);
  note("esr_el1", before.esr_el1, after.esr_el1);
  note("elr_el1", before.elr_el1, after.elr_el1);
  return text;
}

// What the guest was doing: the instruction at `address` and its guest.S line, when known.
struct GuestView {
  std::span<const std::uint8_t> ram;
  std::span<const GuestLine> lines;

  std::optional<std::uint32_t> instruction_at(std::uint64_t address) const {
    // (Written so that no sum can wrap around: a broken guest's PC may be anything.)
    if (address < kh::ram_base || ram.size() < 4 || address - kh::ram_base > ram.size() - 4) return std::nullopt;
    std::uint32_t encoding = 0;
    std::memcpy(&encoding, ram.data() + (address - kh::ram_base), sizeof encoding);
    return encoding;
  }
  std::string where(std::uint64_t address) const {
    const GuestLine* line = find_guest_line(lines, address);
    return hex(address) + (line != nullptr ? " (guest.S:" + std::to_string(line->line) + ": " + line->text + ")" : "");
  }
};

// Prints each instruction before it runs (address, encoding, guest.S line),
// and after it the registers it changed; exits appear in between, in place.
class GuestStepper {
 public:
  GuestStepper(int vcpu_fd, GuestView guest) : vcpu_fd_(vcpu_fd), guest_(guest) {}

  // Before the first KVM_RUN: show the first instruction.
  kh::Result<void> start() {
    auto regs = untraced([&] { return kh::read_registers(vcpu_fd_); });
    if (!regs) return std::unexpected(regs.error());
    before_ = *regs;
    show_instruction(before_.pc);
    return {};
  }

  // At each KVM_EXIT_DEBUG: one instruction is done.
  void stepped() {
    const auto now = untraced([&] { return kh::read_registers(vcpu_fd_); });
    if (!now) return;
    const std::string changes = register_changes(before_, *now);
    if (!changes.empty()) say(Verbosity::normal, "                 %s", changes.c_str());
    before_ = *now;
    show_instruction(now->pc);
  }

  unsigned instructions() const { return shown_; }

 private:
  void show_instruction(std::uint64_t pc) {
    ++shown_;
    const std::uint32_t encoding = guest_.instruction_at(pc).value_or(0);
    const GuestLine* line = find_guest_line(guest_.lines, pc);
    char text[512];
    if (line != nullptr) {
      std::snprintf(text, sizeof text, "guest %s  %08x  guest.S:%-3d %s", hex(pc).c_str(), encoding, line->line,
                    line->text);
    } else {
      std::snprintf(text, sizeof text, "guest %s  %08x", hex(pc).c_str(), encoding);
    }
    say(Verbosity::normal, "%s", text);
  }

  int vcpu_fd_;
  GuestView guest_;
  kh::Registers before_;
  unsigned shown_ = 0;
};

// ==== --pause: a walkthrough, one step at a time =============================

inline constexpr std::string_view walkthrough(kh::Step step) {
  switch (step) {
    case kh::Step::open_kvm:
      return "We hold a file descriptor for /dev/kvm, the door into KVM. Next we ask which API version it speaks.";
    case kh::Step::check_api_version:
      return "It speaks version 12, the only stable KVM API. Next we check each capability we rely on, so that a "
             "missing one stops us here, by name.";
    case kh::Step::check_capabilities:
      return "Everything we need is there. Next we create the VM; on arm64 its type carries the guest's "
             "physical address size.";
    case kh::Step::create_vm:
      return "The VM exists but is empty: no memory, no vCPU. Next we give it RAM: memory of our own, registered at "
             "guest-physical 0x10000.";
    case kh::Step::setup_guest_memory:
      return "Guest RAM holds the guest's code; any guest access outside it will become an MMIO exit. Next we create "
             "the vCPU and map its struct kvm_run.";
    case kh::Step::create_vcpu:
      return "The vCPU exists, but an arm64 vCPU cannot be used before it is initialised. Next comes "
             "KVM_ARM_VCPU_INIT with the preferred target and PSCI 0.2.";
    case kh::Step::init_vcpu:
      return "The vCPU is reset: EL1, interrupts masked, PC 0. Next we point PC at the guest's first instruction and "
             "SP_EL1 at the top of its RAM.";
    case kh::Step::set_boot_registers:
      return "All is ready. Next KVM_RUN enters the guest; each time it returns, kvm_run says why.";
    case kh::Step::run_guest:
      return "The guest powered itself off: the VM is finished. Its fds and memory are released as their owners "
             "go out of scope.";
  }
  return "";
}

// After a step: explain it, then wait for Enter when a person is at the keyboard.
inline void pause_after(kh::Step step, bool pausing) {
  if (!pausing) return;
  const std::string_view text = walkthrough(step);
  std::printf("      -- %.*s\n", static_cast<int>(text.size()), text.data());
  if (::isatty(STDIN_FILENO) != 1) return;  // not a terminal: run straight through
  std::printf("      -- press Enter to go on\n");
  for (int c = std::getchar(); c != '\n' && c != EOF; c = std::getchar()) {
  }
}

// ==== The end of a run ========================================================

inline std::string describe_stats(const kh::RunStats& stats) {
  std::string by_reason;
  for (std::size_t reason = 0; reason < stats.exits_by_reason.size(); ++reason) {
    if (stats.exits_by_reason[reason] == 0) continue;
    std::string name(kh::exit_reason_name(static_cast<std::uint32_t>(reason)));
    if (name.empty()) name = "reason " + std::to_string(reason);
    by_reason += (by_reason.empty() ? "" : ", ") + name + " " + std::to_string(stats.exits_by_reason[reason]);
  }
  return std::to_string(stats.kvm_run_calls) + " KVM_RUN calls, " + std::to_string(stats.exits) + " exits (" +
         by_reason + "); " + format_duration(stats.in_kvm_run) + " inside KVM_RUN, " +
         format_duration(stats.total - stats.in_kvm_run) + " in the host";
}

inline std::optional<kh::Registers> dump_registers(const kh::Vcpu& vcpu, FILE* to) {
  const auto regs = untraced([&] { return kh::read_registers(vcpu.fd.get()); });
  if (!regs) return std::nullopt;
  std::fprintf(to, "registers (read with KVM_GET_ONE_REG, not traced):\n%s", format_registers(*regs).c_str());
  return *regs;
}

// After SYSTEM_OFF, x0-x3 hold what KVM preloaded as the call's return value.
inline void explain_power_off_registers(const kh::Registers& regs) {
  if (regs.x[0] != static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE)) return;
  std::printf(
      "      x0 = -6 (PSCI_RET_INTERNAL_FAILURE), x1-x3 = 0: KVM preloads SYSTEM_OFF's return value,\n"
      "      which the guest would see only if we wrongly ran it again\n");
}

// ==== Your own guest (--guest FILE) ===========================================

struct GuestFileError {
  Status status;
  std::string message;
};

// Reads a raw guest image, and checks it fits guest RAM: all before any VM exists.
inline std::expected<std::vector<std::uint8_t>, GuestFileError> load_guest_file(const std::string& path) {
  const kh::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat info {};
  if (fd.get() < 0 || ::fstat(fd.get(), &info) != 0) {
    return std::unexpected(GuestFileError{Status::guest_file, "cannot open it: " + errno_text(errno)});
  }
  if (S_ISDIR(info.st_mode)) return std::unexpected(GuestFileError{Status::guest_file, "it is a directory"});
  if (static_cast<std::uint64_t>(info.st_size) > kh::ram_size) {
    return std::unexpected(GuestFileError{Status::bad_guest_image, "it is " + std::to_string(info.st_size) +
                                                                       " bytes, more than guest RAM (" +
                                                                       std::to_string(kh::ram_size) + " bytes)"});
  }
  std::vector<std::uint8_t> image(static_cast<std::size_t>(info.st_size));
  std::size_t done = 0;
  while (done < image.size()) {
    const ssize_t got = ::read(fd.get(), image.data() + done, image.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return std::unexpected(GuestFileError{Status::guest_file, "cannot read it: " + errno_text(errno)});
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  image.resize(done);
  if (!kh::check_guest_image(image)) {
    return std::unexpected(
        GuestFileError{Status::bad_guest_image, "it is empty: a guest needs at least one instruction"});
  }
  return image;
}

// ==== After a failure: what the guest's state says ============================

inline std::string_view describe_mmio_instruction(kh::MmioInstruction kind) {
  switch (kind) {
    case kh::MmioInstruction::plain: return "a plain load or store";
    case kh::MmioInstruction::pair: return "a load/store pair (LDP/STP): two registers in one access";
    case kh::MmioInstruction::writeback: return "a load or store with writeback (pre- or post-index)";
    case kh::MmioInstruction::simd: return "a SIMD/FP load or store";
    case kh::MmioInstruction::atomic: return "an exclusive or atomic access";
    case kh::MmioInstruction::not_load_store: return "not a load or store";
  }
  return "";
}

// The vector table's 16 entries: four groups of 0x200 bytes (where the
// exception came from), each of four 0x80-byte entries (what kind it is).
inline std::string vector_entry_name(std::uint64_t offset) {
  static constexpr const char* from[] = {"current EL on SP_EL0", "current EL on SP_ELx", "lower EL, AArch64",
                                         "lower EL, AArch32"};
  static constexpr const char* kind[] = {"synchronous", "IRQ", "FIQ", "SError"};
  if (offset >= kh::vector_table_size) return "outside the table";
  return "offset " + hex(offset & ~std::uint64_t{0x7f}) + " (" + kind[(offset / 0x80) % 4] + ", from the " +
         from[offset / 0x200] + ")";
}

// Lines that explain a failed run from the guest's registers: why it never
// powered off, or which instruction KVM could not decode.
// SMC #imm16: 0xd4000003 | imm16 << 5 (the Arm ARM's "Exception generation").
constexpr bool is_smc(std::uint32_t encoding) { return (encoding & 0xffe0001f) == 0xd4000003; }

// Why a guest that called smc got -1 back, on this kernel.
inline std::string explain_smc_refused(std::uint64_t at, KernelVersion kernel) {
  std::string line = "the guest called smc at " + hex(at) + " and got x0 = -1 (PSCI NOT_SUPPORTED): ";
  if (!kernel.at_least(6, 4)) {
    return line + "Linux before 6.4 does not take smc as a PSCI call (handle_smc in arch/arm64/kvm/handle_exit.c " +
           "answers every smc with -1); call PSCI with hvc";
  }
  return line + "KVM does not know the function id that was in x0";
}

inline std::vector<std::string> diagnose(const kh::Error& error, const kh::Registers& regs, const GuestView& guest,
                                         KernelVersion kernel = running_kernel()) {
  std::vector<std::string> lines;
  const bool stopped = error.problem == kh::Problem::watchdog_expired || error.problem == kh::Problem::interrupted;
  if (stopped && kh::in_exception_vectors(regs)) {
    lines.push_back("PC " + hex(regs.pc) + " is in the exception vectors at VBAR_EL1 " + hex(regs.vbar_el1) + ", " +
                    std::string(vector_entry_name(regs.pc - regs.vbar_el1)) + ": the guest took an exception.");
    lines.push_back("ESR_EL1 says why: " + describe_esr(regs.esr_el1) + "; ELR_EL1 says where: " + hex(regs.elr_el1) +
                    ".");
    if (!guest.instruction_at(regs.vbar_el1)) {
      lines.push_back(
          "The vectors are outside guest RAM, so fetching the handler faults too, again and again, "
          "inside the kernel: KVM_RUN never returns, and only the watchdog gets control back.");
    }
    if (regs.elr_el1 - regs.vbar_el1 < kh::vector_table_size) {
      lines.push_back(
          "ELR_EL1 is in the vectors too: each fault overwrote it, and the first exception's address "
          "is lost; --step-guest shows the instruction that started it.");
    }
  } else if (stopped) {
    lines.push_back("PC " + guest.where(regs.pc) + ": the guest is running there and never called PSCI SYSTEM_OFF.");
    const auto before = guest.instruction_at(regs.pc - 4);
    if (before && is_smc(*before) && regs.x[0] == static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED)) {
      lines.push_back(explain_smc_refused(regs.pc - 4, kernel) + ".");
    }
  }
  if (error.problem == kh::Problem::call_failed && error.err == ENOSYS && error.step == kh::Step::run_guest) {
    if (const auto encoding = guest.instruction_at(regs.pc)) {
      const auto kind = kh::classify_mmio_instruction(*encoding);
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

// ==== Command line ===========================================================

struct BenchSettings {
  std::uint64_t iterations = 65536;  // per measurement, as kvm-unit-tests' micro-bench
  std::uint64_t repeats = 0;         // measurements per kind (their spread shows the noise); 0: the default
  bool json = false;
};
// Five measurements of each kind; three on an emulated CPU, where each takes seconds.
inline std::uint64_t default_bench_repeats() { return std::getenv("KVM_HELLO_EMULATED") != nullptr ? 3 : 5; }
// --bench runs for minutes under emulation: its watchdog, unless --timeout says otherwise.
inline constexpr std::chrono::minutes bench_time_limit{30};
inline constexpr std::uint64_t max_bench_repeats = 64;

struct Options {
  std::string kvm_device = kh::default_kvm_path;
  std::chrono::milliseconds time_limit = kh::default_time_limit;
  bool time_limit_given = false;
  std::string guest_file;  // empty: the embedded guest
  Verbosity level = Verbosity::normal;
  bool step_guest = false;
  bool benchmark = false;
  BenchSettings bench;
  bool caps = false;
  bool pause = false;
  bool help = false;
  bool version = false;
};

// Parses argv; on a bad command line returns the message for it. A value may
// follow its option as the next word or after "=", as with GNU tools:
// `--timeout 2` and `--timeout=2` are the same.
inline std::expected<Options, std::string> parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::optional<std::string_view> attached;  // the value after "=", if any
    if (const auto equals = arg.find('='); arg.starts_with("--") && equals != std::string_view::npos) {
      attached = arg.substr(equals + 1);
      arg = arg.substr(0, equals);
    }
    // The option's value: after "=", or the next word.
    const auto value = [&]() -> std::optional<std::string_view> {
      if (attached) return attached;
      if (i + 1 < argc) return std::string_view(argv[++i]);
      return std::nullopt;
    };
    const auto number = [](std::string_view text, double& out) {
      const std::string copy(text);
      char* end = nullptr;
      out = std::strtod(copy.c_str(), &end);
      return !copy.empty() && *end == '\0';
    };
    bool* flag = arg == "-h" || arg == "--help" ? &options.help
                 : arg == "--version"           ? &options.version
                 : arg == "--step-guest"        ? &options.step_guest
                 : arg == "--caps"              ? &options.caps
                 : arg == "--bench"             ? &options.benchmark
                 : arg == "--json"              ? &options.bench.json
                 : arg == "--pause"             ? &options.pause
                                                : nullptr;
    if (flag != nullptr || arg == "-q" || arg == "--quiet" || arg == "-v" || arg == "-vv") {
      if (attached) return std::unexpected(std::string(arg) + " takes no value: " + argv[i]);
      if (flag != nullptr) *flag = true;
      if (arg == "-q" || arg == "--quiet") options.level = Verbosity::quiet;
      if (arg == "-v") options.level = Verbosity::verbose;
      if (arg == "-vv") options.level = Verbosity::very_verbose;
      continue;
    }
    if (arg != "--bench-iterations" && arg != "--bench-repeats" && arg != "--kvm-device" && arg != "--guest" &&
        arg != "--timeout") {
      return std::unexpected("unknown option: " + std::string(arg));
    }
    const auto given = value();
    if (!given) return std::unexpected(std::string(arg) + " needs a value");
    double amount = 0;
    if (arg == "--kvm-device") {
      options.kvm_device = *given;
    } else if (arg == "--guest") {
      options.guest_file = *given;
    } else if (arg == "--timeout") {
      if (!number(*given, amount) || !(amount > 0 && amount <= 3600)) {
        return std::unexpected("--timeout wants seconds, more than 0 and at most 3600: " + std::string(*given));
      }
      options.time_limit = std::chrono::milliseconds(static_cast<long>(amount * 1000));
      options.time_limit_given = true;
    } else {
      const bool repeats = arg == "--bench-repeats";
      const double most = repeats ? static_cast<double>(max_bench_repeats) : static_cast<double>(1ULL << 30);
      if (!number(*given, amount) || amount < 1 || amount > most || amount != std::floor(amount)) {
        return std::unexpected(std::string(arg) + " wants a whole number from 1 to " +
                               std::to_string(static_cast<unsigned long long>(most)) + ": " + std::string(*given));
      }
      (repeats ? options.bench.repeats : options.bench.iterations) = static_cast<std::uint64_t>(amount);
    }
  }
  return options;
}

inline void print_help() {
  std::printf(
      "usage: kvm-hello [-q | -v | -vv] [--step-guest] [--caps] [--pause] [--bench [--json]]\n"
      "                 [--guest FILE] [--kvm-device PATH] [--timeout SECONDS]\n"
      "Runs a tiny arm64 guest with KVM, step by step: it writes \"hello\" to an MMIO\n"
      "register, reads a value from the host, writes it back, and powers off.\n\n"
      "  -q                  only the guest's output and the outcome\n"
      "  -v                  also every ioctl: request, number decoded, arguments, result, time\n"
      "  -vv                 also the kvm_run fields at each exit\n"
      "  --step-guest        run the guest one instruction at a time (KVM_SET_GUEST_DEBUG)\n"
      "  --caps              show the capabilities the host reports, then stop\n"
      "  --bench             measure what exits cost (the benchmark guest), then stop\n"
      "  --json              with --bench: the figures as JSON\n"
      "  --bench-iterations N, --bench-repeats R   with --bench (default 65536, and 5 or,\n"
      "                      on an emulated CPU, 3)\n"
      "  --pause             explain each step and wait for Enter (on a terminal)\n"
      "  --guest FILE        run this raw arm64 image instead (loaded at 0x10000, entry at its start)\n"
      "  --kvm-device PATH   the KVM device to open (default /dev/kvm)\n"
      "  --timeout SECONDS   the watchdog: stop a guest that has not powered off (default %lld)\n"
      "  --version           print the version\n"
      "  -h, --help          this text\n\n"
      "Colour only on a terminal, and never when NO_COLOR is set. Ctrl-C stops the guest\n"
      "cleanly and shows its registers.\n\n"
      "exit status:\n",
      static_cast<long long>(kh::default_time_limit.count() / 1000));
  for (const StatusInfo& info : status_table) {
    std::printf("  %3d  %.*s\n", static_cast<int>(info.status), static_cast<int>(info.meaning.size()),
                info.meaning.data());
  }
}

// Reports an error on stderr, after the register dump and what it says when a
// vCPU exists; returns its status.
inline int fail(const kh::Error& error, const Options& options, const kh::Vcpu* vcpu = nullptr,
                const GuestView& guest = {}) {
  std::fflush(stdout);
  if (vcpu != nullptr && shows(Verbosity::normal)) {
    if (const auto regs = dump_registers(*vcpu, stderr)) {
      for (const std::string& line : diagnose(error, *regs, guest)) std::fprintf(stderr, "      %s\n", line.c_str());
    }
  }
  const bool colour = wants_colour(STDERR_FILENO) && style.colour;
  const std::string message = "kvm-hello: " + explain(error, options.kvm_device);
  std::fprintf(stderr, "%s\n", colour ? paint(colour::error, message).c_str() : message.c_str());
  return static_cast<int>(status_for(error));
}

// ==== --bench: what a VM exit costs ===========================================
//
// The benchmark guest (tools/bench-guest.S) times, with its own counter, N
// MMIO write exits, N MMIO read exits and N in-kernel hvc calls, R times each.
// The host times each step. Two VMs run it: one driven by run_guest(), one by
// the same loop written with bare ioctl(2) calls, to show what the header's
// wrappers cost.

// Published figures, not measured here: kvm-unit-tests arm/micro-bench on an
// Ampere Altra, QEMU as the VMM.
inline constexpr double reference_hvc_ns = 306;
inline constexpr double reference_mmio_read_ns = 1683;

enum BenchKind { mmio_write, mmio_read, hvc_in_kernel, bench_kinds };
inline constexpr const char* bench_kind_name[] = {
    "MMIO write, to userspace and back", "MMIO read, to userspace and back", "hvc (PSCI_VERSION), in the kernel"};

// The host side of the benchmark guest: records RESULT writes, answers reads.
// Fixed storage: nothing is allocated while the guest runs.
class BenchDevice {
 public:
  static constexpr std::size_t capacity = 1 + bench_kinds * max_bench_repeats;  // the frequency first

  void record(std::uint64_t address, std::uint64_t value) {
    if (address == kh::mmio_result && count_ < capacity) results_[count_++] = value;
  }
  void handle(kh::MmioAccess& access) {
    if (access.is_write) {
      std::uint64_t value = 0;
      std::memcpy(&value, access.data.data(), access.length);
      record(access.address, value);
    } else {
      const std::uint64_t answer = kh::host_answer;
      std::memcpy(access.data.data(), &answer, access.length);
    }
  }
  std::span<const std::uint64_t> results() const { return {results_.data(), count_}; }

 private:
  std::array<std::uint64_t, capacity> results_{};
  std::size_t count_ = 0;
};

// Step 9 again, with bare ioctl(2) and kvm_run: no Request, no Result, no
// decode_exit. Same watchdog, same device.
inline kh::Result<void> raw_run_loop(kh::Vcpu& vcpu, BenchDevice& device, std::chrono::milliseconds limit) {
  kvm_run* run = &vcpu.run();
  const int fd = vcpu.fd.get();
  const kh::Watchdog watchdog(*run, limit);
  for (;;) {
    if (::ioctl(fd, KVM_RUN, 0) < 0) return kh::failed(kh::Step::run_guest, "KVM_RUN");
    if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write) {
      std::uint64_t value = 0;
      std::memcpy(&value, run->mmio.data, std::min<std::uint32_t>(run->mmio.len, 8));
      device.record(run->mmio.phys_addr, value);
    } else if (run->exit_reason == KVM_EXIT_MMIO) {
      const std::uint64_t answer = kh::host_answer;
      std::memcpy(run->mmio.data, &answer, std::min<std::uint32_t>(run->mmio.len, 8));
    } else if (run->exit_reason == KVM_EXIT_SYSTEM_EVENT && run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
      return {};
    } else {
      return std::unexpected(kh::Error{kh::Step::run_guest, kh::Problem::unexpected_exit, {}, 0, run->exit_reason});
    }
  }
}

struct BenchRun {
  std::array<std::chrono::nanoseconds, kh::step_count> step_time{};  // host clock, per step
  std::chrono::nanoseconds lifetime{};                               // open to SYSTEM_OFF
  BenchDevice device;
};

// Steps 1 to 9 for the benchmark guest, each timed; `loop` is step 9.
// `kinds`: which to measure, one bit per BenchKind.
template <class Loop>
kh::Result<BenchRun> bench_vm(const Options& options, std::span<const std::uint8_t> guest, BenchSettings settings,
                              unsigned kinds, Loop&& loop) {
  BenchRun result;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto last = start;
  const auto lap = [&](kh::Step step) {
    const auto now = clock::now();
    result.step_time[static_cast<std::size_t>(step) - 1] = now - last;
    last = now;
  };
  auto kvm = kh::open_kvm(options.kvm_device.c_str());
  if (!kvm) return std::unexpected(kvm.error());
  lap(kh::Step::open_kvm);
  if (const auto v = kh::check_api_version(kvm->get()); !v) return std::unexpected(v.error());
  lap(kh::Step::check_api_version);
  const auto caps = kh::check_capabilities(kvm->get());
  if (!caps) return std::unexpected(caps.error());
  lap(kh::Step::check_capabilities);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return std::unexpected(type.error());
  auto vm = kh::create_vm(kvm->get(), *type);
  if (!vm) return std::unexpected(vm.error());
  lap(kh::Step::create_vm);
  auto memory = kh::setup_guest_memory(vm->get(), guest);
  if (!memory) return std::unexpected(memory.error());
  lap(kh::Step::setup_guest_memory);
  auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
  if (!vcpu) return std::unexpected(vcpu.error());
  lap(kh::Step::create_vcpu);
  if (const auto init = kh::init_vcpu(vm->get(), vcpu->fd.get()); !init) return std::unexpected(init.error());
  lap(kh::Step::init_vcpu);
  // PC and SP_EL1 as always; x0, x1 and x2 tell the guest what to measure.
  for (const auto& [id, value] : {std::pair{kh::reg::pc, kh::boot_registers.pc},
                                  {kh::reg::sp_el1, kh::boot_registers.sp_el1},
                                  {kh::reg::x(0), settings.iterations},
                                  {kh::reg::x(1), settings.repeats},
                                  {kh::reg::x(2), std::uint64_t{kinds}}}) {
    const auto set = kh::set_register(kh::Step::set_boot_registers, vcpu->fd.get(), id, value);
    if (!set) return std::unexpected(set.error());
  }
  lap(kh::Step::set_boot_registers);
  if (const auto ran = loop(*vcpu, result.device); !ran) return std::unexpected(ran.error());
  lap(kh::Step::run_guest);
  result.lifetime = clock::now() - start;
  return result;
}

struct Figures {
  double median_ns, min_ns, spread;  // spread: (max - min) / median
};

// The guest's measurements of one kind, as nanoseconds per exit.
inline Figures figures(std::span<const std::uint64_t> results, BenchKind kind, BenchSettings settings) {
  const double ticks_per_second = static_cast<double>(results[0]);
  std::vector<double> ns;
  for (std::uint64_t r = 0; r < settings.repeats; ++r) {
    const double ticks = static_cast<double>(results[1 + kind * settings.repeats + r]);
    ns.push_back(ticks * 1e9 / ticks_per_second / static_cast<double>(settings.iterations));
  }
  std::sort(ns.begin(), ns.end());
  const double median = ns.size() % 2 == 1 ? ns[ns.size() / 2] : (ns[ns.size() / 2 - 1] + ns[ns.size() / 2]) / 2;
  return {median, ns.front(), median > 0 ? (ns.back() - ns.front()) / median : 0};
}

inline std::string where_measured() {
  const char* emulated = std::getenv("KVM_HELLO_EMULATED");
  if (emulated != nullptr && *emulated != '\0') {
    return std::string("on an EMULATED CPU (") + emulated +
           "): absolute times mean little here; only the ratios within one run mean something";
  }
  return "on this machine's own arm64 CPU, with KVM";
}

inline void print_bench_text(const BenchRun& wrapped, const BenchRun& raw, BenchSettings settings) {
  const auto results = wrapped.device.results();
  std::printf("kvm-hello --bench: measured %s\n", where_measured().c_str());
  std::printf("guest-timed: cntvct_el0 at %.1f MHz, %" PRIu64 " iterations a measurement, %" PRIu64
              " measurements each\n",
              static_cast<double>(results[0]) / 1e6, settings.iterations, settings.repeats);
  std::printf("  %-42s %12s %12s %8s   %s\n", "exit", "median", "min", "spread", "reference (not measured here)");
  Figures all[bench_kinds];
  for (int kind = 0; kind < bench_kinds; ++kind) {
    all[kind] = figures(results, static_cast<BenchKind>(kind), settings);
    const double reference = kind == mmio_read ? reference_mmio_read_ns : kind == hvc_in_kernel ? reference_hvc_ns : 0;
    std::printf("  %-42s %9.0f ns %9.0f ns %7.1f%%   %s\n", bench_kind_name[kind], all[kind].median_ns,
                all[kind].min_ns, all[kind].spread * 100,
                reference > 0 ? (std::to_string(static_cast<int>(reference)) + " ns, Ampere Altra").c_str() : "-");
  }
  const Figures raw_write = figures(raw.device.results(), mmio_write, settings);
  std::printf("  %-42s %9.0f ns %9.0f ns %7.1f%%   %s\n", "MMIO write, bare-ioctl loop (no wrappers)",
              raw_write.median_ns, raw_write.min_ns, raw_write.spread * 100, "-");
  std::printf("  ratio MMIO read to userspace / hvc in the kernel: %.1fx   (reference: %.1fx)\n",
              all[mmio_read].median_ns / all[hvc_in_kernel].median_ns, reference_mmio_read_ns / reference_hvc_ns);
  const double difference = all[mmio_write].median_ns - raw_write.median_ns;
  const double noise = std::max(all[mmio_write].spread, raw_write.spread) * all[mmio_write].median_ns;
  std::printf(
      "  wrappers: %+.0f ns per exit against the bare loop; %s\n", difference,
      std::abs(difference) <= noise ? "within the spread: nothing measurable" : "beyond the spread: measurable");
  std::printf("host-timed (clock_gettime), the run with the wrappers:\n");
  for (int n = 1; n <= kh::step_count; ++n) {
    const std::string_view name = kh::step_info(static_cast<kh::Step>(n)).name;
    std::printf("  [%d/%d] %-19.*s %12s\n", n, kh::step_count, static_cast<int>(name.size()), name.data(),
                format_duration(wrapped.step_time[static_cast<std::size_t>(n) - 1]).c_str());
  }
  std::printf("  VM lifetime, open to SYSTEM_OFF: %s\n", format_duration(wrapped.lifetime).c_str());
}

inline void print_bench_json(const BenchRun& wrapped, const BenchRun& raw, BenchSettings settings) {
  const auto results = wrapped.device.results();
  std::printf("{\n  \"where\": \"%s\",\n", std::getenv("KVM_HELLO_EMULATED") ? "emulated" : "native");
  std::printf("  \"counter_hz\": %" PRIu64 ",\n  \"iterations\": %" PRIu64 ",\n  \"repeats\": %" PRIu64 ",\n",
              results[0], settings.iterations, settings.repeats);
  const char* keys[] = {"mmio_write_ns", "mmio_read_ns", "hvc_ns"};
  Figures all[bench_kinds];
  for (int kind = 0; kind < bench_kinds; ++kind) {
    all[kind] = figures(results, static_cast<BenchKind>(kind), settings);
    std::printf("  \"%s\": {\"median\": %.1f, \"min\": %.1f, \"spread\": %.4f},\n", keys[kind], all[kind].median_ns,
                all[kind].min_ns, all[kind].spread);
  }
  const Figures raw_write = figures(raw.device.results(), mmio_write, settings);
  std::printf("  \"mmio_write_bare_ioctl_ns\": {\"median\": %.1f, \"min\": %.1f, \"spread\": %.4f},\n",
              raw_write.median_ns, raw_write.min_ns, raw_write.spread);
  std::printf("  \"ratio_mmio_read_to_hvc\": %.3f,\n  \"reference_ratio\": %.3f,\n",
              all[mmio_read].median_ns / all[hvc_in_kernel].median_ns, reference_mmio_read_ns / reference_hvc_ns);
  std::printf("  \"step_ns\": [");
  for (int n = 0; n < kh::step_count; ++n) {
    std::printf("%s%lld", n == 0 ? "" : ", ",
                static_cast<long long>(wrapped.step_time[static_cast<std::size_t>(n)].count()));
  }
  std::printf("],\n  \"lifetime_ns\": %lld\n}\n", static_cast<long long>(wrapped.lifetime.count()));
}

// Runs the benchmark guest twice (wrapped loop, bare loop) and prints the figures.
inline int run_benchmark(const Options& options, std::span<const std::uint8_t> bench_guest) {
  BenchSettings settings = options.bench;
  if (settings.repeats == 0) settings.repeats = default_bench_repeats();
  const auto limit = options.time_limit_given ? options.time_limit : bench_time_limit;
  constexpr unsigned all_kinds = (1u << bench_kinds) - 1, write_only = 1u << mmio_write;
  const auto wrapped = bench_vm(options, bench_guest, settings, all_kinds, [&](kh::Vcpu& vcpu, BenchDevice& device) {
    return kh::run_guest(vcpu, device, limit, [](const kh::Exit&) {});
  });
  if (!wrapped) return fail(wrapped.error(), options);
  const auto raw = bench_vm(options, bench_guest, settings, write_only,
                            [&](kh::Vcpu& vcpu, BenchDevice& device) { return raw_run_loop(vcpu, device, limit); });
  if (!raw) return fail(raw.error(), options);
  for (const auto& [run, kinds] : {std::pair{&*wrapped, std::size_t{bench_kinds}}, {&*raw, std::size_t{1}}}) {
    const std::size_t expected = 1 + kinds * settings.repeats;
    if (run->device.results().size() != expected || run->device.results()[0] == 0) {
      std::fprintf(stderr, "kvm-hello: --bench: the benchmark guest reported %zu figures, not %zu\n",
                   run->device.results().size(), expected);
      return static_cast<int>(Status::unexpected_exit);
    }
  }
  if (settings.json) {
    print_bench_json(*wrapped, *raw, settings);
  } else {
    print_bench_text(*wrapped, *raw, settings);
  }
  return 0;
}

#ifndef KVM_HELLO_NO_MAIN
#include "bench_guest_image.h"  // made by the Makefile from tools/bench-guest.S: bench_guest_bin[]
#include "guest_image.h"        // made by the Makefile: `xxd -i guest.bin` gives guest_bin[] and guest_bin_len
#include "guest_lines.h"        // made by tools/guest-lines.sh: guest_lines[], address -> line of guest.S

// The whole program: the nine steps in order. main() only adds the one
// failure that is not an Error value: memory for our own strings running out.
int walk_through(int argc, char** argv) {
  const auto parsed = parse_options(argc, argv);
  if (!parsed) {
    std::fprintf(stderr, "kvm-hello: %s (try --help)\n", parsed.error().c_str());
    return static_cast<int>(Status::usage);
  }
  const Options& options = *parsed;
  if (options.help) return print_help(), 0;
  if (options.version) return std::printf("kvm-hello %s\n", KVM_HELLO_VERSION), 0;
  style = {options.level, wants_colour(STDOUT_FILENO)};
  if (options.benchmark) return run_benchmark(options, std::span(bench_guest_bin, bench_guest_bin_len));
  if (shows(Verbosity::verbose)) kh::call_observer = trace_call;
  std::vector<std::uint8_t> guest_file;
  if (!options.guest_file.empty()) {
    auto loaded = load_guest_file(options.guest_file);
    if (!loaded) {
      std::fprintf(stderr, "kvm-hello: --guest %s: %s\n", options.guest_file.c_str(), loaded.error().message.c_str());
      return static_cast<int>(loaded.error().status);
    }
    guest_file = std::move(*loaded);
  }
  const std::span<const std::uint8_t> guest =
      guest_file.empty() ? std::span<const std::uint8_t>(guest_bin, guest_bin_len) : guest_file;
  const std::span<const GuestLine> lines =
      guest_file.empty() ? std::span<const GuestLine>(guest_lines) : std::span<const GuestLine>{};

  if (shows(Verbosity::normal)) std::printf("kvm-hello: an arm64 guest says hello through KVM, step by step\n");

  announce(kh::Step::open_kvm);
  auto kvm = kh::open_kvm(options.kvm_device.c_str());
  if (!kvm) return fail(kvm.error(), options);
  say(Verbosity::normal, "%s is fd %d", options.kvm_device.c_str(), kvm->get());
  pause_after(kh::Step::open_kvm, options.pause);

  announce(kh::Step::check_api_version);
  const auto version = kh::check_api_version(kvm->get());
  if (!version) return fail(version.error(), options);
  say(Verbosity::normal, "API version %d", *version);
  pause_after(kh::Step::check_api_version, options.pause);

  announce(kh::Step::check_capabilities);
  const auto caps = kh::check_capabilities(kvm->get());
  if (options.caps) return print_capability_table(kvm->get()), caps ? 0 : fail(caps.error(), options);
  if (!caps) return fail(caps.error(), options);
  for (std::size_t i = 0; i < kh::required_capabilities.size(); ++i) {
    const kh::Capability& cap = kh::required_capabilities[i];
    say(Verbosity::normal, "%-23.*s = %d  %.*s", static_cast<int>(cap.name.size()), cap.name.data(), caps->required[i],
        static_cast<int>(cap.why.size()), cap.why.data());
  }
  say(Verbosity::normal, "%-23.*s = %d  %s", static_cast<int>(kh::ipa_size_capability.name.size()),
      kh::ipa_size_capability.name.data(), caps->ipa_limit, "the host's largest guest-physical address, in bits");
  pause_after(kh::Step::check_capabilities, options.pause);

  announce(kh::Step::create_vm);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return fail(type.error(), options);
  auto vm = kh::create_vm(kvm->get(), *type);
  if (!vm) return fail(vm.error(), options);
  say(Verbosity::normal, "type %s (IPA size %d bits): VM is fd %d", hex(*type).c_str(),
      *type == 0 ? 40 : kh::guest_ipa_bits, vm->get());
  pause_after(kh::Step::create_vm, options.pause);

  announce(kh::Step::setup_guest_memory);
  auto memory = kh::setup_guest_memory(vm->get(), guest);
  if (!memory) return fail(memory.error(), options);
  const GuestView view{memory->host.bytes(), lines};
  say(Verbosity::normal, "%zu bytes of guest code copied to the start of %s bytes mapped at %p", guest.size(),
      hex(memory->region.memory_size).c_str(), memory->host.get());
  say(Verbosity::normal, "slot %u: guest-physical %s..%s", memory->region.slot,
      hex(memory->region.guest_phys_addr).c_str(),
      hex(memory->region.guest_phys_addr + memory->region.memory_size - 1).c_str());
  pause_after(kh::Step::setup_guest_memory, options.pause);

  announce(kh::Step::create_vcpu);
  auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
  if (!vcpu) return fail(vcpu.error(), options);
  say(Verbosity::normal, "vCPU 0 is fd %d; its struct kvm_run is the first of %zu bytes mapped at %p", vcpu->fd.get(),
      vcpu->shared.size(), vcpu->shared.get());
  pause_after(kh::Step::create_vcpu, options.pause);

  announce(kh::Step::init_vcpu);
  const auto init = kh::init_vcpu(vm->get(), vcpu->fd.get());
  if (!init) return fail(init.error(), options);
  say(Verbosity::normal, "target %s, features[0] = %s (PSCI 0.2)", describe_target(init->target).c_str(),
      hex(init->features[0]).c_str());
  const auto psci = kh::get_register(kh::Step::init_vcpu, vcpu->fd.get(), kh::reg::psci_version);
  if (!psci) return fail(psci.error(), options);
  say(Verbosity::normal, "%s", describe_psci(*psci, running_kernel()).c_str());
  pause_after(kh::Step::init_vcpu, options.pause);

  announce(kh::Step::set_boot_registers);
  const auto set = kh::set_boot_registers(vcpu->fd.get());
  if (!set) return fail(set.error(), options);
  say(Verbosity::normal, "PC = %s, SP_EL1 = %s", hex(kh::boot_registers.pc).c_str(),
      hex(kh::boot_registers.sp_el1).c_str());
  pause_after(kh::Step::set_boot_registers, options.pause);

  announce(kh::Step::run_guest);
  GuestStepper stepper(vcpu->fd.get(), view);
  if (options.step_guest) {
    const auto single_step = kh::enable_single_step(kvm->get(), vcpu->fd.get());
    if (!single_step) return fail(single_step.error(), options, &*vcpu, view);
    say(Verbosity::normal,
        "single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP); each instruction, then "
        "the registers it changed");
    const auto started = stepper.start();
    if (!started) return fail(started.error(), options, &*vcpu, view);
  }
  kh::HelloDevice device;
  ExitReporter reporter;
  const kvm_run& run = vcpu->run();
  const auto stats = kh::run_guest(*vcpu, device, options.time_limit, [&](const kh::Exit& exit) {
    say(Verbosity::very_verbose, "%s", describe_run_fields(run).c_str());
    if (std::holds_alternative<kh::DebugExit>(exit)) return stepper.stepped();
    reporter.report(exit);
  });
  if (!stats) return fail(stats.error(), options, &*vcpu, view);
  pause_after(kh::Step::run_guest, options.pause);

  std::printf("guest output: %s%s\n", paint(colour::guest, escaped(device.output())).c_str(),
              device.output_dropped() == 0
                  ? ""
                  : (" (and " + std::to_string(device.output_dropped()) + " more bytes, not kept)").c_str());
  if (shows(Verbosity::normal)) {
    if (device.answer_came_back()) {
      std::printf("the guest read %s from the host and wrote it back\n", hex(kh::host_answer).c_str());
    }
    if (const auto regs = dump_registers(*vcpu, stdout)) explain_power_off_registers(*regs);
    std::printf("summary: %s\n", describe_stats(*stats).c_str());
  }
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %u exits\n", stats->exits);
  return static_cast<int>(Status::ok);
}
int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as it happens, also into a pipe
  try {
    return walk_through(argc, argv);
  } catch (const std::bad_alloc&) {  // the owners have closed every fd and mapping on the way out
    std::fprintf(stderr,
                 "kvm-hello: out of memory (std::bad_alloc), or of this process's address-space limit "
                 "(ulimit -v): free some, or raise the limit\n");
    return static_cast<int>(Status::out_of_memory);
  }
}
#endif  // KVM_HELLO_NO_MAIN

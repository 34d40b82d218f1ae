// SPDX-License-Identifier: MIT
// main.cpp: walks through the steps of kvm_hello.hpp in order, announcing each
// one, reporting every exit of the guest, and turning any Error into a
// one-line message and its own exit status.
//
// Read it top to bottom from main(); the helpers above it only format.

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "kvm_hello.hpp"

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
  run_failed = 20,
  unexpected_exit = 21,
  guest_reset = 22,
  guest_crash = 23,
  watchdog = 24,
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
    {Status::run_failed, "KVM_RUN failed"},
    {Status::unexpected_exit, "the guest stopped for a reason this program does not handle"},
    {Status::guest_reset, "the guest asked for a reset"},
    {Status::guest_crash, "the guest reported a crash"},
    {Status::watchdog, "the watchdog stopped a guest that did not power off in time"},
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

// What a failed call means at its step, and what to do about it.
inline std::string advice_for_call(const kh::Error& error, std::string_view device) {
  const std::string dev(device);
  switch (status_for(error)) {
    case Status::no_kvm:
      return dev +
             " does not exist: this kernel has no KVM, or this is not an arm64 machine; "
             "on any other Linux machine `make run` runs kvm-hello inside an emulated arm64 machine";
    case Status::kvm_permission:
      return "you may not open " + dev + ": join its group (usually `sudo usermod -aG kvm $USER`, then log in again)";
    case Status::not_kvm_device: return dev + " is not a KVM device; use /dev/kvm";
    case Status::out_of_memory: return "the host is out of memory: free some and try again";
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
    case Problem::unexpected_exit: {
      std::string name(kh::exit_reason_name(static_cast<std::uint32_t>(error.value)));
      if (name.empty()) name = "exit reason " + std::to_string(error.value);
      return line + "KVM_RUN returned " + name +
             ", which this program does not handle: see the kvm_run section of "
             "the kernel's Documentation/virt/kvm/api.rst";
    }
    case Problem::watchdog_expired:
      return line + "the guest did not power off within " + std::to_string(error.value) +
             " ms, so the watchdog stopped it: it is in a loop, or faulting; the PC above shows where";
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

inline std::string describe_exit(const kh::Exit& exit) {
  if (const auto* access = std::get_if<kh::MmioAccess>(&exit)) return describe_mmio(*access);
  if (const auto* event = std::get_if<kh::SystemEvent>(&exit)) {
    std::string name(kh::system_event_name(event->type));
    if (event->type == KVM_SYSTEM_EVENT_SHUTDOWN) name += ": the guest called PSCI SYSTEM_OFF";
    return "KVM_EXIT_SYSTEM_EVENT type=" + std::to_string(event->type) + " (" + name + ")";
  }
  const auto& other = std::get<kh::OtherExit>(exit);
  std::string name(kh::exit_reason_name(other.reason));
  return (name.empty() ? "exit reason " + std::to_string(other.reason) : name) + " detail=" + hex(other.detail);
}

// ==== Command line ===========================================================

struct Options {
  std::string kvm_device = kh::default_kvm_path;
  std::chrono::milliseconds time_limit = kh::default_time_limit;
  bool help = false;
  bool version = false;
};

// Parses argv; on a bad command line returns the message for it.
inline std::expected<Options, std::string> parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "-h" || arg == "--help") {
      options.help = true;
    } else if (arg == "--version") {
      options.version = true;
    } else if (arg == "--kvm-device" && has_value) {
      options.kvm_device = argv[++i];
    } else if (arg == "--timeout" && has_value) {
      char* end = nullptr;
      const double seconds = std::strtod(argv[++i], &end);
      if (end == argv[i] || *end != '\0' || !(seconds > 0 && seconds <= 3600)) {
        return std::unexpected("--timeout wants seconds, more than 0 and at most 3600: " + std::string(argv[i]));
      }
      options.time_limit = std::chrono::milliseconds(static_cast<long>(seconds * 1000));
    } else {
      return std::unexpected("unknown option or missing value: " + std::string(arg));
    }
  }
  return options;
}

inline void print_help() {
  std::printf(
      "usage: kvm-hello [--kvm-device PATH] [--timeout SECONDS]\n"
      "Runs a tiny arm64 guest with KVM, step by step: it writes \"hello\" to an MMIO\n"
      "register, reads a value from the host, and powers off.\n\n"
      "  --kvm-device PATH   the KVM device to open (default /dev/kvm)\n"
      "  --timeout SECONDS   the watchdog: stop a guest that has not powered off (default %lld)\n"
      "  --version           print the version\n"
      "  -h, --help          this text\n\n"
      "exit status:\n",
      static_cast<long long>(kh::default_time_limit.count() / 1000));
  for (const StatusInfo& info : status_table)
    std::printf("  %3d  %.*s\n", static_cast<int>(info.status), static_cast<int>(info.meaning.size()),
                info.meaning.data());
}

// ==== Tracing: what the program says while it works ==========================

inline void announce(kh::Step step) {
  const kh::StepInfo info = kh::step_info(step);
  std::printf("[%d/%d] %-19.*s %.*s: %.*s\n", static_cast<int>(step), kh::step_count,
              static_cast<int>(info.name.size()), info.name.data(), static_cast<int>(info.title.size()),
              info.title.data(), static_cast<int>(info.calls.size()), info.calls.data());
}

// A result under its step's line.
template <class... Args>
void result(const char* format, Args... args) {
  std::printf("      ");
  std::printf(format, args...);
  std::printf("\n");
}

// Reports an error on stderr, after the registers when a vCPU exists; returns its status.
inline int fail(const kh::Error& error, const Options& options, const kh::Vcpu* vcpu = nullptr) {
  std::fflush(stdout);
  if (vcpu != nullptr) {
    const auto pc = kh::get_register(kh::Step::run_guest, vcpu->fd.get(), kh::reg::pc);
    const auto pstate = kh::get_register(kh::Step::run_guest, vcpu->fd.get(), kh::reg::pstate);
    if (pc && pstate) std::fprintf(stderr, "      guest PC=%s PSTATE=%s\n", hex(*pc).c_str(), hex(*pstate).c_str());
  }
  std::fprintf(stderr, "kvm-hello: %s\n", explain(error, options.kvm_device).c_str());
  return static_cast<int>(status_for(error));
}

#ifndef KVM_HELLO_NO_MAIN
#include "guest_image.h"  // made by the Makefile: `xxd -i guest.bin` gives guest_bin[] and guest_bin_len

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as it happens, also into a pipe
  const auto parsed = parse_options(argc, argv);
  if (!parsed) {
    std::fprintf(stderr, "kvm-hello: %s (try --help)\n", parsed.error().c_str());
    return static_cast<int>(Status::usage);
  }
  const Options& options = *parsed;
  if (options.help) return print_help(), 0;
  if (options.version) return std::printf("kvm-hello %s\n", KVM_HELLO_VERSION), 0;
  const std::span<const std::uint8_t> guest(guest_bin, guest_bin_len);

  std::printf("kvm-hello: an arm64 guest says hello through KVM, step by step\n");

  announce(kh::Step::open_kvm);
  auto kvm = kh::open_kvm(options.kvm_device.c_str());
  if (!kvm) return fail(kvm.error(), options);
  result("%s is fd %d", options.kvm_device.c_str(), kvm->get());

  announce(kh::Step::check_api_version);
  const auto version = kh::check_api_version(kvm->get());
  if (!version) return fail(version.error(), options);
  result("API version %d", *version);

  announce(kh::Step::check_capabilities);
  const auto caps = kh::check_capabilities(kvm->get());
  if (!caps) return fail(caps.error(), options);
  for (std::size_t i = 0; i < kh::required_capabilities.size(); ++i) {
    const kh::Capability& cap = kh::required_capabilities[i];
    result("%-23.*s = %d  %.*s", static_cast<int>(cap.name.size()), cap.name.data(), caps->required[i],
           static_cast<int>(cap.why.size()), cap.why.data());
  }
  result("%-23.*s = %d  %s", static_cast<int>(kh::ipa_size_capability.name.size()), kh::ipa_size_capability.name.data(),
         caps->ipa_limit, "the host's largest guest-physical address, in bits");

  announce(kh::Step::create_vm);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return fail(type.error(), options);
  auto vm = kh::create_vm(kvm->get(), *type);
  if (!vm) return fail(vm.error(), options);
  result("type %s (IPA size %d bits): VM is fd %d", hex(*type).c_str(), *type == 0 ? 40 : kh::guest_ipa_bits,
         vm->get());

  announce(kh::Step::setup_guest_memory);
  auto memory = kh::setup_guest_memory(vm->get(), guest);
  if (!memory) return fail(memory.error(), options);
  result("%zu bytes of guest code copied to the start of %s bytes mapped at %p", guest.size(),
         hex(memory->region.memory_size).c_str(), memory->host.get());
  result("slot %u: guest-physical %s..%s", memory->region.slot, hex(memory->region.guest_phys_addr).c_str(),
         hex(memory->region.guest_phys_addr + memory->region.memory_size - 1).c_str());

  announce(kh::Step::create_vcpu);
  auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
  if (!vcpu) return fail(vcpu.error(), options);
  result("vCPU 0 is fd %d; its struct kvm_run is the first of %zu bytes mapped at %p", vcpu->fd.get(),
         vcpu->shared.size(), vcpu->shared.get());

  announce(kh::Step::init_vcpu);
  const auto init = kh::init_vcpu(vm->get(), vcpu->fd.get());
  if (!init) return fail(init.error(), options);
  result("target %u, features[0] = %s (PSCI 0.2)", init->target, hex(init->features[0]).c_str());

  announce(kh::Step::set_boot_registers);
  const auto set = kh::set_boot_registers(vcpu->fd.get());
  if (!set) return fail(set.error(), options);
  result("PC = %s, SP_EL1 = %s", hex(kh::boot_registers.pc).c_str(), hex(kh::boot_registers.sp_el1).c_str());

  announce(kh::Step::run_guest);
  kh::HelloDevice device;
  unsigned exit_number = 0;
  const auto stats = kh::run_guest(*vcpu, device, options.time_limit, [&](const kh::Exit& exit) {
    result("exit %u: %s", ++exit_number, describe_exit(exit).c_str());
  });
  if (!stats) return fail(stats.error(), options, &*vcpu);

  std::printf("guest output: %s\n", escaped(device.output()).c_str());
  if (device.answer_came_back()) {
    std::printf("the guest read %s from the host and wrote it back\n", hex(kh::host_answer).c_str());
  }
  std::printf("shutdown: the guest powered off (PSCI SYSTEM_OFF) after %u exits\n", stats->exits);
  return static_cast<int>(Status::ok);
}
#endif  // KVM_HELLO_NO_MAIN

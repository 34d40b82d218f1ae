// SPDX-License-Identifier: MIT
// program/describe.hpp: what KVM and the CPU hand back, in words: exit
// reasons, MMIO accesses, syndromes, PSTATE, the preferred target, the
// guest's PSCI. One exit, decoded once by kvm_hello::decode_exit, is
// described here for every report.
#pragma once

#include <linux/psci.h>

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/kernel_version.hpp"

namespace kh = kvm_hello;

// ---- Names the kernel gives --------------------------------------------------

constexpr std::string_view exit_reason_name(std::uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
    case KVM_EXIT_DEBUG: return "KVM_EXIT_DEBUG";
    case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
    case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
    case KVM_EXIT_INTR: return "KVM_EXIT_INTR";
    case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "KVM_EXIT_SYSTEM_EVENT";
    case KVM_EXIT_ARM_NISV: return "KVM_EXIT_ARM_NISV";
    default: return "";
  }
}

constexpr std::string_view system_event_name(std::uint32_t type) {
  switch (type) {
    case KVM_SYSTEM_EVENT_SHUTDOWN: return "SHUTDOWN";
    case KVM_SYSTEM_EVENT_RESET: return "RESET";
    case KVM_SYSTEM_EVENT_CRASH: return "CRASH";
    default: return "";
  }
}

// The name of a capability kvm_hello.hpp uses, for messages; "" for others.
constexpr std::string_view capability_name(std::uint64_t id) {
  for (const kh::Capability& capability : kh::required_capabilities) {
    if (static_cast<std::uint64_t>(capability.id) == id) return capability.name;
  }
  for (const kh::Capability& other :
       {kh::ipa_size_capability, kh::single_step_capability, kh::hardware_breakpoints_capability,
        kh::irqchip_capability, kh::irqfd_capability}) {
    if (static_cast<std::uint64_t>(other.id) == id) return other.name;
  }
  return "";
}

// ---- Exits -------------------------------------------------------------------

// "1 exit", "9 exits".
inline std::string counted(std::uint64_t n, std::string_view thing) {
  return std::to_string(n) + " " + std::string(thing) + (n == 1 ? "" : "s");
}

// The name of HelloDevice's register at an address (kvm_hello.hpp's
// memory_map); "" where there is none.
constexpr std::string_view device_register_name(std::uint64_t address) {
  const kh::Region* found = kh::register_at(address);
  return found != nullptr && found->kind == kh::RegionKind::hello_register ? found->name : "";
}

// What the data of a read is: ANSWER's is the host's answer; OUT and ECHO are
// only written, and an address with no register has nothing to read either:
// HelloDevice answers those with unmapped_read_value.
inline std::string describe_read_answer(std::uint64_t address) {
  if (address == kh::mmio_answer) return "(the host's answer)";
  const std::string name(device_register_name(address));
  const std::string answered = "the host answers " + hex(kh::HelloDevice::unmapped_read_value);
  if (!name.empty()) return "(" + name + " is write-only: there is nothing to read, " + answered + ")";
  return "(no register here: nothing to read, " + answered + ")";
}

// One MMIO exit, as the original C program reported it: address, direction,
// length, data, and each byte as hex and character; a read also says what
// its data is.
inline std::string describe_mmio(const kh::MmioAccess& access) {
  std::uint64_t value = 0;
  std::memcpy(&value, access.data.data(), access.length);
  std::string line = "KVM_EXIT_MMIO address=" + hex(access.address) + " is_write=" + (access.is_write ? "1" : "0") +
                     " len=" + std::to_string(access.length) + " data=" + hex(value) + " bytes:";
  for (std::uint32_t i = 0; i < access.length; ++i) line += " " + describe_byte(access.data[i]);
  if (!access.is_write) line += "  " + describe_read_answer(access.address);
  return line;
}

// A write to OUT of more than one byte: HelloDevice prints its first byte (the
// lowest: arm64 is little-endian) and drops the rest. "" for any other access.
inline std::string describe_wide_out_write(const kh::MmioAccess& access) {
  if (!access.is_write || access.address != kh::mmio_out || access.length <= 1) return "";
  return "OUT prints one byte per write: of this " + std::to_string(access.length) + "-byte write it printed the " +
         "first, " + describe_byte(access.data[0]) + ", and dropped the other " + std::to_string(access.length - 1) +
         " (write one byte at a time, with strb)";
}

// ---- Syndromes: ESR_ELx ------------------------------------------------------
//
// ESR_ELx ("exception syndrome"): bits [31:26] are the exception class, EC
// (Arm Architecture Reference Manual, ESR_EL1). The ones this program explains:
namespace exception_class {
inline constexpr unsigned unknown = 0x00;            // e.g. an undefined instruction (zero-filled memory)
inline constexpr unsigned hvc64 = 0x16;              // HVC from AArch64
inline constexpr unsigned instruction_abort = 0x21;  // from the current EL
inline constexpr unsigned pc_alignment = 0x22;
inline constexpr unsigned data_abort = 0x25;     // from the current EL
inline constexpr unsigned breakpoint = 0x30;     // from a lower EL: a hardware breakpoint's address reached
inline constexpr unsigned software_step = 0x32;  // from a lower EL: what single-stepping reports
}  // namespace exception_class
constexpr unsigned exception_class_of(std::uint64_t esr) { return static_cast<unsigned>((esr >> 26) & 0x3f); }

inline std::string_view exception_class_name(unsigned ec) {
  namespace ec_ = exception_class;
  switch (ec) {
    case ec_::unknown: return "unknown reason, e.g. an undefined instruction";
    case ec_::hvc64: return "HVC instruction";
    case ec_::instruction_abort: return "instruction abort: fetched from an address with no memory";
    case ec_::pc_alignment: return "PC not aligned";
    case ec_::data_abort: return "data abort: a load or store the host could not complete";
    case ec_::breakpoint: return "breakpoint: the instruction there has not run yet";
    case ec_::software_step: return "software step: one instruction done";
    default: return "see ESR_EL1 in the Arm Architecture Reference Manual";
  }
}

// The syndrome of an abort KVM injects, as Linux 6.1 leaves it (mainline
// before 6.12; 6.6.54 has the fix): built from a signed int (the
// ESR_ELx_EC_* constants of arch/arm64/include/asm/esr.h were ints), so a
// syndrome with bit 31 set arrives with its upper 32 bits all ones, on a CPU
// that keeps ESR_EL1's upper bits (QEMU's does; a real one may drop them).
constexpr bool is_sign_extended_syndrome(std::uint64_t esr) {
  return (esr >> 32) == 0xffffffff && (esr & 0x80000000) != 0;
}

inline std::string describe_esr(std::uint64_t esr) {
  const unsigned ec = exception_class_of(esr);
  std::string text = hex(esr) + " (EC " + hex(ec) + ": " + std::string(exception_class_name(ec));
  if (is_sign_extended_syndrome(esr)) {
    text += "; the upper 32 bits are Linux's sign extension of the syndrome it injected, " + hex(esr & 0xffffffff) +
            ", fixed in 6.12";
  }
  return text + ")";
}

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
  for (const auto& [bit, name] : {std::pair{std::uint64_t{PSR_D_BIT}, "D"}, {PSR_A_BIT, "A"}, {PSR_I_BIT, "I"}, {PSR_F_BIT, "F"}}) {
    if (pstate & bit) masked += std::string(masked.empty() ? "" : " ") + name;
  }
  std::string flags;
  for (const auto& [bit, name] : {std::pair{PSR_N_BIT, 'N'}, {PSR_Z_BIT, 'Z'}, {PSR_C_BIT, 'C'}, {PSR_V_BIT, 'V'}}) {
    flags += (pstate & bit) ? name : static_cast<char>(name - 'A' + 'a');
  }
  return hex(pstate) + " (" + mode + "; " + (masked.empty() ? "nothing" : masked) + " masked; flags " + flags + ")";
}

inline std::string describe_exit(const kh::Exit& exit) {
  if (const auto* access = std::get_if<kh::MmioAccess>(&exit)) return describe_mmio(*access);
  if (const auto* event = std::get_if<kh::SystemEvent>(&exit)) {
    std::string name(system_event_name(event->type));
    if (event->type == KVM_SYSTEM_EVENT_SHUTDOWN) name += ": the guest called PSCI SYSTEM_OFF";
    return "KVM_EXIT_SYSTEM_EVENT type=" + std::to_string(event->type) + " (" + name + ")";
  }
  if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) {
    return "KVM_EXIT_DEBUG esr=" + describe_esr(debug->esr) + " far=" + hex(debug->far);
  }
  const auto& other = std::get<kh::OtherExit>(exit);
  if (other.reason == KVM_EXIT_MMIO) return "KVM_EXIT_MMIO len=" + std::to_string(other.detail) + ": not 1, 2, 4 or 8";
  std::string name(exit_reason_name(other.reason));
  return (name.empty() ? "exit reason " + std::to_string(other.reason) : name) + " detail=" + hex(other.detail);
}

// -vv: the struct kvm_run fields of an exit, as KVM left them.
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

// The end of a run: "9 KVM_RUN calls, 9 exits (KVM_EXIT_MMIO 8, ...); ..."
inline std::string describe_stats(const kh::RunStats& stats) {
  std::string by_reason;
  for (std::size_t reason = 0; reason < stats.exits_by_reason.size(); ++reason) {
    if (stats.exits_by_reason[reason] == 0) continue;
    std::string name(exit_reason_name(static_cast<std::uint32_t>(reason)));
    if (name.empty()) name = "reason " + std::to_string(reason);
    by_reason += (by_reason.empty() ? "" : ", ") + name + " " + std::to_string(stats.exits_by_reason[reason]);
  }
  return counted(stats.kvm_run_calls, "KVM_RUN call") + ", " + counted(stats.exits, "exit") + " (" + by_reason + "); " +
         format_duration(stats.in_kvm_run) + " inside KVM_RUN, " + format_duration(stats.total - stats.in_kvm_run) +
         " in the host";
}

// -v, after a run: what KVM counted for the vCPU (kvm_hello::read_vcpu_statistics),
// and what that says about the exits that never came to us.
inline std::vector<std::string> describe_statistics(const std::vector<kh::VcpuStatistic>& stats, unsigned exits_to_us) {
  static constexpr std::string_view shown[] = {"exits",         "mmio_exit_user", "mmio_exit_kernel", "hvc_exit_stat",
                                               "wfi_exit_stat", "wfe_exit_stat",  "signal_exits",     "halt_wait_ns"};
  std::string line = "vCPU statistics (KVM_GET_STATS_FD):";
  std::optional<std::uint64_t> exits;
  for (const std::string_view name : shown) {
    for (const kh::VcpuStatistic& stat : stats) {
      if (stat.name != name) continue;
      line += (line.ends_with(':') ? " " : ", ") + stat.name + " " + std::to_string(stat.value);
      if (name == "exits") exits = stat.value;
    }
  }
  std::vector<std::string> lines{line};
  if (exits && *exits >= exits_to_us) {
    lines.push_back("the guest left for KVM " + std::to_string(*exits) + " times; " + std::to_string(exits_to_us) +
                    " of them came on to us, and KVM handled the other " + std::to_string(*exits - exits_to_us) +
                    " itself (host interrupts, guest RAM's first touch, PSCI calls that need no one else)");
  }
  return lines;
}

// ---- Instructions KVM cannot decode for MMIO ---------------------------------
//
// For a data abort the hardware describes plain single-register loads and
// stores in the ESR ("ISV", instruction syndrome valid), and KVM needs that
// description to emulate an MMIO access. These A64 load/store forms come
// without it, and KVM_RUN fails with ENOSYS:
enum class MmioInstruction {
  plain,           // LDR/STR (and B/H/W forms) to one general register: KVM handles these
  pair,            // LDP/STP: two registers in one access
  writeback,       // pre- or post-index forms that also update the base register
  simd,            // to a SIMD/FP register (q0, d0, ...)
  atomic,          // exclusive or atomic memory operations
  not_load_store,  // not a load or store at all
};

// Classifies an A64 encoding by the fields the Arm ARM's "Loads and Stores"
// decode table uses: bits [29:27] the group, bit 26 V (SIMD/FP), bits [25:24],
// bit 21 and bits [11:10] the addressing form.
constexpr MmioInstruction classify_mmio_instruction(std::uint32_t encoding) {
  const unsigned group = (encoding >> 27) & 0b111;
  const bool simd = ((encoding >> 26) & 1) != 0;
  if (((encoding >> 25) & 1) != 0 || ((encoding >> 27) & 1) == 0) return MmioInstruction::not_load_store;
  if (group == 0b101) return MmioInstruction::pair;
  if (group == 0b001) return MmioInstruction::atomic;  // load/store exclusive
  if (group != 0b111) return MmioInstruction::not_load_store;
  if (simd) return MmioInstruction::simd;
  const bool unsigned_offset = ((encoding >> 24) & 0b11) == 0b01;
  const bool bit21 = ((encoding >> 21) & 1) != 0;
  const unsigned form = (encoding >> 10) & 0b11;
  if (!unsigned_offset && !bit21 && (form == 0b01 || form == 0b11)) return MmioInstruction::writeback;
  if (!unsigned_offset && bit21 && form == 0b00) return MmioInstruction::atomic;
  return MmioInstruction::plain;
}
static_assert(classify_mmio_instruction(0xa9000c22) == MmioInstruction::pair);  // stp x2, x3, [x1]: ENOSYS
static_assert(classify_mmio_instruction(0x39000020) == MmioInstruction::plain);  // strb w0, [x1]: guest.S's

inline std::string_view describe_mmio_instruction(MmioInstruction kind) {
  switch (kind) {
    case MmioInstruction::plain: return "a plain load or store";
    case MmioInstruction::pair: return "a load/store pair (LDP/STP): two registers in one access";
    case MmioInstruction::writeback: return "a load or store with writeback (pre- or post-index)";
    case MmioInstruction::simd: return "a SIMD/FP load or store";
    case MmioInstruction::atomic: return "an exclusive or atomic access";
    case MmioInstruction::not_load_store: return "not a load or store";
  }
  return "";
}

// A few A64 encodings a stuck guest is often found at (the Arm ARM's
// "Exception generation", "Hints" and "Unconditional branch (immediate)"):
// HVC #imm16 is 0xd4000002 | imm16 << 5, SMC #imm16 0xd4000003 | imm16 << 5;
// WFI and WFE are hints; B with an offset of 0 branches to itself.
constexpr bool is_hvc(std::uint32_t encoding) { return (encoding & 0xffe0001f) == 0xd4000002; }
constexpr bool is_smc(std::uint32_t encoding) { return (encoding & 0xffe0001f) == 0xd4000003; }
constexpr unsigned call_immediate(std::uint32_t encoding) { return (encoding >> 5) & 0xffff; }  // of HVC or SMC
constexpr bool is_wfi(std::uint32_t encoding) { return encoding == 0xd503207f; }
constexpr bool is_wfe(std::uint32_t encoding) { return encoding == 0xd503205f; }
constexpr bool is_branch_to_self(std::uint32_t encoding) { return encoding == 0x14000000; }
static_assert(is_hvc(0xd4000002) && is_smc(0xd4000003) && !is_hvc(0xd4000003));  // hvc #0, smc #0
static_assert(is_smc(0xd4000023) && call_immediate(0xd4000023) == 1);            // smc #1

// ---- Instructions that take an exception at EL1 ------------------------------
//
// Once the guest's exception vectors fault over and over, the syndrome of its
// first exception is gone, and only the instruction itself can say why.
//
// UDF #imm16 is 0x0000'0000 | imm16: permanently undefined (so are zeros).
// MRS and MSR (register) name a system register by op0, op1, CRn, CRm, op2:
//
//   31        22 21 20 19 18  16 15  12 11   8 7   5 4    0
//   1101010100 | L | 1 | o0 | op1 | CRn | CRm | op2 | Rt      L: 1 MRS (read), 0 MSR (write)
//
// op1 says which level owns the register: 4 EL2, 6 EL3. EL1 may use neither:
// for it they are undefined (exception class 0), unless EL2 gives the guest
// an EL2 of its own (nested virtualisation), which kvm-hello does not ask for.
constexpr bool is_udf(std::uint32_t encoding) { return (encoding & 0xffff0000) == 0; }
constexpr bool is_system_register_access(std::uint32_t encoding) { return (encoding & 0xffd00000) == 0xd5100000; }
constexpr unsigned system_register_op1(std::uint32_t encoding) { return (encoding >> 16) & 0x7; }

// Why an instruction takes an exception at EL1, from its encoding alone; ""
// when the encoding does not say (a load or store may fault, for one).
inline std::string why_instruction_faults(std::uint32_t encoding) {
  static constexpr const char* undefined = "an undefined-instruction exception (EC 0x0)";
  if (is_udf(encoding)) {
    return "UDF #" + std::to_string(encoding & 0xffff) + " is permanently undefined: " + undefined;
  }
  const unsigned op1 = is_system_register_access(encoding) ? system_register_op1(encoding) : 0;
  if (op1 == 4 || op1 == 6) {
    const bool reads = (encoding & (1u << 21)) != 0;
    return std::string(reads ? "MRS reads" : "MSR writes") + " a system register of EL" + (op1 == 4 ? "2" : "3") +
           " (op1 = " + std::to_string(op1) + "), which the guest at EL1 may not use: " + undefined;
  }
  return "";
}

// ---- Function ids: what an hvc or smc asks for, in x0 -----------------------
//
// SMCCC (Arm's SMC Calling Convention, DEN0028) packs the function id:
//
//   31    30      29  24 23   16 15            0
//   fast | SMC64 | owner | 0    | function number
//
// PSCI is owner 4 (standard service), function numbers 0x00-0x1f; a 64-bit
// form (bit 30) exists only for functions that take an address or an
// affinity. KVM's handler lets through only ids it offers (PSCI, the SMCCC
// version and features, and a few of its own), and answers others with -1.
constexpr bool is_in_psci_range(std::uint64_t id) {
  const auto low = static_cast<std::uint32_t>(id);
  return (low & 0xbfff0000) == 0x84000000 && (low & 0xffff) <= 0x1f;
}

// "PSCI SYSTEM_OFF" for a function id KVM answers; "" for others.
inline std::string_view function_name(std::uint64_t id) {
  switch (static_cast<std::uint32_t>(id)) {
    case PSCI_0_2_FN_PSCI_VERSION: return "PSCI PSCI_VERSION";
    case PSCI_0_2_FN_CPU_SUSPEND: return "PSCI CPU_SUSPEND";
    case PSCI_0_2_FN64_CPU_SUSPEND: return "PSCI CPU_SUSPEND, 64-bit";
    case PSCI_0_2_FN_CPU_OFF: return "PSCI CPU_OFF";
    case PSCI_0_2_FN_CPU_ON: return "PSCI CPU_ON";
    case PSCI_0_2_FN64_CPU_ON: return "PSCI CPU_ON, 64-bit";
    case PSCI_0_2_FN_AFFINITY_INFO: return "PSCI AFFINITY_INFO";
    case PSCI_0_2_FN64_AFFINITY_INFO: return "PSCI AFFINITY_INFO, 64-bit";
    case PSCI_0_2_FN_MIGRATE_INFO_TYPE: return "PSCI MIGRATE_INFO_TYPE";
    case PSCI_0_2_FN_SYSTEM_OFF: return "PSCI SYSTEM_OFF";
    case PSCI_0_2_FN_SYSTEM_RESET: return "PSCI SYSTEM_RESET";
    case PSCI_1_0_FN_PSCI_FEATURES: return "PSCI PSCI_FEATURES";
    default: return "";
  }
}

// The function id, and its name when it has one: "0x84000008 (PSCI SYSTEM_OFF)".
inline std::string describe_function_id(std::uint64_t id) {
  const std::string_view name = function_name(id);
  return hex(id) + (name.empty() ? "" : " (" + std::string(name) + ")");
}

// ---- Step 7: the target and PSCI, which depend on the kernel's version -----

// KVM_ARM_PREFERRED_TARGET's answer, named. Linux before 6.6 answers the
// host CPU's own type where it has one (kvm_target_cpu in 6.1's
// arch/arm64/kvm/guest.c: Arm's AEM and Foundation models, the Cortex-A57,
// APM's X-Gene, the Cortex-A53), GENERIC_V8 elsewhere; 6.6 and later answer
// GENERIC_V8 everywhere.
inline std::string describe_target(std::uint32_t target) {
  const auto host_cpu = [target](std::string_view name) {
    return std::to_string(target) + " (" + std::string(name) + ": Linux before 6.6 names the host's CPU)";
  };
  switch (target) {
    case KVM_ARM_TARGET_GENERIC_V8: return std::to_string(target) + " (KVM_ARM_TARGET_GENERIC_V8)";
    case KVM_ARM_TARGET_AEM_V8: return host_cpu("KVM_ARM_TARGET_AEM_V8");
    case KVM_ARM_TARGET_FOUNDATION_V8: return host_cpu("KVM_ARM_TARGET_FOUNDATION_V8");
    case KVM_ARM_TARGET_CORTEX_A57: return host_cpu("KVM_ARM_TARGET_CORTEX_A57");
    case KVM_ARM_TARGET_XGENE_POTENZA: return host_cpu("KVM_ARM_TARGET_XGENE_POTENZA");
    case KVM_ARM_TARGET_CORTEX_A53: return host_cpu("KVM_ARM_TARGET_CORTEX_A53");
    default: return std::to_string(target);
  }
}

// What the guest gets when it calls PSCI: the version KVM answers (read from
// the firmware register) and the instructions that reach it on this kernel
// (from 6.4 an smc with an immediate other than 0 still gets -1: handle_smc).
inline std::string describe_psci(std::uint64_t version, KernelVersion kernel) {
  std::string text = "PSCI for the guest: version " + std::to_string(PSCI_VERSION_MAJOR(version)) + "." +
                     std::to_string(PSCI_VERSION_MINOR(version)) + " (KVM_REG_ARM_PSCI_VERSION";
  text += kernel.at_least(6, 13) ? ")" : "; 1.3 from Linux 6.13)";
  text += kernel.at_least(6, 4) ? ", called with hvc or smc #0"
                                : ", called with hvc only: before Linux 6.4 an smc returns -1 (NOT_SUPPORTED)";
  return text;
}

// ---- Lesson 3: what this kernel does with several vCPUs --------------------
//
// The kernels this project is tested on differ (kvm_hello.hpp's Part III
// says where in the source): Linux 6.1 on one side, 6.12 and 7.2 on the
// other. The change came in between; a kernel of those versions is named here
// as 6.12 is.

// How this kernel's KVM_ARM_VCPU_INIT treats POWER_OFF and the other
// features of a vCPU after the first.
inline std::string describe_init_features(KernelVersion kernel) {
  if (kernel.at_least(6, 12)) {
    return "POWER_OFF holds for this INIT only (kvm_arch_vcpu_ioctl_vcpu_init clears it), and every vCPU must ask "
           "for the first one's other features (EINVAL else: kvm_vcpu_init_changed)";
  }
  return "POWER_OFF stays among this vCPU's features (kvm_vcpu_set_target): an INIT again must ask for it again "
         "(EINVAL else); on Linux before 6.12 each vCPU's features are its own";
}

// What this kernel's KVM_IRQ_LINE takes a PPI's vCPU field for.
inline std::string describe_irq_line_vcpu(KernelVersion kernel) {
  if (kernel.at_least(6, 12)) return "KVM_IRQ_LINE's vCPU field is the vCPU's id (kvm_get_vcpu_by_id)";
  return "KVM_IRQ_LINE's vCPU field is the vCPU's index, and that vCPU's id an index again (kvm_get_vcpu, twice): "
         "on Linux before 6.12 a PPI reaches only a vCPU whose id is its index";
}

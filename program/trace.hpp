// SPDX-License-Identifier: MIT
// program/trace.hpp: -v, every ioctl as it happens: the request and its
// number decoded, the arguments that matter, the result or errno, the time.
// A Tracer is the kvm_hello::CallObserver the walk-through hands the steps.
#pragma once

#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/format.hpp"
#include "program/output.hpp"

namespace kh = kvm_hello;

// ---- Request numbers and register ids, taken apart ---------------------------

// The four fields of a request number (the picture in kvm_hello.hpp).
struct RequestFields {
  unsigned dir, type, nr, size;
};
constexpr RequestFields decode_request(unsigned long number) {
  return {static_cast<unsigned>(_IOC_DIR(number)), static_cast<unsigned>(_IOC_TYPE(number)),
          static_cast<unsigned>(_IOC_NR(number)), static_cast<unsigned>(_IOC_SIZE(number))};
}

// The fields of a ONE_REG id (the picture above Step 8 in kvm_hello.hpp).
struct RegisterIdFields {
  std::uint64_t arch;   // KVM_REG_ARM64 for us
  unsigned size_bytes;  // 1 << the size field
  unsigned coproc;      // 0x10 core, 0x13 system register, 0x14 firmware, ...
  unsigned index;       // core: offsetof(struct kvm_regs, ...) / 4; sysreg: op0..op2 packed
};
constexpr RegisterIdFields decode_register_id(std::uint64_t id) {
  return {id & KVM_REG_ARCH_MASK, 1u << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT),
          static_cast<unsigned>((id & KVM_REG_ARM_COPROC_MASK) >> KVM_REG_ARM_COPROC_SHIFT),
          static_cast<unsigned>(id & 0xffff)};
}

// The name of a register id this program uses ("pc", "x3", "esr_el1"), or "".
inline std::string register_name(std::uint64_t id) {
  for (std::size_t n = 0; n < kh::reg::x_registers.size(); ++n) {
    if (id == kh::reg::x_registers[n].raw()) return "x" + std::to_string(n);
  }
  for (const kh::RegisterInfo& info : kh::named_registers) {
    if (info.id.raw() == id) return std::string(info.name);
  }
  return "";
}

// A ONE_REG id, decoded: "0x6030000000100040 (arm64 u64 core 0x40: pc)".
inline std::string describe_register_id(std::uint64_t id) {
  const RegisterIdFields fields = decode_register_id(id);
  std::string kind = fields.coproc == (KVM_REG_ARM_CORE >> KVM_REG_ARM_COPROC_SHIFT)       ? "core"
                     : fields.coproc == (KVM_REG_ARM64_SYSREG >> KVM_REG_ARM_COPROC_SHIFT) ? "sysreg"
                     : fields.coproc == (KVM_REG_ARM_FW >> KVM_REG_ARM_COPROC_SHIFT)       ? "firmware"
                                                                                     : "coproc " + hex(fields.coproc);
  const std::string name = register_name(id);
  return hex(id) + " (" + (fields.arch == KVM_REG_ARM64 ? "arm64" : "arch " + hex(fields.arch)) + " u" +
         std::to_string(fields.size_bytes * 8) + " " + kind + " " + hex(fields.index) +
         (name.empty() ? "" : ": " + name) + ")";
}

// The value at a kvm_one_reg's address: KVM_REG_SIZE(id) bytes of it, never
// more (a 32-bit register's variable has 4). "0x10000"; a 128-bit one (v0)
// "{low 0x1, high 0x2}"; a larger one (SVE) only its size.
inline std::string describe_register_value(const kvm_one_reg& one) {
  const std::size_t size = kh::register_size(one.id);
  const void* at = reinterpret_cast<const void*>(static_cast<std::uintptr_t>(one.addr));
  if (size <= sizeof(std::uint64_t)) {
    std::uint64_t value = 0;  // little-endian: the register's bytes are the low ones
    std::memcpy(&value, at, size);
    return hex(value);
  }
  if (size == sizeof(kh::Uint128)) {
    kh::Uint128 value;
    std::memcpy(&value, at, size);
    return "{low " + hex(value.low) + ", high " + hex(value.high) + "}";
  }
  return "(" + std::to_string(size) + " bytes)";
}

// The request number's four fields: "0x4020ae46 = _IOW(0xae, 0x46, 32 bytes)".
inline std::string describe_request_number(unsigned long number) {
  const RequestFields fields = decode_request(number);
  const char* dir = fields.dir == _IOC_NONE    ? "_IO"
                    : fields.dir == _IOC_WRITE ? "_IOW"
                    : fields.dir == _IOC_READ  ? "_IOR"
                                               : "_IOWR";
  return hex(number) + " = " + dir + "(" + hex(fields.type) + ", " + hex(fields.nr) +
         (fields.dir == _IOC_NONE ? "" : ", " + std::to_string(fields.size) + " bytes") + ")";
}

// ---- One call ----------------------------------------------------------------

// The argument of a value request: what the number means for that request.
inline std::string describe_value(std::string_view request, unsigned long value) {
  if (request == "KVM_CHECK_EXTENSION") {
    const std::string_view name = capability_name(value);
    return std::to_string(value) + (name.empty() ? "" : " " + std::string(name));
  }
  if (request == "KVM_CREATE_VM") return hex(value) + " (IPA size " + std::to_string(value & 0xff) + " bits)";
  if (request == "KVM_CREATE_VCPU") return std::to_string(value) + " (vCPU id)";
  return std::to_string(value);
}

// "{control 0x20001 = ENABLE | USE_HW, dbg_bvr[0] 0x10010, dbg_bcr[0] 0x1e3}"
inline std::string describe_guest_debug(const kvm_guest_debug& debug) {
  std::string bits;
  for (const auto& [bit, name] : {std::pair{std::uint32_t{KVM_GUESTDBG_ENABLE}, "ENABLE"},
                                  {KVM_GUESTDBG_SINGLESTEP, "SINGLESTEP"},
                                  {KVM_GUESTDBG_USE_SW_BP, "USE_SW_BP"},
                                  {KVM_GUESTDBG_USE_HW, "USE_HW"}}) {
    if (debug.control & bit) bits += (bits.empty() ? "" : " | ") + std::string(name);
  }
  std::string text = "{control " + hex(debug.control) + (bits.empty() ? ": debugging off" : " = " + bits);
  if (debug.control & KVM_GUESTDBG_USE_HW) {
    text += ", dbg_bvr[0] " + hex(debug.arch.dbg_bvr[0]) + ", dbg_bcr[0] " + hex(debug.arch.dbg_bcr[0]);
  }
  return text + "}";
}

// ---- Lesson 2's calls: devices, their attributes, interrupts ------------------

// A name from a table of (number, name), or "".
inline std::string_view name_in(std::initializer_list<std::pair<std::uint64_t, std::string_view>> table,
                                std::uint64_t number) {
  for (const auto& [value, name] : table) {
    if (value == number) return name;
  }
  return "";
}

// "7 KVM_DEV_TYPE_ARM_VGIC_V3", or the number alone for a type this program does not name.
inline std::string describe_device_type(std::uint32_t type) {
  const std::string_view name = name_in({{KVM_DEV_TYPE_ARM_VGIC_V2, "KVM_DEV_TYPE_ARM_VGIC_V2"},
                                         {KVM_DEV_TYPE_ARM_VGIC_V3, "KVM_DEV_TYPE_ARM_VGIC_V3"},
                                         {KVM_DEV_TYPE_ARM_VGIC_ITS, "KVM_DEV_TYPE_ARM_VGIC_ITS"},
                                         {KVM_DEV_TYPE_ARM_PV_TIME, "KVM_DEV_TYPE_ARM_PV_TIME"}},
                                        type);
  return std::to_string(type) + (name.empty() ? "" : " " + std::string(name));
}

// "{type 7 KVM_DEV_TYPE_ARM_VGIC_V3, flags 0x1 = KVM_CREATE_DEVICE_TEST, fd 0}": fd is what KVM wrote back.
inline std::string describe_create_device(const kvm_create_device& create) {
  const std::string flags = hex(create.flags) + ((create.flags & KVM_CREATE_DEVICE_TEST) != 0
                                                     ? " = KVM_CREATE_DEVICE_TEST (ask, do not create)"
                                                     : "");
  return "{type " + describe_device_type(create.type) + ", flags " + flags + ", fd " + std::to_string(create.fd) +
         "}";
}

// A device attribute's group and attribute by name. The numbers mean
// different things on a vCPU's fd and on the GIC's: `made_on` says which.
struct AttributeNames {
  std::string_view group, attribute;
};
inline AttributeNames attribute_names(kh::FdKind made_on, std::uint32_t group, std::uint64_t attribute) {
  if (made_on == kh::FdKind::vcpu) {
    const std::string_view group_name = name_in({{KVM_ARM_VCPU_PMU_V3_CTRL, "KVM_ARM_VCPU_PMU_V3_CTRL"},
                                                 {KVM_ARM_VCPU_TIMER_CTRL, "KVM_ARM_VCPU_TIMER_CTRL"},
                                                 {KVM_ARM_VCPU_PVTIME_CTRL, "KVM_ARM_VCPU_PVTIME_CTRL"}},
                                                group);
    if (group != KVM_ARM_VCPU_TIMER_CTRL) return {group_name, ""};
    return {group_name, name_in({{KVM_ARM_VCPU_TIMER_IRQ_VTIMER, "KVM_ARM_VCPU_TIMER_IRQ_VTIMER"},
                                 {KVM_ARM_VCPU_TIMER_IRQ_PTIMER, "KVM_ARM_VCPU_TIMER_IRQ_PTIMER"}},
                                attribute)};
  }
  const std::string_view group_name = name_in({{KVM_DEV_ARM_VGIC_GRP_ADDR, "KVM_DEV_ARM_VGIC_GRP_ADDR"},
                                               {KVM_DEV_ARM_VGIC_GRP_DIST_REGS, "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"},
                                               {KVM_DEV_ARM_VGIC_GRP_CPU_REGS, "KVM_DEV_ARM_VGIC_GRP_CPU_REGS"},
                                               {KVM_DEV_ARM_VGIC_GRP_NR_IRQS, "KVM_DEV_ARM_VGIC_GRP_NR_IRQS"},
                                               {KVM_DEV_ARM_VGIC_GRP_CTRL, "KVM_DEV_ARM_VGIC_GRP_CTRL"},
                                               {KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS"},
                                               {KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS"},
                                               {KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO"}},
                                              group);
  if (group == KVM_DEV_ARM_VGIC_GRP_ADDR) {
    return {group_name, name_in({{KVM_VGIC_V2_ADDR_TYPE_DIST, "KVM_VGIC_V2_ADDR_TYPE_DIST"},
                                 {KVM_VGIC_V2_ADDR_TYPE_CPU, "KVM_VGIC_V2_ADDR_TYPE_CPU"},
                                 {KVM_VGIC_V3_ADDR_TYPE_DIST, "KVM_VGIC_V3_ADDR_TYPE_DIST"},
                                 {KVM_VGIC_V3_ADDR_TYPE_REDIST, "KVM_VGIC_V3_ADDR_TYPE_REDIST"},
                                 {KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION, "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION"}},
                                attribute)};
  }
  if (group == KVM_DEV_ARM_VGIC_GRP_CTRL) {
    return {group_name, name_in({{KVM_DEV_ARM_VGIC_CTRL_INIT, "KVM_DEV_ARM_VGIC_CTRL_INIT"}}, attribute)};
  }
  return {group_name, ""};
}

// What the attribute's addr points at, where this program knows its type:
// a GIC frame's base (u64), the number of interrupts (u32), the timer's
// INTID (int, filled by KVM_GET_DEVICE_ATTR); "" for none (CTRL_INIT has
// no value) or an unknown one.
inline std::string describe_attribute_value(kh::FdKind made_on, const kvm_device_attr& attr) {
  if (attr.addr == 0) return "";
  const void* at = reinterpret_cast<const void*>(static_cast<std::uintptr_t>(attr.addr));
  if (made_on == kh::FdKind::vcpu && attr.group == KVM_ARM_VCPU_TIMER_CTRL) {
    int intid = 0;
    std::memcpy(&intid, at, sizeof intid);
    return std::to_string(intid);
  }
  if (made_on == kh::FdKind::device && attr.group == KVM_DEV_ARM_VGIC_GRP_ADDR) {
    std::uint64_t base = 0;
    std::memcpy(&base, at, sizeof base);
    return hex(base);
  }
  if (made_on == kh::FdKind::device && attr.group == KVM_DEV_ARM_VGIC_GRP_NR_IRQS) {
    std::uint32_t count = 0;
    std::memcpy(&count, at, sizeof count);
    return std::to_string(count);
  }
  return "";
}

// "{group 0 KVM_DEV_ARM_VGIC_GRP_ADDR, attr 2 KVM_VGIC_V3_ADDR_TYPE_DIST, value 0x8000000}"
inline std::string describe_device_attr(kh::FdKind made_on, const kvm_device_attr& attr) {
  const AttributeNames names = attribute_names(made_on, attr.group, attr.attr);
  const std::string value = describe_attribute_value(made_on, attr);
  return "{group " + std::to_string(attr.group) + (names.group.empty() ? "" : " " + std::string(names.group)) +
         ", attr " + std::to_string(attr.attr) + (names.attribute.empty() ? "" : " " + std::string(names.attribute)) +
         (value.empty() ? "" : ", value " + value) + "}";
}

// "{irq 0x1000028 = type 1 SPI, vcpu 0, INTID 40, level 1}": KVM_IRQ_LINE's fields (kvm_hello.hpp, step 15).
inline std::string describe_irq_level(const kvm_irq_level& line) {
  const kh::IrqLineFields fields = kh::irq_line_fields(line.irq);
  const std::string_view type = name_in(
      {{KVM_ARM_IRQ_TYPE_CPU, "CPU"}, {KVM_ARM_IRQ_TYPE_SPI, "SPI"}, {KVM_ARM_IRQ_TYPE_PPI, "PPI"}}, fields.type);
  return "{irq " + hex(line.irq) + " = type " + std::to_string(fields.type) +
         (type.empty() ? "" : " " + std::string(type)) + ", vcpu " + std::to_string(fields.vcpu) + ", INTID " +
         std::to_string(fields.intid) + ", level " + std::to_string(line.level) + "}";
}

// "{fd 6, gsi 9 (INTID 41), flags 0x0}": KVM_IRQFD's eventfd and the SPI it raises.
inline std::string describe_irqfd(const kvm_irqfd& wire) {
  return "{fd " + std::to_string(wire.fd) + ", gsi " + std::to_string(wire.gsi) + " (INTID " +
         std::to_string(std::uint64_t{wire.gsi} + kh::first_spi) + "), flags " + hex(wire.flags) + "}";
}

// ---- Lesson 3's calls: a vCPU's power state ----------------------------------

// "{mp_state 5 STOPPED}": KVM_GET_MP_STATE's (what KVM wrote) or KVM_SET_MP_STATE's, the state by name.
inline std::string describe_mp_state(const kvm_mp_state& state) {
  const std::string_view name = kh::mp_state_name(static_cast<kh::MpState>(state.mp_state));
  return "{mp_state " + std::to_string(state.mp_state) + (name.empty() ? "" : " " + std::string(name)) + "}";
}

// The argument of a call, for its line. `made_on`: the kind of fd the call
// was made on, which decides what a device attribute's numbers mean.
inline std::string describe_argument(std::string_view request, const kh::CallArgument& argument,
                                     kh::FdKind made_on = kh::FdKind::system) {
  struct Describe {
    std::string_view request;
    kh::FdKind made_on;
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
      return ", {id " + describe_register_id(one->id) + ", value " + describe_register_value(*one) + "}";
    }
    std::string operator()(const kvm_guest_debug* debug) const { return ", " + describe_guest_debug(*debug); }
    std::string operator()(const kvm_create_device* create) const { return ", " + describe_create_device(*create); }
    std::string operator()(const kvm_device_attr* attr) const { return ", " + describe_device_attr(made_on, *attr); }
    std::string operator()(const kvm_irq_level* line) const { return ", " + describe_irq_level(*line); }
    std::string operator()(const kvm_irqfd* wire) const { return ", " + describe_irqfd(*wire); }
    std::string operator()(const kvm_mp_state* state) const { return ", " + describe_mp_state(*state); }
  };
  return std::visit(Describe{request, made_on}, argument);
}

// "ioctl(4, KVM_CREATE_VM, 0x20 (IPA size 32 bits)) = 5  [0xae01 = _IO(0xae, 0x1)]  1.2 ms"
inline std::string describe_call(const kh::CallRecord& call) {
  const std::string outcome = call.result < 0 ? "-1 " + errno_text(call.err) : std::to_string(call.result);
  return "ioctl(" + std::to_string(call.fd) + ", " + std::string(call.name) +
         describe_argument(call.name, call.argument, call.made_on) + ") = " + outcome + "  [" + describe_request_number(call.number) +
         "]  " + format_duration(call.took);
}

// Says each call at -v; at a lower level it is no observer at all, and the
// calls cost nothing extra.
class Tracer {
 public:
  explicit Tracer(const Output& out) : out_(out) {}
  kh::CallObserver observer() {
    if (!out_.shows(Verbosity::verbose)) return {};
    return {[](void* self, const kh::CallRecord& call) {
              static_cast<Tracer*>(self)->out_.say(Verbosity::verbose, "%s", describe_call(call).c_str());
            },
            this};
  }

 private:
  const Output& out_;
};

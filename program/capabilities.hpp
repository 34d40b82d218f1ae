// SPDX-License-Identifier: MIT
// program/capabilities.hpp: `kvm-hello --caps`: the capabilities the host's
// KVM reports, and what kvm-hello does with each. The e2e tests check every
// value it prints against the host's own KVM_CHECK_EXTENSION.
#pragma once

#include <cstdio>
#include <string>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/output.hpp"
#include "program/report.hpp"

namespace kh = kvm_hello;

struct KnownCapability {
  int id;
  const char* name;
  const char* use;  // what kvm-hello does with it; "" when nothing
};

// clang-format off
#define KVM_HELLO_KNOWN(MACRO, USE) KnownCapability{MACRO, #MACRO, USE}
// clang-format on
inline constexpr KnownCapability known_capabilities[] = {
    KVM_HELLO_KNOWN(KVM_CAP_USER_MEMORY, "needed"),
    KVM_HELLO_KNOWN(KVM_CAP_ONE_REG, "needed"),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_PSCI_0_2, "needed"),
    KVM_HELLO_KNOWN(KVM_CAP_IMMEDIATE_EXIT, "needed"),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_VM_IPA_SIZE, "used: step 4 picks the VM type with it"),
    KVM_HELLO_KNOWN(KVM_CAP_SET_GUEST_DEBUG, "used by --step-guest"),
    KVM_HELLO_KNOWN(KVM_CAP_IRQCHIP, "lesson 2: step 10 asks it of the VM: an in-kernel GIC"),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_PSCI, ""),
    KVM_HELLO_KNOWN(KVM_CAP_NR_VCPUS, ""),
    KVM_HELLO_KNOWN(KVM_CAP_MAX_VCPUS, ""),
    KVM_HELLO_KNOWN(KVM_CAP_NR_MEMSLOTS, ""),
    KVM_HELLO_KNOWN(KVM_CAP_READONLY_MEM, ""),
    KVM_HELLO_KNOWN(KVM_CAP_COALESCED_MMIO, ""),
    KVM_HELLO_KNOWN(KVM_CAP_IOEVENTFD, ""),
    KVM_HELLO_KNOWN(KVM_CAP_IRQFD, "lesson 2: step 14 wires an eventfd to an SPI"),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_EL1_32BIT, ""),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_PMU_V3, ""),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_SVE, ""),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_PTRAUTH_ADDRESS, ""),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_NISV_TO_USER, ""),
    KVM_HELLO_KNOWN(KVM_CAP_ARM_MTE, ""),
    KVM_HELLO_KNOWN(KVM_CAP_GUEST_DEBUG_HW_BPS, "used by --break-at: how many hardware breakpoints"),
    KVM_HELLO_KNOWN(KVM_CAP_GUEST_DEBUG_HW_WPS, ""),
};
#undef KVM_HELLO_KNOWN

// The table: capability, the value KVM_CHECK_EXTENSION gives on /dev/kvm, and our use of it.
inline void print_capability_table(const kh::KvmFd& kvm) {
  std::printf("%-28s %6s  %s\n", "capability", "value", "kvm-hello");
  for (const KnownCapability& cap : known_capabilities) {
    const auto value = kh::call(kh::Step::check_capabilities, kvm, kh::request::check_extension,
                                static_cast<unsigned long>(cap.id));
    std::string use = cap.use;
    for (const kh::Capability& required : kh::required_capabilities) {
      if (required.id == cap.id) use += ": " + std::string(required.why);
    }
    std::printf("%-28s %6s  %s\n", cap.name, value ? std::to_string(*value).c_str() : "error",
                use.empty() ? "-" : use.c_str());
  }
}

// The in-kernel GIC models, each asked of a scratch VM with
// KVM_CREATE_DEVICE and KVM_CREATE_DEVICE_TEST (offers_device, step 10):
// "yes", "no" (ENODEV), or "error" with the errno in words. A GICv3 host whose GIC
// cannot emulate a GICv2 (QEMU's virt board with gic-version=3) says no to v2.
inline void print_vgic_models(const kh::KvmFd& kvm) {
  std::printf("%-28s %6s  %s\n", "vGIC model (a scratch VM)", "offers", "kvm-hello");
  const auto ipa = kh::call(kh::Step::check_capabilities, kvm, kh::request::check_extension,
                            static_cast<unsigned long>(kh::ipa_size_capability.id));
  const auto type = kh::vm_type_for(ipa ? *ipa : 0);
  auto vm = type ? kh::create_vm(kvm, *type) : std::unexpected(type.error());
  struct Model {
    kh::GicVersion version;
    const char* name;
    const char* use;
  };
  for (const Model& model :
       {Model{kh::GicVersion::v3, "KVM_DEV_TYPE_ARM_VGIC_V3", "lesson 2: step 10 takes it first"},
        Model{kh::GicVersion::v2, "KVM_DEV_TYPE_ARM_VGIC_V2", "lesson 2: step 10 takes it where a GICv3 is refused"}}) {
    const auto offered = vm ? kh::offers_device(*vm, kh::device_type_for(model.version)) : std::unexpected(vm.error());
    const char* answer = !offered ? "error" : *offered ? "yes" : "no";
    const std::string use = offered ? model.use : errno_text(offered.error().err);
    std::printf("%-28s %6s  %s\n", model.name, answer, use.c_str());
  }
}

// kvm-hello --caps: steps 1 and 2 as the walk-through takes them, then step
// 3's question asked of every capability in the table. Returns the exit
// status: a required capability missing fails as step 3 would.
inline int show_capabilities(const char* device, const Output& out) {
  if (out.shows(Verbosity::normal)) std::printf("kvm-hello: an arm64 guest says hello through KVM, step by step\n");
  out.announce(kh::Step::open_kvm);
  auto kvm = kh::open_kvm(device);
  if (!kvm) return fail(kvm.error(), out, device);
  out.say(Verbosity::normal, "%s is fd %d", device, kvm->get());
  out.announce(kh::Step::check_api_version);
  const auto version = kh::check_api_version(*kvm);
  if (!version) return fail(version.error(), out, device);
  out.say(Verbosity::normal, "API version %d", *version);
  out.announce(kh::Step::check_capabilities);
  const auto required = kh::check_capabilities(*kvm);
  print_capability_table(*kvm);
  print_vgic_models(*kvm);
  return required ? 0 : fail(required.error(), out, device);
}

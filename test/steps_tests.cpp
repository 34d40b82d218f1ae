// SPDX-License-Identifier: MIT
// steps_tests.cpp: the lesson, kvm_hello.hpp, without KVM: request numbers
// and register ids against the kernel's, each step's checks apart from its
// ioctl, exit decoding, the device, the owners and the stop (VcpuStopper,
// Deadline). Everything that needs a real /dev/kvm is in e2e_tests.cpp.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <linux/psci.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ios>
#include <new>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kvm_hello.hpp"
#include "bench_guest_image.h"  // bench_guest_bin[]: bench/bench-guest.S, assembled
#include "irq_bench_guest_image.h"  // irq_bench_guest_bin[]: bench/irq-bench-guest.S, assembled
#include "guest_image.h"        // guest_bin[]: guest.S, assembled
#include "guest_lines.h"        // guest_lines[]: guest.S's line table, its addresses where it was linked

namespace kh = kvm_hello;

// The same numbers proven while compiling, as rust-vmm's kvm-ioctls pins them.
static_assert(kh::request::get_api_version.number == 0xAE00 && kh::request::create_vm.number == 0xAE01);
static_assert(kh::request::run.number == 0xAE80 && kh::request::set_one_reg.number == 0x4010AEAC);
static_assert(kh::request::arm_preferred_target.number == 0x8020AEAF);

TEST_CASE("ioctl request numbers are the kernel's published values") {
  // The values as rust-vmm's kvm-ioctls pins them, and as strace prints them.
  CHECK(kh::request::get_api_version.number == 0xAE00);
  CHECK(kh::request::create_vm.number == 0xAE01);
  CHECK(kh::request::check_extension.number == 0xAE03);
  CHECK(kh::request::get_vcpu_mmap_size.number == 0xAE04);
  CHECK(kh::request::create_vcpu.number == 0xAE41);
  CHECK(kh::request::set_user_memory_region.number == 0x4020AE46);
  CHECK(kh::request::run.number == 0xAE80);
  CHECK(kh::request::get_one_reg.number == 0x4010AEAB);
  CHECK(kh::request::set_one_reg.number == 0x4010AEAC);
  CHECK(kh::request::arm_vcpu_init.number == 0x4020AEAE);
  CHECK(kh::request::arm_preferred_target.number == 0x8020AEAF);
  CHECK(kh::request::set_user_memory_region.name == "KVM_SET_USER_MEMORY_REGION");
  CHECK(kh::request::arm_preferred_target.name == "KVM_ARM_PREFERRED_TARGET");
}

TEST_CASE("core register ids come from offsetof(struct kvm_regs, ...)") {
  CHECK(kh::reg::pc.raw() == 0x6030000000100040ULL);
  CHECK(kh::reg::pstate.raw() == 0x6030000000100042ULL);
  CHECK(kh::reg::sp_el1.raw() == 0x6030000000100044ULL);
  CHECK(kh::reg::elr_el1.raw() == 0x6030000000100046ULL);
  CHECK(kh::reg::x(1).raw() == 0x6030000000100002ULL);
  // SP_EL0 (regs.sp) is a different register from SP_EL1: the classic trap.
  CHECK(kh::core_register_id(offsetof(kvm_regs, regs.sp)) != kh::reg::sp_el1.raw());
}

// Whether an expression is a constant, tried while compiling: RegisterId's,
// reg::x's and AccessLength's constructors are consteval, so a wrong size,
// register number or length is no constant, and does not compile.
template <class T, std::uint64_t id>
constexpr bool register_id_compiles = requires {
  typename std::integral_constant<std::uint64_t, kh::RegisterId<T>{id}.raw()>;
};
template <int n>
constexpr bool x_compiles = requires {
  typename std::integral_constant<std::uint64_t, kh::reg::x(n).raw()>;
};
template <std::uint32_t bytes>
constexpr bool access_length_compiles = requires {
  typename std::integral_constant<std::uint32_t, kh::AccessLength{bytes}>;
};

constexpr std::uint64_t v0_id =
    KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(fp_regs.vregs[0]);
static_assert(register_id_compiles<kh::Uint128, v0_id>);
static_assert(!register_id_compiles<std::uint64_t, v0_id>, "v0 is 16 bytes: an 8-byte value for it does not compile");
static_assert(!register_id_compiles<std::uint32_t, kh::reg::pc.raw()>);
static_assert(register_id_compiles<std::uint32_t, kh::reg::fpsr.raw()>);
static_assert(x_compiles<0> && x_compiles<30>);
static_assert(!x_compiles<31> && !x_compiles<32> && !x_compiles<-1>, "x(32) would be pc");
static_assert(access_length_compiles<1> && access_length_compiles<2> && access_length_compiles<4> &&
              access_length_compiles<8>);
static_assert(!access_length_compiles<0> && !access_length_compiles<3> && !access_length_compiles<16>);

TEST_CASE("register ids carry their value's size: v0 is 16 bytes, fpsr 4; a size known at run time is checked") {
  CHECK(kh::register_size(kh::reg::pc.raw()) == 8);
  CHECK(kh::register_size(kh::reg::v(0).raw()) == 16);
  CHECK(kh::reg::v(0).raw() == v0_id);
  CHECK(kh::register_size(kh::reg::fpsr.raw()) == 4);
  CHECK(kh::reg::x_registers.size() == 31);
  CHECK(kh::reg::x_registers[17] == kh::reg::x(17));

  const auto fits = kh::RegisterId<kh::Uint128>::checked(kh::Step::run_guest, v0_id);
  REQUIRE(fits);
  CHECK(*fits == kh::reg::v(0));
  const auto wrong = kh::RegisterId<std::uint64_t>::checked(kh::Step::run_guest, v0_id);
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().problem == kh::Problem::bad_register_size);
  CHECK(wrong.error().value == v0_id);
}

static_assert(kh::verify_api_version(12).value() == 12);
static_assert(kh::verify_api_version(11).error().problem == kh::Problem::wrong_api_version);

TEST_CASE("the API version must be exactly 12") {
  CHECK(kh::verify_api_version(12).value() == 12);
  const auto old = kh::verify_api_version(11);
  REQUIRE_FALSE(old);
  CHECK(old.error().problem == kh::Problem::wrong_api_version);
  CHECK(old.error().step == kh::Step::check_api_version);
  CHECK(old.error().value == 11);
}

TEST_CASE("capabilities: all present, one missing, or the question fails") {
  SUBCASE("all present, with the host's IPA limit") {
    const auto caps =
        kh::query_capabilities([](int id) -> kh::Result<int> { return id == KVM_CAP_ARM_VM_IPA_SIZE ? 40 : 1; });
    REQUIRE(caps);
    CHECK(caps->ipa_limit == 40);
    for (const int value : caps->required) CHECK(value == 1);
  }
  SUBCASE("the first missing one is named") {
    const auto caps = kh::query_capabilities([](int id) -> kh::Result<int> { return id == KVM_CAP_ONE_REG ? 0 : 1; });
    REQUIRE_FALSE(caps);
    CHECK(caps.error().problem == kh::Problem::missing_capability);
    CHECK(caps.error().value == KVM_CAP_ONE_REG);
    CHECK(caps.error().value == KVM_CAP_ONE_REG);
  }
  SUBCASE("an ioctl error is passed on") {
    const auto caps = kh::query_capabilities([](int) -> kh::Result<int> {
      return std::unexpected(
          kh::Error{kh::Step::check_capabilities, kh::Problem::call_failed, "KVM_CHECK_EXTENSION", EBADF, 0});
    });
    REQUIRE_FALSE(caps);
    CHECK(caps.error().err == EBADF);
  }
}

static_assert(kh::vm_type_for(0).value() == 0 && kh::vm_type_for(40).value() == 32 && kh::vm_type_for(32).value() == 32);
static_assert(kh::vm_type_for(31).error().problem == kh::Problem::ipa_too_small);

TEST_CASE("the VM type carries the IPA size the guest needs") {
  CHECK(kh::vm_type_for(0).value() == 0);  // no capability: the default 40 bits
  CHECK(kh::vm_type_for(40).value() == 32);
  CHECK(kh::vm_type_for(48).value() == 32);
  CHECK(kh::vm_type_for(32).value() == 32);
  const auto small = kh::vm_type_for(31);
  REQUIRE_FALSE(small);
  CHECK(small.error().problem == kh::Problem::ipa_too_small);
}

static_assert([] {
  kvm_vcpu_init preferred{};
  preferred.target = KVM_ARM_TARGET_GENERIC_V8;
  preferred.features[0] = 1u << KVM_ARM_VCPU_PMU_V3;
  const kvm_vcpu_init init = kh::with_psci_0_2(preferred);
  return init.target == KVM_ARM_TARGET_GENERIC_V8 &&
         init.features[0] == ((1u << KVM_ARM_VCPU_PMU_V3) | (1u << KVM_ARM_VCPU_PSCI_0_2));
}());

TEST_CASE("PSCI 0.2 is added to the preferred target, keeping what was there") {
  kvm_vcpu_init preferred{};
  preferred.target = KVM_ARM_TARGET_GENERIC_V8;
  preferred.features[0] = 1u << KVM_ARM_VCPU_PMU_V3;
  const kvm_vcpu_init init = kh::with_psci_0_2(preferred);
  CHECK(init.target == KVM_ARM_TARGET_GENERIC_V8);
  CHECK(init.features[0] == ((1u << KVM_ARM_VCPU_PMU_V3) | (1u << KVM_ARM_VCPU_PSCI_0_2)));
}

static_assert([] {
  constexpr std::array<std::uint8_t, 4> image{};
  return !kh::check_guest_image({}) && kh::check_guest_image(image).value().size() == 4 &&
         kh::check_guest_image({}).error().problem == kh::Problem::bad_guest_image;
}());

TEST_CASE("guest memory: the region KVM is told about, and the image check") {
  alignas(4096) static std::uint8_t backing[16];
  const kvm_userspace_memory_region region = kh::memory_region_for(backing);
  CHECK(region.slot == 0);
  CHECK(region.guest_phys_addr == 0x10000);
  CHECK(region.memory_size == 0x10000);
  CHECK(region.userspace_addr == reinterpret_cast<std::uintptr_t>(backing));

  const std::vector<std::uint8_t> too_big(kh::ram_size + 1);
  CHECK_FALSE(kh::check_guest_image({}));
  CHECK(kh::check_guest_image(too_big).error().value == kh::ram_size + 1);
  CHECK(kh::check_guest_image(std::span(too_big).first(kh::ram_size)));
}

// A kvm_run as KVM_RUN would leave it, for the decoder.
static kvm_run mmio_run(std::uint64_t address, std::uint32_t length, bool is_write,
                        std::initializer_list<std::uint8_t> data) {
  kvm_run run{};
  run.exit_reason = KVM_EXIT_MMIO;
  run.mmio.phys_addr = address;
  run.mmio.len = length;
  run.mmio.is_write = is_write;
  std::copy(data.begin(), data.end(), run.mmio.data);
  return run;
}

TEST_CASE("memory map: the table holds the header's macros, under the names the lesson uses") {
  CHECK(kh::ram_base == KVM_HELLO_RAM_BASE);
  CHECK(kh::ram_size == KVM_HELLO_RAM_SIZE);
  CHECK(kh::mmio_out == KVM_HELLO_MMIO_OUT);
  CHECK(kh::mmio_answer == KVM_HELLO_MMIO_ANSWER);
  CHECK(kh::mmio_echo == KVM_HELLO_MMIO_ECHO);
  CHECK(kh::mmio_sink == KVM_HELLO_MMIO_SINK);
  CHECK(kh::mmio_result == KVM_HELLO_MMIO_RESULT);
  constexpr const kh::Region& gicd = kh::region_named("GICD");
  constexpr const kh::Region& gicc = kh::region_named("GICC");
  constexpr const kh::Region& gicr = kh::region_named("GICR");
  CHECK(gicd.base == KVM_HELLO_GIC_DIST);
  CHECK(gicc.base == KVM_HELLO_GIC_CPU);
  CHECK(gicr.base == KVM_HELLO_GIC_REDIST);
  CHECK(gicr.size == kh::max_vcpus * 0x20000);  // 128 KiB per vCPU
  // The device answers at exactly its registers' addresses, and names them from the table.
  CHECK(kh::HelloDevice::has_register(kh::mmio_out));
  CHECK(kh::HelloDevice::has_register(kh::mmio_echo));
  CHECK_FALSE(kh::HelloDevice::has_register(kh::mmio_out + 1));
  CHECK_FALSE(kh::HelloDevice::has_register(kh::mmio_sink));  // the benchmark's, not HelloDevice's
  CHECK(kh::register_at(kh::mmio_answer)->name == "ANSWER");
  CHECK(kh::register_at(kh::mmio_result)->kind == kh::RegionKind::bench_register);
  CHECK(kh::register_at(kh::ram_base) == nullptr);
}

namespace {

// memory_map with one row replaced: a map broken in one place.
constexpr auto map_with(std::string_view name, kh::Region row) {
  auto map = kh::memory_map;
  for (kh::Region& r : map) {
    if (r.name == name) r = row;
  }
  return map;
}
using kh::RegionKind, kh::MapFault;
constexpr auto ram_misaligned = map_with("RAM", {"RAM", 0x10800, 0x10000, RegionKind::memslot});
constexpr auto register_misaligned = map_with("ECHO", {"ECHO", 0x1114, 8, RegionKind::hello_register});
constexpr auto gic_misaligned = map_with("GICD", {"GICD", 0x08008000, 0x10000, RegionKind::gic_distributor});
constexpr auto redistributors_for_7 =
    map_with("GICR", {"GICR", KVM_HELLO_GIC_REDIST, 7 * std::uint64_t{0x20000}, RegionKind::gic_redistributors});
constexpr auto register_in_ram = map_with("OUT", {"OUT", KVM_HELLO_RAM_BASE + 0x100, 8, RegionKind::hello_register});
constexpr auto gic_over_ram = map_with("GICC", {"GICC", KVM_HELLO_RAM_BASE, 0x10000, RegionKind::gic_cpu_interface});
constexpr auto two_registers_at_once =
    map_with("ANSWER", {"ANSWER", KVM_HELLO_MMIO_OUT, 8, RegionKind::hello_register});
constexpr auto gic_past_4_gib =
    map_with("GICR", {"GICR", 0xfff80000, 8 * std::uint64_t{0x20000}, RegionKind::gic_redistributors});

// Proven while compiling, as the header proves memory_map; the CHECKs below say it again at run time.
static_assert(kh::find_map_fault(kh::memory_map) == MapFault::none);
static_assert(kh::find_map_fault(ram_misaligned) == MapFault::misaligned);
static_assert(kh::find_map_fault(register_misaligned) == MapFault::misaligned);
static_assert(kh::find_map_fault(gic_misaligned) == MapFault::misaligned);
static_assert(kh::find_map_fault(redistributors_for_7) == MapFault::too_small);
static_assert(kh::find_map_fault(register_in_ram) == MapFault::mmio_in_memslot);
static_assert(kh::find_map_fault(gic_over_ram) == MapFault::mmio_in_memslot);
static_assert(kh::find_map_fault(two_registers_at_once) == MapFault::overlapping);
static_assert(kh::find_map_fault(gic_past_4_gib) == MapFault::beyond_ipa_size);
static_assert(kh::find_map_fault(kh::memory_map, 16) == MapFault::beyond_ipa_size);

// The 64-bit constants a guest loads with `ldr xN, =VALUE`: each such
// instruction is an LDR (literal), 0x58000000 | imm19 << 5 | Rt, which loads
// the 8 bytes at its own address + imm19 * 4 (the assembler's literal pool).
std::vector<std::uint64_t> constants_loaded(std::span<const std::uint8_t> image) {
  std::vector<std::uint64_t> values;
  for (std::size_t at = 0; at + 4 <= image.size(); at += 4) {
    std::uint32_t instruction = 0;
    std::memcpy(&instruction, image.data() + at, 4);
    if ((instruction & 0xff000000u) != 0x58000000u) continue;
    const std::int64_t offset = std::int64_t{static_cast<std::int32_t>(instruction << 8) >> 13} * 4;
    const std::int64_t literal = static_cast<std::int64_t>(at) + offset;
    if (literal < 0 || static_cast<std::size_t>(literal) + 8 > image.size()) continue;
    std::uint64_t value = 0;
    std::memcpy(&value, image.data() + literal, 8);
    values.push_back(value);
  }
  return values;
}

// The row of memory_map that begins at `address` (a register, or a GIC frame), or nullptr.
const kh::Region* region_at(std::uint64_t address) {
  const auto found = std::ranges::find(kh::memory_map, address, &kh::Region::base);
  return found == kh::memory_map.end() || found->kind == kh::RegionKind::memslot ? nullptr : &*found;
}

// Each value is the base of one of the map's registers or GIC frames, or a
// PSCI function id, and every address in `expected` is among them.
void check_loads_only_registers(const std::vector<std::uint64_t>& loaded, std::initializer_list<std::uint64_t> expected) {
  for (const std::uint64_t value : loaded) {
    const bool psci = value == PSCI_0_2_FN_SYSTEM_OFF || value == PSCI_0_2_FN_PSCI_VERSION;
    CHECK_MESSAGE((region_at(value) != nullptr || psci), "a constant not in memory_map: 0x" << std::hex << value);
  }
  for (const std::uint64_t address : expected) {
    CHECK_MESSAGE(std::ranges::count(loaded, address) > 0, "never loaded: " << region_at(address)->name);
  }
}

}  // namespace

TEST_CASE("memory map: a map broken in one place is rejected, naming the rule it breaks") {
  CHECK(kh::find_map_fault(kh::memory_map) == MapFault::none);
  CHECK(kh::find_map_fault(ram_misaligned) == MapFault::misaligned);
  CHECK(kh::find_map_fault(register_misaligned) == MapFault::misaligned);
  CHECK(kh::find_map_fault(gic_misaligned) == MapFault::misaligned);
  CHECK(kh::find_map_fault(redistributors_for_7) == MapFault::too_small);
  CHECK(kh::find_map_fault(register_in_ram) == MapFault::mmio_in_memslot);
  CHECK(kh::find_map_fault(gic_over_ram) == MapFault::mmio_in_memslot);
  CHECK(kh::find_map_fault(two_registers_at_once) == MapFault::overlapping);
  CHECK(kh::find_map_fault(gic_past_4_gib) == MapFault::beyond_ipa_size);
  CHECK(kh::find_map_fault(kh::memory_map, 16) == MapFault::beyond_ipa_size);  // RAM ends past 64 KiB
}

TEST_CASE("memory map: the assembled guests load the table's addresses, and are linked at ram_base") {
  check_loads_only_registers(constants_loaded(std::span(guest_bin, guest_bin_len)),
                             {kh::mmio_out, kh::mmio_answer, kh::mmio_echo});
  check_loads_only_registers(constants_loaded(std::span(bench_guest_bin, bench_guest_bin_len)),
                             {kh::mmio_result, kh::mmio_sink, kh::mmio_answer});
  check_loads_only_registers(constants_loaded(std::span(irq_bench_guest_bin, irq_bench_guest_bin_len)),
                             {kh::mmio_out, kh::mmio_sink, kh::mmio_doorbell, kh::mmio_irq, kh::gic_distributor_base,
                              kh::gic_redistributors_base, kh::gic_cpu_interface_base});
  // guest.lines: "guest.S", then "ADDRESS LINE TEXT" per instruction, the first at the address
  // the Makefile linked it at (read from KVM_HELLO_RAM_BASE).
  const std::string lines(reinterpret_cast<const char*>(guest_lines), guest_lines_len);
  const std::size_t first = lines.find('\n') + 1;
  CHECK(std::stoull(lines.substr(first, lines.find(' ', first) - first), nullptr, 16) == kh::ram_base);
}

TEST_CASE("exits decode into typed values") {
  SUBCASE("an MMIO write keeps its bytes") {
    const auto exit = kh::decode_exit(mmio_run(0x1100, 1, true, {'h'}));
    const auto& access = std::get<kh::MmioAccess>(exit);
    CHECK(access.address == 0x1100);
    CHECK(access.is_write);
    CHECK(access.length == 1);
    CHECK(access.data[0] == 'h');
  }
  SUBCASE("an MMIO read has no data yet") {
    const auto exit = kh::decode_exit(mmio_run(0x1108, 4, false, {1, 2, 3, 4}));
    const auto& access = std::get<kh::MmioAccess>(exit);
    CHECK_FALSE(access.is_write);
    CHECK(access.data == std::array<std::uint8_t, 8>{});
  }
  SUBCASE("a length other than 1, 2, 4 or 8 is no MmioAccess, and keeps its value as the detail") {
    for (const std::uint32_t length : {0u, 3u, 16u, 200u}) {
      const auto exit = kh::decode_exit(mmio_run(0x1100, length, true, {}));
      REQUIRE(std::holds_alternative<kh::OtherExit>(exit));
      CHECK(std::get<kh::OtherExit>(exit).reason == KVM_EXIT_MMIO);
      CHECK(std::get<kh::OtherExit>(exit).detail == length);
      CHECK(kh::keep_running(exit).error().problem == kh::Problem::unexpected_exit);
    }
    CHECK(std::get<kh::MmioAccess>(kh::decode_exit(mmio_run(0x1100, 8, true, {}))).length == 8);
  }
  SUBCASE("system events, entry failures, internal errors and the unknown") {
    kvm_run run{};
    run.exit_reason = KVM_EXIT_SYSTEM_EVENT;
    run.system_event.type = KVM_SYSTEM_EVENT_SHUTDOWN;
    CHECK(std::get<kh::SystemEvent>(kh::decode_exit(run)).type == KVM_SYSTEM_EVENT_SHUTDOWN);
    run.exit_reason = KVM_EXIT_FAIL_ENTRY;
    run.fail_entry.hardware_entry_failure_reason = 0x1234;
    CHECK(std::get<kh::OtherExit>(kh::decode_exit(run)).detail == 0x1234);
    run.exit_reason = KVM_EXIT_INTERNAL_ERROR;
    run.internal.suberror = 3;
    CHECK(std::get<kh::OtherExit>(kh::decode_exit(run)).detail == 3);
    run.exit_reason = 999;
    CHECK(std::get<kh::OtherExit>(kh::decode_exit(run)).reason == 999);
  }
}

TEST_CASE("the run loop goes on after MMIO and stops on every system event") {
  CHECK(kh::keep_running(kh::MmioAccess{0x1100, 1, true, {}}).value());
  CHECK_FALSE(kh::keep_running(kh::SystemEvent{KVM_SYSTEM_EVENT_SHUTDOWN}).value());
  CHECK(kh::keep_running(kh::SystemEvent{KVM_SYSTEM_EVENT_RESET}).error().problem == kh::Problem::guest_reset);
  CHECK(kh::keep_running(kh::SystemEvent{KVM_SYSTEM_EVENT_CRASH}).error().problem == kh::Problem::guest_crash);
  const auto fail = kh::keep_running(kh::OtherExit{KVM_EXIT_FAIL_ENTRY, 0});
  CHECK(fail.error().problem == kh::Problem::unexpected_exit);
  CHECK(fail.error().value == KVM_EXIT_FAIL_ENTRY);
}

TEST_CASE("the device: OUT collects output, ANSWER answers, ECHO is checked") {
  kh::HelloDevice device;
  for (const char c : std::string_view("hi\n")) {
    kh::MmioAccess out{kh::mmio_out, 1, true, {static_cast<std::uint8_t>(c)}};
    device.handle(out);
  }
  CHECK(device.output() == "hi\n");

  kh::MmioAccess answer{kh::mmio_answer, 4, false, {}};
  device.handle(answer);
  // KVM_HELLO_HOST_ANSWER, in the byte order of mmio.data: the low byte first.
  static_assert(kh::host_answer <= 0xff);
  CHECK(answer.data == std::array<std::uint8_t, 8>{static_cast<std::uint8_t>(kh::host_answer), 0, 0, 0, 0, 0, 0, 0});
  CHECK_FALSE(device.answer_came_back());

  kh::MmioAccess echo{kh::mmio_echo, 4, true, answer.data};
  device.handle(echo);
  CHECK(device.answer_came_back());

  kh::MmioAccess elsewhere{0x9000, 8, false, {9, 9, 9, 9, 9, 9, 9, 9}};
  device.handle(elsewhere);
  CHECK(elsewhere.data == std::array<std::uint8_t, 8>{});
}

TEST_CASE("the device keeps at most output_limit bytes of output") {
  kh::HelloDevice device;
  kh::MmioAccess out{kh::mmio_out, 1, true, {'x'}};
  for (std::size_t i = 0; i < kh::HelloDevice::output_limit + 10; ++i) device.handle(out);
  CHECK(device.output().size() == kh::HelloDevice::output_limit);
}

TEST_CASE("Fd closes once, and a moved-from Fd closes nothing") {
  int ends[2];
  REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
  const int read_end = ends[0];
  {
    kh::Fd writer(ends[1]);
    kh::Fd reader(read_end);
    kh::Fd moved(std::move(reader));
    CHECK(reader.get() == -1);  // NOLINT(bugprone-use-after-move): what a move leaves, on purpose
    CHECK(moved.get() == read_end);
    CHECK(::fcntl(read_end, F_GETFD) >= 0);
  }
  CHECK(::fcntl(read_end, F_GETFD) == -1);
  CHECK(errno == EBADF);
}

TEST_CASE("Mapping unmaps on destruction") {
  void* address = nullptr;
  {
    auto mapping =
        kh::map_memory(kh::Step::setup_guest_memory, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    REQUIRE(mapping);
    address = mapping->get();
    CHECK(::msync(address, 4096, MS_ASYNC) == 0);
  }
  CHECK(::msync(address, 4096, MS_ASYNC) == -1);  // ENOMEM: nothing is mapped there any more
  CHECK(errno == ENOMEM);
}

TEST_CASE("a failed mmap is an Error, not a null pointer") {
  const auto mapping = kh::map_memory(kh::Step::create_vcpu, 4096, PROT_READ, MAP_SHARED, -1);
  REQUIRE_FALSE(mapping);
  CHECK(mapping.error().call == "mmap");
  CHECK(mapping.error().err == EBADF);
}

TEST_CASE("a stop request sets immediate_exit; the reason that takes precedence stays; the stopper's end clears it") {
  kvm_run run{};
  {
    kh::VcpuStopper stopper(run);
    CHECK(stopper.reason() == kh::StopReason::none);
    CHECK(run.immediate_exit == 0);
    stopper.request(kh::StopReason::deadline);
    CHECK(stopper.reason() == kh::StopReason::deadline);
    CHECK(run.immediate_exit == 1);
    stopper.request(kh::StopReason::interrupted);  // Ctrl-C after the deadline is Ctrl-C
    CHECK(stopper.reason() == kh::StopReason::interrupted);
    stopper.request(kh::StopReason::deadline);  // and stays so
    CHECK(stopper.reason() == kh::StopReason::interrupted);
    stopper.withdraw(kh::StopReason::deadline);  // takes back only a deadline's
    CHECK(stopper.reason() == kh::StopReason::interrupted);
    CHECK(run.immediate_exit == 1);
  }
  CHECK(run.immediate_exit == 0);
}

TEST_CASE("a stop request kicks the thread the stopper was made on, with KVM_HELLO_KICK_SIGNAL, and no other") {
  REQUIRE(kh::install_kick_handler());
  sigset_t kick{};
  sigemptyset(&kick);
  sigaddset(&kick, KVM_HELLO_KICK_SIGNAL);
  kvm_run run{};
  std::atomic<kh::VcpuStopper*> made{nullptr};
  std::atomic<bool> requested{false};
  bool kicked = false;
  std::thread vcpu_thread([&] {
    ::pthread_sigmask(SIG_BLOCK, &kick, nullptr);  // held back, so that it can be seen pending
    kh::VcpuStopper stopper(run);
    made = &stopper;
    while (!requested) std::this_thread::yield();
    sigset_t pending{};
    ::sigpending(&pending);
    kicked = sigismember(&pending, KVM_HELLO_KICK_SIGNAL) == 1;
    int taken = 0;
    if (kicked) ::sigwait(&kick, &taken);
  });
  while (made == nullptr) std::this_thread::yield();
  made.load()->request(kh::StopReason::interrupted);
  requested = true;
  vcpu_thread.join();
  CHECK(kicked);
  sigset_t pending{};
  ::sigpending(&pending);
  CHECK(sigismember(&pending, KVM_HELLO_KICK_SIGNAL) == 0);  // not this thread
}

namespace {
// Waits until `stopper` was asked to stop, or 10 s; the time it waited.
std::chrono::steady_clock::duration until_asked(const kh::VcpuStopper& stopper) {
  const auto start = std::chrono::steady_clock::now();
  while (stopper.reason() == kh::StopReason::none && std::chrono::steady_clock::now() - start < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return std::chrono::steady_clock::now() - start;
}
}  // namespace

TEST_CASE("a Deadline asks for the stop after its limit, never before; a limit of 0 at once; destroyed first, never") {
  kvm_run run{};
  kh::VcpuStopper stopper(run);
  {
    const auto start = std::chrono::steady_clock::now();
    const kh::Deadline deadline(stopper, std::chrono::milliseconds(50));
    CHECK(deadline.status());
    until_asked(stopper);
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(50));
    CHECK(stopper.reason() == kh::StopReason::deadline);
    CHECK(stopper.time_limit() == std::chrono::milliseconds(50));
  }
  // Read once the deadline's thread is joined: request() stores the reason
  // first and immediate_exit after it (so that a vCPU whose KVM_RUN returned
  // at once finds the reason), and this thread can see the one before the
  // other (seen once under qemu-user on a busy machine).
  CHECK(run.immediate_exit == 1);
  stopper.withdraw(kh::StopReason::deadline);
  CHECK(stopper.reason() == kh::StopReason::none);
  CHECK(run.immediate_exit == 0);
  {
    const kh::Deadline at_once(stopper, std::chrono::milliseconds(0));  // 0 is "now", not "no limit"
    CHECK(until_asked(stopper) < std::chrono::seconds(10));
    CHECK(stopper.reason() == kh::StopReason::deadline);
  }
  stopper.withdraw(kh::StopReason::deadline);
  { const kh::Deadline never(stopper, std::chrono::seconds(60)); }  // joined at once, asking nothing
  CHECK(stopper.reason() == kh::StopReason::none);
  kh::Deadline again(stopper, std::chrono::seconds(60));
  again.restart(std::chrono::milliseconds(20));  // sooner
  CHECK(until_asked(stopper) < std::chrono::seconds(10));
  CHECK(stopper.reason() == kh::StopReason::deadline);
  again.restart(std::chrono::seconds(60));  // takes its stop back, and waits again
  CHECK(stopper.reason() == kh::StopReason::none);
  CHECK(run.immediate_exit == 0);
}

TEST_CASE("statistics are read in the kernel's layout: each name right after 16 bytes of fields") {
  // A statistics file as virt/kvm/binary_stats.c (kvm_stats_read) lays it out,
  // written byte by byte, never with sizeof(kvm_stats_desc) (20 in C++ with
  // Linux 6.1's uapi headers): header, id string, two descriptors, values.
  constexpr std::uint32_t name_size = 48, desc_offset = 24 + name_size, descriptor = 16 + name_size;
  constexpr std::uint32_t data_offset = desc_offset + 2 * descriptor;
  std::vector<std::uint8_t> file(data_offset + 16);
  const auto put = [&](std::size_t at, auto value) { std::memcpy(file.data() + at, &value, sizeof value); };
  put(0, std::uint32_t{0});  // flags
  put(4, name_size);
  put(8, std::uint32_t{2});    // num_desc
  put(12, std::uint32_t{24});  // id_offset
  put(16, desc_offset);
  put(20, data_offset);
  const char* names[] = {"exits", "mmio_exit_user"};
  for (std::uint32_t i = 0; i < 2; ++i) {
    const std::size_t at = desc_offset + i * descriptor;
    put(at, std::uint32_t{i == 0 ? 0u : 0x20u});  // flags
    put(at + 8, std::uint32_t{8 * i});            // offset of the value
    std::memcpy(file.data() + at + 16, names[i], std::strlen(names[i]));
  }
  put(data_offset, std::uint64_t{9});
  put(data_offset + 8, std::uint64_t{8});
  const kh::Fd stats(::memfd_create("stats", MFD_CLOEXEC));
  REQUIRE(stats.get() >= 0);
  REQUIRE(::write(stats.get(), file.data(), file.size()) == static_cast<ssize_t>(file.size()));

  const auto read = kh::read_statistics(stats.get());
  REQUIRE(read);
  REQUIRE(read->size() == 2);
  CHECK((*read)[0].name == "exits");
  CHECK((*read)[0].value == 9);
  CHECK((*read)[1].name == "mmio_exit_user");
  CHECK((*read)[1].value == 8);
  CHECK((*read)[1].flags == 0x20);

  file.resize(data_offset + 8);  // the second value missing: the file does not hold what its header says
  REQUIRE(::ftruncate(stats.get(), static_cast<off_t>(file.size())) == 0);
  const auto short_read = kh::read_statistics(stats.get());
  REQUIRE_FALSE(short_read);
  CHECK(short_read.error().problem == kh::Problem::bad_statistics);
  CHECK(short_read.error().value == file.size());
}

static_assert(kh::breakpoint_control == 0x1e3);

TEST_CASE("a hardware breakpoint's control register: enabled, at EL1, on an A64 instruction's 4 bytes") {
  // DBGBCR<n>_EL1's fields (Arm Architecture Reference Manual), read back by position.
  const auto field = [](unsigned low, unsigned bits) { return (kh::breakpoint_control >> low) & ((1U << bits) - 1); };
  CHECK(field(0, 1) == 1);       // E: enabled
  CHECK(field(1, 2) == 0b01);    // PMC: EL1 (Linux's AARCH64_BREAKPOINT_EL1)
  CHECK(field(5, 4) == 0b1111);  // BAS: all 4 bytes (Linux's ARM_BREAKPOINT_LEN_4)
  CHECK(field(13, 1) == 0);      // HMC: not at EL2
  CHECK(field(14, 2) == 0);      // SSC: either security state
  CHECK(field(16, 4) == 0);      // LBN: no linked breakpoint
  CHECK(field(20, 4) == 0);      // BT: an address match
  CHECK((kh::breakpoint_control >> 24) == 0);
  CHECK(kh::breakpoint_control == 0x1e3);
  // KVM takes it in struct kvm_guest_debug_arch, which has room for 16 pairs.
  CHECK(KVM_ARM_MAX_DBG_REGS == 16);
}

TEST_CASE("the device: an empty write changes nothing, a short ECHO is its low bytes") {
  kh::HelloDevice device;
  device.write(kh::mmio_echo, {});  // no bytes: not even memcpy's pointer is touched (UBSan: null to memcpy)
  device.write(kh::mmio_out, {});
  CHECK(device.echoed() == 0);
  CHECK(device.output().empty());
  const std::uint8_t low[] = {static_cast<std::uint8_t>(kh::host_answer)};
  device.write(kh::mmio_echo, low);
  CHECK(device.answer_came_back());
}

TEST_CASE("an MMIO access holds at most its 8 bytes: a run-time length is checked, 16 is refused") {
  CHECK(kh::AccessLength::checked(8));
  CHECK_FALSE(kh::AccessLength::checked(16));
  CHECK_FALSE(kh::AccessLength::checked(0));
  kh::HelloDevice device;
  kh::MmioAccess widest{kh::mmio_answer, *kh::AccessLength::checked(8), false, {}};
  device.handle(widest);  // AddressSanitizer: before, a 16 here read past the device's 8-byte answer
  CHECK(widest.data[0] == kh::host_answer);
}

TEST_CASE("a Mapping moved into itself keeps its memory") {
  auto mapping =
      kh::map_memory(kh::Step::setup_guest_memory, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  REQUIRE(mapping);
  void* address = mapping->get();
  kh::Mapping& same = *mapping;  // a reference, as a self-move happens in real code (a swap, a sort)
  *mapping = std::move(same);
  CHECK(mapping->get() == address);
  CHECK(mapping->size() == 4096);
  CHECK(::msync(address, 4096, MS_ASYNC) == 0);  // still mapped
}

TEST_CASE("step_info of a step not in the table is a row of its own, not a read past the table") {
  CHECK(kh::step_info(kh::Step::run_guest).name == "run_guest");
  CHECK(&kh::step_info(static_cast<kh::Step>(kh::step_count + 1)) == &kh::unknown_step_info);
  CHECK(&kh::step_info(static_cast<kh::Step>(0)) == &kh::unknown_step_info);
  CHECK(&kh::step_info(static_cast<kh::Step>(-1)) == &kh::unknown_step_info);
}

TEST_CASE("GuestMemory starts with a zero region, whatever its memory held") {
  alignas(kh::GuestMemory) unsigned char storage[sizeof(kh::GuestMemory)];
  std::memset(storage, 0xff, sizeof storage);
  auto* memory = new (storage) kh::GuestMemory;  // default-initialised, as in `Machine m;`
  CHECK(memory->region.slot == 0);
  CHECK(memory->region.memory_size == 0);
  CHECK(memory->region.userspace_addr == 0);
  memory->~GuestMemory();
}

// A statistics file of one descriptor, whose header fields `change` then sets.
static std::vector<std::uint8_t> statistics_file(std::uint32_t name_size, std::uint32_t num_desc,
                                                 std::uint32_t desc_offset, std::uint32_t data_offset,
                                                 std::uint32_t value_offset) {
  std::vector<std::uint8_t> file(24 + 16 + 8 + 8);
  const auto put = [&](std::size_t at, std::uint32_t value) { std::memcpy(file.data() + at, &value, sizeof value); };
  put(4, name_size);
  put(8, num_desc);
  put(16, desc_offset);
  put(20, data_offset);
  put(24 + 8, value_offset);  // the descriptor's offset field
  return file;
}

TEST_CASE("statistics: a header or descriptor that points past the file is an Error, and nothing is read past it") {
  // Consistent: name_size 8, one descriptor at 24, its value at 48.
  const auto good = kh::parse_statistics(statistics_file(8, 1, 24, 48, 0));
  REQUIRE(good);
  CHECK(good->size() == 1);
  for (const auto& file : {statistics_file(0xffffffff, 1, 24, 48, 0),  // name_size past the end (was: 4 GiB asked for)
                           statistics_file(8, 2, 24, 48, 0),           // a second descriptor past the end
                           statistics_file(8, 0xffffffff, 24, 48, 0),  // num_desc
                           statistics_file(8, 1, 0xfffffff0, 48, 0),   // desc_offset
                           statistics_file(8, 1, 24, 0xfffffff8, 0),   // data_offset
                           statistics_file(8, 1, 24, 48, 8)}) {        // the value's offset
    const auto parsed = kh::parse_statistics(file);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error().problem == kh::Problem::bad_statistics);
  }
  CHECK_FALSE(kh::parse_statistics(std::vector<std::uint8_t>(23)));  // not even a header

  const kh::Fd stats(::memfd_create("stats", MFD_CLOEXEC));  // the same, read from an fd
  const auto bad = statistics_file(0xffffffff, 1, 24, 48, 0);
  REQUIRE(::write(stats.get(), bad.data(), bad.size()) == static_cast<ssize_t>(bad.size()));
  CHECK(kh::read_statistics(stats.get()).error().problem == kh::Problem::bad_statistics);
}

// ==== Typed fds: each request is made on the fd it belongs to ================

// Whether call() accepts an fd of type F for `request` with these arguments:
// asked of the compiler, so a mistake is seen here as a false, not as a build
// that breaks (test/compile-fail-tests.sh shows the compiler's message).
template <class F, const auto& request, class... Args>
constexpr bool can_call = requires(const F& fd, Args... args) { kh::call(kh::Step::run_guest, fd, request, args...); };

// KVM_RUN is a vcpu ioctl: only a VcpuFd takes it, never /dev/kvm's KvmFd, a VmFd or a bare int.
static_assert(can_call<kh::VcpuFd, kh::request::run>);
static_assert(!can_call<kh::KvmFd, kh::request::run>);
static_assert(!can_call<kh::VmFd, kh::request::run>);
static_assert(!can_call<int, kh::request::run>);
// The system, vm and vcpu ioctls with an argument: the right fd compiles, another does not.
static_assert(can_call<kh::KvmFd, kh::request::create_vm, unsigned long>);
static_assert(!can_call<kh::VmFd, kh::request::create_vm, unsigned long>);
static_assert(can_call<kh::VmFd, kh::request::create_vcpu, unsigned long>);
static_assert(!can_call<kh::KvmFd, kh::request::create_vcpu, unsigned long>);
static_assert(can_call<kh::VmFd, kh::request::arm_preferred_target, kvm_vcpu_init*>);
static_assert(!can_call<kh::VcpuFd, kh::request::arm_preferred_target, kvm_vcpu_init*>);
static_assert(can_call<kh::VcpuFd, kh::request::set_one_reg, const kvm_one_reg*>);
static_assert(!can_call<kh::VmFd, kh::request::set_one_reg, const kvm_one_reg*>);
// The argument is still checked too: a kvm_one_reg where a kvm_vcpu_init is due does not compile.
static_assert(!can_call<kh::VcpuFd, kh::request::arm_vcpu_init, const kvm_one_reg*>);

// create_vcpu(kvm, vm, id): with its fds swapped it does not compile.
template <class First, class Second>
constexpr bool can_create_vcpu = requires(const First& a, const Second& b) { kh::create_vcpu(a, b, 0); };
static_assert(can_create_vcpu<kh::KvmFd, kh::VmFd>);
static_assert(!can_create_vcpu<kh::VmFd, kh::KvmFd>);

// Owners like Fd: move-only, made from an int only on purpose, and no kind becomes another.
template <class F>
constexpr bool owns_like_fd = !std::is_copy_constructible_v<F> && !std::is_copy_assignable_v<F> &&
                              std::is_nothrow_move_constructible_v<F> && std::is_nothrow_move_assignable_v<F> &&
                              std::is_constructible_v<F, int> && !std::is_convertible_v<int, F>;
static_assert(owns_like_fd<kh::KvmFd> && owns_like_fd<kh::VmFd> && owns_like_fd<kh::VcpuFd>);
static_assert(!std::is_constructible_v<kh::VmFd, kh::KvmFd> && !std::is_constructible_v<kh::VcpuFd, kh::VmFd>);
static_assert(!std::is_convertible_v<kh::VcpuFd&, kh::Fd&>);  // not an Fd to reset() or release() behind its back

TEST_CASE("each request names the fd api.rst gives it: system ioctl KvmFd, vm ioctl VmFd, vcpu ioctl VcpuFd") {
  using kh::KvmFd, kh::VmFd, kh::VcpuFd;
  namespace r = kh::request;
  // Documentation/virt/kvm/api.rst, each request's ":Type:" line (the same in Linux 6.1, 6.12 and 7.2).
  CHECK(std::is_same_v<decltype(r::get_api_version)::FdType, KvmFd>);     // system ioctl
  CHECK(std::is_same_v<decltype(r::check_extension)::FdType, KvmFd>);     // system ioctl, vm ioctl
  CHECK(std::is_same_v<decltype(r::create_vm)::FdType, KvmFd>);           // system ioctl
  CHECK(std::is_same_v<decltype(r::get_vcpu_mmap_size)::FdType, KvmFd>);  // system ioctl
  CHECK(std::is_same_v<decltype(r::set_user_memory_region)::FdType, VmFd>);
  CHECK(std::is_same_v<decltype(r::create_vcpu)::FdType, VmFd>);
  CHECK(std::is_same_v<decltype(r::arm_preferred_target)::FdType, VmFd>);
  CHECK(std::is_same_v<decltype(r::arm_vcpu_init)::FdType, VcpuFd>);
  CHECK(std::is_same_v<decltype(r::set_one_reg)::FdType, VcpuFd>);
  CHECK(std::is_same_v<decltype(r::get_one_reg)::FdType, VcpuFd>);
  CHECK(std::is_same_v<decltype(r::run)::FdType, VcpuFd>);
  CHECK(std::is_same_v<decltype(r::set_guest_debug)::FdType, VcpuFd>);
  CHECK(std::is_same_v<decltype(r::get_stats_fd)::FdType, VcpuFd>);  // vm ioctl, vcpu ioctl
}

TEST_CASE("a VcpuFd closes once, and a moved-from one closes nothing, as Fd does") {
  int ends[2];
  REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
  const kh::Fd writer(ends[1]);
  const int read_end = ends[0];
  {
    kh::VcpuFd reader(read_end);
    kh::VcpuFd moved(std::move(reader));
    CHECK(reader.get() == -1);  // NOLINT(bugprone-use-after-move): what a move leaves, on purpose
    CHECK(moved.get() == read_end);
    kh::VcpuFd assigned;
    assigned = std::move(moved);
    CHECK(moved.get() == -1);  // NOLINT(bugprone-use-after-move): what a move leaves, on purpose
    CHECK(::fcntl(read_end, F_GETFD) >= 0);
  }
  CHECK(::fcntl(read_end, F_GETFD) == -1);
  CHECK(errno == EBADF);
}

// ==== vCPU identity ==========================================================

static_assert(kh::with_features({}, kh::first_vcpu_features).features[0] == 1u << KVM_ARM_VCPU_PSCI_0_2);
static_assert(kh::with_features({}, kh::other_vcpu_features).features[0] ==
              ((1u << KVM_ARM_VCPU_PSCI_0_2) | (1u << KVM_ARM_VCPU_POWER_OFF)));
static_assert(kh::with_features({}, {.psci_0_2 = false, .power_off = false}).features[0] == 0);

TEST_CASE("the first vCPU boots with PSCI 0.2; the others start powered off; the target is kept") {
  kvm_vcpu_init preferred{};
  preferred.target = KVM_ARM_TARGET_GENERIC_V8;
  CHECK(kh::with_features(preferred, kh::first_vcpu_features).target == KVM_ARM_TARGET_GENERIC_V8);
  CHECK(kh::with_features(preferred, kh::first_vcpu_features).features[0] == (1u << KVM_ARM_VCPU_PSCI_0_2));
  CHECK(kh::with_features(preferred, kh::other_vcpu_features).features[0] ==
        ((1u << KVM_ARM_VCPU_PSCI_0_2) | (1u << KVM_ARM_VCPU_POWER_OFF)));
}

TEST_CASE("lesson 2's device: IRQ and DOORBELL recorded in order, OUT is hello's, a failed injection is failure()") {
  const kh::VmFd no_vm(-1);  // every ioctl on it fails with EBADF
  const kh::Irqfd no_irqfd{kh::Fd(-1), kh::spi_irqfd - kh::first_spi};
  kh::InterruptDevice device(no_vm, no_irqfd);
  const auto write = [&](std::uint64_t address, std::uint8_t value) {
    kh::MmioAccess access{address, 4, true, {value}};
    device.handle(access);
  };
  kh::MmioAccess hello{kh::mmio_out, 1, true, {'h'}};
  device.handle(hello);
  CHECK(device.hello().output() == "h");
  kh::MmioAccess answer{kh::mmio_answer, 4, false, {}};
  device.handle(answer);
  CHECK(answer.data[0] == kh::host_answer);

  write(kh::mmio_irq, kh::timer_intid);
  write(kh::mmio_doorbell, 3);  // no request we know: recorded, nothing sent, no failure
  CHECK_FALSE(device.failure());
  write(kh::mmio_doorbell, kh::doorbell_line);
  REQUIRE(device.failure());
  CHECK(device.failure()->step == kh::Step::inject_spi);
  CHECK(device.failure()->call == "KVM_IRQ_LINE");
  CHECK(device.failure()->err != 0);  // EBADF; under qemu-aarch64 (user mode) an ioctl it does not know: ENOSYS
  write(kh::mmio_doorbell, kh::doorbell_irqfd);  // the first failure is the one kept
  CHECK(device.failure()->step == kh::Step::inject_spi);

  REQUIRE(device.events().size() == 4);
  CHECK(device.events()[0].kind == kh::InterruptEvent::Kind::took);
  CHECK(device.events()[0].value == kh::timer_intid);
  CHECK(device.events()[1].kind == kh::InterruptEvent::Kind::rang);
  CHECK(device.events()[1].value == 3);
  CHECK(device.events()[3].value == kh::doorbell_irqfd);
  CHECK(device.events()[0].at <= device.events()[3].at);
  CHECK(device.taken() == std::vector<std::uint32_t>{kh::timer_intid});
  CHECK(kh::InterruptDevice::has_register(kh::mmio_irq));
  CHECK(kh::InterruptDevice::has_register(kh::mmio_out));
  CHECK_FALSE(kh::InterruptDevice::has_register(kh::mmio_sink));
}

TEST_CASE("lesson 2's device keeps event_limit events, no more") {
  const kh::VmFd no_vm(-1);
  const kh::Irqfd no_irqfd{kh::Fd(-1), 9};
  kh::InterruptDevice device(no_vm, no_irqfd);
  for (std::size_t i = 0; i < kh::InterruptDevice::event_limit + 10; ++i) {
    kh::MmioAccess access{kh::mmio_irq, 4, true, {40}};
    device.handle(access);
  }
  CHECK(device.events().size() == kh::InterruptDevice::event_limit);
}

TEST_CASE("an Error names its vCPU only when a program says which") {
  const kh::Error error{kh::Step::run_guest, kh::Problem::call_failed, "KVM_RUN", EFAULT, 0};
  CHECK_FALSE(error.vcpu.has_value());
  CHECK(kh::on_vcpu(error, 3).vcpu == 3);
  CHECK(kh::on_vcpu(error, 3).err == EFAULT);
}

// ==== The extension points, as concepts ======================================

struct NotADevice {
  void handle(int) {}
};
static_assert(kh::MmioDevice<kh::HelloDevice>);
static_assert(!kh::MmioDevice<NotADevice>);  // handle() must take an MmioAccess&
static_assert(kh::ExitCallback<decltype([](const kh::Exit&) {})>);
static_assert(!kh::ExitCallback<decltype([](int) {})>);
static_assert(kh::StepCallback<decltype([](kh::Step) {})>);
static_assert(!kh::StepCallback<decltype([] {})>);

template <class Device, class OnExit>
constexpr bool can_run = requires(kh::Vcpu& vcpu, Device& device, OnExit on_exit) {
  kh::run_guest(vcpu, device, kh::default_time_limit, on_exit);
};
static_assert(can_run<kh::HelloDevice, decltype([](const kh::Exit&) {})>);
static_assert(can_run<kh::InterruptDevice, decltype([](const kh::Exit&) {})>);
static_assert(!can_run<NotADevice, decltype([](const kh::Exit&) {})>);
static_assert(!can_run<kh::HelloDevice, decltype([](kh::Step) {})>);

template <class AfterStep>
constexpr bool can_build = requires(AfterStep after) { kh::build_machine({}, "/dev/kvm", after); };
static_assert(can_build<decltype([](kh::Step) {})>);
static_assert(!can_build<decltype([](const kh::Exit&) {})>);

// ==== Part II: interrupts and time ============================================

TEST_CASE("lesson 2's request numbers are the kernel's, each on the fd api.rst gives it") {
  namespace r = kh::request;
  CHECK(r::create_device.number == 0xC00CAEE0);  // _IOWR: the fd comes back in the struct
  CHECK(r::set_device_attr.number == 0x4018AEE1);
  CHECK(r::get_device_attr.number == 0x4018AEE2);
  CHECK(r::get_vcpu_attr.number == r::get_device_attr.number);  // one request, two kinds of fd
  CHECK(r::irq_line.number == 0x4008AE61);
  CHECK(r::irqfd.number == 0x4020AE76);
  CHECK(r::check_vm_extension.number == r::check_extension.number);
  CHECK(std::is_same_v<decltype(r::check_vm_extension)::FdType, kh::VmFd>);    // system ioctl, vm ioctl
  CHECK(std::is_same_v<decltype(r::create_device)::FdType, kh::VmFd>);         // vm ioctl
  CHECK(std::is_same_v<decltype(r::set_device_attr)::FdType, kh::DeviceFd>);   // vm, vcpu, device ioctl
  CHECK(std::is_same_v<decltype(r::get_vcpu_attr)::FdType, kh::VcpuFd>);       // vm, vcpu, device ioctl
  CHECK(std::is_same_v<decltype(r::irq_line)::FdType, kh::VmFd>);              // vm ioctl
  CHECK(std::is_same_v<decltype(r::irqfd)::FdType, kh::VmFd>);                 // vm ioctl
  CHECK(r::get_vcpu_attr.name == "KVM_GET_DEVICE_ATTR");
}

TEST_CASE("the step table: lesson 1's nine rows, then Part II's six, numbered 10 to 15") {
  CHECK(kh::steps.size() == static_cast<std::size_t>(kh::step_count));
  CHECK(kh::step_info(kh::Step::run_guest).name == "run_guest");  // lesson 1 ends where it did
  const std::array part2{"probe_vgic", "create_vgic", "init_vgic", "read_timer_irq", "attach_irqfd", "inject_spi"};
  for (std::size_t i = 0; i < part2.size(); ++i) {
    const auto step = static_cast<kh::Step>(kh::lesson1_step_count + 1 + static_cast<int>(i));
    CHECK(kh::step_info(step).name == part2[i]);
    CHECK_FALSE(kh::step_info(step).purpose.empty());
  }
}

TEST_CASE("memory map: lesson 2's registers and interrupts are the header's macros") {
  CHECK(kh::mmio_irq == 0x1128);
  CHECK(kh::mmio_doorbell == 0x1130);
  CHECK(kh::register_at(kh::mmio_irq)->name == "IRQ");
  CHECK(kh::register_at(kh::mmio_doorbell)->kind == kh::RegionKind::interrupt_register);
  CHECK(KVM_HELLO_RING_LINE == 1);
  CHECK(KVM_HELLO_RING_IRQFD == 2);
  CHECK(kh::spi_line == 40);
  CHECK(kh::spi_irqfd == 41);
  CHECK(kh::timer_intid == 27);
  CHECK(kh::gic_distributor_base == KVM_HELLO_GIC_DIST);
  CHECK(kh::gic_cpu_interface_base == KVM_HELLO_GIC_CPU);
  CHECK(kh::gic_redistributors_base == KVM_HELLO_GIC_REDIST);
}

TEST_CASE("the GIC's frames: what KVM asks of each, per version, and the map keeps it; a map that does not, fails") {
  CHECK(kh::gic_frames(kh::GicVersion::v2).size() == 2);
  CHECK(kh::gic_frames(kh::GicVersion::v2)[0].size == 0x1000);  // GICv2 distributor: 4 KiB
  CHECK(kh::gic_frames(kh::GicVersion::v2)[1].size == 0x2000);  // CPU interface: 8 KiB
  CHECK(kh::gic_frames(kh::GicVersion::v2)[1].region == "GICC");
  CHECK(kh::gic_frames(kh::GicVersion::v3)[0].size == 0x10000);  // GICv3 distributor: 64 KiB
  CHECK(kh::gic_frames(kh::GicVersion::v3)[1].size == kh::max_vcpus * 0x20000);  // 128 KiB per vCPU
  CHECK(kh::gic_frames(kh::GicVersion::v3)[1].attribute == KVM_VGIC_V3_ADDR_TYPE_REDIST);
  for (const auto version : {kh::GicVersion::v2, kh::GicVersion::v3}) {
    for (const kh::GicFrame& frame : kh::gic_frames(version)) {
      CHECK(kh::map_holds(frame));
      kh::GicFrame bigger = frame;
      const auto row = std::find_if(kh::memory_map.begin(), kh::memory_map.end(),
                                    [&frame](const kh::Region& r) { return r.name == frame.region; });
      REQUIRE(row != kh::memory_map.end());
      bigger.size = 2 * row->size;  // more than its region holds
      CHECK_FALSE(kh::map_holds(bigger));
      kh::GicFrame stricter = frame;
      stricter.alignment = 0x100000;  // 1 MiB: GICC (0x08010000) and GICR (0x080a0000) are not
      if (frame.region != "GICD") CHECK_FALSE(kh::map_holds(stricter));
    }
  }
}

TEST_CASE("KVM_IRQ_LINE's irq: the INTID itself, the type, the vCPU; taken apart again") {
  CHECK(kh::irq_line_spi(40) == 0x01000028);
  CHECK(kh::irq_line_spi(40) != kh::irq_line_spi(40 - 32));  // the mistake: the SPI's number counted from 32
  CHECK(kh::irq_line_ppi(0, 27) == 0x0200001b);
  CHECK(kh::irq_line_ppi(2, 27) == 0x0202001b);
  CHECK(kh::irq_line_ppi(257, 16) == 0x12010010);
  for (const std::uint32_t irq : {kh::irq_line_spi(1019), kh::irq_line_ppi(511, 31), 0x0000'0001u}) {
    const kh::IrqLineFields fields = kh::irq_line_fields(irq);
    const std::uint32_t again = fields.type == KVM_ARM_IRQ_TYPE_SPI   ? kh::irq_line_spi(fields.intid)
                                : fields.type == KVM_ARM_IRQ_TYPE_PPI ? kh::irq_line_ppi(fields.vcpu, fields.intid)
                                                                      : irq;
    CHECK(again == irq);
  }
  CHECK(kh::irq_line_fields(0x0000'0001u).type == KVM_ARM_IRQ_TYPE_CPU);
  CHECK(kh::irq_line_fields(kh::irq_line_ppi(511, 31)).vcpu == 511);
}

TEST_CASE("INTIDs by kind; the GIC's size holds lesson 2's SPIs; an irqfd for a PPI is refused before any call") {
  CHECK(kh::is_ppi(27));
  CHECK_FALSE(kh::is_spi(27));
  CHECK(kh::is_spi(32));
  CHECK(kh::is_spi(1019));
  CHECK_FALSE(kh::is_spi(1020));  // 1020-1023: special INTIDs (1023: spurious)
  CHECK(kh::vgic_nr_irqs == 64);
  const kh::VmFd no_vm{-1};  // not used: the INTID is checked first
  const auto irqfd = kh::attach_irqfd(no_vm, kh::timer_intid);
  REQUIRE_FALSE(irqfd);
  CHECK(irqfd.error().step == kh::Step::attach_irqfd);
  CHECK(irqfd.error().problem == kh::Problem::not_an_spi);
  CHECK(irqfd.error().value == kh::timer_intid);
  // An SPI: KVM_IRQFD is made (on no fd; which errno comes back is not checked: under qemu-aarch64 an ioctl
  // QEMU does not know gets QEMU's errno, not the kernel's EBADF).
  CHECK(kh::attach_irqfd(no_vm, 32).error().call == "KVM_IRQFD");
}

TEST_CASE("Part II's steps on an fd that is no VM: each error names its step and call") {
  const kh::VmFd no_vm{-1};
  const auto probed = kh::probe_vgic(no_vm);
  REQUIRE_FALSE(probed);
  CHECK(probed.error().step == kh::Step::probe_vgic);
  CHECK(probed.error().call == "KVM_CHECK_EXTENSION");
  const auto created = kh::create_vgic(no_vm, kh::GicVersion::v3);
  CHECK(created.error().step == kh::Step::create_vgic);
  CHECK(created.error().call == "KVM_CREATE_DEVICE");
  const auto injected = kh::inject_spi(no_vm, kh::spi_line);
  CHECK(injected.error().step == kh::Step::inject_spi);
  CHECK(injected.error().call == "KVM_IRQ_LINE");
  const auto timer = kh::read_timer_irq(kh::VcpuFd{-1});
  CHECK(timer.error().step == kh::Step::read_timer_irq);
  CHECK(timer.error().call == "KVM_GET_DEVICE_ATTR");
  const kh::Vgic no_gic{kh::DeviceFd{-1}, kh::GicVersion::v2};
  const auto initialised = kh::init_vgic(no_gic);
  CHECK(initialised.error().step == kh::Step::init_vgic);
  CHECK(initialised.error().call == "KVM_SET_DEVICE_ATTR");
  const kh::Irqfd no_event{kh::Fd{-1}, 9};
  CHECK(kh::ring_irqfd(no_event).error().call == "write");
}

// ==== Part III: several vCPUs ==================================================

TEST_CASE("MPIDR affinity: KVM's split of the vCPU id, Aff0 4 bits, Aff1 and Aff2 8; every vCPU of the map its own") {
  CHECK(kh::mpidr_affinity(1) == 1);
  CHECK(kh::mpidr_affinity(15) == 0xf);
  CHECK(kh::mpidr_affinity(16) == 0x100);        // Aff0 holds 16 vCPUs: the 17th is Aff1 1, Aff0 0
  CHECK(kh::mpidr_affinity(4095) == 0xff0f);     // Aff1 0xff, Aff0 0xf
  CHECK(kh::mpidr_affinity(4096) == 0x10000);    // Aff2 1
  CHECK((kh::mpidr_affinity(0x0fffff) >> 24) == 0);  // nothing above Aff2, bit 31 (RES1) not included
  std::vector<std::uint64_t> seen;
  for (std::uint32_t id = 0; id < 300; ++id) seen.push_back(kh::mpidr_affinity(id));
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());  // one id, one affinity
  for (std::uint32_t id = 0; id < kh::max_vcpus; ++id) CHECK(kh::mpidr_affinity(id) == id);  // the map's: Aff0 only
}

TEST_CASE("ICC_SGI1R_EL1: INTID at 27:24, one TargetList bit for Aff0, Aff1/2/3 at 23:16, 39:32, 55:48") {
  for (std::uint32_t id : {0u, 1u, 7u, 15u, 16u, 0x1234u}) {
    const std::uint64_t mpidr = kh::mpidr_affinity(id);
    const std::uint64_t value = kh::icc_sgi1r(kh::sgi_intid, mpidr);
    INFO("vCPU " << id);
    CHECK(((value >> 0) & 0xffff) == (1u << (mpidr & 0xf)));  // one CPU, by Aff0
    CHECK(((value >> 24) & 0xf) == kh::sgi_intid);
    CHECK(((value >> 16) & 0xff) == ((mpidr >> 8) & 0xff));
    CHECK(((value >> 32) & 0xff) == ((mpidr >> 16) & 0xff));
    CHECK((value & (std::uint64_t{1} << 40)) == 0);      // IRM 0: to the list, not "all but me"
    CHECK(((value >> 44) & 0xf) == 0);                   // RS 0: Aff0 0 to 15
  }
  CHECK(kh::icc_sgi1r(1, 1) == 0x01000002);
  CHECK(kh::icc_sgi1r(15, std::uint64_t{0x7f} << 32) == ((std::uint64_t{0x7f} << 48) | 0x0f000001));  // Aff3
}

TEST_CASE("GICD_SGIR: CPUTargetList by vCPU index at 23:16, INTID at 3:0, filter 0") {
  CHECK(kh::gicd_sgir_offset == 0xf00);
  CHECK(kh::gicd_sgir(1, 1) == 0x00020001);
  CHECK(kh::gicd_sgir(0, 0) == 0x00010000);
  for (std::uint32_t index = 0; index < kh::max_vcpus; ++index) {
    const std::uint32_t value = kh::gicd_sgir(kh::sgi_intid, index);
    CHECK(((value >> 16) & 0xff) == (1u << index));
    CHECK((value & 0xf) == kh::sgi_intid);
    CHECK((value >> 24) == 0);  // TargetListFilter 0: the list
  }
}

TEST_CASE("PSCI: the function ids are <linux/psci.h>'s, each return code has its name, and only those") {
  CHECK(kh::psci::cpu_on64 == 0xC4000003u);
  CHECK(kh::psci::cpu_off == 0x84000002u);
  CHECK(kh::psci::affinity_info64 == 0xC4000004u);
  CHECK(kh::psci::system_off == 0x84000008u);
  CHECK(kh::psci::system_off == PSCI_0_2_FN_SYSTEM_OFF);
  CHECK(kh::psci::affinity_off == 1);
  const std::pair<std::int64_t, std::string_view> names[] = {
      {0, "SUCCESS"},           {-1, "NOT_SUPPORTED"},     {-2, "INVALID_PARAMETERS"}, {-3, "DENIED"},
      {-4, "ALREADY_ON"},       {-5, "ON_PENDING"},        {-6, "INTERNAL_FAILURE"},   {-7, "NOT_PRESENT"},
      {-8, "DISABLED"},         {-9, "INVALID_ADDRESS"}};
  for (const auto& [x0, name] : names) CHECK(kh::psci_result_name(x0) == name);
  for (const std::int64_t other : {std::int64_t{1}, std::int64_t{-10}, std::int64_t{0xC4000003}}) {
    CHECK(kh::psci_result_name(other).empty());
  }
  // The guest's x0 is 64 bits: -2 as the program reads it back from PSCI_RESULT.
  CHECK(kh::psci_result_name(static_cast<std::int64_t>(std::uint64_t{0xfffffffffffffffe})) == "INVALID_PARAMETERS");
}

TEST_CASE("memory map: lesson 3's registers, its SGI and every vCPU's stack") {
  CHECK(kh::mmio_psci_call == 0x1138);
  CHECK(kh::mmio_psci_result == 0x1140);
  CHECK(kh::register_at(kh::mmio_psci_call)->name == "PSCI_CALL");
  CHECK(kh::register_at(kh::mmio_psci_result)->kind == kh::RegionKind::psci_register);
  CHECK(kh::sgi_intid == KVM_HELLO_SGI_INTID);
  CHECK(kh::is_sgi(kh::sgi_intid));
  CHECK_FALSE(kh::is_sgi(kh::timer_intid));
  CHECK(kh::stack_size == 0x1000);
  CHECK(kh::stack_top(0) == kh::ram_base + kh::ram_size);  // lesson 1's
  for (std::uint32_t id = 0; id < kh::max_vcpus; ++id) {
    CHECK(kh::stack_top(id) - kh::stack_size >= kh::ram_base + guest_bin_len);  // no stack over the image
    CHECK(kh::stack_top(id) <= kh::ram_base + kh::ram_size);
  }
}

TEST_CASE("the step table: Part III's rows 16 to 18; lesson 2 still numbers its steps of 15") {
  CHECK(kh::step_count == 18);
  CHECK(kh::lesson2_step_count == 15);
  CHECK(kh::step_info(kh::Step::read_mp_state).name == "read_mp_state");
  CHECK(static_cast<int>(kh::Step::read_mp_state) == 16);
  CHECK(kh::step_info(kh::Step::start_vcpu_thread).name == "start_vcpu_thread");
  CHECK(kh::step_info(kh::Step::stop_vcpus).name == "stop_vcpus");
  for (int n = kh::lesson2_step_count + 1; n <= kh::step_count; ++n) {
    CHECK_FALSE(kh::step_info(static_cast<kh::Step>(n)).purpose.empty());
  }
}

TEST_CASE("KVM_GET_MP_STATE and KVM_SET_MP_STATE: the kernel's numbers, vcpu ioctls; the states by name") {
  CHECK(kh::request::get_mp_state.number == 0x8004AE98);  // _IOR: KVM writes the state
  CHECK(kh::request::set_mp_state.number == 0x4004AE99);  // _IOW
  CHECK(std::is_same_v<decltype(kh::request::get_mp_state)::FdType, kh::VcpuFd>);
  CHECK(std::is_same_v<decltype(kh::request::set_mp_state)::FdType, kh::VcpuFd>);
  CHECK(kh::mp_state_name(kh::MpState::runnable) == "RUNNABLE");
  CHECK(kh::mp_state_name(kh::MpState::stopped) == "STOPPED");
  CHECK(kh::mp_state_name(kh::MpState::suspended) == "SUSPENDED");
  CHECK(kh::mp_state_name(static_cast<kh::MpState>(KVM_MP_STATE_HALTED)).empty());  // x86's: not arm64's
  const kh::VcpuFd no_vcpu{-1};
  const auto read = kh::read_mp_state(no_vcpu);
  REQUIRE_FALSE(read);
  CHECK(read.error().step == kh::Step::read_mp_state);
  CHECK(read.error().call == "KVM_GET_MP_STATE");
  const auto set = kh::set_mp_state(no_vcpu, kh::MpState::stopped);
  REQUIRE_FALSE(set);
  CHECK(set.error().step == kh::Step::read_mp_state);
  CHECK(set.error().call == "KVM_SET_MP_STATE");
}

namespace {

// A vCPU without KVM: no fd, and a kvm_run of our own (anonymous memory), for
// the threads' tests: their bodies never call KVM_RUN.
kh::Vcpu fake_vcpu(std::uint32_t id) {
  auto shared = kh::map_memory(kh::Step::create_vcpu, sizeof(kvm_run), PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1);
  REQUIRE(shared);
  return kh::Vcpu{kh::VcpuFd{}, std::move(*shared), id};
}

// A body that waits until its vCPU is asked to stop (10 s at most), and ends
// as run_guest() would: RunStats for powered_off, the watchdog's Error for
// the deadline.
kh::Result<kh::RunStats> wait_for_stop(kh::Vcpu&, const kh::VcpuStopper& stopper) {
  until_asked(stopper);
  if (stopper.reason() == kh::StopReason::powered_off) return kh::RunStats{};
  return std::unexpected(kh::Error{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR,
                                   static_cast<std::uint64_t>(stopper.time_limit().count())});
}

}  // namespace

TEST_CASE("a vCPU thread: its body runs on a thread of its own, named for the vCPU, blocking all signals but the kick") {
  REQUIRE(kh::install_kick_handler());
  kh::Vcpu vcpu = fake_vcpu(3);
  std::thread::id body_thread;
  std::string name;
  bool sigint_blocked = false, kick_blocked = true, stopper_is_this_thread = false;
  auto thread = kh::start_vcpu_thread(vcpu, [&](kh::Vcpu& v, const kh::VcpuStopper& stopper) -> kh::Result<kh::RunStats> {
    body_thread = std::this_thread::get_id();
    char text[16] = {};
    ::pthread_getname_np(::pthread_self(), text, sizeof text);
    name = text;
    sigset_t mask{};
    ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    sigint_blocked = sigismember(&mask, SIGINT) == 1;
    kick_blocked = sigismember(&mask, KVM_HELLO_KICK_SIGNAL) == 1;
    stopper_is_this_thread = &v == &vcpu && stopper.reason() == kh::StopReason::none;
    kh::RunStats stats;
    stats.exits = 7;
    return stats;
  });
  REQUIRE(thread);
  CHECK(thread->vcpu_id() == 3);
  const auto result = thread->join();
  REQUIRE(result);
  CHECK(result->exits == 7);
  CHECK(body_thread != std::this_thread::get_id());
  CHECK(name == "vcpu 3");
  CHECK(sigint_blocked);
  CHECK_FALSE(kick_blocked);
  CHECK(stopper_is_this_thread);
  CHECK(thread->join()->exits == 7);  // joined already: the same result again
  CHECK(thread->finished());
}

TEST_CASE("request_stop reaches the vCPU's own thread: immediate_exit, then the kick, to that thread") {
  REQUIRE(kh::install_kick_handler());
  kh::Vcpu vcpu = fake_vcpu(1);
  std::atomic<bool> running{false};
  int signal_taken = 0;
  auto thread = kh::start_vcpu_thread(vcpu, [&](kh::Vcpu& v, const kh::VcpuStopper&) -> kh::Result<kh::RunStats> {
    sigset_t kick{};
    sigemptyset(&kick);
    sigaddset(&kick, KVM_HELLO_KICK_SIGNAL);
    ::pthread_sigmask(SIG_BLOCK, &kick, nullptr);  // held back, so that it can be taken here
    running = true;
    const timespec limit{10, 0};
    signal_taken = ::sigtimedwait(&kick, nullptr, &limit);  // the kick, or -1 after 10 s
    if (v.run().immediate_exit != 1) return std::unexpected(kh::Error{kh::Step::run_guest});
    return kh::RunStats{};
  });
  REQUIRE(thread);
  while (!running) std::this_thread::yield();
  thread->request_stop(kh::StopReason::interrupted);
  CHECK(thread->join());
  CHECK(signal_taken == KVM_HELLO_KICK_SIGNAL);
}

TEST_CASE("a stop asked for before the thread has made its stopper reaches the body all the same") {
  kh::Vcpu vcpu = fake_vcpu(2);
  std::atomic<bool> go{false};
  kh::StopReason seen = kh::StopReason::none;
  auto thread = kh::start_vcpu_thread(vcpu, [&](kh::Vcpu&, const kh::VcpuStopper& stopper) -> kh::Result<kh::RunStats> {
    while (!go) std::this_thread::yield();
    seen = stopper.reason();
    return kh::RunStats{};
  });
  REQUIRE(thread);
  thread->request_stop(kh::StopReason::interrupted);  // the thread may not have made its stopper yet
  go = true;
  CHECK(thread->join());
  CHECK(seen == kh::StopReason::interrupted);
}

TEST_CASE("a vCPU thread's own deadline stops it; the Error names the vCPU") {
  kh::Vcpu vcpu = fake_vcpu(1);
  const auto start = std::chrono::steady_clock::now();
  auto thread = kh::start_vcpu_thread(vcpu, wait_for_stop, std::chrono::milliseconds(50));
  REQUIRE(thread);
  const auto result = thread->join();  // no one asks it to stop: only the deadline does
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(50));
  REQUIRE_FALSE(result);
  CHECK(result.error().problem == kh::Problem::watchdog_expired);
  CHECK(result.error().value == 50);
  REQUIRE(result.error().vcpu);
  CHECK(*result.error().vcpu == 1);
}

TEST_CASE("a VcpuThread's end asks its vCPU to stop and joins: no thread outlives it, moved or not") {
  kh::Vcpu vcpu0 = fake_vcpu(0), vcpu1 = fake_vcpu(1);
  std::atomic<int> bodies_ended{0};
  const auto body = [&](kh::Vcpu& v, const kh::VcpuStopper& stopper) {
    auto result = wait_for_stop(v, stopper);
    ++bodies_ended;
    return result;
  };
  {
    std::vector<kh::VcpuThread> threads;
    auto first = kh::start_vcpu_thread(vcpu0, body, std::chrono::seconds(60));
    REQUIRE(first);
    threads.push_back(std::move(*first));  // the moved-from one, in `first`, ends as nothing
    auto second = kh::start_vcpu_thread(vcpu1, body, std::chrono::seconds(60));
    REQUIRE(second);
    threads.push_back(std::move(*second));  // the vector grows: the first moves again
    CHECK(bodies_ended == 0);
  }
  CHECK(bodies_ended == 2);  // both stopped (powered_off) and joined before the scope ended
}

TEST_CASE("stop_vcpus: every thread asked and kicked, then each joined; results in order; an ended one only joined") {
  kh::Vcpu vcpus[] = {fake_vcpu(0), fake_vcpu(1), fake_vcpu(2)};
  std::vector<kh::VcpuThread> threads;
  // vCPU 0 ends by itself, as the one that powered the machine off; 1 and 2 wait to be stopped.
  auto first = kh::start_vcpu_thread(vcpus[0], [](kh::Vcpu&, const kh::VcpuStopper&) -> kh::Result<kh::RunStats> {
    kh::RunStats stats;
    stats.exits = 1;
    return stats;
  });
  REQUIRE(first);
  threads.push_back(std::move(*first));
  for (kh::Vcpu& vcpu : std::span(vcpus).subspan(1)) {
    auto thread = kh::start_vcpu_thread(vcpu, wait_for_stop, std::chrono::seconds(60));
    REQUIRE(thread);
    threads.push_back(std::move(*thread));
  }
  CHECK(kh::wait_for_first_to_end(threads) == 0);
  const auto start = std::chrono::steady_clock::now();
  const auto results = kh::stop_vcpus(threads, kh::StopReason::powered_off);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));  // not the deadlines' 60 s
  REQUIRE(results.size() == 3);
  CHECK(results[0]->exits == 1);  // what it ended with
  CHECK(results[1]);
  CHECK(results[2]);
  for (const kh::VcpuThread& thread : threads) CHECK(thread.finished());
}

TEST_CASE("wait_for_first_to_end: the index of a body that returned, at once if one has") {
  kh::Vcpu vcpus[] = {fake_vcpu(0), fake_vcpu(1)};
  std::vector<kh::VcpuThread> threads;
  auto waits = kh::start_vcpu_thread(vcpus[0], wait_for_stop, std::chrono::seconds(60));
  REQUIRE(waits);
  threads.push_back(std::move(*waits));
  std::atomic<bool> go{false};
  auto ends = kh::start_vcpu_thread(vcpus[1], [&](kh::Vcpu&, const kh::VcpuStopper&) -> kh::Result<kh::RunStats> {
    while (!go) std::this_thread::yield();
    return kh::RunStats{};
  });
  REQUIRE(ends);
  threads.push_back(std::move(*ends));
  CHECK_FALSE(threads[0].finished());
  go = true;
  CHECK(kh::wait_for_first_to_end(threads) == 1);
  CHECK(kh::wait_for_first_to_end(threads) == 1);  // and again at once
  const auto results = kh::stop_vcpus(threads, kh::StopReason::powered_off);
  CHECK(results[0]);
}

// ==== Lesson 3's device ======================================================

namespace {
// A guest's write of `value`, `length` bytes, to `address`.
kh::MmioAccess guest_write(std::uint64_t address, std::uint64_t value, std::uint32_t length) {
  kh::MmioAccess access{address, *kh::AccessLength::checked(length), true, {}};
  std::memcpy(access.data.data(), &value, length);
  return access;
}
void write_text(kh::VcpusDevice::View view, std::string_view text) {
  for (const char c : text) {
    auto access = guest_write(kh::mmio_out, static_cast<unsigned char>(c), 1);
    view.handle(access);
  }
}
}  // namespace

TEST_CASE("VcpusDevice: each vCPU's bytes make its own lines, whatever the other writes between them") {
  kh::VcpusDevice device(2);
  const auto zero = device.for_vcpu(0), one = device.for_vcpu(1);
  for (const char* part : {"he", "llo 0\n"}) {  // byte by byte, the two vCPUs' writes between each other's
    write_text(zero, part);
    write_text(one, part == std::string_view("he") ? "hel" : "lo 1\n");
  }
  write_text(one, "no end");
  const auto zeros = device.records(0), ones = device.records(1);
  REQUIRE(zeros.size() == 1);
  REQUIRE(ones.size() == 1);
  CHECK(zeros[0].kind == kh::VcpuRecord::Kind::line);
  CHECK(zeros[0].vcpu == 0);
  CHECK(zeros[0].text == "hello 0");
  CHECK(ones[0].vcpu == 1);
  CHECK(ones[0].text == "hello 1");
  CHECK(device.unfinished_line(1) == "no end");
  CHECK(device.unfinished_line(0).empty());
  CHECK(device.records(1, 1).empty());  // from the second on: none yet
}

TEST_CASE("VcpusDevice: IRQ is an INTID taken; PSCI_CALL then PSCI_RESULT one call; a result alone, nothing") {
  kh::VcpusDevice device(2);
  auto view = device.for_vcpu(1);
  auto lone_result = guest_write(kh::mmio_psci_result, 7, 8);
  view.handle(lone_result);
  CHECK(device.records(1).empty());
  auto irq = guest_write(kh::mmio_irq, kh::sgi_intid, 4);
  auto call = guest_write(kh::mmio_psci_call, kh::psci::cpu_on64, 4);
  auto result = guest_write(kh::mmio_psci_result, static_cast<std::uint64_t>(kh::psci::already_on), 8);
  for (kh::MmioAccess* access : {&irq, &call, &result}) view.handle(*access);
  const auto records = device.records(1);
  REQUIRE(records.size() == 2);
  CHECK(records[0].kind == kh::VcpuRecord::Kind::took);
  CHECK(records[0].value == kh::sgi_intid);
  CHECK(records[1].kind == kh::VcpuRecord::Kind::psci);
  CHECK(records[1].value == kh::psci::cpu_on64);
  CHECK(records[1].result == kh::psci::already_on);  // -4, sign and all, from 8 bytes
  CHECK(device.records(0).empty());  // vCPU 0 wrote nothing
  kh::MmioAccess read{kh::mmio_answer, 4, false, {}};
  view.handle(read);
  std::uint32_t answer = 0;
  std::memcpy(&answer, read.data.data(), sizeof answer);
  CHECK(answer == kh::host_answer);  // reads are HelloDevice's
}

TEST_CASE("VcpusDevice: a guest that floods it keeps record_limit records, and a line of line_limit bytes") {
  kh::VcpusDevice device(1);
  auto view = device.for_vcpu(0);
  for (std::size_t i = 0; i < kh::VcpusDevice::record_limit + 10; ++i) {
    auto irq = guest_write(kh::mmio_irq, 27, 4);
    view.handle(irq);
  }
  CHECK(device.records(0).size() == kh::VcpusDevice::record_limit);
  write_text(view, std::string(kh::VcpusDevice::line_limit + 100, 'x'));
  CHECK(device.unfinished_line(0).size() == kh::VcpusDevice::line_limit);
}

TEST_CASE("VcpusDevice: two threads writing at once, each to its own view: every line whole, every record kept") {
  kh::VcpusDevice device(2);
  constexpr int lines = 50;
  const auto writer = [&](std::uint32_t id) {
    const auto view = device.for_vcpu(id);
    for (int n = 0; n < lines; ++n) write_text(view, "line " + std::to_string(n) + " of vCPU " + std::to_string(id) + "\n");
  };
  std::thread a(writer, 0), b(writer, 1);
  a.join();
  b.join();
  for (std::uint32_t id = 0; id < 2; ++id) {
    const auto records = device.records(id);
    REQUIRE(records.size() == lines);
    for (int n = 0; n < lines; ++n) {
      CHECK(records[static_cast<std::size_t>(n)].text ==
            "line " + std::to_string(n) + " of vCPU " + std::to_string(id));
    }
  }
}

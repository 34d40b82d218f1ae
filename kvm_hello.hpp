// SPDX-License-Identifier: MIT
/*
 * kvm_hello.hpp: run one tiny arm64 guest with Linux KVM, one step at a time.
 *
 * WHAT IT IS
 *   A header-only, annotated walk through the KVM API on arm64. Each step of
 *   creating a virtual machine is one small function below, with a contract
 *   comment: which ioctl, which struct, what comes back, what errors mean, and
 *   why the step exists. main.cpp calls them in order and prints what happens;
 *   docs/ has one chapter per step, with the same numbers.
 *
 * STEP BY STEP (the numbers main.cpp prints and docs/ uses)
 *   1  open_kvm            open("/dev/kvm")                      -> KvmFd
 *   2  check_api_version   KVM_GET_API_VERSION                   -> 12
 *   3  check_capabilities  KVM_CHECK_EXTENSION                   -> Capabilities
 *   4  create_vm           KVM_CREATE_VM                         -> VmFd
 *   5  setup_guest_memory  mmap + KVM_SET_USER_MEMORY_REGION     -> GuestMemory
 *   6  create_vcpu         KVM_CREATE_VCPU, KVM_GET_VCPU_MMAP_SIZE, mmap -> Vcpu
 *   7  init_vcpu           KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT   -> kvm_vcpu_init
 *   8  set_boot_registers  KVM_SET_ONE_REG (PC, SP_EL1)
 *   9  run_guest           KVM_RUN, in a loop, until the guest powers off -> RunStats
 *
 *   Part II, lesson 2: interrupts and time (the in-kernel GIC, the timer, injection)
 *   10 probe_vgic          KVM_CHECK_EXTENSION(IRQCHIP), KVM_CREATE_DEVICE(TEST) -> GicVersion
 *   11 create_vgic         KVM_CREATE_DEVICE, KVM_SET_DEVICE_ATTR(ADDR)  -> Vgic   (before any vCPU)
 *   12 init_vgic           KVM_SET_DEVICE_ATTR(NR_IRQS, CTRL_INIT)  (after every vCPU, before KVM_RUN)
 *   13 read_timer_irq      KVM_GET_DEVICE_ATTR(TIMER_CTRL) on a vCPU      -> 27
 *   14 attach_irqfd        eventfd, KVM_IRQFD                            -> Irqfd  (after init_vgic)
 *   15 inject_spi          KVM_IRQ_LINE, level 1 then 0                  (after init_vgic)
 *   KVM wants them in this order, not by number: 1-5, 10, 11, 6-8, 12, 9;
 *   13 once the vCPU exists, 14 and 15 after 12 (Part II's order rules).
 *
 *   Part III, lesson 3: several vCPUs (PSCI CPU_ON, a thread each, a clean stop)
 *   16 read_mp_state       KVM_GET_MP_STATE (set_mp_state: KVM_SET_MP_STATE) -> MpState
 *   17 start_vcpu_thread   pthread_create; the thread runs KVM_RUN (step 9)  -> VcpuThread
 *   18 stop_vcpus          request, pthread_kill (the kick), join            -> each one's RunStats
 *   Lesson 3 runs 6 and 7 once per vCPU (the others powered off), 8 for the
 *   first only, then 16, 17 per vCPU, and 18 once a vCPU powered the VM off.
 *
 * CONTENTS (the banners below, in order)
 *   The guest's memory map          shared with guest.S
 *   The memory map as a table       its regions; alignment, overlap and memslots proven
 *   Constants                       each derived from the kernel's headers or the map
 *   Steps and errors                the step table; Error, Result
 *   Owners                          Fd, KvmFd, VmFd, VcpuFd and Mapping: each closed once
 *   Typed ioctl requests            Request (its number, argument and fd), call(), watching the calls
 *   Step 1 ... Step 9               each step's function, its helpers just above it
 *   Steps 1 to 8 in one call        build_machine(), for programs that do not narrate
 *   Part II: interrupts and time    the vGIC's order rules; Request numbers of its ioctls
 *   Step 10 ... Step 15             each step's function, its helpers just above it
 *   Part III: several vCPUs         what the program does for CPU_ON; MPIDR, SGI and PSCI encodings
 *   Step 16 ... Step 18             each step's function, its helpers just above it
 *   Lesson 3's device               one device for every vCPU's exits: a view and a line buffer each
 *   Appendix: seeing inside         reading registers, single-stepping, breakpoints, the vCPU's statistics
 *
 * HOW TO USE
 *   #include "kvm_hello.hpp" and call the steps in order; every step returns
 *   Result<T>, which holds either its value or an Error naming the step, the
 *   call that failed and its errno. Each step that makes ioctls takes a
 *   CallObserver last, to see every call as it happens (main.cpp's -v); by
 *   default none. Nothing here prints: the caller decides how to report
 *   (main.cpp and program/ do it for this program).
 *
 * THREADS AND SIGNALS
 *   A vCPU runs on the thread that calls run_guest(); vCPUs of several VMs
 *   may run at once, each on its own thread (lesson 3's start_vcpu_thread
 *   starts one per vCPU, and owns it). Another thread stops one
 *   through its VcpuStopper (a Deadline does it when time runs out): see
 *   "Stopping a vCPU" in Step 9. The one process-wide thing the header
 *   takes is a do-nothing handler for the kick signal, KVM_HELLO_KICK_SIGNAL
 *   (SIGUSR1; define it before the #include to pick another); it leaves
 *   SIGALRM, SIGINT and every timer to the program.
 *
 * DOES NOT DO
 *   Interrupts without KVM's in-kernel GIC (no userspace interrupt
 *   controller, no KVM_CREATE_IRQCHIP), an ITS or MSIs, level-triggered
 *   injection from the program (inject_spi() is an edge), GICv2 on a host
 *   whose GIC cannot emulate one, more than max_vcpus (8) vCPUs, an
 *   MMU in the guest, or any device other than the MMIO registers of the
 *   memory map below and the GIC.
 *
 * NEEDS
 *   Linux on arm64 with KVM (or the emulated machine `make run` builds on
 *   other hosts), C++23's std::expected (g++ 12, clang 16); nothing else.
 *
 * guest.S includes this file too, for the memory map: everything after the
 * memory map is hidden from the assembler.
 */
#pragma once

#define KVM_HELLO_VERSION "1.1.0"

/* ==== The guest's memory map (shared with guest.S) =========================
 *
 * Guest-physical addresses (the guest's MMU is off, so they are the ones it
 * uses); not to scale. Everything that is not RAM has no memslot: a load or
 * store there leaves the guest (an MMIO exit, or the in-kernel GIC).
 *
 *   0x00000000 +--------------------------+
 *              |  no memslot: MMIO        |  0x1100 OUT    write 1 byte: the host prints it
 *              |                          |  0x1108 ANSWER read 4 bytes: the host answers
 *              |                          |  0x1110 ECHO   write 4 bytes: the host checks them
 *              |                          |  0x1118 SINK, 0x1120 RESULT: the benchmark's (--bench)
 *              |                          |  0x1128 IRQ      write 4 bytes: the INTID the guest took
 *              |                          |  0x1130 DOORBELL write 4 bytes: the guest asks for an SPI
 *              |                          |  0x1138 PSCI_CALL   write 4 bytes: the PSCI function it called
 *              |                          |  0x1140 PSCI_RESULT write 8 bytes: the x0 that call returned
 *   0x00010000 +--------------------------+
 *              |  guest RAM, 64 KiB       |  the guest image is copied to its start;
 *              |  (memslot 0, our mmap)   |  PC starts at 0x10000, the stack at the top
 *              |                          |  (lesson 3: vCPU n's stack 4 KiB * n below it,
 *              |                          |  growing down)
 *   0x00020000 +--------------------------+
 *              |  no memslot              |
 *   0x08000000 +--------------------------+  the in-kernel GIC (lesson 2, create_vgic()),
 *              |  GICD: distributor       |  where QEMU's virt board puts its own:
 *              |                          |  a GICv3's is 64 KiB, a GICv2's 4 KiB
 *   0x08010000 +--------------------------+
 *              |  GICC: CPU interface     |  a GICv2's only, 8 KiB (a GICv3's CPU
 *              |                          |  interface is system registers)
 *   0x08020000 +--------------------------+
 *              |  no memslot              |
 *   0x080a0000 +--------------------------+
 *              |  GICR: redistributors    |  a GICv3's only: 128 KiB per vCPU,
 *              |  for max_vcpus (8)       |  vCPU n's at 0x080a0000 + n * 0x20000
 *   0x081a0000 +--------------------------+
 *              |  no memslot              |
 *  0x100000000 +--------------------------+  2^guest_ipa_bits: the VM's address space ends
 *
 * The numbers are here, as macros, for the assembler; the C++ table
 * memory_map below names each region and proves the map sound.
 */
#define KVM_HELLO_RAM_BASE 0x10000
#define KVM_HELLO_RAM_SIZE 0x10000
#define KVM_HELLO_MMIO_OUT 0x1100
#define KVM_HELLO_MMIO_ANSWER 0x1108
#define KVM_HELLO_MMIO_ECHO 0x1110
/* What the host answers a read of ANSWER with. */
#define KVM_HELLO_HOST_ANSWER 0x2a
/* Two more for the benchmark guest (kvm-hello --bench, bench/bench-guest.S): */
#define KVM_HELLO_MMIO_SINK 0x1118   /* write: an exit that the host ignores */
#define KVM_HELLO_MMIO_RESULT 0x1120 /* write 8 bytes: one measurement for the host */
/* Lesson 2's device: the guest reports each interrupt it takes, and asks for one. */
#define KVM_HELLO_MMIO_IRQ 0x1128      /* write 4 bytes: the INTID its handler just took */
#define KVM_HELLO_MMIO_DOORBELL 0x1130 /* write 4 bytes: RING_LINE or RING_IRQFD */
#define KVM_HELLO_RING_LINE 1          /* DOORBELL: inject SPI_LINE with KVM_IRQ_LINE */
#define KVM_HELLO_RING_IRQFD 2         /* DOORBELL: signal the irqfd wired to SPI_IRQFD */
/* The interrupts lesson 2's guest takes, by INTID (the number the GIC's
   IAR gives the guest): two SPIs the program sends, the virtual timer's PPI. */
#define KVM_HELLO_SPI_LINE 40
#define KVM_HELLO_SPI_IRQFD 41
#define KVM_HELLO_TIMER_INTID 27
/* Lesson 3's device: each vCPU reports the PSCI calls it makes, and their answers. */
#define KVM_HELLO_MMIO_PSCI_CALL 0x1138   /* write 4 bytes: the PSCI function id the guest just called */
#define KVM_HELLO_MMIO_PSCI_RESULT 0x1140 /* write 8 bytes: the x0 that call returned */
/* vCPU n's stack starts at RAM_BASE + RAM_SIZE - n * STACK_SIZE (vCPU 0's is lesson 1's). */
#define KVM_HELLO_STACK_SIZE 0x1000
/* The software-generated interrupt (an SGI, INTID 0-15) vCPU 0 sends vCPU 1. */
#define KVM_HELLO_SGI_INTID 1
/* Where the in-kernel GIC's frames go (lesson 2's create_vgic() puts them there). */
#define KVM_HELLO_GIC_DIST 0x08000000   /* GICD, the distributor */
#define KVM_HELLO_GIC_CPU 0x08010000    /* GICC, a GICv2's CPU interface */
#define KVM_HELLO_GIC_REDIST 0x080a0000 /* GICR, the first vCPU's redistributor */

#ifndef __ASSEMBLER__

#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/psci.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <expected>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#if !defined(KVM_ARM_VCPU_PSCI_0_2)
#error "kvm_hello.hpp needs arm64's <asm/kvm.h>: build on arm64, or put arm64's kernel headers first (see Makefile)"
#endif

namespace kvm_hello {

// ==== The memory map as a table, proven while compiling =====================
//
// The map above, one row per region: its name, where it starts, how many
// bytes it covers, and what answers an access there. The addresses are the
// macros above (the assembler sees only those); the names, sizes and kinds
// are here. The lesson takes every address from this table, and the
// static_asserts below it prove the rules KVM relies on but checks only in
// part, or not at all, before the guest runs.

// What answers a guest's load or store in a region.
enum class RegionKind {
  memslot,             // guest RAM, KVM_SET_USER_MEMORY_REGION (step 5): no exit
  hello_register,      // a register of HelloDevice: an MMIO exit to us (step 9)
  bench_register,      // a register of the benchmark's device (bench/bench.hpp)
  interrupt_register,  // a register of lesson 2's device (the INTID report, the doorbell): an MMIO exit to us
  psci_register,       // a register of lesson 3's device (a PSCI call and its result): an MMIO exit to us
  gic_distributor,     // the in-kernel GIC's distributor (KVM_DEV_ARM_VGIC_GRP_ADDR)
  gic_cpu_interface,   // a GICv2's CPU interface (a GICv3 uses system registers)
  gic_redistributors,  // a GICv3's redistributors, one after another, vCPU 0 first
};

struct Region {
  std::string_view name;
  std::uint64_t base;  // guest-physical
  std::uint64_t size;  // bytes
  RegionKind kind;
};

// A register's region is the widest access one load or store makes (8
// bytes): then no access to one register reaches the next.
inline constexpr std::uint64_t register_bytes = 8;
// KVM_SET_USER_MEMORY_REGION wants addresses and sizes aligned to the host's
// page size (__kvm_set_memory_region, virt/kvm/kvm_main.c): 4, 16 or 64 KiB
// on arm64, so 64 KiB suits them all.
inline constexpr std::uint64_t largest_page_size = 0x10000;
// The GIC's frames: KVM wants a GICv3's 64 KiB aligned, base and size
// (kvm_vgic_addr and vgic_check_iorange, arch/arm64/kvm/vgic/vgic-kvm-device.c).
// A GICv2 asks only 4 KiB, but KVM maps its CPU interface into the guest a
// host page at a time (kvm_phys_addr_ioremap, arch/arm64/kvm/mmu.c), so its
// frames get 64 KiB too. The distributor is one frame (KVM_VGIC_V3_DIST_SIZE),
// each vCPU's redistributor two (KVM_VGIC_V3_REDIST_SIZE, <asm/kvm.h>:
// RD_base, then SGI_base).
inline constexpr std::uint64_t gic_frame_size = 0x10000;
inline constexpr std::uint64_t gic_redistributor_size = 2 * gic_frame_size;
// The most vCPUs the map has room for: a GICv2 serves at most 8
// (VGIC_V2_MAX_CPUS, include/kvm/arm_vgic.h), so either GIC can serve them all.
inline constexpr std::uint64_t max_vcpus = 8;
// The guest-physical address size we ask KVM_CREATE_VM for (step 4): the
// smallest KVM accepts, 4 GiB, far more than the map needs.
inline constexpr int guest_ipa_bits = 32;

inline constexpr std::array memory_map{
    Region{"OUT", KVM_HELLO_MMIO_OUT, register_bytes, RegionKind::hello_register},
    Region{"ANSWER", KVM_HELLO_MMIO_ANSWER, register_bytes, RegionKind::hello_register},
    Region{"ECHO", KVM_HELLO_MMIO_ECHO, register_bytes, RegionKind::hello_register},
    Region{"SINK", KVM_HELLO_MMIO_SINK, register_bytes, RegionKind::bench_register},
    Region{"RESULT", KVM_HELLO_MMIO_RESULT, register_bytes, RegionKind::bench_register},
    Region{"IRQ", KVM_HELLO_MMIO_IRQ, register_bytes, RegionKind::interrupt_register},
    Region{"DOORBELL", KVM_HELLO_MMIO_DOORBELL, register_bytes, RegionKind::interrupt_register},
    Region{"PSCI_CALL", KVM_HELLO_MMIO_PSCI_CALL, register_bytes, RegionKind::psci_register},
    Region{"PSCI_RESULT", KVM_HELLO_MMIO_PSCI_RESULT, register_bytes, RegionKind::psci_register},
    Region{"RAM", KVM_HELLO_RAM_BASE, KVM_HELLO_RAM_SIZE, RegionKind::memslot},
    Region{"GICD", KVM_HELLO_GIC_DIST, gic_frame_size, RegionKind::gic_distributor},
    Region{"GICC", KVM_HELLO_GIC_CPU, gic_frame_size, RegionKind::gic_cpu_interface},
    Region{"GICR", KVM_HELLO_GIC_REDIST, max_vcpus * gic_redistributor_size, RegionKind::gic_redistributors},
};

// The alignment a region's base and size need, by what answers there.
constexpr std::uint64_t alignment_for(RegionKind kind) {
  switch (kind) {
    case RegionKind::memslot: return largest_page_size;
    case RegionKind::hello_register:
    case RegionKind::bench_register:
    case RegionKind::interrupt_register:
    case RegionKind::psci_register: return register_bytes;  // an 8-byte access must be aligned: Device memory
    case RegionKind::gic_distributor:
    case RegionKind::gic_cpu_interface:
    case RegionKind::gic_redistributors: return gic_frame_size;
  }
  std::unreachable();
}

// The fewest bytes a region of this kind can have.
constexpr std::uint64_t smallest_size_for(RegionKind kind) {
  switch (kind) {
    case RegionKind::memslot: return largest_page_size;
    case RegionKind::hello_register:
    case RegionKind::bench_register:
    case RegionKind::interrupt_register:
    case RegionKind::psci_register: return register_bytes;
    case RegionKind::gic_distributor:
    case RegionKind::gic_cpu_interface: return gic_frame_size;
    case RegionKind::gic_redistributors: return max_vcpus * gic_redistributor_size;  // one per vCPU
  }
  std::unreachable();
}

constexpr bool overlap(const Region& a, const Region& b) { return a.base < b.base + b.size && b.base < a.base + a.size; }

// The region ends at or below 2^ipa_bits (written so that nothing overflows).
constexpr bool fits_below(const Region& region, int ipa_bits) {
  const std::uint64_t limit = std::uint64_t{1} << ipa_bits;
  return region.size <= limit && region.base <= limit - region.size;
}

// The rules a memory map must keep, each a reason a guest or KVM would fail.
enum class MapFault {
  none,
  misaligned,       // base or size not a multiple of alignment_for(kind): KVM refuses a memslot or
                    // GIC frame (EINVAL); an 8-byte access to an unaligned register faults in the guest
  too_small,        // smaller than smallest_size_for(kind): e.g. no redistributor for a vCPU
  beyond_ipa_size,  // past 2^ipa_bits: the guest cannot reach it, KVM refuses a GIC there (E2BIG)
  mmio_in_memslot,  // a register or GIC frame inside RAM: the guest's accesses would land in RAM, silently
  overlapping,      // two registers, two GIC frames or two memslots share an address
};

// The first rule `map` breaks, checked in the order above; MapFault::none if
// it keeps them all. constexpr: the static_asserts below run it on memory_map
// while compiling, test/steps_tests.cpp on broken maps.
constexpr MapFault find_map_fault(std::span<const Region> map, int ipa_bits = guest_ipa_bits) {
  for (const Region& r : map) {
    const std::uint64_t alignment = alignment_for(r.kind);
    if (r.base % alignment != 0 || r.size % alignment != 0) return MapFault::misaligned;
  }
  for (const Region& r : map) {
    if (r.size < smallest_size_for(r.kind)) return MapFault::too_small;
  }
  for (const Region& r : map) {
    if (!fits_below(r, ipa_bits)) return MapFault::beyond_ipa_size;
  }
  for (std::size_t i = 0; i < map.size(); ++i) {  // every pair, once; no sum overflows now
    for (std::size_t j = i + 1; j < map.size(); ++j) {
      if (!overlap(map[i], map[j])) continue;
      const bool one_is_ram = (map[i].kind == RegionKind::memslot) != (map[j].kind == RegionKind::memslot);
      return one_is_ram ? MapFault::mmio_in_memslot : MapFault::overlapping;
    }
  }
  return MapFault::none;
}

static_assert(find_map_fault(memory_map) != MapFault::misaligned, "memory_map: every base and size is aligned");
static_assert(find_map_fault(memory_map) != MapFault::too_small, "memory_map: every region is big enough");
static_assert(find_map_fault(memory_map) != MapFault::beyond_ipa_size, "memory_map: everything below 2^guest_ipa_bits");
static_assert(find_map_fault(memory_map) != MapFault::mmio_in_memslot,
              "memory_map: no register or GIC frame inside guest RAM (MMIO happens only outside every memslot)");
static_assert(find_map_fault(memory_map) != MapFault::overlapping, "memory_map: no two regions overlap");

// A row of memory_map by its name, while compiling: a name not in the table
// does not compile.
consteval const Region& region_named(std::string_view name) {
  for (const Region& r : memory_map) {
    if (r.name == name) return r;
  }
  throw "memory_map has no region of that name";
}

// The register (HelloDevice's, the benchmark's, lesson 2's or lesson 3's)
// at exactly this address, or nullptr.
constexpr const Region* register_at(std::uint64_t address) {
  for (const Region& r : memory_map) {
    const bool is_register = r.kind == RegionKind::hello_register || r.kind == RegionKind::bench_register ||
                             r.kind == RegionKind::interrupt_register || r.kind == RegionKind::psci_register;
    if (is_register && r.base == address) return &r;
  }
  return nullptr;
}

// ==== Constants, each derived from the kernel's headers or the map above ====

inline constexpr std::uint64_t ram_base = region_named("RAM").base;
inline constexpr std::uint64_t ram_size = region_named("RAM").size;
inline constexpr std::uint64_t mmio_out = region_named("OUT").base;
inline constexpr std::uint64_t mmio_answer = region_named("ANSWER").base;
inline constexpr std::uint64_t mmio_echo = region_named("ECHO").base;
inline constexpr std::uint64_t mmio_sink = region_named("SINK").base;
inline constexpr std::uint64_t mmio_result = region_named("RESULT").base;
inline constexpr std::uint64_t mmio_irq = region_named("IRQ").base;
inline constexpr std::uint64_t mmio_doorbell = region_named("DOORBELL").base;
inline constexpr std::uint64_t mmio_psci_call = region_named("PSCI_CALL").base;
inline constexpr std::uint64_t mmio_psci_result = region_named("PSCI_RESULT").base;
inline constexpr std::uint64_t gic_distributor_base = region_named("GICD").base;
inline constexpr std::uint64_t gic_cpu_interface_base = region_named("GICC").base;
inline constexpr std::uint64_t gic_redistributors_base = region_named("GICR").base;
inline constexpr std::uint32_t host_answer = KVM_HELLO_HOST_ANSWER;

inline constexpr const char* default_kvm_path = "/dev/kvm";

// The only API version there has ever been since Linux 2.6.22.
inline constexpr int expected_api_version = KVM_API_VERSION;
static_assert(expected_api_version == 12);

// ==== Steps and errors =======================================================

// The numbered steps: the same numbers appear in main.cpp's output and docs/.
enum class Step : int {
  open_kvm = 1,
  check_api_version,
  check_capabilities,
  create_vm,
  setup_guest_memory,
  create_vcpu,
  init_vcpu,
  set_boot_registers,
  run_guest,
  // Part II, lesson 2: interrupts and time
  probe_vgic,
  create_vgic,
  init_vgic,
  read_timer_irq,
  attach_irqfd,
  inject_spi,
  // Part III, lesson 3: several vCPUs
  read_mp_state,
  start_vcpu_thread,
  stop_vcpus,
};
inline constexpr int step_count = 18;          // every step of the table below
inline constexpr int lesson1_step_count = 9;   // Part I: lesson 1 walks through steps 1 to 9, in order
inline constexpr int lesson2_step_count = 15;  // Part II: lesson 2 numbers its steps of 15
static_assert(static_cast<int>(Step::run_guest) == lesson1_step_count);
static_assert(static_cast<int>(Step::inject_spi) == lesson2_step_count);
static_assert(static_cast<int>(Step::stop_vcpus) == step_count);

// The step table: one row per step, in order. main.cpp announces each step
// with it, docs/README.md's table and gdb/steps.gdb are tested against it.
struct StepInfo {
  Step step;
  std::string_view name;     // the function in this header
  std::string_view title;    // what it does, for people
  std::string_view calls;    // the system calls and ioctls it makes
  std::string_view purpose;  // why it exists, in a line
};

inline constexpr std::array<StepInfo, step_count> steps{{
    {Step::open_kvm, "open_kvm", "open the KVM device", "open(device, O_RDWR | O_CLOEXEC)", "the only door into KVM"},
    {Step::check_api_version, "check_api_version", "check the KVM API version", "KVM_GET_API_VERSION",
     "refuse to run against an API we were not written for"},
    {Step::check_capabilities, "check_capabilities", "check the capabilities we rely on", "KVM_CHECK_EXTENSION",
     "stop early, by name, if a feature is missing"},
    {Step::create_vm, "create_vm", "create the VM", "KVM_CREATE_VM",
     "the container for memory and vCPUs; its type is the IPA size"},
    {Step::setup_guest_memory, "setup_guest_memory", "give the guest its RAM", "mmap, KVM_SET_USER_MEMORY_REGION",
     "guest RAM is our own memory; everything outside it is MMIO"},
    {Step::create_vcpu, "create_vcpu", "create the vCPU and map its kvm_run",
     "KVM_CREATE_VCPU, KVM_GET_VCPU_MMAP_SIZE, mmap", "the vCPU, and the struct kvm_run page that explains each exit"},
    {Step::init_vcpu, "init_vcpu", "initialise the vCPU", "KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT",
     "an arm64 vCPU must be initialised before any register is touched"},
    {Step::set_boot_registers, "set_boot_registers", "set the boot registers", "KVM_SET_ONE_REG",
     "PC at the guest's first byte, SP_EL1 at the top of RAM"},
    {Step::run_guest, "run_guest", "run the guest until it powers off", "KVM_RUN",
     "the loop: run, decode the exit, answer, run again"},
    {Step::probe_vgic, "probe_vgic", "ask which in-kernel GIC KVM can give",
     "KVM_CHECK_EXTENSION, KVM_CREATE_DEVICE (TEST)", "a GICv3 where the host has one, else a GICv2"},
    {Step::create_vgic, "create_vgic", "create the in-kernel GIC and place its frames",
     "KVM_CREATE_DEVICE, KVM_SET_DEVICE_ATTR (ADDR)", "KVM emulates the interrupt controller; the map says where"},
    {Step::init_vgic, "init_vgic", "initialise the GIC, every vCPU created",
     "KVM_SET_DEVICE_ATTR (NR_IRQS, CTRL_INIT)", "the GIC's size is fixed once every vCPU exists"},
    {Step::read_timer_irq, "read_timer_irq", "read the virtual timer's interrupt", "KVM_GET_DEVICE_ATTR (TIMER_CTRL)",
     "the INTID the guest's timer raises: 27"},
    {Step::attach_irqfd, "attach_irqfd", "wire an eventfd to an SPI", "eventfd, KVM_IRQFD",
     "a write to an fd interrupts the guest, with no ioctl"},
    {Step::inject_spi, "inject_spi", "send the guest an SPI", "KVM_IRQ_LINE",
     "the program raises an interrupt line: 1, then 0"},
    {Step::read_mp_state, "read_mp_state", "read a vCPU's power state", "KVM_GET_MP_STATE",
     "STOPPED until the guest's CPU_ON, RUNNABLE after it"},
    {Step::start_vcpu_thread, "start_vcpu_thread", "run a vCPU on its own thread", "pthread_create, KVM_RUN",
     "KVM_RUN blocks its thread: one thread per vCPU"},
    {Step::stop_vcpus, "stop_vcpus", "kick every other vCPU out of KVM_RUN", "pthread_kill, KVM_RUN returns EINTR",
     "after SYSTEM_OFF only the caller's KVM_RUN returns"},
}};

// The row for a step not in the table (an Error built with a number of its own).
inline constexpr StepInfo unknown_step_info{Step{}, "unknown", "an unknown step", "", ""};

// The table's row for `step`; unknown_step_info for a value outside 1..step_count.
constexpr const StepInfo& step_info(Step step) {
  const auto n = static_cast<std::size_t>(step);
  return n >= 1 && n <= steps.size() ? steps[n - 1] : unknown_step_info;
}
static_assert(
    [] {
      for (std::size_t i = 0; i < steps.size(); ++i) {
        if (static_cast<std::size_t>(steps[i].step) != i + 1) return false;
      }
      return true;
    }(),
    "the step table is in step order");

// What went wrong, beyond "a call failed with errno".
enum class Problem {
  call_failed,         // a system call or ioctl returned -1: see Error::err
  wrong_api_version,   // value: the version the kernel reported
  missing_capability,  // value: the KVM_CAP_* number the kernel does not have
  ipa_too_small,       // value: the host's largest guest-physical address size, in bits
  bad_guest_image,     // value: the image's size (empty, or larger than guest RAM)
  guest_reset,         // the guest asked for a reset (PSCI SYSTEM_RESET)
  guest_crash,         // the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)
  unexpected_exit,     // value: a KVM_EXIT_* reason this program has no handler for
  watchdog_expired,    // value: the time limit in milliseconds
  interrupted,         // Ctrl-C (SIGINT) stopped the guest
  bad_register_size,   // value: a ONE_REG id whose KVM_REG_SIZE is not the size of the value type asked for
  bad_statistics,      // value: the size of KVM_GET_STATS_FD's file; its header says more than it holds
  no_vgic,             // this host's KVM has no in-kernel GIC to give (step 10); value: KVM_CAP_IRQCHIP's answer
  not_an_spi,          // value: an INTID that is no SPI (32 to 1019) where a step needs one (step 14)
};

// An error, as a value: which step, what kind of problem, which call failed
// and with which errno. program/messages.hpp turns it into a message and an
// exit status.
struct Error {
  Step step;
  Problem problem = Problem::call_failed;
  std::string_view call = {};  // e.g. "KVM_CREATE_VM"; empty when no call failed
  int err = 0;                 // errno of the failed call, 0 otherwise
  std::uint64_t value = 0;     // the detail the Problem's comment names
  std::optional<std::uint32_t> vcpu = {};  // the vCPU's id, when a program of several says which (on_vcpu)
};

// The same error, naming the vCPU it happened on: for a program that runs
// several vCPUs, so that its message can say which. (One vCPU needs no name:
// the steps leave it unset.)
[[nodiscard]] constexpr Error on_vcpu(Error error, std::uint32_t id) {
  error.vcpu = id;
  return error;
}

template <class T>
using Result = std::expected<T, Error>;

// The error for a call that just returned -1: reads errno, so call it first.
[[nodiscard]] inline std::unexpected<Error> failed(Step step, std::string_view call) {
  return std::unexpected(Error{step, Problem::call_failed, call, errno, 0});
}

// ==== Owners: every fd and mapping is closed exactly once ===================

// Owns one file descriptor. Move-only; closing keeps errno, so an error can
// still be read after a cleanup.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const noexcept { return fd_; }
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) {
      const int saved = errno;
      ::close(fd_);
      errno = saved;
    }
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// The four kinds of fd KVM hands out, each its own type. KVM's API
// documentation (Documentation/virt/kvm/api.rst) gives every ioctl a "Type":
// a system ioctl is made on /dev/kvm, a vm ioctl on the fd KVM_CREATE_VM
// returns, a vcpu ioctl on the fd KVM_CREATE_VCPU returns, a device ioctl on
// the fd KVM_CREATE_DEVICE returns (lesson 2's GIC). Each request below
// names the kind it belongs to, and call() takes only an fd of that kind, so
// KVM_RUN on /dev/kvm, or create_vcpu() with its fds swapped, does not
// compile. Each owns its fd as Fd does (closed once, move-only); get() is
// the number, to print or to pass to an ioctl of your own.
enum class FdKind { system, vm, vcpu, device };  // api.rst's four "Type"s of ioctl
class KvmFd : private Fd {  // /dev/kvm: system ioctls (open_kvm)
 public:
  using Fd::Fd, Fd::get;
  static constexpr FdKind kind = FdKind::system;
};
class VmFd : private Fd {  // one VM: vm ioctls (create_vm)
 public:
  using Fd::Fd, Fd::get;
  static constexpr FdKind kind = FdKind::vm;
};
class VcpuFd : private Fd {  // one vCPU: vcpu ioctls (create_vcpu)
 public:
  using Fd::Fd, Fd::get;
  static constexpr FdKind kind = FdKind::vcpu;
};
class DeviceFd : private Fd {  // one in-kernel device, here the GIC: device ioctls (create_vgic)
 public:
  using Fd::Fd, Fd::get;
  static constexpr FdKind kind = FdKind::device;
};

// Owns one mmap(2) region. Move-only; unmapping keeps errno.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* address, std::size_t size) noexcept : address_(address), size_(size) {}
  Mapping(Mapping&& other) noexcept
      : address_(std::exchange(other.address_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept {
    if (this == &other) return *this;  // moved into itself: keep the memory
    reset();
    address_ = std::exchange(other.address_, nullptr);
    size_ = std::exchange(other.size_, 0);
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  void* get() const noexcept { return address_; }
  std::size_t size() const noexcept { return size_; }
  std::span<std::uint8_t> bytes() const noexcept { return {static_cast<std::uint8_t*>(address_), size_}; }
  void reset() noexcept {
    if (address_ != nullptr) {
      const int saved = errno;
      ::munmap(address_, size_);
      errno = saved;
    }
    address_ = nullptr;
    size_ = 0;
  }

 private:
  void* address_ = nullptr;
  std::size_t size_ = 0;
};

// The one way this header maps memory. mmap reports failure as MAP_FAILED,
// not as a null pointer.
[[nodiscard]] inline Result<Mapping> map_memory(Step step, std::size_t size, int protection, int flags, int fd) {
  void* address = ::mmap(nullptr, size, protection, flags, fd, 0);
  if (address == MAP_FAILED) return failed(step, "mmap");
  return Mapping{address, size};
}

// ==== Typed ioctl requests, and watching the calls ===========================
//
// An ioctl request number packs four fields (see <asm-generic/ioctl.h>):
//
//    31 30 29            16 15        8 7          0
//   +-----+----------------+-----------+------------+
//   | dir |      size      |   type    |     nr     |
//   +-----+----------------+-----------+------------+
//   dir: _IOC_NONE, _IOC_WRITE (we pass data in), _IOC_READ (the kernel
//   fills it), or both. size: sizeof the struct passed by pointer. type: 0xAE
//   (KVMIO) for every KVM request.
//
// A Request couples the kernel's number with the argument type and the kind
// of fd it is made on, and the static_asserts prove number and argument
// agree: a struct of the wrong size, or a value where a pointer is due, does
// not compile.

// Whether Arg is what a request with this number takes: for _IO, nothing or
// a value; for the others, a struct of exactly the size encoded in the number.
template <unsigned long Number, class Arg>
constexpr bool argument_fits() {
  if constexpr (_IOC_DIR(Number) == _IOC_NONE) {
    return std::is_void_v<Arg> || std::is_integral_v<Arg>;
  } else if constexpr (std::is_class_v<Arg>) {
    return _IOC_SIZE(Number) == sizeof(Arg);
  } else {
    return false;
  }
}

template <unsigned long Number, class Arg, class OnFd>
struct Request {
  static constexpr unsigned long number = Number;
  using Argument = Arg;
  using FdType = OnFd;  // KvmFd, VmFd, VcpuFd or DeviceFd: the only fd it may be made on
  std::string_view name;

  static_assert(_IOC_TYPE(Number) == KVMIO, "every KVM request has type KVMIO (0xAE)");
  static_assert(argument_fits<Number, Arg>(),
                "_IO requests take a value or nothing; the others a struct of exactly _IOC_SIZE bytes");
};

// One line per request: the kernel's macro, its argument type, the fd it is
// made on (api.rst's "Type:" of each: system ioctl KvmFd, vm ioctl VmFd,
// vcpu ioctl VcpuFd, device ioctl DeviceFd), and its name as the kernel
// spells it (made from the macro, so the two cannot differ). A request made
// on two kinds of fd has a line for each: KVM_CHECK_EXTENSION on /dev/kvm
// and on a VM (whose answer may be the VM's own, as KVM_CAP_IRQCHIP's is on
// arm64), KVM_GET_DEVICE_ATTR on a device and on a vCPU (api.rst: "vm ioctl,
// vcpu ioctl, device ioctl"). KVM_GET_STATS_FD may be made on a VM too,
// which this program does not need.
// clang-format off
#define KVM_HELLO_REQUEST(MACRO, ARG, FD) Request<MACRO, ARG, FD>{#MACRO}
// clang-format on

namespace request {
inline constexpr auto get_api_version = KVM_HELLO_REQUEST(KVM_GET_API_VERSION, void, KvmFd);
inline constexpr auto check_extension = KVM_HELLO_REQUEST(KVM_CHECK_EXTENSION, unsigned long, KvmFd);
inline constexpr auto create_vm = KVM_HELLO_REQUEST(KVM_CREATE_VM, unsigned long, KvmFd);
inline constexpr auto get_vcpu_mmap_size = KVM_HELLO_REQUEST(KVM_GET_VCPU_MMAP_SIZE, void, KvmFd);
inline constexpr auto set_user_memory_region =
    KVM_HELLO_REQUEST(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region, VmFd);
inline constexpr auto create_vcpu = KVM_HELLO_REQUEST(KVM_CREATE_VCPU, unsigned long, VmFd);
inline constexpr auto arm_preferred_target = KVM_HELLO_REQUEST(KVM_ARM_PREFERRED_TARGET, kvm_vcpu_init, VmFd);
inline constexpr auto arm_vcpu_init = KVM_HELLO_REQUEST(KVM_ARM_VCPU_INIT, kvm_vcpu_init, VcpuFd);
inline constexpr auto set_one_reg = KVM_HELLO_REQUEST(KVM_SET_ONE_REG, kvm_one_reg, VcpuFd);
inline constexpr auto get_one_reg = KVM_HELLO_REQUEST(KVM_GET_ONE_REG, kvm_one_reg, VcpuFd);  // _IOW: see get_register
inline constexpr auto run = KVM_HELLO_REQUEST(KVM_RUN, void, VcpuFd);
inline constexpr auto set_guest_debug = KVM_HELLO_REQUEST(KVM_SET_GUEST_DEBUG, kvm_guest_debug, VcpuFd);
inline constexpr auto get_stats_fd = KVM_HELLO_REQUEST(KVM_GET_STATS_FD, void, VcpuFd);
// Part II: the in-kernel GIC, the timer's interrupt, injection.
inline constexpr auto check_vm_extension = KVM_HELLO_REQUEST(KVM_CHECK_EXTENSION, unsigned long, VmFd);
inline constexpr auto create_device = KVM_HELLO_REQUEST(KVM_CREATE_DEVICE, kvm_create_device, VmFd);  // _IOWR: fd out
inline constexpr auto set_device_attr = KVM_HELLO_REQUEST(KVM_SET_DEVICE_ATTR, kvm_device_attr, DeviceFd);
inline constexpr auto get_device_attr = KVM_HELLO_REQUEST(KVM_GET_DEVICE_ATTR, kvm_device_attr, DeviceFd);
inline constexpr auto get_vcpu_attr = KVM_HELLO_REQUEST(KVM_GET_DEVICE_ATTR, kvm_device_attr, VcpuFd);
inline constexpr auto irq_line = KVM_HELLO_REQUEST(KVM_IRQ_LINE, kvm_irq_level, VmFd);
inline constexpr auto irqfd = KVM_HELLO_REQUEST(KVM_IRQFD, kvm_irqfd, VmFd);
// Part III: several vCPUs.
inline constexpr auto get_mp_state = KVM_HELLO_REQUEST(KVM_GET_MP_STATE, kvm_mp_state, VcpuFd);  // _IOR
inline constexpr auto set_mp_state = KVM_HELLO_REQUEST(KVM_SET_MP_STATE, kvm_mp_state, VcpuFd);  // _IOW
}  // namespace request

#undef KVM_HELLO_REQUEST

// ---- Watching the calls ------------------------------------------------------
//
// A program that wants to see every ioctl (main.cpp's -v) passes a
// CallObserver to the steps. The steps never print; with no observer a call
// costs one pointer test more than the bare ioctl.

// The argument of a call as the kernel received it: a value, or a struct.
using CallArgument =
    std::variant<std::monostate, unsigned long, const kvm_userspace_memory_region*, const kvm_vcpu_init*,
                 const kvm_one_reg*, const kvm_guest_debug*, const kvm_create_device*, const kvm_device_attr*,
                 const kvm_irq_level*, const kvm_irqfd*, const kvm_mp_state*>;

struct CallRecord {
  Step step;
  std::string_view name;  // "KVM_RUN"
  unsigned long number;   // the request number
  int fd;
  CallArgument argument;
  int result;  // what ioctl returned: -1 on failure
  int err;     // errno when result is -1, else 0
  std::chrono::nanoseconds took;
  FdKind made_on = FdKind::system;  // which kind of fd `fd` is: a device's and a vCPU's attributes differ
};

// Who sees each call: a function, and the object it belongs to. The default
// sees nothing. It is called on the thread that made the call, before the
// call returns: with a vCPU per thread, from several threads at once, so a
// watcher shared by them must be safe for that (lock, or one per vCPU).
struct CallObserver {
  void (*see)(void* watcher, const CallRecord& call) = nullptr;
  void* watcher = nullptr;
};

namespace detail {
// ioctl(fd, N, raw); reported to the observer when there is one. errno is
// kept across the observer, so failed() still sees the ioctl's.
template <unsigned long N, class Raw>
[[nodiscard]] Result<int> checked_ioctl(Step step, int fd, FdKind kind, std::string_view name, Raw raw,
                                        CallArgument shown, CallObserver observe) {
  if (observe.see == nullptr) {
    const int result = ::ioctl(fd, N, raw);
    if (result < 0) return failed(step, name);
    return result;
  }
  const auto start = std::chrono::steady_clock::now();
  const int result = ::ioctl(fd, N, raw);
  const int err = result < 0 ? errno : 0;
  const auto took = std::chrono::steady_clock::now() - start;
  observe.see(observe.watcher, CallRecord{step, name, N, fd, shown, result, err, took, kind});
  errno = err;
  if (result < 0) return failed(step, name);
  return result;
}
}  // namespace detail

// The calls: the only places where this header calls ioctl(2). They return
// the ioctl's non-negative result, or the Error for `step`. Each takes only
// the kind of fd its request belongs to (MadeOn, below).
//
// ioctl(2) is variadic: called with no third argument it still hands the
// kernel whatever the argument register holds. Some requests check that it is
// 0 (KVM_RUN fails with EINVAL otherwise), so requests without an argument
// pass 0 explicitly.
//
// Inside this header, every call of call() (and of the other functions that
// take a kernel struct) is written kvm_hello::call(...). Unqualified, C++
// would also look for the name where the argument's type was declared
// (argument-dependent lookup): for a Request naming kvm_one_reg, or a
// kvm_run, that is the global namespace, and a program's own function of the
// same name there would make the header's call ambiguous.

// Whether request R may be made on an fd of type F: only on the kind of fd
// it belongs to, R::FdType. KVM_RUN on a VcpuFd compiles; on /dev/kvm's
// KvmFd it does not, and the compiler's message names MadeOn.
template <class R, class F>
concept MadeOn = std::is_same_v<typename R::FdType, F>;

// clang-format off  (clang-format 14 cannot lay out requires-clauses)
template <unsigned long N, class On, class F>
requires MadeOn<Request<N, void, On>, F>
[[nodiscard]] Result<int> call(Step step, const F& fd, Request<N, void, On> request, CallObserver observe = {}) {
  return detail::checked_ioctl<N>(step, fd.get(), F::kind, request.name, 0UL, std::monostate{}, observe);
}

template <unsigned long N, std::integral Arg, class On, class F>
requires MadeOn<Request<N, Arg, On>, F>
[[nodiscard]] Result<int> call(Step step, const F& fd, Request<N, Arg, On> request, std::type_identity_t<Arg> value,
                               CallObserver observe = {}) {
  return detail::checked_ioctl<N>(step, fd.get(), F::kind, request.name, value, static_cast<unsigned long>(value), observe);
}

// _IOW: the kernel only reads the struct, so a const one will do.
template <unsigned long N, class Arg, class On, class F>
requires MadeOn<Request<N, Arg, On>, F> && (_IOC_DIR(N) == _IOC_WRITE)
[[nodiscard]] Result<int> call(Step step, const F& fd, Request<N, Arg, On> request, const Arg* arg,
                               CallObserver observe = {}) {
  return detail::checked_ioctl<N>(step, fd.get(), F::kind, request.name, arg, arg, observe);
}

// _IOR and _IOWR: the kernel writes into the struct.
template <unsigned long N, class Arg, class On, class F>
requires MadeOn<Request<N, Arg, On>, F> && ((_IOC_DIR(N) & _IOC_READ) != 0)
[[nodiscard]] Result<int> call(Step step, const F& fd, Request<N, Arg, On> request, Arg* arg,
                               CallObserver observe = {}) {
  return detail::checked_ioctl<N>(step, fd.get(), F::kind, request.name, arg, static_cast<const Arg*>(arg), observe);
}
// clang-format on

// ==== Step 1: open /dev/kvm ==================================================

// Step 1. open(2) with O_RDWR | O_CLOEXEC. Returns the owner of the "system"
// fd, through which steps 2 to 4 ask KVM about itself and create the VM.
// ENOENT: this kernel has no KVM device (or this is not an arm64 host);
// EACCES: this user may not use KVM (usually: join the `kvm` group).
// Why: /dev/kvm is the only door into KVM; everything else comes from it.
[[nodiscard]] inline Result<KvmFd> open_kvm(const char* path = default_kvm_path) {
  const int fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return failed(Step::open_kvm, "open");
  return KvmFd{fd};
}

// ==== Step 2: the API version ================================================

// The check itself, apart from the ioctl: returns the version if it is 12.
[[nodiscard]] constexpr Result<int> verify_api_version(int reported) {
  if (reported != expected_api_version) {
    return std::unexpected(Error{Step::check_api_version, Problem::wrong_api_version, "KVM_GET_API_VERSION", 0,
                                 static_cast<std::uint64_t>(reported)});
  }
  return reported;
}

// Step 2. KVM_GET_API_VERSION on the /dev/kvm fd; no argument. Returns 12.
// ENOTTY: the file opened in step 1 is not a KVM device. Another version: the
// API this program was written for is not there, so refuse to go on.
// Why: the documentation makes this check the first thing a program does.
[[nodiscard]] inline Result<int> check_api_version(const KvmFd& kvm, CallObserver observe = {}) {
  const auto reported = kvm_hello::call(Step::check_api_version, kvm, request::get_api_version, observe);
  if (!reported) return reported;
  return verify_api_version(*reported);
}

// ==== Step 3: capabilities ===================================================

struct Capability {
  int id;                 // KVM_CAP_*
  std::string_view name;  // as the kernel spells it
  std::string_view why;   // what this program uses it for
};

// clang-format off
#define KVM_HELLO_CAPABILITY(MACRO, WHY) Capability{MACRO, #MACRO, WHY}
// clang-format on

// The capabilities this program cannot do without, in the order they are checked.
inline constexpr std::array required_capabilities{
    KVM_HELLO_CAPABILITY(KVM_CAP_USER_MEMORY, "guest RAM is memory we mmap ourselves (step 5)"),
    KVM_HELLO_CAPABILITY(KVM_CAP_ONE_REG, "registers are set one at a time (step 8)"),
    KVM_HELLO_CAPABILITY(KVM_CAP_ARM_PSCI_0_2, "the guest powers off with PSCI SYSTEM_OFF (steps 7 and 9)"),
    KVM_HELLO_CAPABILITY(KVM_CAP_IMMEDIATE_EXIT, "the watchdog can stop a guest that never powers off (step 9)"),
};

// Not required: its value is the largest guest-physical address size in bits
// the host supports, and 0 means "only the default, 40 bits" (step 4).
inline constexpr Capability ipa_size_capability =
    KVM_HELLO_CAPABILITY(KVM_CAP_ARM_VM_IPA_SIZE, "the VM's guest-physical address size (step 4)");

// Needed only for single-stepping (enable_single_step, in the appendix).
inline constexpr Capability single_step_capability =
    KVM_HELLO_CAPABILITY(KVM_CAP_SET_GUEST_DEBUG, "single-stepping the guest (--step-guest)");

// Needed only for hardware breakpoints (set_hardware_breakpoint, in the
// appendix): its value is how many the CPU has, 0 for none.
inline constexpr Capability hardware_breakpoints_capability =
    KVM_HELLO_CAPABILITY(KVM_CAP_GUEST_DEBUG_HW_BPS, "hardware breakpoints (--break-at)");

// Needed only for lesson 2 (Part II). KVM_CAP_IRQCHIP: 1 when KVM can give
// the VM an in-kernel GIC (step 10 asks it of the VM). KVM_CAP_IRQFD: 1 when
// an eventfd can raise an interrupt (step 14; every kernel this program runs
// on has it, kvm_vm_ioctl_check_extension_generic in virt/kvm/kvm_main.c).
inline constexpr Capability irqchip_capability =
    KVM_HELLO_CAPABILITY(KVM_CAP_IRQCHIP, "an in-kernel GIC, for lesson 2 (step 10)");
inline constexpr Capability irqfd_capability =
    KVM_HELLO_CAPABILITY(KVM_CAP_IRQFD, "an eventfd raises an interrupt, for lesson 2 (step 14)");

#undef KVM_HELLO_CAPABILITY

// What the host said about each capability: the raw KVM_CHECK_EXTENSION results.
struct Capabilities {
  std::array<int, required_capabilities.size()> required{};  // > 0: present
  int ipa_limit = 0;                                         // bits, 0: not reported
};

// The check itself, apart from the ioctl: `ask(id)` returns the capability's
// value (or an Error). Returns every answer, or the first required one missing.
template <class Ask>
[[nodiscard]] Result<Capabilities> query_capabilities(Ask&& ask) {
  Capabilities found;
  for (std::size_t i = 0; i < required_capabilities.size(); ++i) {
    const Result<int> value = ask(required_capabilities[i].id);
    if (!value) return std::unexpected(value.error());
    if (*value <= 0) {
      return std::unexpected(Error{Step::check_capabilities, Problem::missing_capability, "KVM_CHECK_EXTENSION", 0,
                                   static_cast<std::uint64_t>(required_capabilities[i].id)});
    }
    found.required[i] = *value;
  }
  const Result<int> ipa = ask(ipa_size_capability.id);
  if (!ipa) return std::unexpected(ipa.error());
  found.ipa_limit = *ipa;
  return found;
}

// Step 3. KVM_CHECK_EXTENSION(KVM_CAP_*) on the /dev/kvm fd, once per
// capability; each answer is 0 (absent) or positive (present, sometimes a
// size). Returns the answers, or Problem::missing_capability naming the first
// one absent. It is asked on /dev/kvm because the answer for the IPA size
// decides how step 4 creates the VM.
// Why: a missing feature should stop us here with its name, not later with a
// puzzling errno from an ioctl that depends on it.
[[nodiscard]] inline Result<Capabilities> check_capabilities(const KvmFd& kvm, CallObserver observe = {}) {
  return query_capabilities([&kvm, observe](int id) {
    return kvm_hello::call(Step::check_capabilities, kvm, request::check_extension, static_cast<unsigned long>(id),
                           observe);
  });
}

// ==== Step 4: the VM =========================================================

// The KVM_CREATE_VM argument ("machine type"). On arm64 its low 8 bits are
// the IPA size in bits; 0 means the historical default of 40 bits, which
// fails on hosts that cannot do 40 (some have 36). So: when the host reports
// its limit, ask for guest_ipa_bits explicitly; when it does not (older
// kernels), 0 is the only type it knows.
[[nodiscard]] constexpr Result<unsigned long> vm_type_for(int host_ipa_limit) {
  if (host_ipa_limit == 0) return 0UL;
  if (host_ipa_limit < guest_ipa_bits) {
    return std::unexpected(
        Error{Step::create_vm, Problem::ipa_too_small, "KVM_CREATE_VM", 0, static_cast<std::uint64_t>(host_ipa_limit)});
  }
  return static_cast<unsigned long>(KVM_VM_TYPE_ARM_IPA_SIZE(guest_ipa_bits));
}

// Step 4. KVM_CREATE_VM(type) on the /dev/kvm fd. Returns the owner of the
// new VM's fd: memory and vCPUs are added through it. EINVAL: the type (IPA
// size) is one this host cannot do; ENOMEM: out of memory.
// Why: a VM is the container for guest memory and vCPUs.
[[nodiscard]] inline Result<VmFd> create_vm(const KvmFd& kvm, unsigned long type, CallObserver observe = {}) {
  const auto fd = kvm_hello::call(Step::create_vm, kvm, request::create_vm, type, observe);
  if (!fd) return std::unexpected(fd.error());
  return VmFd{*fd};
}

// ==== Step 5: guest RAM ======================================================

struct GuestMemory {
  Mapping host;                          // where the guest's RAM is in our address space
  kvm_userspace_memory_region region{};  // what KVM was told
};

// The region KVM is told about: slot 0, guest-physical ram_base, ram_size
// bytes, backed by our memory at `host`.
inline kvm_userspace_memory_region memory_region_for(const void* host) {
  return kvm_userspace_memory_region{
      .slot = 0,
      .flags = 0,
      .guest_phys_addr = ram_base,
      .memory_size = ram_size,
      .userspace_addr = reinterpret_cast<std::uintptr_t>(host),
  };
}

// The guest image must be non-empty and fit in guest RAM.
[[nodiscard]] constexpr Result<std::span<const std::uint8_t>> check_guest_image(std::span<const std::uint8_t> image) {
  if (image.empty() || image.size() > ram_size) {
    return std::unexpected(Error{Step::setup_guest_memory, Problem::bad_guest_image, {}, 0, image.size()});
  }
  return image;
}

// Writes guest RAM whole: the image, then zeros, one ordinary 8-byte store a
// word. On a real CPU a memcpy would do: KVM makes the guest's instruction
// fetches see it when it maps each page for the guest (the cache maintenance
// of stage2_map_walker_try_leaf() in arch/arm64/kvm/hyp/pgtable.c). QEMU's
// emulated CPU (7.2, Debian 12's) keeps the code it translated per physical
// page instead, and drops it when a store to those bytes is seen; but the
// stores of DC ZVA (how the kernel zeroes a new page) and of SVE (glibc's
// memcpy, on a CPU with SVE such as QEMU's max) are seen as their first byte
// only (its accel/tcg/cputlb.c: probe_access() and probe_access_flags() pass
// notdirty_write() a size of 1). So when a VM's RAM reuses a page where an
// earlier VM of this process ran code (under Linux 6.12 it did, each time
// tested; under 7.2 not), the new guest could run the old guest's
// instructions. Ordinary stores of every word are all seen.
inline void write_guest_ram(std::span<std::uint8_t> ram, std::span<const std::uint8_t> image) {
  volatile auto* words = reinterpret_cast<volatile std::uint64_t*>(ram.data());  // volatile: stores as written
  for (std::size_t at = 0; at < ram.size(); at += sizeof(std::uint64_t)) {
    std::uint64_t word = 0;
    if (at < image.size()) std::memcpy(&word, image.data() + at, std::min(sizeof word, image.size() - at));
    words[at / sizeof word] = word;
  }
}

// Step 5. mmap(2) ram_size bytes of anonymous memory, write the guest image to
// its start (write_guest_ram()), then KVM_SET_USER_MEMORY_REGION (struct kvm_userspace_memory_region)
// on the VM fd. Returns the mapping and the region. EINVAL: an address or
// size not page aligned; EEXIST: the region overlaps a slot with another id
// (the same id would change that slot instead).
// Why: guest RAM is ordinary memory of this process; the guest sees it at
// ram_base. A guest load or store outside every slot becomes an MMIO exit
// (step 9); docs/12-one-mmio-exit.md says what other accesses there do.
[[nodiscard]] inline Result<GuestMemory> setup_guest_memory(const VmFd& vm, std::span<const std::uint8_t> image,
                                                            CallObserver observe = {}) {
  const auto checked = check_guest_image(image);
  if (!checked) return std::unexpected(checked.error());
  auto ram = map_memory(Step::setup_guest_memory, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  if (!ram) return std::unexpected(ram.error());
  write_guest_ram(ram->bytes(), image);

  GuestMemory memory{std::move(*ram), {}};
  memory.region = memory_region_for(memory.host.get());
  const auto registered =
      kvm_hello::call(Step::setup_guest_memory, vm, request::set_user_memory_region, &memory.region, observe);
  if (!registered) return std::unexpected(registered.error());
  return memory;
}

// ==== Step 6: the vCPU =======================================================

struct Vcpu {
  VcpuFd fd;
  Mapping shared;        // struct kvm_run, then (on arm64) the coalesced-MMIO ring page
  std::uint32_t id = 0;  // what KVM_CREATE_VCPU was given: 0 for the first
  kvm_run& run() const { return *static_cast<kvm_run*>(shared.get()); }
};

// Step 6. KVM_CREATE_VCPU(id) on the VM fd gives the vCPU fd; the id is the
// vCPU's number in the VM, 0 for the first (on arm64 KVM makes the vCPU's
// MPIDR_EL1, its CPU number for the guest, from it: reset_mpidr() in
// arch/arm64/kvm/sys_regs.c).
// KVM_GET_VCPU_MMAP_SIZE on the /dev/kvm fd says how much to mmap of it
// (on arm64 two pages); mmap(MAP_SHARED) of the vCPU fd gives struct kvm_run,
// the page KVM_RUN uses to tell us why the guest stopped. Returns both owners.
// EEXIST: a vCPU with this id exists already; EINVAL: an id beyond the host's
// limit (KVM_CAP_MAX_VCPU_ID); EBUSY (lesson 2): the VM's in-kernel GIC is
// initialised already, init_vgic() came first (kvm_arch_vcpu_precreate, arm.c).
// Why: a vCPU is what runs guest code; kvm_run is how each exit is explained.
[[nodiscard]] inline Result<Vcpu> create_vcpu(const KvmFd& kvm, const VmFd& vm, std::uint32_t id,
                                              CallObserver observe = {}) {
  auto fd = kvm_hello::call(Step::create_vcpu, vm, request::create_vcpu, id, observe);
  if (!fd) return std::unexpected(fd.error());
  Vcpu vcpu{VcpuFd{*fd}, {}, id};
  const auto size = kvm_hello::call(Step::create_vcpu, kvm, request::get_vcpu_mmap_size, observe);
  if (!size) return std::unexpected(size.error());
  auto shared =
      map_memory(Step::create_vcpu, static_cast<std::size_t>(*size), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.fd.get());
  if (!shared) return std::unexpected(shared.error());
  vcpu.shared = std::move(*shared);
  return vcpu;
}

// ==== Step 7: vCPU initialisation ============================================

// Our features on top of the kernel's preferred target: PSCI 0.2, so that the
// guest can power off with SYSTEM_OFF. The preferred target comes back with
// no features set; adding ours after reading it keeps both.
[[nodiscard]] constexpr kvm_vcpu_init with_psci_0_2(kvm_vcpu_init preferred) {
  preferred.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
  return preferred;
}
static_assert(with_psci_0_2({}).features[0] == 1u << KVM_ARM_VCPU_PSCI_0_2);

// The features one vCPU asks KVM_ARM_VCPU_INIT for (api.rst, 4.82
// KVM_ARM_VCPU_INIT). The first vCPU of a machine boots as it is: the
// default. Every other starts powered off, until the first starts it with
// PSCI CPU_ON (how an arm64 operating system brings up its other CPUs).
struct VcpuFeatures {
  bool psci_0_2 = true;    // KVM_ARM_VCPU_PSCI_0_2: PSCI 0.2, so the guest can SYSTEM_OFF
  bool power_off = false;  // KVM_ARM_VCPU_POWER_OFF: starts powered off, until PSCI CPU_ON
};
inline constexpr VcpuFeatures first_vcpu_features{};
inline constexpr VcpuFeatures other_vcpu_features{.psci_0_2 = true, .power_off = true};

// The preferred target with `features` added.
[[nodiscard]] constexpr kvm_vcpu_init with_features(kvm_vcpu_init preferred, VcpuFeatures features) {
  if (features.psci_0_2) preferred = kvm_hello::with_psci_0_2(preferred);
  if (features.power_off) preferred.features[0] |= 1u << KVM_ARM_VCPU_POWER_OFF;
  return preferred;
}
static_assert(with_features({}, first_vcpu_features).features[0] == with_psci_0_2({}).features[0]);
static_assert(with_features({}, other_vcpu_features).features[0] ==
              ((1u << KVM_ARM_VCPU_PSCI_0_2) | (1u << KVM_ARM_VCPU_POWER_OFF)));

// Step 7. KVM_ARM_PREFERRED_TARGET (struct kvm_vcpu_init, filled by the
// kernel) on the VM fd, then KVM_ARM_VCPU_INIT with that target plus
// `features` (PSCI 0.2 for the first vCPU) on the vCPU fd. Returns what was
// passed to INIT.
// ENOENT: a feature bit this kernel does not know; EINVAL: a target it does
// not accept, or a known feature this host cannot give (kvm_vcpu_set_target
// in Linux 6.1's arch/arm64/kvm/arm.c, kvm_vcpu_init_check_features in 6.12
// and 7.2).
// Why: an arm64 vCPU must be initialised before anything else: INIT resets
// its registers, and until then every register access fails with ENOEXEC.
[[nodiscard]] inline Result<kvm_vcpu_init> init_vcpu(const VmFd& vm, const VcpuFd& vcpu,
                                                     VcpuFeatures features = first_vcpu_features,
                                                     CallObserver observe = {}) {
  kvm_vcpu_init preferred{};
  const auto target = kvm_hello::call(Step::init_vcpu, vm, request::arm_preferred_target, &preferred, observe);
  if (!target) return std::unexpected(target.error());
  const kvm_vcpu_init init = kvm_hello::with_features(preferred, features);
  const auto done = kvm_hello::call(Step::init_vcpu, vcpu, request::arm_vcpu_init, &init, observe);
  if (!done) return std::unexpected(done.error());
  return init;
}

// ==== Step 8: registers ======================================================
//
// A ONE_REG id names a register for KVM_{GET,SET}_ONE_REG:
//
//   63    56 55  52            32 31        16 15                    0
//   +-------+------+-------------+------------+-----------------------+
//   | arch  | size |      0      |  coproc    |        index          |
//   +-------+------+-------------+------------+-----------------------+
//   arch: KVM_REG_ARM64; size: the value's, log2 of its bytes (KVM_REG_SIZE_U64:
//   3, 8 bytes); coproc: KVM_REG_ARM_CORE for the registers in struct
//   kvm_regs, where index = offsetof / 4.
//
//   struct kvm_regs {                     (<asm/kvm.h>)
//     struct user_pt_regs regs;  // x0..x30, sp (= SP_EL0!), pc, pstate
//     __u64 sp_el1;              // the stack pointer an EL1 guest uses
//     __u64 elr_el1; ...
//     struct user_fpsimd_state fp_regs;  // v0..v31 (128 bits each), fpsr, fpcr (32 bits)
//   };
//
// The kernel copies exactly KVM_REG_SIZE(id) bytes to or from the address in
// struct kvm_one_reg (get_core_reg() and set_core_reg() in
// arch/arm64/kvm/guest.c, Linux 6.1 to 7.2): v0 is 16 bytes, whatever the
// caller's variable holds. So an id here carries the type of its value.

// The size of a register's value in bytes, from its id: KVM_REG_SIZE(id).
constexpr std::size_t register_size(std::uint64_t id) {
  return std::size_t{1} << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
}

// A 128-bit register's value (v0..v31): the low 64 bits first, as arm64 keeps
// them in memory (little-endian).
struct Uint128 {
  std::uint64_t low = 0, high = 0;
  friend constexpr bool operator==(const Uint128&, const Uint128&) = default;
};
static_assert(sizeof(Uint128) == 16);

// The value types a register can have here, one per KVM_REG_SIZE used.
template <class T>
concept RegisterValue = std::same_as<T, std::uint32_t> || std::same_as<T, std::uint64_t> || std::same_as<T, Uint128>;

// A ONE_REG id and the type of its value, which agree: KVM_REG_SIZE(id) ==
// sizeof(T). A constant id is checked while compiling: the constructor is
// consteval, so RegisterId<std::uint64_t>{v0's id} does not compile. An id
// known only at run time goes through checked(), which returns an Error
// (Problem::bad_register_size) instead.
template <RegisterValue T>
class RegisterId {
 public:
  consteval explicit RegisterId(std::uint64_t id) : id_(id) {
    if (register_size(id) != sizeof(T)) throw "RegisterId<T>: this id's KVM_REG_SIZE is not sizeof(T)";
  }
  [[nodiscard]] static constexpr Result<RegisterId> checked(Step step, std::uint64_t id) {
    if (register_size(id) != sizeof(T)) return std::unexpected(Error{step, Problem::bad_register_size, {}, 0, id});
    return RegisterId(id, Checked{});
  }
  constexpr std::uint64_t raw() const { return id_; }  // the ONE_REG id itself
  friend constexpr bool operator==(RegisterId, RegisterId) = default;

 private:
  struct Checked {};
  constexpr RegisterId(std::uint64_t id, Checked) : id_(id) {}
  std::uint64_t id_;
};

// The ONE_REG id of a core register, from its offset in struct kvm_regs and
// its size (KVM_REG_SIZE_U32, _U64 or _U128).
constexpr std::uint64_t core_register_id(std::size_t offset, std::uint64_t size = KVM_REG_SIZE_U64) {
  return KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | (offset / sizeof(std::uint32_t));
}

namespace reg {
using U64 = RegisterId<std::uint64_t>;
inline constexpr U64 pc{core_register_id(offsetof(kvm_regs, regs.pc))};
inline constexpr U64 pstate{core_register_id(offsetof(kvm_regs, regs.pstate))};
inline constexpr U64 sp_el1{core_register_id(offsetof(kvm_regs, sp_el1))};
inline constexpr U64 elr_el1{core_register_id(offsetof(kvm_regs, elr_el1))};
inline constexpr U64 sp_el0{core_register_id(offsetof(kvm_regs, regs.sp))};  // `sp` in user_pt_regs

// x0 to x30, for a constant n: x(31) does not compile (no x31 in struct
// user_pt_regs: its slot is sp, and x(32) would be pc).
inline constexpr int x_count = 31;
consteval U64 x(int n) {
  if (n < 0 || n >= x_count) throw "reg::x(n): n is 0 to 30";
  return U64{core_register_id(offsetof(kvm_regs, regs.regs) + 8 * std::size_t(n))};
}
// The same ids in a table, for an n known only at run time: x_registers[n].
inline constexpr auto x_registers = []<std::size_t... n>(std::index_sequence<n...>) {
  return std::array{x(static_cast<int>(n))...};
}
(std::make_index_sequence<x_count>{});

// The FP/SIMD registers: v0 to v31, 128 bits each, and the 32-bit FPSR.
inline constexpr int v_count = 32;
consteval RegisterId<Uint128> v(int n) {
  if (n < 0 || n >= v_count) throw "reg::v(n): n is 0 to 31";
  return RegisterId<Uint128>{
      core_register_id(offsetof(kvm_regs, fp_regs.vregs) + sizeof(Uint128) * std::size_t(n), KVM_REG_SIZE_U128)};
}
inline constexpr RegisterId<std::uint32_t> fpsr{core_register_id(offsetof(kvm_regs, fp_regs.fpsr), KVM_REG_SIZE_U32)};

// System registers: coproc KVM_REG_ARM64_SYSREG and the (op0, op1, CRn, CRm,
// op2) the Arm architecture gives each, packed by the kernel's ARM64_SYS_REG.
inline constexpr U64 esr_el1{ARM64_SYS_REG(3, 0, 5, 2, 0)};    // why the last exception was taken
inline constexpr U64 far_el1{ARM64_SYS_REG(3, 0, 6, 0, 0)};    // the address that faulted
inline constexpr U64 vbar_el1{ARM64_SYS_REG(3, 0, 12, 0, 0)};  // where the exception vectors are

// A firmware pseudo-register: the PSCI version KVM answers the guest's
// PSCI_VERSION call with (major << 16 | minor), after KVM_ARM_VCPU_INIT.
inline constexpr U64 psci_version{KVM_REG_ARM_PSCI_VERSION};
}  // namespace reg

// The ids the kernel's own macro gives, and the values its documentation lists.
static_assert(reg::pc.raw() == (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pc)));
static_assert(reg::pc.raw() == 0x6030000000100040);
static_assert(reg::pstate.raw() == 0x6030000000100042);
static_assert(reg::sp_el1.raw() == 0x6030000000100044);
static_assert(reg::x(0).raw() == 0x6030000000100000 && reg::x(30).raw() == 0x603000000010003c);
static_assert(reg::x_registers[30] == reg::x(30));
static_assert(reg::v(0).raw() ==
              (KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(fp_regs.vregs[0])));
static_assert(reg::v(0).raw() == 0x6040000000100054 && reg::v(31).raw() == 0x60400000001000d0);
static_assert(reg::fpsr.raw() == 0x60200000001000d4);
static_assert(reg::esr_el1.raw() == 0x603000000013c290);
static_assert(reg::psci_version.raw() == 0x6030000000140000);

// KVM_SET_ONE_REG: struct kvm_one_reg holds the id and the *address* of the
// value, sizeof(T) bytes, which the kernel reads.
template <RegisterValue T>
[[nodiscard]] Result<void> set_register(Step step, const VcpuFd& vcpu, RegisterId<T> id, std::type_identity_t<T> value,
                                        CallObserver observe = {}) {
  const kvm_one_reg one{.id = id.raw(), .addr = reinterpret_cast<std::uintptr_t>(&value)};
  const auto done = kvm_hello::call(step, vcpu, request::set_one_reg, &one, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

struct BootRegisters {
  std::uint64_t pc;      // where the guest starts: the first byte of the image
  std::uint64_t sp_el1;  // the top of guest RAM: a stack grows down from there
};
inline constexpr BootRegisters boot_registers{ram_base, ram_base + ram_size};

// Step 8. KVM_SET_ONE_REG (struct kvm_one_reg) on the vCPU fd: PC, then SP_EL1.
// ENOEXEC: the vCPU was not initialised (step 7); ENOENT: no such register.
// Why: INIT left PC at 0 and the stack pointer at 0; the guest starts at PC in
// EL1 (PSTATE after INIT: EL1h with D, A, I and F masked), where the stack
// pointer is SP_EL1, not the `sp` of struct user_pt_regs (that one is SP_EL0).
[[nodiscard]] inline Result<void> set_boot_registers(const VcpuFd& vcpu, BootRegisters boot = boot_registers,
                                                     CallObserver observe = {}) {
  const auto pc = set_register(Step::set_boot_registers, vcpu, reg::pc, boot.pc, observe);
  if (!pc) return pc;
  return set_register(Step::set_boot_registers, vcpu, reg::sp_el1, boot.sp_el1, observe);
}

// ==== Step 9: running the guest ==============================================

// How many bytes one MMIO access moves: 1, 2, 4 or 8, and nothing else. An
// arm64 load or store that exits as MMIO moves 1 << ESR_EL2.SAS bytes
// (io_mem_abort() in arch/arm64/kvm/mmio.c, through kvm_vcpu_dabt_get_as(),
// Linux 6.1 to 7.2), at most the 8 of kvm_run.mmio.data. A constant is checked
// while compiling (the constructor is consteval: an access of 16 bytes does
// not compile); a length known only at run time goes through checked().
// Reads as its number of bytes.
class AccessLength {
 public:
  consteval AccessLength(std::uint32_t bytes) : bytes_(bytes) {
    if (!valid(bytes)) throw "an MMIO access is 1, 2, 4 or 8 bytes";
  }
  static constexpr std::optional<AccessLength> checked(std::uint32_t bytes) {
    if (!valid(bytes)) return std::nullopt;
    return AccessLength(bytes, Checked{});
  }
  constexpr operator std::uint32_t() const { return bytes_; }

 private:
  struct Checked {};
  constexpr AccessLength(std::uint32_t bytes, Checked) : bytes_(bytes) {}
  static constexpr bool valid(std::uint32_t bytes) { return bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8; }
  std::uint32_t bytes_;
};

// Exits, decoded from struct kvm_run into typed values.
struct MmioAccess {
  std::uint64_t address;
  AccessLength length;  // never more than data holds
  bool is_write;
  std::array<std::uint8_t, 8> data;  // writes: what the guest wrote; reads: what we answered
};
struct SystemEvent {
  std::uint32_t type;  // KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH, ...
};
struct DebugExit {
  std::uint32_t esr;  // kvm_run.debug.arch.hsr: the syndrome KVM saw (EC 0x32 for a single step)
  std::uint64_t far;  // kvm_run.debug.arch.far: the address, for watchpoints
};
struct OtherExit {
  std::uint32_t reason;  // KVM_EXIT_*
  std::uint64_t detail;  // FAIL_ENTRY: hardware_entry_failure_reason; INTERNAL_ERROR: suberror
};
using Exit = std::variant<MmioAccess, SystemEvent, DebugExit, OtherExit>;

// Reads what KVM_RUN left in kvm_run. Only the fields of the reason's union
// member are meaningful. An MMIO exit whose mmio.len is not 1, 2, 4 or 8 (no
// kernel gives one) is no MmioAccess: an OtherExit, its detail that length.
[[nodiscard]] inline Exit decode_exit(const kvm_run& run) {
  switch (run.exit_reason) {
    case KVM_EXIT_MMIO: {
      const auto length = AccessLength::checked(run.mmio.len);
      if (!length) return OtherExit{run.exit_reason, run.mmio.len};
      MmioAccess access{run.mmio.phys_addr, *length, run.mmio.is_write != 0, {}};
      if (access.is_write) std::memcpy(access.data.data(), run.mmio.data, access.length);
      return access;
    }
    case KVM_EXIT_SYSTEM_EVENT: return SystemEvent{run.system_event.type};
    case KVM_EXIT_DEBUG: return DebugExit{run.debug.arch.hsr, run.debug.arch.far};
    case KVM_EXIT_FAIL_ENTRY: return OtherExit{run.exit_reason, run.fail_entry.hardware_entry_failure_reason};
    case KVM_EXIT_INTERNAL_ERROR: return OtherExit{run.exit_reason, run.internal.suberror};
    default: return OtherExit{run.exit_reason, 0};
  }
}

// The host side of the guest's three MMIO registers (see the memory map).
class HelloDevice {
 public:
  static constexpr std::size_t output_limit = 4096;  // bytes kept of what the guest prints

  // A guest write. OUT: its low byte is output; ECHO: remembered (its first
  // 4 bytes; fewer read as 0 above them). Others, and no bytes, are ignored.
  void write(std::uint64_t address, std::span<const std::uint8_t> bytes) {
    if (bytes.empty()) return;
    if (address == mmio_out) {
      if (output_.size() < output_limit) {
        output_.push_back(static_cast<char>(bytes[0]));
      } else {
        ++dropped_;
      }
    } else if (address == mmio_echo) {
      std::uint32_t value = 0;
      std::memcpy(&value, bytes.data(), std::min(bytes.size(), sizeof value));
      echoed_ = value;
      has_echo_ = true;
    }
  }
  // A guest read: ANSWER gives host_answer; an address with no register
  // behind it reads as unmapped_read_value.
  std::uint64_t read(std::uint64_t address) const { return address == mmio_answer ? host_answer : unmapped_read_value; }

  static constexpr std::uint64_t unmapped_read_value = 0;
  static constexpr bool has_register(std::uint64_t address) {
    const Region* found = register_at(address);
    return found != nullptr && found->kind == RegionKind::hello_register;
  }

  // Fills in the data of a read, records a write: the device's side of one MMIO exit.
  void handle(MmioAccess& access) {
    if (access.is_write) {
      write(access.address, std::span(access.data).first(access.length));
    } else {
      const std::uint64_t value = read(access.address);
      std::memcpy(access.data.data(), &value, access.length);  // little-endian: the low bytes first
    }
  }

  std::string_view output() const { return output_; }
  std::size_t output_dropped() const { return dropped_; }  // bytes past output_limit
  bool answer_came_back() const { return has_echo_ && echoed_ == host_answer; }
  std::uint32_t echoed() const { return echoed_; }

 private:
  std::string output_;
  std::size_t dropped_ = 0;
  std::uint32_t echoed_ = 0;
  bool has_echo_ = false;
};

// What run_guest() asks of a device: handle(MmioAccess&), which records a
// write and fills in the data of a read. HelloDevice is one; a device of your
// own needs only this member.
template <class D>
concept MmioDevice = requires(D& device, MmioAccess& access) { device.handle(access); };
static_assert(MmioDevice<HelloDevice>);

// ---- Stopping a vCPU: a request, then a kick --------------------------------
//
// A guest stuck in a loop (or faulting over and over inside the kernel) never
// leaves KVM_RUN by itself. Another thread stops it (a deadline's, a Ctrl-C
// handler's, or, from lesson 3 on, the vCPU that powered the machine off), and
// it takes two things, because either alone can miss:
//
//   1. kvm_run.immediate_exit = 1: a KVM_RUN that starts after this returns -1
//      with EINTR at once, without entering the guest (kvm_vcpu_ioctl() in
//      virt/kvm/kvm_main.c reads it into vcpu->wants_to_run, and
//      kvm_arch_vcpu_ioctl_run() in arch/arm64/kvm/arm.c returns -EINTR when
//      that is false). Alone, it does nothing to a KVM_RUN already running.
//   2. a signal to the thread inside KVM_RUN, the "kick": before each entry
//      into the guest, kvm_arch_vcpu_ioctl_run() handles pending work, and a
//      pending signal ends the call with -EINTR (xfer_to_guest_mode_work(),
//      kernel/entry/kvm.c in Linux 6.1 and 6.12, kernel/entry/virt.c in 7.2).
//      A vCPU asleep wakes for it too: in WFI (kvm_vcpu_check_block() in
//      virt/kvm/kvm_main.c), or stopped after SYSTEM_OFF (kvm_vcpu_sleep()
//      in arch/arm64/kvm/arm.c, an interruptible wait). Alone, the kick can
//      come just before KVM_RUN starts, and be missed.
//
// EINTR comes back whether the kick's handler was installed with SA_RESTART
// or not: the kernel restarts only a call that returned one of its
// -ERESTART* codes (do_signal() in arch/arm64/kernel/signal.c), never one
// that returned -EINTR (test/e2e_tests.cpp tries both). So the handler has
// SA_RESTART, and a write(2) that a kick interrupts elsewhere (printf into a
// full pipe) is restarted, not lost.
// KVM_RUN also returns EINTR for signals no one meant as a stop (Ctrl-Z then
// fg, a debugger, the program's own timers) and, with no interrupt controller
// in the kernel, when the guest's timer output changes (exit_reason
// KVM_EXIT_INTR, no signal at all: kvm_vcpu_exit_request() in
// arch/arm64/kvm/arm.c). So after an EINTR, run_guest() asks the request
// why; with no request it enters the guest again.
//
// The kick is KVM_HELLO_KICK_SIGNAL: SIGUSR1 unless the program defines it
// before including this header (e.g. `#define KVM_HELLO_KICK_SIGNAL SIGUSR2`,
// or `(SIGRTMIN + 1)`), for a program that uses SIGUSR1 itself. Its handler
// does nothing, and is the one process-wide thing this header takes: it is
// installed the first time a vCPU runs, and stays.
#ifndef KVM_HELLO_KICK_SIGNAL
#define KVM_HELLO_KICK_SIGNAL SIGUSR1
#endif

// Why a vCPU was asked to stop, in order of precedence: a later request
// replaces an earlier one only when it comes later in this list (Ctrl-C
// after the deadline is Ctrl-C).
enum class StopReason : std::uint8_t {
  none,
  deadline,     // the time limit passed (Problem::watchdog_expired)
  interrupted,  // Ctrl-C (Problem::interrupted)
  powered_off,  // another vCPU powered the machine off: a clean end
};

namespace detail {
inline void on_kick(int) {}  // nothing to do: arriving was the point
inline std::atomic<bool> kick_handler_installed{false};
}  // namespace detail

// Installs the kick's do-nothing handler (SA_RESTART), once per process;
// later calls return what the first one did. run_guest() calls it before
// its first KVM_RUN. Error: sigaction's errno (EINVAL: KVM_HELLO_KICK_SIGNAL
// is no signal a handler can be given).
[[nodiscard]] inline Result<void> install_kick_handler() {
  static const int failed_with = [] {
    struct sigaction action {};
    action.sa_handler = detail::on_kick;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (::sigaction(KVM_HELLO_KICK_SIGNAL, &action, nullptr) != 0) return errno;
    detail::kick_handler_installed.store(true);
    return 0;
  }();
  if (failed_with != 0) return std::unexpected(Error{Step::run_guest, Problem::call_failed, "sigaction", failed_with});
  return {};
}

// One vCPU's stop request. Made on the thread that runs the vCPU, which its
// kicks go to; any thread, or a signal handler, may then call request().
// The vCPU's kvm_run and thread must outlive it, and it must outlive every
// thread that may still call request(): join those first (a Deadline is
// joined when it is destroyed, so declare it after the stopper).
class VcpuStopper {
 public:
  explicit VcpuStopper(kvm_run& run) noexcept : run_(run), thread_(::pthread_self()) {}
  VcpuStopper(const VcpuStopper&) = delete;
  VcpuStopper& operator=(const VcpuStopper&) = delete;
  // Leaves kvm_run as it found it: the vCPU can run again with a new one.
  ~VcpuStopper() { immediate_exit().store(0); }

  // Asks the vCPU to stop for `why`: records the reason (unless one that
  // takes precedence is there already), sets immediate_exit, kicks the
  // vCPU's thread. Async-signal-safe, so a signal handler may call it:
  // lock-free atomics, and pthread_kill() (on signal-safety(7)'s list).
  void request(StopReason why) noexcept {
    StopReason now = reason_.load();
    while (now < why && !reason_.compare_exchange_weak(now, why)) {
    }
    immediate_exit().store(1);
    // No kick before its handler is installed (SIGUSR1's default ends the program): run_guest()
    // installs it before its first KVM_RUN, and immediate_exit stops that one.
    if (detail::kick_handler_installed.load()) ::pthread_kill(thread_, KVM_HELLO_KICK_SIGNAL);
  }

  // Why it was asked to stop; StopReason::none when it was not.
  StopReason reason() const noexcept { return reason_.load(); }

  // Takes back a request for `why` that was answered, so that the vCPU can
  // run on (a deadline started again); a request for another reason stays.
  // Only on the vCPU's own thread, between two KVM_RUN calls.
  void withdraw(StopReason why) noexcept {
    StopReason expected = why;
    if (!reason_.compare_exchange_strong(expected, StopReason::none)) return;
    immediate_exit().store(0);
    if (reason_.load() != StopReason::none) immediate_exit().store(1);  // a request came meanwhile
  }

  // The time limit of the Deadline watching it, for the Error's value.
  std::chrono::milliseconds time_limit() const noexcept { return std::chrono::milliseconds(time_limit_ms_.load()); }
  void set_time_limit(std::chrono::milliseconds limit) noexcept { time_limit_ms_.store(limit.count()); }

 private:
  // The kernel reads immediate_exit when KVM_RUN starts, on the vCPU's
  // thread; other threads write it: an atomic byte, through std::atomic_ref.
  std::atomic_ref<std::uint8_t> immediate_exit() const noexcept { return std::atomic_ref(run_.immediate_exit); }
  static_assert(std::atomic_ref<std::uint8_t>::is_always_lock_free, "request() must be async-signal-safe");
  static_assert(std::atomic<StopReason>::is_always_lock_free, "request() must be async-signal-safe");

  kvm_run& run_;
  pthread_t thread_;
  std::atomic<StopReason> reason_{StopReason::none};
  std::atomic<std::chrono::milliseconds::rep> time_limit_ms_{0};
};

namespace detail {
// Blocks every signal in the calling thread while it lives: a thread started
// meanwhile begins with all of them blocked. (pthread_sigmask fails only for
// a bad first argument.)
class AllSignalsBlocked {
 public:
  AllSignalsBlocked() noexcept {
    sigset_t all{};
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &before_);
  }
  AllSignalsBlocked(const AllSignalsBlocked&) = delete;
  AllSignalsBlocked& operator=(const AllSignalsBlocked&) = delete;
  ~AllSignalsBlocked() { ::pthread_sigmask(SIG_SETMASK, &before_, nullptr); }

 private:
  sigset_t before_{};
};
}  // namespace detail

// A deadline for one vCPU: `limit` after it is made (or restarted), it
// asks the stopper to stop (StopReason::deadline), from a thread of its own
// that waits on a condition variable. Destroying it first ends and joins
// that thread, so no request comes after. A limit of 0 asks at once: 0 is
// never "no limit". Its thread blocks every signal: a signal meant for the
// program (its SIGALRM, Ctrl-C) goes to the program's own threads, not here.
class Deadline {
 public:
  Deadline(VcpuStopper& stopper, std::chrono::milliseconds limit) : stopper_(stopper) {
    restart(limit);
    const detail::AllSignalsBlocked blocked;  // the new thread inherits this mask
    try {
      thread_ = std::jthread([this](std::stop_token ended) { watch(ended); });
    } catch (const std::system_error& error) {
      failed_with_ = error.code().value();  // pthread_create's errno: EAGAIN, no memory for its stack
    }
  }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // Whether its thread started: if not, nothing stops the vCPU at the
  // limit, so do not run it. Error: pthread_create's errno.
  [[nodiscard]] Result<void> status() const {
    if (failed_with_ != 0) {
      return std::unexpected(Error{Step::run_guest, Problem::call_failed, "pthread_create", failed_with_});
    }
    return {};
  }

  // Starts the time again: the stop is asked `limit` from now, and a stop
  // this deadline asked for before is taken back (VcpuStopper::withdraw).
  // Only on the vCPU's own thread, between two KVM_RUN calls.
  void restart(std::chrono::milliseconds limit) {
    const std::scoped_lock lock(mutex_);
    stopper_.withdraw(StopReason::deadline);
    stopper_.set_time_limit(limit);
    due_ = std::chrono::steady_clock::now() + limit;
    armed_ = true;
    changed_.notify_one();
  }

 private:
  void watch(std::stop_token ended) {
    std::unique_lock lock(mutex_);
    while (!ended.stop_requested()) {
      if (!armed_) {
        changed_.wait(lock, ended, [this] { return armed_; });
        continue;
      }
      const auto due = due_;
      const bool moved = changed_.wait_until(lock, ended, due, [this, due] { return due_ != due; });
      if (moved || ended.stop_requested()) continue;
      stopper_.request(StopReason::deadline);
      armed_ = false;
    }
  }

  VcpuStopper& stopper_;
  std::mutex mutex_;
  std::condition_variable_any changed_;
  std::chrono::steady_clock::time_point due_;
  bool armed_ = false;
  int failed_with_ = 0;
  std::jthread thread_;  // last: it ends, and is joined, before the members it uses go
};

inline constexpr std::chrono::milliseconds default_time_limit{5000};

struct RunStats {
  unsigned kvm_run_calls = 0;                  // times we entered the guest
  unsigned exits = 0;                          // times it came back to us with a reason
  std::array<unsigned, 64> exits_by_reason{};  // indexed by KVM_EXIT_* (the last: 63 and above)
  std::chrono::nanoseconds in_kvm_run{};       // time spent inside the KVM_RUN ioctl
  std::chrono::nanoseconds total{};            // the whole loop, host work included
};

// What one exit means for the loop: go on, stop cleanly, or stop with an error.
// After SHUTDOWN (PSCI SYSTEM_OFF) KVM has stopped the vCPU: another KVM_RUN
// would sleep until a signal. A program that wants the guest back makes it
// runnable: KVM_SET_MP_STATE (RUNNABLE) resumes it after its hvc with x0 = -6,
// a new KVM_ARM_VCPU_INIT resets it. This one stops here.
[[nodiscard]] inline std::expected<bool, Error> keep_running(const Exit& exit) {
  if (std::holds_alternative<MmioAccess>(exit) || std::holds_alternative<DebugExit>(exit)) return true;
  if (const auto* event = std::get_if<SystemEvent>(&exit)) {
    switch (event->type) {
      case KVM_SYSTEM_EVENT_SHUTDOWN: return false;  // PSCI SYSTEM_OFF: done
      case KVM_SYSTEM_EVENT_RESET: return std::unexpected(Error{Step::run_guest, Problem::guest_reset});
      case KVM_SYSTEM_EVENT_CRASH: return std::unexpected(Error{Step::run_guest, Problem::guest_crash});
      default: return std::unexpected(Error{Step::run_guest, Problem::unexpected_exit, {}, 0, KVM_EXIT_SYSTEM_EVENT});
    }
  }
  return std::unexpected(Error{Step::run_guest, Problem::unexpected_exit, {}, 0, std::get<OtherExit>(exit).reason});
}

// What run_guest() calls after each exit: anything callable with the
// decoded exit, a const Exit& (its result is not used).
template <class F>
concept ExitCallback = std::invocable<F&, const Exit&>;

// Step 9. KVM_RUN on the vCPU fd, again and again: each return is an exit,
// explained in kvm_run. MMIO goes to `device` (a HelloDevice, or any
// MmioDevice: a type with handle(MmioAccess&)): it takes writes, and fills in reads, whose answer is
// put in kvm_run.mmio.data for the next KVM_RUN to hand to the guest (a read
// or a write completes only when we re-enter). A SYSTEM_EVENT of type
// SHUTDOWN (the guest's PSCI SYSTEM_OFF) ends the run: returns the counts and
// times. `on_exit(const Exit&)` sees each exit after the device handled it
// (for tracing). KVM_EXIT_DEBUG (single-stepping) goes on. Runs on the
// calling thread, the one `stopper` was made on; `stopper` stops it.
// Errors: EINTR after a stop request (see "Stopping a vCPU" above): for the
// deadline, Problem::watchdog_expired (its value: the stopper's time limit);
// for Ctrl-C, Problem::interrupted; another vCPU powering the machine off is
// a clean end. Any other EINTR is no error, and the guest is simply entered
// again: a signal no one meant as a stop, or, in a VM like this one with no
// interrupt controller in the kernel, the guest's timer output changing
// (exit_reason KVM_EXIT_INTR: the program could deliver the interrupt).
// sigaction's errno, when the kick's handler cannot be installed; ENOSYS for
// an MMIO instruction KVM cannot decode (load/store pair, writeback, SIMD);
// another exit reason or system event: Problem::unexpected_exit, guest_reset
// or guest_crash. A device whose answer can fail (lesson 2's injects an
// interrupt) has failure() -> std::optional<Error>: its first Error ends the
// run, after on_exit saw the exit.
// Why: this loop is the whole life of a VM: the guest runs until it needs us.
template <MmioDevice Device, ExitCallback OnExit>
[[nodiscard]] Result<RunStats> run_guest(Vcpu& vcpu, const VcpuStopper& stopper, Device& device, OnExit&& on_exit,
                                         CallObserver observe = {}) {
  if (const auto kick = kvm_hello::install_kick_handler(); !kick) return std::unexpected(kick.error());
  kvm_run& run = vcpu.run();
  RunStats stats;
  const auto started = std::chrono::steady_clock::now();
  for (;;) {
    ++stats.kvm_run_calls;
    const auto entering = std::chrono::steady_clock::now();
    const auto entered = kvm_hello::call(Step::run_guest, vcpu.fd, request::run, observe);
    const auto returned = std::chrono::steady_clock::now();
    stats.in_kvm_run += returned - entering;
    stats.total = returned - started;
    if (!entered) {
      if (entered.error().err != EINTR) return std::unexpected(entered.error());
      switch (stopper.reason()) {
        case StopReason::none: continue;  // a signal meant for no stop, or the guest's timer: go back in
        case StopReason::deadline:
          return std::unexpected(Error{Step::run_guest, Problem::watchdog_expired, "KVM_RUN", EINTR,
                                       static_cast<std::uint64_t>(stopper.time_limit().count())});
        case StopReason::interrupted:
          return std::unexpected(Error{Step::run_guest, Problem::interrupted, "KVM_RUN", EINTR});
        case StopReason::powered_off: return stats;
      }
    }
    ++stats.exits;
    ++stats.exits_by_reason[std::min<std::size_t>(run.exit_reason, stats.exits_by_reason.size() - 1)];
    Exit exit = kvm_hello::decode_exit(run);
    if (auto* access = std::get_if<MmioAccess>(&exit)) {
      device.handle(*access);
      if (!access->is_write) std::memcpy(run.mmio.data, access->data.data(), access->length);
    }
    on_exit(std::as_const(exit));
    if constexpr (requires { device.failure(); }) {  // a device whose answer can fail (lesson 2's injects)
      if (const std::optional<Error> failure = device.failure()) return std::unexpected(*failure);
    }
    const auto more = keep_running(exit);
    if (!more) return std::unexpected(more.error());
    if (!*more) return stats;
  }
}

// Step 9 with a time limit and nothing else that stops it: a VcpuStopper
// for this thread and a Deadline of `limit` (a guest still running then ends
// with Problem::watchdog_expired), both gone when it returns. Any number of
// vCPUs may run this way at once, each on its own thread.
template <MmioDevice Device, ExitCallback OnExit>
[[nodiscard]] Result<RunStats> run_guest(Vcpu& vcpu, Device& device, std::chrono::milliseconds limit, OnExit&& on_exit,
                                         CallObserver observe = {}) {
  VcpuStopper stopper(vcpu.run());
  const Deadline deadline(stopper, limit);  // after the stopper: joined before it goes
  if (const auto started = deadline.status(); !started) return std::unexpected(started.error());
  return kvm_hello::run_guest(vcpu, stopper, device, std::forward<OnExit>(on_exit), observe);
}

// ==== Steps 1 to 8 in one call ===============================================
//
// For programs that want a machine ready to run, without narrating each step:
// the tests, and the benchmark (kvm-hello --bench). main.cpp's walk-through
// spells the steps out instead, one by one, on purpose.

struct Machine {
  KvmFd kvm;
  VmFd vm;
  GuestMemory memory;
  Vcpu vcpu;
};

// What build_machine() calls as each step ends: anything callable with the
// Step (its result is not used).
template <class F>
concept StepCallback = std::invocable<F&, Step>;

// Steps 1 to 8 for `image`, in order, with one vCPU (id 0); `after(Step)` is
// called as each step ends (the benchmark times them). Returns the machine,
// or the first Error.
template <StepCallback AfterStep>
[[nodiscard]] Result<Machine> build_machine(std::span<const std::uint8_t> image, const char* device, AfterStep&& after,
                                            CallObserver observe = {}) {
  Machine m;
  auto kvm = open_kvm(device);
  if (!kvm) return std::unexpected(kvm.error());
  m.kvm = std::move(*kvm);
  after(Step::open_kvm);
  if (const auto v = check_api_version(m.kvm, observe); !v) return std::unexpected(v.error());
  after(Step::check_api_version);
  const auto caps = check_capabilities(m.kvm, observe);
  if (!caps) return std::unexpected(caps.error());
  after(Step::check_capabilities);
  const auto type = vm_type_for(caps->ipa_limit);
  if (!type) return std::unexpected(type.error());
  auto vm = create_vm(m.kvm, *type, observe);
  if (!vm) return std::unexpected(vm.error());
  m.vm = std::move(*vm);
  after(Step::create_vm);
  auto memory = setup_guest_memory(m.vm, image, observe);
  if (!memory) return std::unexpected(memory.error());
  m.memory = std::move(*memory);
  after(Step::setup_guest_memory);
  auto vcpu = create_vcpu(m.kvm, m.vm, 0, observe);
  if (!vcpu) return std::unexpected(vcpu.error());
  m.vcpu = std::move(*vcpu);
  after(Step::create_vcpu);
  const auto init = init_vcpu(m.vm, m.vcpu.fd, first_vcpu_features, observe);
  if (!init) return std::unexpected(init.error());
  after(Step::init_vcpu);
  if (const auto set = set_boot_registers(m.vcpu.fd, boot_registers, observe); !set) {
    return std::unexpected(set.error());
  }
  after(Step::set_boot_registers);
  return m;
}

[[nodiscard]] inline Result<Machine> build_machine(std::span<const std::uint8_t> image,
                                                   const char* device = default_kvm_path) {
  return build_machine(image, device, [](Step) {});
}

// ==== Part II: interrupts and time ============================================
//
// Lesson 2 gives the VM an interrupt controller inside KVM: a GIC (Arm's
// Generic Interrupt Controller), emulated by KVM with the CPU's help (the
// "vGIC"). The guest programs it through the frames of the memory map
// (GICD, and GICR or GICC) and system registers; KVM delivers to it the
// virtual timer's interrupt (a PPI: private to one vCPU, INTID 16 to 31) and
// the SPIs the program raises (shared, INTID 32 to 1019), and wakes a vCPU
// asleep in WFI when one is due, without a single exit to the program.
//
// The order rules: KVM checks each at a different moment, so a mistake
// shows up late, far from its cause. Each was tried on Linux 6.1, 6.12 and
// 7.2 (test/e2e_tests.cpp, "order rule" tests):
//
//   create_vgic (11)   before any vCPU has run: EBUSY after (kvm_vgic_create,
//                      arch/arm64/kvm/vgic/vgic-init.c). Lesson 2 creates it
//                      before the vCPUs, as kvmtool and the kernel's
//                      selftests do; every vCPU's redistributor is then
//                      placed as the vCPU is created.
//   create_vcpu (6)    every vCPU before init_vgic: after it, KVM_CREATE_VCPU
//                      fails with EBUSY (kvm_arch_vcpu_precreate, arm.c).
//   init_vgic (12)     after every vCPU, before the first KVM_RUN. Forgotten,
//                      the first KVM_RUN of a GICv3 fails with EBUSY, and the
//                      VM is dead: every later ioctl on it, its vCPUs or its
//                      GIC, CTRL_INIT too, fails with EIO
//                      (vgic_v3_map_resources, vgic-v3.c, says EBUSY;
//                      kvm_vgic_map_resources then calls kvm_vm_dead;
//                      kvm_vm_ioctl, kvm_vcpu_ioctl and kvm_device_ioctl in
//                      virt/kvm/kvm_main.c answer EIO for a dead VM). A GICv2
//                      initialises itself at its first use instead
//                      (vgic_lazy_init, vgic-init.c).
//   a frame not placed the first KVM_RUN fails with ENXIO, and the VM is dead
//                      (vgic_v3_map_resources, vgic_v2_map_resources).
//   attach_irqfd (14)  after init_vgic: EAGAIN before (kvm_irqfd_assign,
//                      virt/kvm/eventfd.c, asks kvm_arch_intc_initialized).
//   inject_spi (15)    after init_vgic: before it, a GICv3's KVM_IRQ_LINE
//                      fails with EBUSY (vgic_lazy_init), in Linux 6.1 and
//                      6.12 from kvm_vgic_inject_irq, in 7.2 from
//                      kvm_vm_ioctl_irq_line.
//
// What the program may not do at all: KVM_IRQ_LINE with type CPU (0) is for
// a VM without an in-kernel GIC, ENXIO with one; an SPI below INTID 32 is
// EINVAL (kvm_vm_ioctl_irq_line, arm.c); and a PPI KVM drives itself, as the
// timer's 27, is taken without error and ignored (vgic_validate_injection,
// vgic.c: the interrupt's owner is the timer, not the caller).

// The GIC architecture version of the in-kernel GIC.
enum class GicVersion : std::uint32_t { v2 = 2, v3 = 3 };

// The GIC KVM made for the VM (create_vgic): the device's fd, owned (closed
// once), and which version it is, which says where its frames are.
struct Vgic {
  DeviceFd fd;
  GicVersion version;
};

// An eventfd wired to an SPI with KVM_IRQFD (attach_irqfd): a write of 1 to
// `event` raises SPI 32 + gsi (ring_irqfd). Closing it unwires it (KVM sees
// the eventfd close: irqfd_wakeup, virt/kvm/eventfd.c, on EPOLLHUP).
struct Irqfd {
  Fd event;
  std::uint32_t gsi;  // the SPI's number counted from the first SPI: its INTID - 32
};

// The INTIDs, by kind (GICv3 architecture, "INTIDs"; KVM's VGIC_NR_SGIS and
// VGIC_NR_PRIVATE_IRQS in include/kvm/arm_vgic.h): SGIs 0-15 (one CPU to
// another), PPIs 16-31 (one CPU's own), SPIs 32-1019 (shared, from devices).
inline constexpr std::uint32_t first_ppi = 16;
inline constexpr std::uint32_t first_spi = 32;
inline constexpr std::uint32_t last_spi = 1019;
constexpr bool is_spi(std::uint32_t intid) { return intid >= first_spi && intid <= last_spi; }
constexpr bool is_ppi(std::uint32_t intid) { return intid >= first_ppi && intid < first_spi; }

inline constexpr std::uint32_t spi_line = KVM_HELLO_SPI_LINE;    // lesson 2's SPI raised with KVM_IRQ_LINE
inline constexpr std::uint32_t spi_irqfd = KVM_HELLO_SPI_IRQFD;  // lesson 2's SPI raised through an irqfd
inline constexpr std::uint32_t timer_intid = KVM_HELLO_TIMER_INTID;
static_assert(is_spi(spi_line) && is_spi(spi_irqfd) && spi_line != spi_irqfd);
// 27 is the virtual timer's PPI in the Arm Base System Architecture, and KVM's
// default (arch/arm64/kvm/arch_timer.c: default_vtimer_irq in Linux 6.1,
// default_ppi[TIMER_VTIMER] in 6.12 and 7.2).
static_assert(is_ppi(timer_intid) && timer_intid == 27);

// How many interrupts the vGIC has (KVM_DEV_ARM_VGIC_GRP_NR_IRQS, init_vgic):
// the 32 private ones (SGIs and PPIs) and the SPIs. KVM wants 64 to 1024, a
// multiple of 32 (vgic_set_common_attr, vgic-kvm-device.c); without it, 256.
// 64 gives SPIs 32 to 63: lesson 2's two fit.
inline constexpr std::uint32_t vgic_nr_irqs = 64;
static_assert(vgic_nr_irqs >= first_spi + 32 && vgic_nr_irqs <= 1024 && vgic_nr_irqs % 32 == 0);
static_assert(spi_line < vgic_nr_irqs && spi_irqfd < vgic_nr_irqs);

// ==== Step 10: which vGIC ====================================================

// KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST on the VM fd: asks whether
// KVM can make a device of `type`, without making one. True: it can; false:
// ENODEV, it cannot (this kernel, or this host's GIC, has no such model:
// kvm_ioctl_create_device, virt/kvm/kvm_main.c, finds no device ops for it,
// since kvm_register_vgic_device registers only the models the host's GIC
// can emulate: vgic_v2_probe and vgic_v3_probe, vgic-v2.c and vgic-v3.c).
[[nodiscard]] inline Result<bool> offers_device(const VmFd& vm, std::uint32_t type, Step step = Step::probe_vgic,
                                                CallObserver observe = {}) {
  kvm_create_device probe{.type = type, .fd = 0, .flags = KVM_CREATE_DEVICE_TEST};
  const auto done = kvm_hello::call(step, vm, request::create_device, &probe, observe);
  if (done) return true;
  if (done.error().err == ENODEV) return false;
  return std::unexpected(done.error());
}

// The KVM device type of each GIC version (<linux/kvm.h>).
constexpr std::uint32_t device_type_for(GicVersion version) {
  return version == GicVersion::v3 ? KVM_DEV_TYPE_ARM_VGIC_V3 : KVM_DEV_TYPE_ARM_VGIC_V2;
}
static_assert(KVM_DEV_TYPE_ARM_VGIC_V2 == 5 && KVM_DEV_TYPE_ARM_VGIC_V3 == 7);

// Step 10. KVM_CHECK_EXTENSION(KVM_CAP_IRQCHIP) on the VM fd: 1 when KVM
// has an in-kernel GIC at all (vgic_present, kvm_vm_ioctl_check_extension in
// arch/arm64/kvm/arm.c: 0 when KVM found no GIC it can use, e.g. a host GIC
// without the maintenance interrupt). Then offers_device() for a GICv3, and
// for a GICv2 when the GICv3 gives ENODEV. Returns the version to create.
// Problem::no_vgic: no in-kernel GIC, or neither model (a GICv3 host whose
// GIC has no GICv2 compatibility offers only v3; a GICv2 host only v2).
// Why: the guest must be told which GIC it has: its registers differ
// (a GICv3's CPU interface is system registers, a GICv2's is the GICC frame).
[[nodiscard]] inline Result<GicVersion> probe_vgic(const VmFd& vm, CallObserver observe = {}) {
  const auto irqchip = kvm_hello::call(Step::probe_vgic, vm, request::check_vm_extension,
                                       static_cast<unsigned long>(irqchip_capability.id), observe);
  if (!irqchip) return std::unexpected(irqchip.error());
  if (*irqchip <= 0) return std::unexpected(Error{Step::probe_vgic, Problem::no_vgic, "KVM_CHECK_EXTENSION", 0, 0});
  for (const GicVersion version : {GicVersion::v3, GicVersion::v2}) {
    const auto offered = offers_device(vm, device_type_for(version), Step::probe_vgic, observe);
    if (!offered) return std::unexpected(offered.error());
    if (*offered) return version;
  }
  return std::unexpected(Error{Step::probe_vgic, Problem::no_vgic, "KVM_CREATE_DEVICE", ENODEV,
                               static_cast<std::uint64_t>(*irqchip)});
}

// ==== Step 11: the vGIC, placed ==============================================

// One frame of the GIC as KVM places it: the KVM_DEV_ARM_VGIC_GRP_ADDR
// attribute that names it, the region of memory_map it goes in, and what
// KVM asks of it: its size, and the alignment of its base (kvm_vgic_addr,
// arch/arm64/kvm/vgic/vgic-kvm-device.c, checks with vgic_check_iorange:
// EINVAL misaligned, E2BIG beyond the VM's IPA size, EEXIST placed already).
struct GicFrame {
  std::uint64_t attribute;  // KVM_VGIC_V2_ADDR_TYPE_* or KVM_VGIC_V3_ADDR_TYPE_*
  std::string_view region;  // its row in memory_map
  std::uint64_t size;       // bytes KVM emulates there (all vCPUs' for the redistributors)
  std::uint64_t alignment;  // of its base
};

// A GICv2: a distributor of 4 KiB and a CPU interface of 8 KiB, both 4 KiB
// aligned (KVM_VGIC_V2_DIST_SIZE, KVM_VGIC_V2_CPU_SIZE, <asm/kvm.h>).
inline constexpr std::array gicv2_frames{
    GicFrame{KVM_VGIC_V2_ADDR_TYPE_DIST, "GICD", KVM_VGIC_V2_DIST_SIZE, 0x1000},
    GicFrame{KVM_VGIC_V2_ADDR_TYPE_CPU, "GICC", KVM_VGIC_V2_CPU_SIZE, 0x1000},
};
static_assert(KVM_VGIC_V2_DIST_SIZE == 0x1000 && KVM_VGIC_V2_CPU_SIZE == 0x2000);
// A GICv3: a distributor of 64 KiB and, one after another from the base,
// every vCPU's redistributor, 128 KiB each (RD_base, then SGI_base), all 64
// KiB aligned (KVM_VGIC_V3_DIST_SIZE and KVM_VGIC_V3_REDIST_SIZE, which
// <asm/kvm.h> spells with the kernel's SZ_64K, a macro userspace lacks: the
// numbers are written out here). KVM_VGIC_V3_ADDR_TYPE_REDIST places one
// region for every vCPU (vgic_v3_set_redist_base, vgic-mmio-v3.c).
inline constexpr std::array gicv3_frames{
    GicFrame{KVM_VGIC_V3_ADDR_TYPE_DIST, "GICD", 0x10000, 0x10000},
    GicFrame{KVM_VGIC_V3_ADDR_TYPE_REDIST, "GICR", max_vcpus * 0x20000, 0x10000},
};
static_assert(gic_redistributor_size == 0x20000, "a GICv3's redistributor: two 64 KiB frames");

constexpr std::span<const GicFrame> gic_frames(GicVersion version) {
  if (version == GicVersion::v3) return gicv3_frames;
  return gicv2_frames;
}

// The map keeps what KVM asks of each frame: its region is at least the
// frame's size, and its base has the frame's alignment. (The map's own rules
// above, 64 KiB frames without overlap, hold for both versions at once.)
constexpr bool map_holds(const GicFrame& frame) {
  for (const Region& r : memory_map) {
    if (r.name == frame.region) return r.size >= frame.size && r.base % frame.alignment == 0;
  }
  return false;
}
constexpr bool map_holds(GicVersion version) {
  return std::ranges::all_of(gic_frames(version), [](const GicFrame& f) { return map_holds(f); });
}
static_assert(map_holds(GicVersion::v2), "memory_map: GICD holds a GICv2's 4 KiB, GICC its 8 KiB, 4 KiB aligned");
static_assert(map_holds(GicVersion::v3), "memory_map: GICD holds a GICv3's 64 KiB, GICR 128 KiB per vCPU, aligned");

// KVM_SET_DEVICE_ATTR (struct kvm_device_attr) on the GIC's fd: group
// KVM_DEV_ARM_VGIC_GRP_ADDR, attribute the frame's, addr the address of a
// u64 holding its guest-physical base.
[[nodiscard]] inline Result<void> place_gic_frame(const DeviceFd& gic, const GicFrame& frame,
                                                  CallObserver observe = {}) {
  std::uint64_t base = 0;
  for (const Region& r : memory_map) {
    if (r.name == frame.region) base = r.base;
  }
  const kvm_device_attr attr{.flags = 0,
                             .group = KVM_DEV_ARM_VGIC_GRP_ADDR,
                             .attr = frame.attribute,
                             .addr = reinterpret_cast<std::uintptr_t>(&base)};
  const auto done = kvm_hello::call(Step::create_vgic, gic, request::set_device_attr, &attr, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

// Step 11. KVM_CREATE_DEVICE (struct kvm_create_device: type in, fd out) on
// the VM fd, then place_gic_frame() for each frame of `version`: GICD and
// GICR for a GICv3, GICD and GICC for a GICv2, at the map's addresses.
// Returns the GIC's owner. KVM_CREATE_DEVICE: ENODEV, no such model here
// (step 10 asks first); EEXIST, the VM has a GIC already; EBUSY, a vCPU has
// run already; E2BIG, more vCPUs than the model serves (a GICv2 8)
// (kvm_vgic_create, arch/arm64/kvm/vgic/vgic-init.c). KVM_SET_DEVICE_ATTR:
// ENXIO, a frame of the other version's; EINVAL, EEXIST, E2BIG as
// GicFrame says. Call it before create_vcpu (any time before a vCPU runs
// would do).
// Why: without an interrupt controller in the kernel, the guest's timer can
// only make KVM_RUN return to us (KVM_EXIT_INTR); with it, KVM delivers
// interrupts to the guest itself, and the guest finds the GIC at the map's
// addresses because this step put it there.
[[nodiscard]] inline Result<Vgic> create_vgic(const VmFd& vm, GicVersion version, CallObserver observe = {}) {
  kvm_create_device create{.type = device_type_for(version), .fd = 0, .flags = 0};
  const auto done = kvm_hello::call(Step::create_vgic, vm, request::create_device, &create, observe);
  if (!done) return std::unexpected(done.error());
  Vgic vgic{DeviceFd{static_cast<int>(create.fd)}, version};
  for (const GicFrame& frame : gic_frames(version)) {
    if (const auto placed = place_gic_frame(vgic.fd, frame, observe); !placed) return std::unexpected(placed.error());
  }
  return vgic;
}

// ==== Step 12: the vGIC, initialised =========================================

// KVM_SET_DEVICE_ATTR on the GIC's fd, group and attribute as given, addr
// the address of `value` when there is one (0 when there is none).
[[nodiscard]] inline Result<void> set_gic_attribute(const DeviceFd& gic, std::uint32_t group, std::uint64_t attribute,
                                                    const std::uint32_t* value, CallObserver observe = {}) {
  const kvm_device_attr attr{
      .flags = 0, .group = group, .attr = attribute, .addr = reinterpret_cast<std::uintptr_t>(value)};
  const auto done = kvm_hello::call(Step::init_vgic, gic, request::set_device_attr, &attr, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

// Step 12. KVM_SET_DEVICE_ATTR on the GIC's fd, twice: group
// KVM_DEV_ARM_VGIC_GRP_NR_IRQS with a u32, vgic_nr_irqs; then group
// KVM_DEV_ARM_VGIC_GRP_CTRL, attribute KVM_DEV_ARM_VGIC_CTRL_INIT. NR_IRQS:
// EINVAL, a number KVM does not take; EBUSY, the number is fixed already
// (set before, or the GIC initialised: vgic_set_common_attr,
// vgic-kvm-device.c). CTRL_INIT: EBUSY, a vCPU is being created meanwhile
// (vgic_init, vgic-init.c). Both: EIO, the VM is dead, because a KVM_RUN
// before this step failed (kvm_device_ioctl, virt/kvm/kvm_main.c). A second
// CTRL_INIT does nothing and returns 0.
// Why: the GIC has state for every vCPU (its redistributor, its SGIs and
// PPIs), so KVM sizes it once they all exist; from then on no vCPU can be
// added (EBUSY), and the first KVM_RUN finds it ready.
[[nodiscard]] inline Result<void> init_vgic(const Vgic& vgic, CallObserver observe = {}) {
  const std::uint32_t nr_irqs = vgic_nr_irqs;
  if (const auto sized = set_gic_attribute(vgic.fd, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &nr_irqs, observe); !sized) {
    return sized;
  }
  return set_gic_attribute(vgic.fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, nullptr, observe);
}

// ==== Step 13: the timer's interrupt =========================================

// Step 13. KVM_GET_DEVICE_ATTR (struct kvm_device_attr) on the vCPU fd:
// group KVM_ARM_VCPU_TIMER_CTRL, attribute KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
// addr the address of an int that KVM fills (kvm_arm_timer_get_attr,
// arch/arm64/kvm/arch_timer.c). Returns the INTID of the vCPU's virtual
// timer: 27 unless the program set another (KVM_SET_DEVICE_ATTR, before the
// first KVM_RUN). ENXIO: an attribute this kernel does not have.
// Why: the guest must enable exactly this PPI in its redistributor (GICv3)
// or distributor (GICv2); reading it is how a program knows it, as a
// VMM reads it to describe the timer to an operating system.
[[nodiscard]] inline Result<std::uint32_t> read_timer_irq(const VcpuFd& vcpu, CallObserver observe = {}) {
  int intid = 0;
  const kvm_device_attr attr{.flags = 0,
                             .group = KVM_ARM_VCPU_TIMER_CTRL,
                             .attr = KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
                             .addr = reinterpret_cast<std::uintptr_t>(&intid)};
  const auto done = kvm_hello::call(Step::read_timer_irq, vcpu, request::get_vcpu_attr, &attr, observe);
  if (!done) return std::unexpected(done.error());
  return static_cast<std::uint32_t>(intid);
}

// ==== Step 14: an irqfd ======================================================

// Step 14. eventfd(0, EFD_CLOEXEC), then KVM_IRQFD (struct kvm_irqfd) on the
// VM fd with that fd and gsi = spi_intid - 32: on arm64 KVM routes gsi n to
// SPI 32 + n by default (kvm_vgic_setup_default_irq_routing,
// vgic-irqfd.c). Returns the eventfd's owner and the gsi.
// Problem::not_an_spi: spi_intid is no SPI (the gsi would be negative).
// KVM_IRQFD: EAGAIN, the GIC is not initialised yet (step 12 comes first:
// kvm_irqfd_assign, virt/kvm/eventfd.c); EBUSY, this eventfd is wired
// already; EBADF, no eventfd.
// Why: a device that runs on its own thread (a disk, a network card) can
// interrupt the guest with one write(2), without an ioctl on the VM: KVM
// raises the SPI when the eventfd is signalled.
[[nodiscard]] inline Result<Irqfd> attach_irqfd(const VmFd& vm, std::uint32_t spi_intid, CallObserver observe = {}) {
  if (!is_spi(spi_intid)) return std::unexpected(Error{Step::attach_irqfd, Problem::not_an_spi, {}, 0, spi_intid});
  const int event = ::eventfd(0, EFD_CLOEXEC);
  if (event < 0) return failed(Step::attach_irqfd, "eventfd");
  Irqfd irqfd{Fd{event}, spi_intid - first_spi};
  const kvm_irqfd wire{.fd = static_cast<std::uint32_t>(event), .gsi = irqfd.gsi, .flags = 0, .resamplefd = 0, .pad = {}};
  const auto done = kvm_hello::call(Step::attach_irqfd, vm, request::irqfd, &wire, observe);
  if (!done) return std::unexpected(done.error());
  return irqfd;
}

// Signals the irqfd: write(2) of the 8-byte count 1 to its eventfd. KVM
// raises SPI 32 + gsi inside this write: irqfd_wakeup (virt/kvm/eventfd.c)
// calls kvm_arch_set_irq_inatomic, which on arm64 injects an SPI at once
// once the GIC is initialised (vgic-irqfd.c, Linux 6.1 to 7.2); an edge SPI
// is then pending. (irqfd_inject, a rise and a fall on a kernel worker, is
// the way for what cannot be injected there.) Error: write's errno, as
// step 14's.
[[nodiscard]] inline Result<void> ring_irqfd(const Irqfd& irqfd) {
  const std::uint64_t one = 1;
  if (::write(irqfd.event.get(), &one, sizeof one) != static_cast<ssize_t>(sizeof one)) {
    return failed(Step::attach_irqfd, "write");
  }
  return {};
}

// ==== Step 15: an SPI from the program =======================================
//
// KVM_IRQ_LINE's struct kvm_irq_level holds `irq`, a number that packs the
// interrupt's kind, the vCPU and the INTID, and `level` (api.rst, 4.25
// KVM_IRQ_LINE; the fields' macros in <asm/kvm.h>):
//
//    31      28 27      24 23           16 15                            0
//   +----------+----------+---------------+-------------------------------+
//   | vcpu2_idx| irq_type |   vcpu_idx    |            irq_id             |
//   +----------+----------+---------------+-------------------------------+
//   irq_type: KVM_ARM_IRQ_TYPE_CPU (0), the vCPU's own IRQ/FIQ line, only
//   without an in-kernel GIC; _SPI (1); _PPI (2). vcpu: the vCPU, for a PPI
//   (vcpu2_idx * 256 + vcpu_idx; ignored for an SPI). irq_id: the INTID
//   itself, 32 and up for an SPI, 16 to 31 for a PPI: not the SPI's number
//   counted from 32, as the gsi of KVM_IRQFD is.

// KVM_IRQ_LINE's irq for an SPI.
constexpr std::uint32_t irq_line_spi(std::uint32_t intid) {
  return (std::uint32_t{KVM_ARM_IRQ_TYPE_SPI} << KVM_ARM_IRQ_TYPE_SHIFT) | (intid & KVM_ARM_IRQ_NUM_MASK);
}
// KVM_IRQ_LINE's irq for a PPI of one vCPU (its id: 6.12 and 7.2 read the
// field as the vCPU's id, kvm_get_vcpu_by_id(); Linux 6.1 as its index,
// kvm_get_vcpu(), and then that vCPU's id as an index again: Part III says
// more. The same when ids are 0, 1, 2, ... in the order they were made).
constexpr std::uint32_t irq_line_ppi(std::uint32_t vcpu, std::uint32_t intid) {
  return (((vcpu >> 8) & KVM_ARM_IRQ_VCPU2_MASK) << KVM_ARM_IRQ_VCPU2_SHIFT) |
         (std::uint32_t{KVM_ARM_IRQ_TYPE_PPI} << KVM_ARM_IRQ_TYPE_SHIFT) |
         ((vcpu & KVM_ARM_IRQ_VCPU_MASK) << KVM_ARM_IRQ_VCPU_SHIFT) | (intid & KVM_ARM_IRQ_NUM_MASK);
}

// The fields of a KVM_IRQ_LINE irq, taken apart (for the -v trace).
struct IrqLineFields {
  std::uint32_t type;   // KVM_ARM_IRQ_TYPE_*
  std::uint32_t vcpu;   // vcpu2_idx * 256 + vcpu_idx
  std::uint32_t intid;  // irq_id
};
constexpr IrqLineFields irq_line_fields(std::uint32_t irq) {
  return {(irq >> KVM_ARM_IRQ_TYPE_SHIFT) & KVM_ARM_IRQ_TYPE_MASK,
          ((irq >> KVM_ARM_IRQ_VCPU2_SHIFT) & KVM_ARM_IRQ_VCPU2_MASK) * (KVM_ARM_IRQ_VCPU_MASK + 1) +
              ((irq >> KVM_ARM_IRQ_VCPU_SHIFT) & KVM_ARM_IRQ_VCPU_MASK),
          (irq >> KVM_ARM_IRQ_NUM_SHIFT) & KVM_ARM_IRQ_NUM_MASK};
}

static_assert(KVM_ARM_IRQ_TYPE_CPU == 0 && KVM_ARM_IRQ_TYPE_SPI == 1 && KVM_ARM_IRQ_TYPE_PPI == 2);
static_assert(irq_line_spi(40) == 0x01000028, "SPI, INTID 40 (0x28): the INTID itself, not 40 - 32");
static_assert(irq_line_spi(32) == 0x01000020, "the first SPI is INTID 32");
static_assert(irq_line_ppi(0, 27) == 0x0200001b, "PPI 27 (the virtual timer's) of vCPU 0");
static_assert(irq_line_ppi(1, 27) == 0x0201001b, "vCPU 1: vcpu_idx 1");
static_assert(irq_line_ppi(256, 20) == 0x12000014, "vCPU 256: vcpu2_idx 1, vcpu_idx 0");
static_assert(irq_line_fields(irq_line_ppi(300, 27)).vcpu == 300 && irq_line_fields(irq_line_spi(41)).intid == 41);

// KVM_IRQ_LINE (struct kvm_irq_level) on the VM fd, once.
[[nodiscard]] inline Result<void> set_irq_line(const VmFd& vm, std::uint32_t irq, bool level,
                                               CallObserver observe = {}) {
  const kvm_irq_level line{.irq = irq, .level = level ? 1u : 0u};
  const auto done = kvm_hello::call(Step::inject_spi, vm, request::irq_line, &line, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

// Step 15. KVM_IRQ_LINE on the VM fd with irq_line_spi(intid), level 1, then
// level 0: an edge. An SPI starts edge-triggered (the guest may make it
// level in GICD_ICFGR), and KVM latches an edge as pending at the rise
// (vgic_validate_injection and kvm_vgic_inject_irq, vgic.c), so lowering the
// line at once loses nothing. ENXIO: the VM has no in-kernel GIC (no step
// 11); EINVAL: intid below 32 (an INTID counted from 32 is the mistake this
// catches, for the first 32 SPIs) or beyond the GIC's vgic_nr_irqs; EBUSY:
// a GICv3 not initialised yet (no step 12).
// Why: this is how a device the program emulates (here, lesson 2's
// doorbell) interrupts the guest: one ioctl, no exit, and KVM kicks the
// vCPU out of WFI to take it.
[[nodiscard]] inline Result<void> inject_spi(const VmFd& vm, std::uint32_t intid, CallObserver observe = {}) {
  if (const auto raised = set_irq_line(vm, irq_line_spi(intid), true, observe); !raised) return raised;
  return set_irq_line(vm, irq_line_spi(intid), false, observe);
}

// ---- Looking into the vGIC: a vCPU's priority mask -------------------------
//
// Not a step: what a program reads to say why a guest's interrupts never
// came. KVM keeps each vCPU's CPU interface (its PMR among the rest) and
// lets a program read it through the GIC's fd, as a VMM does to save a VM:
// KVM_GET_DEVICE_ATTR (struct kvm_device_attr) on the GIC's fd,
//   GICv3: group KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS; attr: the vCPU's MPIDR
//          affinity (Aff3.Aff2.Aff1.Aff0, a byte each) in bits 63-32, the
//          system register's op0, op1, CRn, CRm, op2 in bits 15-0; a u64.
//   GICv2: group KVM_DEV_ARM_VGIC_GRP_CPU_REGS; attr: the vCPU's id in bits
//          39-32, the register's offset in the GICC frame in bits 31-0; a u32.
// (Documentation/virt/kvm/devices/arm-vgic-v3.rst and arm-vgic.rst;
// vgic_v3_parse_attr and vgic_v2_parse_attr in vgic-kvm-device.c.)

// ICC_PMR_EL1 (op0 3, op1 0, CRn 4, CRm 6, op2 0), packed as the attribute's
// low 16 bits want it: the packing of ARM64_SYS_REG's low bits too.
inline constexpr std::uint64_t icc_pmr_el1_encoding = ARM64_SYS_REG(3, 0, 4, 6, 0) & KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK;
static_assert(icc_pmr_el1_encoding == 0xc230);
inline constexpr std::uint64_t gicc_pmr_offset = 0x4;  // GICC_PMR in a GICv2's CPU interface frame
// MPIDR_EL1, the vCPU's number for the GIC (KVM makes it from the vCPU's id:
// reset_mpidr, arch/arm64/kvm/sys_regs.c).
inline constexpr reg::U64 mpidr_el1_register{ARM64_SYS_REG(3, 0, 0, 0, 5)};

// The attribute's bits 63-32 for a vCPU of this MPIDR_EL1: its Aff3 (MPIDR's
// bits 39-32) above Aff2, Aff1 and Aff0 (its bits 23-0).
constexpr std::uint64_t vgic_mpidr_field(std::uint64_t mpidr) {
  const std::uint64_t aff3 = (mpidr >> 32) & 0xff;
  return ((aff3 << 24) | (mpidr & 0xffffff)) << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT;
}
static_assert(vgic_mpidr_field(0x80000000) == 0, "vCPU 0: MPIDR's bit 31 (RES1) is no affinity");
static_assert(vgic_mpidr_field(0xab80010203) == 0xab01020300000000);

// Reads the vCPU's priority mask from the vGIC: 0 to 255, as the guest
// writes it to ICC_PMR_EL1 (GICv3) or GICC_PMR (GICv2). KVM resets it to 0
// (vgic_v3_enable and vgic_v2_enable, vgic_v3_reset and vgic_v2_reset in
// 7.2, zero the vCPU's VMCR, where PMR is kept). A
// GICv2's device gives only PMR's 5 high bits, shifted down (it exports the
// VMCR's VMPriMask: vgic_mmio_read_vcpuif, vgic-mmio-v2.c); this puts them
// back in place. For a GICv3 it reads MPIDR_EL1 first (KVM_GET_ONE_REG).
// Call it while no vCPU of the VM is in KVM_RUN: EBUSY otherwise
// (lock_all_vcpus in vgic-kvm-device.c, kvm_trylock_all_vcpus in 7.2);
// EINVAL: no vCPU with that MPIDR or id.
// Errors name `step`, the step the program was at.
// Why: an interrupt is signalled to a vCPU only if its priority is lower than
// PMR (kvm_vgic_vcpu_pending_irq, vgic/vgic.c: irq->priority < vmcr.pmr), so
// a PMR of 0, the reset value, lets none through, and a WFI sleeps forever.
[[nodiscard]] inline Result<std::uint32_t> read_priority_mask(const Vgic& vgic, const Vcpu& vcpu,
                                                              Step step = Step::run_guest, CallObserver observe = {}) {
  std::uint64_t value = 0;
  kvm_device_attr attr{.flags = 0, .group = 0, .attr = 0, .addr = reinterpret_cast<std::uintptr_t>(&value)};
  if (vgic.version == GicVersion::v3) {
    std::uint64_t mpidr = 0;  // (get_register() in the Appendix, spelled out: it comes later in this file)
    const kvm_one_reg one{.id = mpidr_el1_register.raw(), .addr = reinterpret_cast<std::uintptr_t>(&mpidr)};
    if (const auto read = kvm_hello::call(step, vcpu.fd, request::get_one_reg, &one, observe); !read) {
      return std::unexpected(read.error());
    }
    attr.group = KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS;
    attr.attr = vgic_mpidr_field(mpidr) | icc_pmr_el1_encoding;
  } else {
    attr.group = KVM_DEV_ARM_VGIC_GRP_CPU_REGS;
    attr.attr = (std::uint64_t{vcpu.id} << KVM_DEV_ARM_VGIC_CPUID_SHIFT) | gicc_pmr_offset;
  }
  const auto done = kvm_hello::call(step, vgic.fd, request::get_device_attr, &attr, observe);
  if (!done) return std::unexpected(done.error());
  if (vgic.version == GicVersion::v3) return static_cast<std::uint32_t>(value & 0xff);
  return static_cast<std::uint32_t>((value & 0x1f) << 3);  // a u32 was written: its low byte, little-endian
}

// ==== Lesson 2's device: the guest's hello, its interrupts, its doorbell =====
//
// The host side of lesson 2's guest (lesson2/guest.S): OUT as lesson 1's
// (HelloDevice's), and two registers of its own. IRQ: the guest writes the
// INTID its handler just took (each tick of its timer, each SPI). DOORBELL:
// the guest asks for an interrupt, and the device sends it at once, before
// the guest runs again: KVM_HELLO_RING_LINE raises SPI KVM_HELLO_SPI_LINE
// with KVM_IRQ_LINE (step 15), KVM_HELLO_RING_IRQFD signals the irqfd wired
// to SPI KVM_HELLO_SPI_IRQFD (step 14). Both need the vGIC initialised
// (step 12). It prints nothing: it keeps a record, in order, which the
// program reads after each exit.

// What the guest writes to DOORBELL to ask for each SPI.
inline constexpr std::uint32_t doorbell_line = KVM_HELLO_RING_LINE;    // spi_line, with KVM_IRQ_LINE
inline constexpr std::uint32_t doorbell_irqfd = KVM_HELLO_RING_IRQFD;  // spi_irqfd, through the irqfd

// One access to IRQ or DOORBELL, as the device saw it.
struct InterruptEvent {
  enum class Kind : std::uint8_t {
    took,  // IRQ: the guest's handler took INTID `value`
    rang,  // DOORBELL: the guest rang with `value` (doorbell_line, doorbell_irqfd, or one we do not know)
  };
  Kind kind;
  std::uint32_t value;
  std::chrono::steady_clock::time_point at;  // when its exit reached the device
};

class InterruptDevice {
 public:
  static constexpr std::size_t event_limit = 256;  // events kept: a guest that floods us cannot fill memory

  // `vm` and `irqfd` must outlive the device; `observe` sees its injections.
  InterruptDevice(const VmFd& vm, const Irqfd& irqfd, CallObserver observe = {})
      : vm_(vm), irqfd_(irqfd), observe_(observe) {
    events_.reserve(event_limit);  // nothing allocated while the guest runs
  }

  // MmioDevice: OUT and every read go to the HelloDevice inside; IRQ and
  // DOORBELL are recorded, and the doorbell injects. After an injection
  // fails, failure() says why, and run_guest() stops with it.
  void handle(MmioAccess& access) {
    const bool ours = access.address == mmio_irq || access.address == mmio_doorbell;
    if (!access.is_write || !ours) return hello_.handle(access);
    std::uint32_t value = 0;
    std::memcpy(&value, access.data.data(), std::min<std::size_t>(access.length, sizeof value));
    const bool rang = access.address == mmio_doorbell;
    if (events_.size() < event_limit) {
      events_.push_back({rang ? InterruptEvent::Kind::rang : InterruptEvent::Kind::took, value,
                         std::chrono::steady_clock::now()});
    }
    if (!rang || failure_) return;
    Result<void> sent;
    if (value == doorbell_line) sent = inject_spi(vm_, spi_line, observe_);
    if (value == doorbell_irqfd) sent = ring_irqfd(irqfd_);
    if (!sent) failure_ = sent.error();
  }

  // The first injection that failed, if any.
  std::optional<Error> failure() const { return failure_; }
  // Every IRQ and DOORBELL write, in order (the first event_limit of them).
  std::span<const InterruptEvent> events() const { return events_; }
  // The INTIDs the guest reported taking, in order.
  std::vector<std::uint32_t> taken() const {
    std::vector<std::uint32_t> intids;
    for (const InterruptEvent& event : events_) {
      if (event.kind == InterruptEvent::Kind::took) intids.push_back(event.value);
    }
    return intids;
  }
  const HelloDevice& hello() const { return hello_; }

  static constexpr bool has_register(std::uint64_t address) {
    return HelloDevice::has_register(address) || address == mmio_irq || address == mmio_doorbell;
  }

 private:
  const VmFd& vm_;
  const Irqfd& irqfd_;
  CallObserver observe_;
  HelloDevice hello_;
  std::vector<InterruptEvent> events_;
  std::optional<Error> failure_;
};
static_assert(MmioDevice<InterruptDevice>);

// ==== Part III: several vCPUs =================================================
//
// Lesson 3 gives the VM a second vCPU. Nothing in KVM starts it: the guest
// does, as an arm64 operating system starts its other CPUs, with PSCI
// CPU_ON (0xC4000003: x1 the target's MPIDR, x2 where it starts, x3 a
// context id it gets in x0), which KVM answers inside the kernel
// (kvm_psci_vcpu_on, arch/arm64/kvm/psci.c, Linux 6.1, 6.12 and 7.2): it
// finds the vCPU whose MPIDR that is (kvm_mpidr_to_vcpu), answers
// INVALID_PARAMETERS when there is none and ALREADY_ON when it is not
// STOPPED, else records the entry and the context (its reset_state), asks
// for a reset (KVM_REQ_VCPU_RESET), makes it RUNNABLE and wakes it
// (kvm_vcpu_wake_up). The program sees none of it; what it must do:
//
//   create_vcpu (6)     every vCPU, before init_vgic (Part II's order rules).
//   init_vcpu (7)       every vCPU; the others than the first with
//                       KVM_ARM_VCPU_POWER_OFF (other_vcpu_features), so
//                       that they wait for CPU_ON, STOPPED.
//   set_boot_registers  the first vCPU's only: CPU_ON's reset gives the
//   (8)                 others their PC and x0, and everything else as a
//                       reset leaves it (kvm_reset_vcpu, reset.c).
//   read_mp_state (16)  what each vCPU is: STOPPED (powered off) or RUNNABLE.
//   start_vcpu_thread   a thread per vCPU, each in its own KVM_RUN: a
//   (17)                stopped vCPU's sleeps inside KVM (kvm_vcpu_sleep,
//                       arm.c) until CPU_ON wakes it. A vCPU no thread runs
//                       never runs, whatever CPU_ON answered.
//   stop_vcpus (18)     after one vCPU's SYSTEM_OFF, the others: KVM stops
//                       them all (kvm_prepare_system_event, psci.c: STOPPED
//                       and KVM_REQ_SLEEP on every vCPU), but only the
//                       caller's KVM_RUN returns; the others sleep in KVM
//                       until a signal. Request, kick, join.
//
// What differs between kernels (test/e2e_tests.cpp, "lesson 3" tests, checks
// each on the kernel it runs on):
//   - KVM_ARM_VCPU_POWER_OFF: Linux 6.1 keeps it among the vCPU's features
//     (kvm_vcpu_set_target, arch/arm64/kvm/arm.c), so an INIT again must
//     ask for it again (EINVAL otherwise) and powers the vCPU off again;
//     from 6.12 it holds for one INIT only (kvm_arch_vcpu_ioctl_vcpu_init
//     clears it before the features are compared): an INIT without it
//     makes the vCPU RUNNABLE.
//   - the other features: per vCPU in 6.1; from 6.12 the VM's, the same
//     for every vCPU (kvm->arch.vcpu_features, __kvm_vcpu_set_target and
//     kvm_vcpu_init_changed, arm.c): a vCPU that asks for others than the
//     first did gets EINVAL.
//   - KVM_IRQ_LINE's vCPU field, for a PPI (step 15's picture): 6.12 and
//     7.2 read it as the vCPU's id (kvm_get_vcpu_by_id in
//     kvm_vm_ioctl_irq_line, arm.c). 6.1 reads it as the vCPU's index, the
//     order of KVM_CREATE_VCPU (kvm_get_vcpu), then hands that vCPU's id
//     to kvm_vgic_inject_irq (vgic/vgic.c), which takes it for an index
//     again: with vCPUs 0 and 2, field 1 finds vCPU 2 and then no vCPU of
//     index 2, field 2 no index 2 at all (EINVAL both); 6.1 reaches a vCPU
//     only where its id is its index. The same everywhere while the ids
//     are 0, 1, 2... in the order they were made, as lesson 3's are.

// ---- Every vCPU's number, for PSCI and for the GIC ---------------------------
//
// KVM makes a vCPU's MPIDR_EL1 from its id (reset_mpidr, sys_regs.c,
// Linux 6.1, 6.12 and 7.2 alike), at most 16 vCPUs in Aff0, because a GICv3's
// SGI reaches at most 16 CPUs of one Aff1 at once (ICC_SGI1R_EL1's
// TargetList, below):
//
//   MPIDR_EL1   39      32 31 30    24 23      16 15       8 7   4 3    0
//              +----------+--+--------+----------+----------+------+-----+
//              |   Aff3   |1 |  0     |   Aff2   |   Aff1   |  0   |Aff0 |
//              +----------+--+--------+----------+----------+------+-----+
//   from the id:   0            (id >> 12) & 0xff (id >> 4) & 0xff  id & 0xf
//
// Bit 31 is RES1; the affinity fields are the CPU's name for PSCI (CPU_ON's
// x1, AFFINITY_INFO's) and for the GIC.

// The affinity fields of the MPIDR_EL1 KVM gives the vCPU of this id (bit
// 31 not included: CPU_ON's x1 needs only the fields).
constexpr std::uint64_t mpidr_affinity(std::uint32_t vcpu_id) {
  return std::uint64_t{vcpu_id & 0xf} | (std::uint64_t{(vcpu_id >> 4) & 0xff} << 8) |
         (std::uint64_t{(vcpu_id >> 12) & 0xff} << 16);
}
static_assert(mpidr_affinity(0) == 0 && mpidr_affinity(1) == 1, "vCPU 1 is MPIDR 1: CPU_ON's x1 for it");
static_assert(mpidr_affinity(15) == 0xf && mpidr_affinity(16) == 0x100, "vCPU 16: Aff1 1, Aff0 0");
static_assert(mpidr_affinity(0x1234) == 0x012304, "Aff2 1, Aff1 0x23, Aff0 4");

// ICC_SGI1R_EL1: a GICv3 vCPU writes it (msr ICC_SGI1R_EL1, x0) to send an
// SGI, KVM traps the write (vgic_v3_dispatch_sgi, arch/arm64/kvm/vgic/
// vgic-mmio-v3.c) and makes the SGI pending on every vCPU it names
// (the fields' macros: include/linux/irqchip/arm-gic-v3.h):
//
//    63   56 55    48 47  44 43 41 40  39    32 31 28 27  24 23    16 15          0
//   +-------+--------+------+-----+---+--------+-----+------+--------+-------------+
//   | RES0  |  Aff3  |  RS  |RES0 |IRM|  Aff2  |RES0 |INTID |  Aff1  | TargetList  |
//   +-------+--------+------+-----+---+--------+-----+------+--------+-------------+
//
// TargetList: a bit per Aff0 (RS, the range, 0: Aff0 0 to 15, all KVM
// gives) of the CPUs with these Aff3.Aff2.Aff1; IRM 1 would mean "every CPU
// but me" instead. INTID: the SGI, 0 to 15.
constexpr std::uint64_t icc_sgi1r(std::uint32_t intid, std::uint64_t target_mpidr) {
  const std::uint64_t aff0 = target_mpidr & 0xf, aff1 = (target_mpidr >> 8) & 0xff;
  const std::uint64_t aff2 = (target_mpidr >> 16) & 0xff, aff3 = (target_mpidr >> 32) & 0xff;
  return (aff3 << 48) | (aff2 << 32) | (std::uint64_t{intid & 0xf} << 24) | (aff1 << 16) | (std::uint64_t{1} << aff0);
}
static_assert(icc_sgi1r(1, mpidr_affinity(1)) == 0x01000002, "SGI 1 to vCPU 1: INTID 1, TargetList bit 1");
static_assert(icc_sgi1r(0, mpidr_affinity(0)) == 0x1, "SGI 0 to vCPU 0: TargetList bit 0");
static_assert(icc_sgi1r(15, mpidr_affinity(0x1234)) == 0x000000010f230010, "Aff2 1, INTID 15, Aff1 0x23, bit 4");

// GICD_SGIR, a GICv2's distributor register at offset 0xf00 (GIC_DIST_SOFTINT
// in include/linux/irqchip/arm-gic.h): a 4-byte write sends an SGI; KVM
// handles it (vgic_mmio_write_sgir, vgic-mmio-v2.c):
//
//    31     26 25  24 23            16 15  14          4 3      0
//   +---------+------+----------------+---+-------------+--------+
//   |  RES0   |filter| CPUTargetList  |NSA|    RES0     | INTID  |
//   +---------+------+----------------+---+-------------+--------+
//
// filter 0: the CPUs of the list, a bit each (1: all but me; 2: only me).
// The list's bit n is the vCPU KVM created n-th (its index, kvm_for_each_vcpu),
// at most 8: a GICv2 knows no MPIDR.
inline constexpr std::uint64_t gicd_sgir_offset = 0xf00;
constexpr std::uint32_t gicd_sgir(std::uint32_t intid, std::uint32_t cpu_index) {
  return ((std::uint32_t{1} << (cpu_index & 7)) << 16) | (intid & 0xf);
}
static_assert(gicd_sgir(1, 1) == 0x00020001, "SGI 1 to the second vCPU: list bit 1, INTID 1");
static_assert(gicd_sgir(15, 7) == 0x0080000f);

// The SGIs: INTIDs 0 to 15 (VGIC_NR_SGIS, include/kvm/arm_vgic.h).
constexpr bool is_sgi(std::uint32_t intid) { return intid < first_ppi; }
inline constexpr std::uint32_t sgi_intid = KVM_HELLO_SGI_INTID;  // the SGI lesson 3's vCPU 0 sends vCPU 1
static_assert(is_sgi(sgi_intid));

// Where vCPU n's stack starts (it grows down): the top of RAM, n stacks of
// stack_size lower. vCPU 0's is lesson 1's; the map keeps every one above
// the lower half of RAM, where the guest image goes.
inline constexpr std::uint64_t stack_size = KVM_HELLO_STACK_SIZE;
constexpr std::uint64_t stack_top(std::uint32_t vcpu_id) { return ram_base + ram_size - vcpu_id * stack_size; }
static_assert(stack_top(0) == ram_base + ram_size && stack_top(1) == ram_base + ram_size - 0x1000);
static_assert(max_vcpus * stack_size <= ram_size / 2, "every vCPU's stack fits in the upper half of RAM");

// ---- PSCI: the calls lesson 3's guest makes, and what they return -----------
//
// The function ids (x0 of the hvc) and return values (x0 after it) of the
// Arm Power State Coordination Interface, from <linux/psci.h> (uapi).
namespace psci {
inline constexpr std::uint32_t cpu_off = PSCI_0_2_FN_CPU_OFF;                  // the caller stops: STOPPED
inline constexpr std::uint32_t cpu_on64 = PSCI_0_2_FN64_CPU_ON;                // x1 MPIDR, x2 entry, x3 context
inline constexpr std::uint32_t affinity_info64 = PSCI_0_2_FN64_AFFINITY_INFO;  // x1 MPIDR: ON, OFF, ON_PENDING
inline constexpr std::uint32_t system_off = PSCI_0_2_FN_SYSTEM_OFF;            // every vCPU stops
static_assert(cpu_off == 0x84000002 && cpu_on64 == 0xC4000003 && affinity_info64 == 0xC4000004 &&
              system_off == 0x84000008);

// What AFFINITY_INFO answers (kvm_psci_vcpu_affinity_info, psci.c: OFF
// while the vCPU is STOPPED, ON else, INVALID_PARAMETERS for an MPIDR no
// vCPU has; x2, the lowest affinity level, 0 for one CPU). KVM never
// answers ON_PENDING: CPU_ON makes the vCPU RUNNABLE at once.
inline constexpr std::int64_t affinity_on = PSCI_0_2_AFFINITY_LEVEL_ON;
inline constexpr std::int64_t affinity_off = PSCI_0_2_AFFINITY_LEVEL_OFF;
inline constexpr std::int64_t affinity_on_pending = PSCI_0_2_AFFINITY_LEVEL_ON_PENDING;

// The return codes (x0, sign-extended to 64 bits).
inline constexpr std::int64_t success = PSCI_RET_SUCCESS;
inline constexpr std::int64_t not_supported = PSCI_RET_NOT_SUPPORTED;
inline constexpr std::int64_t invalid_parameters = PSCI_RET_INVALID_PARAMS;  // CPU_ON: no vCPU has that MPIDR
inline constexpr std::int64_t denied = PSCI_RET_DENIED;
inline constexpr std::int64_t already_on = PSCI_RET_ALREADY_ON;  // CPU_ON: the target is not STOPPED
inline constexpr std::int64_t on_pending = PSCI_RET_ON_PENDING;
inline constexpr std::int64_t internal_failure = PSCI_RET_INTERNAL_FAILURE;
inline constexpr std::int64_t not_present = PSCI_RET_NOT_PRESENT;
inline constexpr std::int64_t disabled = PSCI_RET_DISABLED;
inline constexpr std::int64_t invalid_address = PSCI_RET_INVALID_ADDRESS;
static_assert(invalid_parameters == -2 && already_on == -4 && invalid_address == -9);
}  // namespace psci

// A PSCI return code's name as the PSCI specification spells it
// ("SUCCESS", "ALREADY_ON"); "" for a value that is none. (AFFINITY_INFO's
// 0, 1, 2 mean ON, OFF, ON_PENDING instead: the caller knows which call it made.)
constexpr std::string_view psci_result_name(std::int64_t x0) {
  switch (x0) {
    case psci::success: return "SUCCESS";
    case psci::not_supported: return "NOT_SUPPORTED";
    case psci::invalid_parameters: return "INVALID_PARAMETERS";
    case psci::denied: return "DENIED";
    case psci::already_on: return "ALREADY_ON";
    case psci::on_pending: return "ON_PENDING";
    case psci::internal_failure: return "INTERNAL_FAILURE";
    case psci::not_present: return "NOT_PRESENT";
    case psci::disabled: return "DISABLED";
    case psci::invalid_address: return "INVALID_ADDRESS";
    default: return "";
  }
}
static_assert(psci_result_name(-4) == "ALREADY_ON" && psci_result_name(0) == "SUCCESS" && psci_result_name(1).empty());

// ==== Step 16: a vCPU's power state ===========================================

// What KVM_GET_MP_STATE says of an arm64 vCPU, and KVM_SET_MP_STATE takes
// (struct kvm_mp_state; api.rst, 4.38 and 4.39): RUNNABLE, it runs when a
// thread calls KVM_RUN; STOPPED, powered off (KVM_ARM_VCPU_POWER_OFF, PSCI
// CPU_OFF, or every vCPU after SYSTEM_OFF): KVM_RUN sleeps in the kernel
// until CPU_ON or a signal; SUSPENDED, in PSCI SYSTEM_SUSPEND, asleep until
// an interrupt (kvm_arm_vcpu_suspend, arm.c).
enum class MpState : std::uint32_t {
  runnable = KVM_MP_STATE_RUNNABLE,
  stopped = KVM_MP_STATE_STOPPED,
  suspended = KVM_MP_STATE_SUSPENDED,
};
static_assert(KVM_MP_STATE_RUNNABLE == 0 && KVM_MP_STATE_STOPPED == 5 && KVM_MP_STATE_SUSPENDED == 10);

// "RUNNABLE", "STOPPED", "SUSPENDED" (as <linux/kvm.h> names them); "" for
// a value that is none of them.
constexpr std::string_view mp_state_name(MpState state) {
  switch (state) {
    case MpState::runnable: return "RUNNABLE";
    case MpState::stopped: return "STOPPED";
    case MpState::suspended: return "SUSPENDED";
  }
  return "";
}

// Step 16. KVM_GET_MP_STATE (struct kvm_mp_state, filled by the kernel) on
// the vCPU fd: the vCPU's power state as KVM keeps it
// (kvm_arch_vcpu_ioctl_get_mpstate, arch/arm64/kvm/arm.c). A vCPU INIT made
// with POWER_OFF reads STOPPED, another RUNNABLE; CPU_ON makes a STOPPED one
// RUNNABLE, CPU_OFF and SYSTEM_OFF STOPPED. It can be read at any time, from
// any thread: a vCPU in KVM_RUN on another thread answers as it is now.
// Why: it says what KVM_RUN will do with the vCPU, run it or sleep, before
// any thread runs it.
[[nodiscard]] inline Result<MpState> read_mp_state(const VcpuFd& vcpu, CallObserver observe = {}) {
  kvm_mp_state state{};
  const auto done = kvm_hello::call(Step::read_mp_state, vcpu, request::get_mp_state, &state, observe);
  if (!done) return std::unexpected(done.error());
  return static_cast<MpState>(state.mp_state);
}

// Step 16, the other way: KVM_SET_MP_STATE (struct kvm_mp_state) on the vCPU
// fd (kvm_arch_vcpu_ioctl_set_mpstate, arm.c, Linux 6.1 to 7.2): RUNNABLE
// makes a stopped vCPU runnable, keeping its registers (after SYSTEM_OFF it
// goes on after its hvc, with x0 as KVM left it); STOPPED powers it off as
// KVM_ARM_VCPU_POWER_OFF does (the selftests' way, psci_test.c). EINVAL: a
// state arm64 does not have.
// Why: a program restores a saved VM's vCPUs this way, or stops one itself.
[[nodiscard]] inline Result<void> set_mp_state(const VcpuFd& vcpu, MpState state, CallObserver observe = {}) {
  const kvm_mp_state wanted{.mp_state = static_cast<std::uint32_t>(state)};
  const auto done = kvm_hello::call(Step::read_mp_state, vcpu, request::set_mp_state, &wanted, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

// ==== Step 17: a thread per vCPU ==============================================
//
// KVM_RUN returns only when the guest needs the program, or a signal comes:
// a thread that runs one vCPU can run nothing else, and a stopped vCPU's
// KVM_RUN sleeps, its thread with it, until CPU_ON. So every vCPU gets a
// thread of its own (as kvmtool and QEMU do), and the program's own thread
// stays free to wait, and to stop them.
//
// A VcpuThread owns its thread as Fd owns an fd: its destructor asks the
// vCPU to stop (StopReason::powered_off) and joins the thread, so no thread
// outlives it, on any path. The thread uses the Vcpu (its kvm_run) and
// whatever the body uses (the device, the VM): declare the VcpuThreads after
// them, so that they are destroyed, and joined, first.

// What a vCPU's thread runs: anything callable as
// Result<RunStats>(Vcpu&, const VcpuStopper&), typically a lambda calling
// run_guest(vcpu, stopper, device, on_exit).
template <class F>
concept VcpuBody = std::invocable<F&, Vcpu&, const VcpuStopper&> &&
                   std::same_as<std::invoke_result_t<F&, Vcpu&, const VcpuStopper&>, Result<RunStats>>;

namespace detail {
// What a VcpuThread shares with its thread. It stays where it is (the
// VcpuThread holds it by pointer), so the thread's references to it hold
// when the VcpuThread moves.
struct VcpuThreadState {
  std::uint32_t vcpu_id = 0;
  std::optional<VcpuStopper> stopper;  // made by the thread (its pthread_self), before its first KVM_RUN
  std::atomic<bool> published{false};  // stopper is there
  std::atomic<StopReason> asked{StopReason::none};  // a stop asked for before the stopper was there
  std::atomic<unsigned> requesting{0};  // request_stop() calls under way: join() waits for them
  std::atomic<bool> closed{false};      // joined, or about to be: no more kicks (its pthread_t ends)
  std::atomic<bool> body_done{false};
  Result<RunStats> result;  // the body's: written by the thread, read after it is joined
  std::jthread thread;      // last: nothing of the state goes while it runs
};

// Counts the bodies that ended, in the whole process: wait_for_first_to_end() waits on it.
inline std::atomic<std::uint64_t> vcpu_bodies_ended{0};

// The vCPU thread's name, for a debugger (gdb's `info threads`) and top:
// "vcpu 1". Only a name: a failure changes nothing.
inline void name_this_thread(std::uint32_t vcpu_id) {
  char name[16];
  std::snprintf(name, sizeof name, "vcpu %u", vcpu_id);
  ::pthread_setname_np(::pthread_self(), name);
}

// The kick, unblocked on the calling thread: a vCPU thread starts with every
// other signal blocked (see start_vcpu_thread).
inline void unblock_kick() {
  sigset_t kick{};
  sigemptyset(&kick);
  sigaddset(&kick, KVM_HELLO_KICK_SIGNAL);
  ::pthread_sigmask(SIG_UNBLOCK, &kick, nullptr);
}

// What the thread runs: its stopper, published; a stop asked for
// meanwhile; its deadline; the body; the result, kept for join().
template <VcpuBody Body>
void run_vcpu_thread(VcpuThreadState& s, Vcpu& vcpu, Body& body, std::chrono::milliseconds time_limit) {
  name_this_thread(s.vcpu_id);
  unblock_kick();
  VcpuStopper& stopper = s.stopper.emplace(vcpu.run());
  s.published.store(true);
  if (const StopReason asked = s.asked.load(); asked != StopReason::none) stopper.request(asked);
  s.result = [&]() -> Result<RunStats> {
    const Deadline deadline(stopper, time_limit);
    if (const auto started = deadline.status(); !started) return std::unexpected(started.error());
    return body(vcpu, std::as_const(stopper));
  }();
  if (!s.result && !s.result.error().vcpu) s.result = std::unexpected(on_vcpu(s.result.error(), s.vcpu_id));
  s.body_done.store(true);
  s.body_done.notify_all();
  vcpu_bodies_ended.fetch_add(1);
  vcpu_bodies_ended.notify_all();
}
}  // namespace detail

class VcpuThread {
 public:
  VcpuThread(VcpuThread&&) noexcept = default;
  VcpuThread& operator=(VcpuThread&&) = delete;  // one thread, one owner, for its whole life
  VcpuThread(const VcpuThread&) = delete;
  VcpuThread& operator=(const VcpuThread&) = delete;
  ~VcpuThread() {
    if (!state_) return;  // moved from
    request_stop(StopReason::powered_off);
    end();  // its result goes with it: join() first to have it
  }

  // (None of the members below is for a VcpuThread moved from.)
  std::uint32_t vcpu_id() const { return state_->vcpu_id; }

  // Asks the vCPU to stop for `why` (VcpuStopper::request: immediate_exit,
  // then the kick), now or, if its thread has not made its stopper yet, as
  // soon as it does. Its body's run_guest() then returns. Async-signal-safe
  // (lock-free atomics and pthread_kill), so a signal handler may call it
  // (Ctrl-C); after join(), it does nothing.
  void request_stop(StopReason why) noexcept {
    detail::VcpuThreadState& s = *state_;
    s.requesting.fetch_add(1);
    if (!s.closed.load()) {
      StopReason now = s.asked.load();
      while (now < why && !s.asked.compare_exchange_weak(now, why)) {
      }
      // Published: made before, so engaged. Else the thread sees `asked` once it publishes.
      if (s.published.load() && s.stopper.has_value()) s.stopper->request(why);
    }
    s.requesting.fetch_sub(1);
  }

  // Whether the body has returned (its thread is ending, or has ended).
  bool finished() const noexcept { return state_->body_done.load(); }

  // Waits for the body to return, joins the thread, and returns the body's
  // result; an Error without a vCPU gets this one's id (on_vcpu). It asks for
  // no stop: a vCPU no one stops runs on until its guest or its deadline
  // ends it. Called again, it returns the same result.
  [[nodiscard]] Result<RunStats> join() {
    end();
    return state_->result;
  }

  // The owner of a started thread's state: start_vcpu_thread() makes one.
  explicit VcpuThread(std::unique_ptr<detail::VcpuThreadState> state) noexcept : state_(std::move(state)) {}

 private:
  // Waits for the body to return, then joins the thread, once: no kick
  // after it (a joined thread's pthread_t names no thread).
  void end() {
    detail::VcpuThreadState& s = *state_;
    if (!s.thread.joinable()) return;
    s.body_done.wait(false);
    s.closed.store(true);
    while (s.requesting.load() != 0) std::this_thread::yield();  // a kick under way ends first
    s.thread.join();
  }

  std::unique_ptr<detail::VcpuThreadState> state_;
};

// Step 17. Starts a thread (pthread_create, through std::jthread) that runs
// `body(vcpu, stopper)`: the thread makes the vCPU's VcpuStopper itself (it
// records the thread, pthread_self, for the kick) before the body's first
// KVM_RUN, and a Deadline of `time_limit` on it (a vCPU still running then
// ends with Problem::watchdog_expired: no thread runs forever). The thread
// is named "vcpu N" and blocks every signal but the kick: a signal meant for
// the program (Ctrl-C, its timers) goes to the program's own threads.
// Returns the thread's owner. Error: pthread_create's errno (EAGAIN: no
// memory for a stack, or too many threads).
// Why: KVM_RUN blocks the thread that calls it, for as long as the vCPU
// runs or sleeps; one thread per vCPU lets all run at once, and lets a
// stopped vCPU wait for CPU_ON inside KVM without stopping the others.
template <VcpuBody Body>
[[nodiscard]] Result<VcpuThread> start_vcpu_thread(Vcpu& vcpu, Body body,
                                                   std::chrono::milliseconds time_limit = default_time_limit) {
  auto state = std::make_unique<detail::VcpuThreadState>();
  state->vcpu_id = vcpu.id;
  detail::VcpuThreadState& s = *state;
  const detail::AllSignalsBlocked blocked;  // the new thread inherits this mask, and unblocks only the kick
  try {
    s.thread = std::jthread([&s, &vcpu, body = std::move(body), time_limit]() mutable {
      detail::run_vcpu_thread(s, vcpu, body, time_limit);
    });
  } catch (const std::system_error& error) {
    return std::unexpected(Error{Step::start_vcpu_thread, Problem::call_failed, "pthread_create", error.code().value(),
                                 0, vcpu.id});
  }
  return VcpuThread(std::move(state));
}

// ==== Step 18: stopping the other vCPUs =======================================
//
// After a vCPU's PSCI SYSTEM_OFF, KVM has stopped every vCPU of the VM
// (kvm_psci_system_off -> kvm_prepare_system_event, psci.c: each STOPPED,
// and KVM_REQ_SLEEP made on all), but only the caller's KVM_RUN returns, with
// KVM_EXIT_SYSTEM_EVENT. The others' threads sleep on in KVM_RUN
// (kvm_vcpu_sleep, arm.c, an interruptible wait) and would sleep forever: a
// signal wakes them (the kick), and KVM_RUN returns EINTR. The same holds
// for a vCPU asleep in WFI, or powered off by CPU_OFF.

// Waits until the body of one of `threads` has returned; returns its index
// (the first such, when several have). Returns at once if one has already.
// `threads` must not be empty.
[[nodiscard]] inline std::size_t wait_for_first_to_end(std::span<const VcpuThread> threads) {
  for (;;) {
    const std::uint64_t seen = detail::vcpu_bodies_ended.load();
    for (std::size_t i = 0; i < threads.size(); ++i) {
      if (threads[i].finished()) return i;
    }
    detail::vcpu_bodies_ended.wait(seen);  // until another body ends, anywhere
  }
}

// Step 18. For each thread: request_stop(why) (immediate_exit set, then the
// kick, pthread_kill with KVM_HELLO_KICK_SIGNAL), for all of them first;
// then join() each. In that order: the request before the kick, so that a
// thread between two KVM_RUNs does not miss it; every kick before the first
// join, so that no vCPU waits for another's join. Returns each thread's
// result, in the order of `threads`: with StopReason::powered_off a vCPU
// that stopped for it ended cleanly (RunStats), one that had ended before
// gives what it ended with. A thread whose body had returned is only joined.
// Why: SYSTEM_OFF ends one KVM_RUN, the caller's; without this step the
// others would sleep in KVM until their deadline.
[[nodiscard]] inline std::vector<Result<RunStats>> stop_vcpus(std::span<VcpuThread> threads, StopReason why) {
  for (VcpuThread& thread : threads) thread.request_stop(why);
  std::vector<Result<RunStats>> results;
  results.reserve(threads.size());
  for (VcpuThread& thread : threads) results.push_back(thread.join());
  return results;
}
// ==== Lesson 3's device: one device, every vCPU's exits =====================
//
// The host side of lesson 3's guest (lesson3/guest.S), on two vCPUs. Each
// vCPU's MMIO exits come back on that vCPU's own thread, at the same time as
// the other's: the device's state is shared, and one mutex guards all of it.
// Each vCPU's thread handles its exits through a view of its own
// (for_vcpu(id)), the MmioDevice its run_guest() is given: so the device
// knows which vCPU wrote, and every record names it. OUT: the bytes go into
// that vCPU's own line buffer, and a '\n' makes the line one record (two
// vCPUs writing a byte each at once never mix their lines); IRQ: the INTID
// its handler took; PSCI_CALL, then PSCI_RESULT: a PSCI call it made, and
// what the call returned in x0. Reads are HelloDevice's (ANSWER). It prints
// nothing: it keeps each vCPU's records, in order, which the program reads
// after each exit of that vCPU.

// One thing a vCPU did, as the device saw it.
struct VcpuRecord {
  enum class Kind : std::uint8_t {
    line,  // OUT: a line the vCPU wrote, `text`, without its '\n'
    took,  // IRQ: its handler took INTID `value`
    psci,  // PSCI_CALL then PSCI_RESULT: it called PSCI function `value`, which returned `result` in x0
  };
  Kind kind;
  std::uint32_t vcpu;  // which vCPU: its id
  std::string text;
  std::uint32_t value = 0;
  std::int64_t result = 0;
  std::chrono::steady_clock::time_point at;  // when its exit reached the device
};

class VcpusDevice {
 public:
  static constexpr std::size_t record_limit = 256;  // records kept per vCPU: a guest that floods us cannot fill memory
  static constexpr std::size_t line_limit = 256;    // bytes kept of one line (the rest are counted, not kept)

  // The device as one vCPU's thread sees it: an MmioDevice for run_guest().
  class View {
   public:
    void handle(MmioAccess& access) { device_->handle(vcpu_, access); }
    std::uint32_t vcpu() const { return vcpu_; }

   private:
    friend class VcpusDevice;
    View(VcpusDevice& device, std::uint32_t vcpu) : device_(&device), vcpu_(vcpu) {}
    VcpusDevice* device_;
    std::uint32_t vcpu_;
  };

  // A device for vCPUs 0 to vcpu_count - 1.
  explicit VcpusDevice(std::uint32_t vcpu_count) : vcpus_(vcpu_count) {
    for (PerVcpu& v : vcpus_) v.records.reserve(record_limit);
  }
  VcpusDevice(const VcpusDevice&) = delete;
  VcpusDevice& operator=(const VcpusDevice&) = delete;

  // The view for vCPU `id` (below the count it was made with).
  View for_vcpu(std::uint32_t id) { return View(*this, id); }
  std::uint32_t vcpu_count() const { return static_cast<std::uint32_t>(vcpus_.size()); }

  // vCPU `id`'s records from the `from`th on, copied while locked.
  std::vector<VcpuRecord> records(std::uint32_t id, std::size_t from = 0) const {
    const std::scoped_lock lock(mutex_);
    const std::vector<VcpuRecord>& all = vcpus_.at(id).records;
    if (from >= all.size()) return {};
    return {all.begin() + static_cast<std::ptrdiff_t>(from), all.end()};
  }
  // What vCPU `id` wrote to OUT after its last '\n' (a line not finished).
  std::string unfinished_line(std::uint32_t id) const {
    const std::scoped_lock lock(mutex_);
    return vcpus_.at(id).line;
  }

  static constexpr bool has_register(std::uint64_t address) {
    return HelloDevice::has_register(address) || address == mmio_irq || address == mmio_psci_call ||
           address == mmio_psci_result;
  }

 private:
  struct PerVcpu {
    std::string line;                 // OUT's bytes since the last '\n'
    std::optional<std::uint32_t> call;  // the function PSCI_CALL named, until PSCI_RESULT
    std::vector<VcpuRecord> records;
  };

  void handle(std::uint32_t id, MmioAccess& access) {
    if (!access.is_write) return reads_.handle(access);
    std::uint64_t value = 0;
    std::memcpy(&value, access.data.data(), std::min<std::size_t>(access.length, sizeof value));
    const auto now = std::chrono::steady_clock::now();
    const std::scoped_lock lock(mutex_);
    PerVcpu& v = vcpus_.at(id);
    if (access.address == mmio_out) {
      const char byte = static_cast<char>(value & 0xff);
      if (byte != '\n') {
        if (v.line.size() < line_limit) v.line.push_back(byte);
        return;
      }
      add(v, {VcpuRecord::Kind::line, id, std::exchange(v.line, {}), 0, 0, now});
    } else if (access.address == mmio_irq) {
      add(v, {VcpuRecord::Kind::took, id, {}, static_cast<std::uint32_t>(value), 0, now});
    } else if (access.address == mmio_psci_call) {
      v.call = static_cast<std::uint32_t>(value);
    } else if (access.address == mmio_psci_result) {
      const std::optional<std::uint32_t> call = std::exchange(v.call, std::nullopt);
      if (call) add(v, {VcpuRecord::Kind::psci, id, {}, *call, static_cast<std::int64_t>(value), now});
    }
  }
  static void add(PerVcpu& v, VcpuRecord record) {
    if (v.records.size() < record_limit) v.records.push_back(std::move(record));
  }

  mutable std::mutex mutex_;  // guards vcpus_: every vCPU's thread comes through handle()
  std::vector<PerVcpu> vcpus_;
  HelloDevice reads_;  // answers reads (ANSWER); it keeps no state for them
};
static_assert(MmioDevice<VcpusDevice::View>);

// ==== Appendix: seeing inside ================================================
//
// Not steps: what a program uses to look at the guest. Reading its registers
// (for a dump after it stopped), single-stepping it (one exit per guest
// instruction), a hardware breakpoint (one exit when it gets to an address),
// and reading what KVM counted while it ran.

// KVM_GET_ONE_REG is also _IOW: the struct goes in, and the kernel writes the
// value, sizeof(T) bytes (RegisterId proves it), through the address inside it.
template <RegisterValue T>
[[nodiscard]] Result<T> get_register(Step step, const VcpuFd& vcpu, RegisterId<T> id, CallObserver observe = {}) {
  T value{};
  const kvm_one_reg one{.id = id.raw(), .addr = reinterpret_cast<std::uintptr_t>(&value)};
  const auto done = kvm_hello::call(step, vcpu, request::get_one_reg, &one, observe);
  if (!done) return std::unexpected(done.error());
  return value;
}

// The registers a dump shows: x0-x30, and those that say where the guest is.
struct Registers {
  std::array<std::uint64_t, reg::x_count> x{};
  std::uint64_t pc = 0, pstate = 0, sp_el1 = 0, sp_el0 = 0, elr_el1 = 0, esr_el1 = 0, far_el1 = 0, vbar_el1 = 0;
};

// The register table: each register this program names, its ONE_REG id, and
// where Registers keeps it (none for the firmware register). The dump, the
// stepper's changes and the -v trace all read it; x0-x30 are reg::x(n), or
// reg::x_registers[n] for an n known at run time.
struct RegisterInfo {
  std::string_view name;
  reg::U64 id;
  std::uint64_t Registers::*field;
};
inline constexpr RegisterInfo named_registers[] = {
    {"sp_el0", reg::sp_el0, &Registers::sp_el0},    {"pc", reg::pc, &Registers::pc},
    {"pstate", reg::pstate, &Registers::pstate},    {"sp_el1", reg::sp_el1, &Registers::sp_el1},
    {"elr_el1", reg::elr_el1, &Registers::elr_el1}, {"esr_el1", reg::esr_el1, &Registers::esr_el1},
    {"far_el1", reg::far_el1, &Registers::far_el1}, {"vbar_el1", reg::vbar_el1, &Registers::vbar_el1},
    {"psci_version", reg::psci_version, nullptr},
};

// Every register of Registers, read with KVM_GET_ONE_REG one by one.
[[nodiscard]] inline Result<Registers> read_registers(const VcpuFd& vcpu, Step step = Step::run_guest,
                                                      CallObserver observe = {}) {
  Registers regs;
  for (std::size_t n = 0; n < regs.x.size(); ++n) {
    const auto value = get_register(step, vcpu, reg::x_registers[n], observe);
    if (!value) return std::unexpected(value.error());
    regs.x[n] = *value;
  }
  for (const RegisterInfo& info : named_registers) {
    if (info.field == nullptr) continue;
    const auto value = get_register(step, vcpu, info.id, observe);
    if (!value) return std::unexpected(value.error());
    regs.*info.field = *value;
  }
  return regs;
}

// ---- Debugging the guest: single steps and hardware breakpoints ------------
//
// KVM_SET_GUEST_DEBUG makes KVM the guest's debugger: it routes the CPU's
// debug exceptions from the guest to itself (MDCR_EL2.TDE, set by
// kvm_arm_setup_mdcr_el2() in arch/arm64/kvm/debug.c) and turns each into
// KVM_EXIT_DEBUG, the syndrome in kvm_run.debug.arch.hsr
// (kvm_handle_guest_debug() in arch/arm64/kvm/handle_exit.c). The guest's
// own PSTATE.D does not mask them: it masks only debug exceptions taken to
// the guest's own exception level, and these go to EL2.

// What KVM_SET_GUEST_DEBUG asks for, from the next KVM_RUN on. Neither (the
// default) switches debugging off.
struct GuestDebug {
  bool single_step = false;                 // KVM_GUESTDBG_SINGLESTEP: an exit after each instruction (EC 0x32)
  std::optional<std::uint64_t> breakpoint;  // KVM_GUESTDBG_USE_HW: an exit before the instruction here (EC 0x30)
};

// A hardware breakpoint is a pair of the CPU's registers: DBGBVR<n>_EL1 holds
// the address, DBGBCR<n>_EL1 says how to match it (Arm Architecture Reference
// Manual, DBGBCR<n>_EL1):
//
//    23   20 19  16 15  14  13  12    9 8     5 4    3 2   1  0
//   +-------+------+------+---+-------+-------+------+-----+---+
//   |  BT   | LBN  | SSC  |HMC| RES0  |  BAS  | RES0 | PMC | E |
//   +-------+------+------+---+-------+-------+------+-----+---+
//     0000    0000    00    0           1111           01    1
//
// BT 0: stop at the address in DBGBVR<n>_EL1 (LBN: no linked breakpoint);
// SSC, HMC and PMC 0b01: only when the CPU runs at EL1, as the guest does;
// BAS 0b1111: an A64 instruction's 4 bytes; E: enabled. (Linux builds its
// own from the same fields: encode_ctrl_reg() in
// arch/arm64/include/asm/hw_breakpoint.h, where PMC 0b01 is
// AARCH64_BREAKPOINT_EL1 and BAS 0b1111 ARM_BREAKPOINT_LEN_4.)
inline constexpr std::uint64_t breakpoint_control = (0b1111 << 5) | (0b01 << 1) | 1;

// KVM_SET_GUEST_DEBUG (struct kvm_guest_debug) on the vCPU fd: control is
// KVM_GUESTDBG_ENABLE and the bits `what` asks for (0 when it asks for
// nothing: debugging off); a breakpoint goes in the first register pair,
// dbg_bvr[0] and dbg_bcr[0] of struct kvm_guest_debug_arch, which KVM loads
// into the CPU's at each entry into the guest (__debug_switch_to_guest_common()
// in arch/arm64/kvm/hyp/include/hyp/debug-sr.h). EINVAL: a control bit the
// host does not support.
[[nodiscard]] inline Result<void> set_guest_debug(const VcpuFd& vcpu, const GuestDebug& what,
                                                  CallObserver observe = {}) {
  kvm_guest_debug debug{};
  if (what.single_step) debug.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
  if (what.breakpoint) {
    debug.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW;
    debug.arch.dbg_bvr[0] = *what.breakpoint;
    debug.arch.dbg_bcr[0] = breakpoint_control;
  }
  const auto done = kvm_hello::call(Step::run_guest, vcpu, request::set_guest_debug, &debug, observe);
  if (!done) return std::unexpected(done.error());
  return {};
}

namespace detail {
// KVM_CHECK_EXTENSION on the /dev/kvm fd; Problem::missing_capability when it says 0.
[[nodiscard]] inline Result<void> require_capability(const KvmFd& kvm, const Capability& capability,
                                                     CallObserver observe) {
  const auto value = kvm_hello::call(Step::run_guest, kvm, request::check_extension,
                                     static_cast<unsigned long>(capability.id), observe);
  if (!value) return std::unexpected(value.error());
  if (*value <= 0) {
    return std::unexpected(Error{Step::run_guest, Problem::missing_capability, "KVM_CHECK_EXTENSION", 0,
                                 static_cast<std::uint64_t>(capability.id)});
  }
  return {};
}
}  // namespace detail

// Single-stepping: checks KVM_CAP_SET_GUEST_DEBUG on the /dev/kvm fd, then
// set_guest_debug() with KVM_GUESTDBG_SINGLESTEP: from the next KVM_RUN on,
// the guest leaves with KVM_EXIT_DEBUG after every instruction, its ESR (EC
// 0x32, software step) in kvm_run.debug.arch.hsr.
// Why: watching a guest one instruction at a time is how you learn what it does.
[[nodiscard]] inline Result<void> enable_single_step(const KvmFd& kvm, const VcpuFd& vcpu, CallObserver observe = {}) {
  if (const auto supported = detail::require_capability(kvm, single_step_capability, observe); !supported) {
    return supported;
  }
  return set_guest_debug(vcpu, {.single_step = true, .breakpoint = std::nullopt}, observe);
}

// A hardware breakpoint at `address`: checks KVM_CAP_GUEST_DEBUG_HW_BPS on
// the /dev/kvm fd (how many breakpoint register pairs the CPU has), then
// set_guest_debug() with KVM_GUESTDBG_USE_HW. The guest runs at full speed:
// the CPU compares the address of each instruction with DBGBVR0_EL1 and, when
// they match, takes the exception before the instruction runs: KVM_EXIT_DEBUG,
// EC 0x30 (breakpoint), PC at that instruction. Entered again as it is, the
// guest would stop there again at once: to go on, step over the instruction
// (set_guest_debug() with single_step only, one KVM_RUN, then the breakpoint
// again), as debuggers do.
// Why: a breakpoint costs nothing until the guest gets there.
[[nodiscard]] inline Result<void> set_hardware_breakpoint(const KvmFd& kvm, const VcpuFd& vcpu, std::uint64_t address,
                                                          CallObserver observe = {}) {
  if (const auto supported = detail::require_capability(kvm, hardware_breakpoints_capability, observe); !supported) {
    return supported;
  }
  return set_guest_debug(vcpu, {.single_step = false, .breakpoint = address}, observe);
}

// ---- The exits we never see: the vCPU's statistics -------------------------
//
// KVM counts, for each vCPU, what it handled inside the kernel as well as
// what it returned to us. KVM_GET_STATS_FD (no argument) on the vCPU fd
// returns a read-only fd holding (Documentation/virt/kvm/api.rst):
//
//   struct kvm_stats_header      num_desc, name_size, and where the rest lies
//   at desc_offset, num_desc of: struct kvm_stats_desc, then its name (name_size bytes)
//   at data_offset:              the values, `size` u64s per statistic, at its `offset`
//
// Needs KVM_CAP_BINARY_STATS_FD (Linux 5.14 and later). On arm64 the vCPU's
// include exits (every return from the guest to KVM), mmio_exit_user (those
// that came on to us), hvc_exit_stat, wfi_exit_stat and halt_wait_ns.

struct VcpuStatistic {
  std::string name;     // "mmio_exit_user"
  std::uint64_t value;  // its value (for a histogram, its first bucket)
  std::uint32_t flags;  // KVM_STATS_TYPE_*, KVM_STATS_UNIT_* and KVM_STATS_BASE_* bits
};

// Each descriptor is its fixed fields, then its name at once: byte 16
// (virt/kvm/binary_stats.c, kvm_stats_read, copies the kernel's descriptors:
// in Linux 6.1 struct _kvm_stats_desc, the 16-byte struct kvm_stats_desc then
// char name[KVM_STATS_NAME_SIZE]; in 6.12 and 7.2 struct kvm_stats_desc
// itself, whose name the kernel declares as that array). Not
// sizeof(struct kvm_stats_desc): its name is __DECLARE_FLEX_ARRAY, which in
// the uapi headers of Linux 6.1 (Debian 12's linux-libc-dev) wraps an empty
// struct that C++, unlike C, gives a byte, so C++ sees 20 there. The headers
// of 6.12 declare it `char name[0]` for C++ (include/uapi/linux/stddef.h).
inline constexpr std::size_t stats_desc_fixed_size =
    offsetof(kvm_stats_desc, bucket_size) + sizeof(kvm_stats_desc::bucket_size);
static_assert(stats_desc_fixed_size == 16, "flags, exponent, size, offset, bucket_size: 4 + 2 + 2 + 4 + 4 bytes");

// The most of a statistics file read: a vCPU's is a few KiB (arm64's about
// twenty descriptors of 64 bytes, their values, the header).
inline constexpr std::size_t stats_file_limit = std::size_t{1} << 20;

namespace detail {
// The whole statistics file, read with pread(2) until it returns 0 (the kernel's
// kvm_stats_read() in virt/kvm/binary_stats.c returns 0 past the end). EFBIG:
// more than stats_file_limit bytes.
[[nodiscard]] inline Result<std::vector<std::uint8_t>> read_stats_file(int fd) {
  std::vector<std::uint8_t> file;
  std::array<std::uint8_t, 4096> chunk;
  for (;;) {
    const ssize_t got = ::pread(fd, chunk.data(), chunk.size(), static_cast<off_t>(file.size()));
    if (got < 0) return failed(Step::run_guest, "pread");
    if (got == 0) return file;
    if (file.size() + static_cast<std::size_t>(got) > stats_file_limit) {
      errno = EFBIG;
      return failed(Step::run_guest, "pread");
    }
    file.insert(file.end(), chunk.begin(), chunk.begin() + got);
  }
}
}  // namespace detail

// The statistics in a file laid out as KVM_GET_STATS_FD's (above): every
// descriptor, with its value. Nothing is read that the file does not hold:
// a header or descriptor that points past its end (num_desc, name_size,
// desc_offset, data_offset, a value's offset) is Problem::bad_statistics.
[[nodiscard]] inline Result<std::vector<VcpuStatistic>> parse_statistics(std::span<const std::uint8_t> file) {
  const auto bad = std::unexpected(Error{Step::run_guest, Problem::bad_statistics, {}, 0, file.size()});
  const auto holds = [&file](std::uint64_t at, std::uint64_t size) {
    return at <= file.size() && size <= file.size() - at;
  };
  kvm_stats_header header{};
  if (!holds(0, sizeof header)) return bad;
  std::memcpy(&header, file.data(), sizeof header);
  const std::uint64_t descriptor = stats_desc_fixed_size + std::uint64_t{header.name_size};
  if (header.desc_offset > file.size() || header.num_desc > (file.size() - header.desc_offset) / descriptor) {
    return bad;
  }
  std::vector<VcpuStatistic> found;
  for (std::uint32_t i = 0; i < header.num_desc; ++i) {
    const std::size_t at = header.desc_offset + i * descriptor;
    kvm_stats_desc desc{};
    std::memcpy(&desc, file.data() + at, stats_desc_fixed_size);
    const std::uint64_t value_at = std::uint64_t{header.data_offset} + desc.offset;
    std::uint64_t value = 0;
    if (!holds(value_at, sizeof value)) return bad;
    std::memcpy(&value, file.data() + value_at, sizeof value);
    const char* name = reinterpret_cast<const char*>(file.data() + at + stats_desc_fixed_size);
    found.push_back({std::string(name, ::strnlen(name, header.name_size)), value, desc.flags});
  }
  return found;
}

// The statistics in an fd laid out as KVM_GET_STATS_FD's: the whole file
// read, then parse_statistics(). Errors: pread's errno, EFBIG for a file
// past stats_file_limit, Problem::bad_statistics.
[[nodiscard]] inline Result<std::vector<VcpuStatistic>> read_statistics(int stats_fd) {
  const auto file = detail::read_stats_file(stats_fd);
  if (!file) return std::unexpected(file.error());
  return parse_statistics(*file);
}

// KVM_GET_STATS_FD on the vCPU fd, then the statistics read from the fd it
// returns (closed again here). ENOTTY: a kernel without binary statistics.
[[nodiscard]] inline Result<std::vector<VcpuStatistic>> read_vcpu_statistics(const VcpuFd& vcpu,
                                                                            CallObserver observe = {}) {
  const auto opened = kvm_hello::call(Step::run_guest, vcpu, request::get_stats_fd, observe);
  if (!opened) return std::unexpected(opened.error());
  const Fd stats(*opened);
  return read_statistics(stats.get());
}

}  // namespace kvm_hello

#endif  // __ASSEMBLER__

// SPDX-License-Identifier: MIT
// bench/bench.hpp: kvm-hello --bench, what a VM exit costs.
//
// The benchmark guest (bench/bench-guest.S) times, with its own counter, N
// MMIO write exits, N MMIO read exits and N in-kernel hvc calls, R times each.
// The host times each step. Two VMs run it: one driven by run_guest(), one by
// the same loop written with bare ioctl(2) calls, to show what the header's
// wrappers cost. A third VM, with a vGIC, runs bench/irq-bench-guest.S: the
// program times what an interrupt costs, from its KVM_IRQ_LINE (or its
// irqfd's write) to the exit of the guest handler's ack, against an MMIO exit
// with no interrupt.
#pragma once

#include <sys/ioctl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/output.hpp"
#include "program/report.hpp"

namespace kh = kvm_hello;

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

enum BenchKind { mmio_write, mmio_read, hvc_in_kernel, bench_kinds };
inline constexpr const char* bench_kind_name[] = {
    "MMIO write, to userspace and back", "MMIO read, to userspace and back", "hvc (PSCI_VERSION), in the kernel"};

// The host side of the benchmark guest: records RESULT writes, answers reads.
// Fixed storage: nothing is allocated while the guest runs.
class BenchDevice {
 public:
  static constexpr std::size_t capacity = 1 + bench_kinds * max_bench_repeats;  // the frequency first

  // NOLINTNEXTLINE(bugprone-easily-swappable-parameters): an MMIO write as KVM reports it, address then value
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
// decode_exit. The same stop at `limit` (a Deadline), the same device.
[[nodiscard]] inline kh::Result<void> raw_run_loop(kh::Vcpu& vcpu, BenchDevice& device,
                                                  std::chrono::milliseconds limit) {
  kvm_run* run = &vcpu.run();
  const int fd = vcpu.fd.get();
  if (const auto kick = kh::install_kick_handler(); !kick) return std::unexpected(kick.error());
  kh::VcpuStopper stopper(*run);
  const kh::Deadline deadline(stopper, limit);
  if (const auto started = deadline.status(); !started) return std::unexpected(started.error());
  for (;;) {
    // 0UL, not 0: a variadic int is 32 bits, the kernel reads 64, and KVM_RUN fails (EINVAL) unless all are 0.
    if (::ioctl(fd, KVM_RUN, 0UL) < 0) {
      if (errno != EINTR) return kh::failed(kh::Step::run_guest, "KVM_RUN");
      if (stopper.reason() == kh::StopReason::none) continue;  // a signal that asked for no stop: go back in
      return std::unexpected(kh::Error{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR,
                                       static_cast<std::uint64_t>(limit.count())});
    }
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
  std::array<std::chrono::nanoseconds, kh::lesson1_step_count> step_time{};  // host clock, per step
  std::chrono::nanoseconds lifetime{};                               // open to SYSTEM_OFF
  BenchDevice device;
};

// Steps 1 to 9 for the benchmark guest, each timed; `loop` is step 9.
// `kinds`: which to measure, one bit per BenchKind.
template <class Loop>
[[nodiscard]] kh::Result<BenchRun> bench_vm(const char* device, std::span<const std::uint8_t> guest,
                                            BenchSettings settings, unsigned kinds, Loop&& loop) {
  BenchRun result;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto last = start;
  const auto lap = [&](kh::Step step) {
    const auto now = clock::now();
    result.step_time[static_cast<std::size_t>(step) - 1] = now - last;
    last = now;
  };
  auto machine = kh::build_machine(guest, device, lap);
  if (!machine) return std::unexpected(machine.error());
  // x0, x1 and x2 tell the guest what to measure (step 8 set PC and SP_EL1).
  for (const auto& [x, value] : {std::pair{kh::reg::x(0), settings.iterations},
                                 {kh::reg::x(1), settings.repeats},
                                 {kh::reg::x(2), std::uint64_t{kinds}}}) {
    const auto set = kh::set_register(kh::Step::set_boot_registers, machine->vcpu.fd, x, value);
    if (!set) return std::unexpected(set.error());
  }
  if (const auto ran = loop(machine->vcpu, result.device); !ran) return std::unexpected(ran.error());
  lap(kh::Step::run_guest);
  result.lifetime = clock::now() - start;
  return result;
}

struct Figures {
  double median_ns, min_ns, spread;  // spread: (max - min) / median
};

// Median, min and spread of measurements in ns (at least one).
inline Figures summarise(std::vector<double> ns) {
  std::sort(ns.begin(), ns.end());
  const double median = ns.size() % 2 == 1 ? ns[ns.size() / 2] : (ns[ns.size() / 2 - 1] + ns[ns.size() / 2]) / 2;
  return {median, ns.front(), median > 0 ? (ns.back() - ns.front()) / median : 0};
}

// The guest's measurements of one kind, as nanoseconds per exit.
inline Figures figures(std::span<const std::uint64_t> results, BenchKind kind, BenchSettings settings) {
  const double ticks_per_second = static_cast<double>(results[0]);
  std::vector<double> ns;
  for (std::uint64_t r = 0; r < settings.repeats; ++r) {
    const double ticks = static_cast<double>(results[1 + static_cast<std::uint64_t>(kind) * settings.repeats + r]);
    ns.push_back(ticks * 1e9 / ticks_per_second / static_cast<double>(settings.iterations));
  }
  return summarise(std::move(ns));
}

// ==== What an interrupt costs (bench/irq-bench-guest.S) ======================
//
// Each round trip starts and ends in the program, timed with steady_clock
// (clock_gettime): from just before the program's KVM_IRQ_LINE, or its write
// to the irqfd, through KVM_RUN, the guest taking the SPI (pending as KVM
// re-enters the vCPU) and its handler's MMIO write, to that exit; and, to
// compare, from the program's answer to an MMIO exit through KVM_RUN to the
// guest's next MMIO exit, with no interrupt. The difference is what the
// injection and the delivery add. No wake-up from WFI is in it: the SPI is
// pending before the vCPU runs.

enum InterruptKind { mmio_exit_round_trip, irq_line_round_trip, irqfd_round_trip, interrupt_kinds };
inline constexpr const char* interrupt_kind_name[] = {"MMIO exit: KVM_RUN to the next exit",
                                                      "KVM_IRQ_LINE to the handler's MMIO ack",
                                                      "irqfd write to the handler's MMIO ack"};
inline constexpr const char* interrupt_kind_key[] = {"mmio_exit_round_trip_ns", "irq_line_round_trip_ns",
                                                     "irqfd_round_trip_ns"};

// Round trips of each kind in one measurement: a sixteenth of the guest-timed
// iterations (an interrupt's round trip is two exits, and under emulation each
// takes hundreds of microseconds), at least one.
inline std::uint64_t interrupt_rounds(BenchSettings settings) {
  return std::max<std::uint64_t>(1, settings.iterations / 16);
}

// Round trips, summed `rounds` to a measurement, per kind, in fixed storage
// (nothing is allocated while the guest runs). A measurement is kept once
// its `rounds` round trips are in; the first max_bench_repeats of each kind.
class RoundTrips {
 public:
  explicit RoundTrips(std::uint64_t rounds) : rounds_(rounds) {}
  void add(InterruptKind kind, std::chrono::nanoseconds took) {
    Kind& k = kinds_[static_cast<std::size_t>(kind)];
    k.sum += took;
    if (++k.counted < rounds_) return;
    if (k.done < k.measurements.size()) k.measurements[k.done++] = k.sum;
    k.sum = {};
    k.counted = 0;
  }
  // The complete measurements of `kind`: each the sum of rounds() round trips.
  std::span<const std::chrono::nanoseconds> measurements(InterruptKind kind) const {
    const Kind& k = kinds_[static_cast<std::size_t>(kind)];
    return {k.measurements.data(), k.done};
  }
  std::uint64_t rounds() const { return rounds_; }

 private:
  struct Kind {
    std::array<std::chrono::nanoseconds, max_bench_repeats> measurements{};
    std::size_t done = 0;
    std::chrono::nanoseconds sum{};
    std::uint64_t counted = 0;
  };
  std::uint64_t rounds_;
  std::array<Kind, interrupt_kinds> kinds_{};
};

// The measurements of one kind as nanoseconds per round trip (at least one).
inline Figures round_trip_figures(const RoundTrips& trips, InterruptKind kind) {
  std::vector<double> ns;
  for (const std::chrono::nanoseconds sum : trips.measurements(kind)) {
    ns.push_back(static_cast<double>(sum.count()) / static_cast<double>(trips.rounds()));
  }
  return summarise(std::move(ns));
}

// The host side of bench/irq-bench-guest.S. SINK: a plain exit, timed from
// the answer to the exit before it, when that was a SINK exit too. DOORBELL:
// starts the clock, then raises the SPI the guest asked for (KVM_IRQ_LINE
// for kh::doorbell_line, the irqfd for kh::doorbell_irqfd). IRQ: the
// handler's ack; the INTID rung for stops the clock (another is not
// counted). OUT (the guest's first exit) and reads: nothing. After an
// injection fails, failure() says why, and run_guest() stops with it.
class InterruptBenchDevice {
 public:
  using clock = std::chrono::steady_clock;

  // `vm` and `irqfd` must outlive the device.
  InterruptBenchDevice(const kh::VmFd& vm, const kh::Irqfd& irqfd, std::uint64_t rounds)
      : vm_(vm), irqfd_(irqfd), trips_(rounds) {}

  void handle(kh::MmioAccess& access) {
    const auto arrived = clock::now();
    std::uint32_t value = 0;
    std::memcpy(&value, access.data.data(), std::min<std::size_t>(access.length, sizeof value));
    if (!access.is_write) {
      access.data.fill(0);
    } else if (access.address == kh::mmio_sink) {
      if (previous_ == kh::mmio_sink) trips_.add(mmio_exit_round_trip, arrived - answered_);
    } else if (access.address == kh::mmio_doorbell) {
      ring(value);
    } else if (access.address == kh::mmio_irq) {
      if (rung_ && value == rung_->intid) trips_.add(rung_->kind, arrived - started_);
      rung_.reset();
    }
    previous_ = access.address;
    answered_ = clock::now();
  }

  std::optional<kh::Error> failure() const { return failure_; }
  const RoundTrips& trips() const { return trips_; }

 private:
  struct Rung {
    InterruptKind kind;
    std::uint32_t intid;
  };
  void ring(std::uint32_t value) {
    rung_.reset();
    if (failure_ || (value != kh::doorbell_line && value != kh::doorbell_irqfd)) return;
    const bool line = value == kh::doorbell_line;
    rung_ = line ? Rung{irq_line_round_trip, kh::spi_line} : Rung{irqfd_round_trip, kh::spi_irqfd};
    started_ = clock::now();
    const kh::Result<void> sent = line ? kh::inject_spi(vm_, kh::spi_line) : kh::ring_irqfd(irqfd_);
    if (!sent) failure_ = sent.error();
  }

  const kh::VmFd& vm_;
  const kh::Irqfd& irqfd_;
  RoundTrips trips_;
  std::uint64_t previous_ = 0;    // the address of the last exit's access
  clock::time_point answered_{};  // when the last exit was handled
  clock::time_point started_{};   // just before the last injection
  std::optional<Rung> rung_;      // the SPI the last doorbell raised, until its ack
  std::optional<kh::Error> failure_;
};
static_assert(kh::MmioDevice<InterruptBenchDevice>);

struct InterruptBenchRun {
  kh::GicVersion gic;
  RoundTrips trips;
};

// Lesson 2's order for the interrupt guest: steps 1 to 5, the vGIC probed,
// created and placed (10, 11), the vCPU (6 to 8; x0 the GIC's version, x1
// the round trips a measurement, x2 the measurements), the vGIC initialised
// (12), an irqfd on kh::spi_irqfd (14); then step 9 with an
// InterruptBenchDevice, stopped at `limit`. Returns the round trips, or the
// first Error.
[[nodiscard]] inline kh::Result<InterruptBenchRun> bench_interrupts(const char* device,
                                                                    std::span<const std::uint8_t> guest,
                                                                    BenchSettings settings,
                                                                    std::chrono::milliseconds limit) {
  auto kvm = kh::open_kvm(device);
  if (!kvm) return std::unexpected(kvm.error());
  if (const auto version = kh::check_api_version(*kvm); !version) return std::unexpected(version.error());
  const auto caps = kh::check_capabilities(*kvm);
  if (!caps) return std::unexpected(caps.error());
  const auto type = kh::vm_type_for(caps->ipa_limit);
  if (!type) return std::unexpected(type.error());
  auto vm = kh::create_vm(*kvm, *type);
  if (!vm) return std::unexpected(vm.error());
  const auto memory = kh::setup_guest_memory(*vm, guest);
  if (!memory) return std::unexpected(memory.error());
  const auto gic = kh::probe_vgic(*vm);
  if (!gic) return std::unexpected(gic.error());
  const auto vgic = kh::create_vgic(*vm, *gic);
  if (!vgic) return std::unexpected(vgic.error());
  auto vcpu = kh::create_vcpu(*kvm, *vm, 0);
  if (!vcpu) return std::unexpected(vcpu.error());
  if (const auto init = kh::init_vcpu(*vm, vcpu->fd); !init) return std::unexpected(init.error());
  if (const auto set = kh::set_boot_registers(vcpu->fd); !set) return std::unexpected(set.error());
  const std::uint64_t rounds = interrupt_rounds(settings);
  for (const auto& [x, value] : {std::pair{kh::reg::x(0), std::uint64_t{static_cast<std::uint32_t>(*gic)}},
                                 {kh::reg::x(1), rounds},
                                 {kh::reg::x(2), settings.repeats}}) {
    const auto set = kh::set_register(kh::Step::set_boot_registers, vcpu->fd, x, value);
    if (!set) return std::unexpected(set.error());
  }
  if (const auto init = kh::init_vgic(*vgic); !init) return std::unexpected(init.error());
  const auto irqfd = kh::attach_irqfd(*vm, kh::spi_irqfd);
  if (!irqfd) return std::unexpected(irqfd.error());
  InterruptBenchDevice sink(*vm, *irqfd, rounds);
  const auto ran = kh::run_guest(*vcpu, sink, limit, [](const kh::Exit&) {});
  if (!ran) return std::unexpected(ran.error());
  return InterruptBenchRun{*gic, sink.trips()};
}

// What the difference between the wrapped and the bare MMIO-write loops says.
// The two loops run one after the other, so the spread within each (noise_ns:
// the larger spread, in ns) does not cover a change of load between them. A
// difference inside the noise says nothing; a positive one beyond it is what
// the wrappers cost; a negative one beyond it cannot be the wrappers (they only
// add work), so it says the machine's load changed between the runs.
inline const char* wrapper_verdict(double difference_ns, double noise_ns) {
  if (std::abs(difference_ns) <= noise_ns) return "within the spread: nothing measurable";
  if (difference_ns > 0) return "beyond the spread: the wrappers' cost, if the machine's load held steady";
  return "the bare loop was slower, beyond the spread: the machine's load changed between the two runs "
         "(wrappers only add work); run again on an idle machine";
}

inline std::string where_measured() {
  const char* emulated = std::getenv("KVM_HELLO_EMULATED");
  if (emulated != nullptr && *emulated != '\0') {
    return std::string("on an EMULATED CPU (") + emulated +
           "): absolute times mean little here; only the ratios within one run mean something";
  }
  return "on this machine's own arm64 CPU, with KVM";
}

// The interrupt VM's lines of the table.
inline void print_interrupts_text(const InterruptBenchRun& interrupts) {
  std::printf("interrupts, host-timed (clock_gettime), a VM with a GICv%u: %" PRIu64
              " round trips a measurement, %zu measurements each, the kinds in turn\n",
              static_cast<unsigned>(interrupts.gic), interrupts.trips.rounds(),
              interrupts.trips.measurements(mmio_exit_round_trip).size());
  std::printf("  %-42s %12s %12s %8s\n", "round trip, program to program", "median", "min", "spread");
  Figures all[interrupt_kinds];
  for (int kind = 0; kind < interrupt_kinds; ++kind) {
    all[kind] = round_trip_figures(interrupts.trips, static_cast<InterruptKind>(kind));
    std::printf("  %-42s %9.0f ns %9.0f ns %7.1f%%\n", interrupt_kind_name[kind], all[kind].median_ns, all[kind].min_ns,
                all[kind].spread * 100);
  }
  std::printf(
      "  an interrupt, beyond an MMIO exit: %+.0f ns by KVM_IRQ_LINE, %+.0f ns by irqfd (medians; the SPI is "
      "pending when the vCPU re-enters: no wake-up from WFI is in it)\n",
      all[irq_line_round_trip].median_ns - all[mmio_exit_round_trip].median_ns,
      all[irqfd_round_trip].median_ns - all[mmio_exit_round_trip].median_ns);
}

inline void print_bench_text(const BenchRun& wrapped, const BenchRun& raw, const InterruptBenchRun& interrupts,
                             BenchSettings settings) {
  const auto results = wrapped.device.results();
  std::printf("kvm-hello --bench: measured %s\n", where_measured().c_str());
  std::printf("guest-timed: cntvct_el0 at %.1f MHz, %" PRIu64 " iterations a measurement, %" PRIu64
              " measurements each\n",
              static_cast<double>(results[0]) / 1e6, settings.iterations, settings.repeats);
  std::printf("  %-42s %12s %12s %8s\n", "exit", "median", "min", "spread");
  Figures all[bench_kinds];
  for (int kind = 0; kind < bench_kinds; ++kind) {
    all[kind] = figures(results, static_cast<BenchKind>(kind), settings);
    std::printf("  %-42s %9.0f ns %9.0f ns %7.1f%%\n", bench_kind_name[kind], all[kind].median_ns, all[kind].min_ns,
                all[kind].spread * 100);
  }
  const Figures raw_write = figures(raw.device.results(), mmio_write, settings);
  std::printf("  %-42s %9.0f ns %9.0f ns %7.1f%%\n", "MMIO write, bare-ioctl loop (no wrappers)", raw_write.median_ns,
              raw_write.min_ns, raw_write.spread * 100);
  std::printf("  ratio MMIO read to userspace / hvc in the kernel: %.1fx\n",
              all[mmio_read].median_ns / all[hvc_in_kernel].median_ns);
  const double difference = all[mmio_write].median_ns - raw_write.median_ns;
  const double noise = std::max(all[mmio_write].spread, raw_write.spread) * all[mmio_write].median_ns;
  std::printf("  wrappers: %+.0f ns per exit against the bare loop; %s\n", difference,
              wrapper_verdict(difference, noise));
  print_interrupts_text(interrupts);
  std::printf("host-timed (clock_gettime), the run with the wrappers:\n");
  for (int n = 1; n <= kh::lesson1_step_count; ++n) {
    const std::string_view name = kh::step_info(static_cast<kh::Step>(n)).name;
    std::printf("  [%d/%d] %-19.*s %12s\n", n, kh::lesson1_step_count, static_cast<int>(name.size()), name.data(),
                format_duration(wrapped.step_time[static_cast<std::size_t>(n) - 1]).c_str());
  }
  std::printf("  VM lifetime, open to SYSTEM_OFF: %s\n", format_duration(wrapped.lifetime).c_str());
}

inline void print_bench_json(const BenchRun& wrapped, const BenchRun& raw, const InterruptBenchRun& interrupts,
                             BenchSettings settings) {
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
  std::printf("  \"ratio_mmio_read_to_hvc\": %.3f,\n", all[mmio_read].median_ns / all[hvc_in_kernel].median_ns);
  std::printf("  \"interrupt_gic\": %u,\n  \"interrupt_rounds\": %" PRIu64 ",\n", static_cast<unsigned>(interrupts.gic),
              interrupts.trips.rounds());
  for (int kind = 0; kind < interrupt_kinds; ++kind) {
    const Figures f = round_trip_figures(interrupts.trips, static_cast<InterruptKind>(kind));
    std::printf("  \"%s\": {\"median\": %.1f, \"min\": %.1f, \"spread\": %.4f},\n", interrupt_kind_key[kind],
                f.median_ns, f.min_ns, f.spread);
  }
  std::printf("  \"step_ns\": [");
  for (int n = 0; n < kh::lesson1_step_count; ++n) {
    std::printf("%s%lld", n == 0 ? "" : ", ",
                static_cast<long long>(wrapped.step_time[static_cast<std::size_t>(n)].count()));
  }
  std::printf("],\n  \"lifetime_ns\": %lld\n}\n", static_cast<long long>(wrapped.lifetime.count()));
}

// The two guests the benchmark runs, by name: two images of one type side
// by side in an argument list would be easy to swap.
struct BenchGuests {
  std::span<const std::uint8_t> exits;       // bench/bench-guest.S: MMIO and hvc exits
  std::span<const std::uint8_t> interrupts;  // bench/irq-bench-guest.S: an interrupt's round trip
};

// Runs the benchmark guest twice (wrapped loop, bare loop), then the
// interrupt guest, and prints the figures; returns the exit status. `limit`:
// each run's watchdog, when given.
inline int run_benchmark(BenchSettings settings, const char* device, std::optional<std::chrono::milliseconds> limit,
                         BenchGuests guests, const Output& out) {
  const std::span<const std::uint8_t> bench_guest = guests.exits, interrupt_guest = guests.interrupts;
  if (settings.repeats == 0) settings.repeats = default_bench_repeats();
  const auto time_limit = limit.value_or(bench_time_limit);
  constexpr unsigned all_kinds = (1u << bench_kinds) - 1, write_only = 1u << mmio_write;
  const auto wrapped = bench_vm(device, bench_guest, settings, all_kinds, [&](kh::Vcpu& vcpu, BenchDevice& sink) {
    return kh::run_guest(vcpu, sink, time_limit, [](const kh::Exit&) {});
  });
  if (!wrapped) return fail(wrapped.error(), out, device);
  const auto raw = bench_vm(device, bench_guest, settings, write_only,
                            [&](kh::Vcpu& vcpu, BenchDevice& sink) { return raw_run_loop(vcpu, sink, time_limit); });
  if (!raw) return fail(raw.error(), out, device);
  for (const auto& [run, kinds] : {std::pair{&*wrapped, std::size_t{bench_kinds}}, {&*raw, std::size_t{1}}}) {
    const std::size_t expected = 1 + kinds * settings.repeats;
    if (run->device.results().size() != expected || run->device.results()[0] == 0) {
      std::fprintf(stderr, "kvm-hello: --bench: the benchmark guest reported %zu figures, not %zu\n",
                   run->device.results().size(), expected);
      return static_cast<int>(Status::unexpected_exit);
    }
  }
  const auto interrupts = bench_interrupts(device, interrupt_guest, settings, time_limit);
  if (!interrupts) return fail(interrupts.error(), out, device);
  for (int kind = 0; kind < interrupt_kinds; ++kind) {
    const std::size_t done = interrupts->trips.measurements(static_cast<InterruptKind>(kind)).size();
    if (done != settings.repeats) {
      std::fprintf(
          stderr,
          "kvm-hello: --bench: the interrupt benchmark guest completed %zu measurements of \"%s\", not %" PRIu64 "\n",
          done, interrupt_kind_name[kind], settings.repeats);
      return static_cast<int>(Status::unexpected_exit);
    }
  }
  if (settings.json) {
    print_bench_json(*wrapped, *raw, *interrupts, settings);
  } else {
    print_bench_text(*wrapped, *raw, *interrupts, settings);
  }
  return 0;
}

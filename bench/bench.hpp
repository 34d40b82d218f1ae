// SPDX-License-Identifier: MIT
// bench/bench.hpp: kvm-hello --bench, what a VM exit costs.
//
// The benchmark guest (bench/bench-guest.S) times, with its own counter, N
// MMIO write exits, N MMIO read exits and N in-kernel hvc calls, R times each.
// The host times each step. Two VMs run it: one driven by run_guest(), one by
// the same loop written with bare ioctl(2) calls, to show what the header's
// wrappers cost.
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

// The guest's measurements of one kind, as nanoseconds per exit.
inline Figures figures(std::span<const std::uint64_t> results, BenchKind kind, BenchSettings settings) {
  const double ticks_per_second = static_cast<double>(results[0]);
  std::vector<double> ns;
  for (std::uint64_t r = 0; r < settings.repeats; ++r) {
    const double ticks = static_cast<double>(results[1 + static_cast<std::uint64_t>(kind) * settings.repeats + r]);
    ns.push_back(ticks * 1e9 / ticks_per_second / static_cast<double>(settings.iterations));
  }
  std::sort(ns.begin(), ns.end());
  const double median = ns.size() % 2 == 1 ? ns[ns.size() / 2] : (ns[ns.size() / 2 - 1] + ns[ns.size() / 2]) / 2;
  return {median, ns.front(), median > 0 ? (ns.back() - ns.front()) / median : 0};
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

inline void print_bench_text(const BenchRun& wrapped, const BenchRun& raw, BenchSettings settings) {
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
  std::printf("host-timed (clock_gettime), the run with the wrappers:\n");
  for (int n = 1; n <= kh::lesson1_step_count; ++n) {
    const std::string_view name = kh::step_info(static_cast<kh::Step>(n)).name;
    std::printf("  [%d/%d] %-19.*s %12s\n", n, kh::lesson1_step_count, static_cast<int>(name.size()), name.data(),
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
  std::printf("  \"ratio_mmio_read_to_hvc\": %.3f,\n", all[mmio_read].median_ns / all[hvc_in_kernel].median_ns);
  std::printf("  \"step_ns\": [");
  for (int n = 0; n < kh::lesson1_step_count; ++n) {
    std::printf("%s%lld", n == 0 ? "" : ", ",
                static_cast<long long>(wrapped.step_time[static_cast<std::size_t>(n)].count()));
  }
  std::printf("],\n  \"lifetime_ns\": %lld\n}\n", static_cast<long long>(wrapped.lifetime.count()));
}

// Runs the benchmark guest twice (wrapped loop, bare loop) and prints the
// figures; returns the exit status. `limit`: the watchdog's, when given.
inline int run_benchmark(BenchSettings settings, const char* device, std::optional<std::chrono::milliseconds> limit,
                         std::span<const std::uint8_t> bench_guest, const Output& out) {
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
  if (settings.json) {
    print_bench_json(*wrapped, *raw, settings);
  } else {
    print_bench_text(*wrapped, *raw, settings);
  }
  return 0;
}

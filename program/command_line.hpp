// SPDX-License-Identifier: MIT
// program/command_line.hpp: kvm-hello's options, parsed into Options, and
// --help.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <expected>
#include <optional>
#include <string>
#include <string_view>

#include "bench/bench.hpp"
#include "kvm_hello.hpp"
#include "program/messages.hpp"
#include "program/output.hpp"
#include "program/stepper.hpp"

namespace kh = kvm_hello;

// The largest --step-limit: a count kept in an unsigned, with room to spare.
inline constexpr unsigned max_step_limit = 1U << 30;

// Lesson 3's vCPUs: two unless --vcpus says more (its exercise 1 starts a third).
inline constexpr std::uint32_t default_lesson3_vcpus = 2;

// The watchdog with --step-guest and no --timeout (without: kh::default_time_limit).
inline constexpr std::chrono::milliseconds stepping_time_limit{60'000};
static_assert(stepping_time_limit > kh::default_time_limit);

struct Options {
  int lesson = 1;  // 1: a guest says hello through MMIO; 2: interrupts and time; 3: a second vCPU
  std::uint32_t vcpus = default_lesson3_vcpus;  // lesson 3: how many vCPUs (--vcpus N), 2 to max_vcpus
  std::string kvm_device = kh::default_kvm_path;
  std::chrono::milliseconds time_limit = kh::default_time_limit;
  bool time_limit_given = false;
  std::string guest_file;   // empty: the embedded guest
  std::string guest_lines;  // its line table (program/guest-lines.sh), when there is one
  Verbosity level = Verbosity::normal;
  bool step_guest = false;
  unsigned step_limit = default_step_limit;  // with --step-guest: instructions shown; 0: all
  std::string break_at;                      // empty: no breakpoint; resolved by resolve_break_at()
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
  bool vcpus_given = false;
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
        arg != "--guest-lines" && arg != "--timeout" && arg != "--step-limit" && arg != "--break-at" &&
        arg != "--lesson" && arg != "--vcpus") {
      return std::unexpected("unknown option: " + std::string(arg));
    }
    const auto given = value();
    if (!given) return std::unexpected(std::string(arg) + " needs a value");
    double amount = 0;
    if (arg == "--lesson") {
      if (*given != "1" && *given != "2" && *given != "3") {
        return std::unexpected("--lesson wants 1, 2 or 3: " + std::string(*given));
      }
      options.lesson = *given == "3" ? 3 : *given == "2" ? 2 : 1;
    } else if (arg == "--vcpus") {
      const auto count = whole_number(*given, 10);
      if (!count || *count < 2 || *count > kh::max_vcpus) {
        return std::unexpected("--vcpus wants a whole number from 2 to " + std::to_string(kh::max_vcpus) + ": " +
                               std::string(*given));
      }
      options.vcpus = static_cast<std::uint32_t>(*count);
      vcpus_given = true;
    } else if (arg == "--kvm-device") {
      options.kvm_device = *given;
    } else if (arg == "--guest") {
      options.guest_file = *given;
    } else if (arg == "--guest-lines") {
      options.guest_lines = *given;
    } else if (arg == "--break-at") {
      if (given->empty()) return std::unexpected("--break-at needs a line (guest.S:28, or 28) or an address (0x10010)");
      options.break_at = *given;
    } else if (arg == "--step-limit") {
      const auto limit = whole_number(*given, 10);
      if (!limit || *limit > max_step_limit) {
        return std::unexpected("--step-limit wants a whole number from 0 (no limit) to " +
                               std::to_string(max_step_limit) + ": " + std::string(*given));
      }
      options.step_limit = static_cast<unsigned>(*limit);
    } else if (arg == "--timeout") {
      if (!number(*given, amount) || !(amount > 0 && amount <= 3600)) {
        return std::unexpected("--timeout wants seconds, more than 0 and at most 3600: " + std::string(*given));
      }
      // Rounded up to whole milliseconds: 0.0004 is 1 ms, never 0 (a deadline's 0 is "at once" anyway).
      options.time_limit = std::chrono::ceil<std::chrono::milliseconds>(std::chrono::duration<double>(amount));
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
  if (vcpus_given && options.lesson != 3) return std::unexpected("--vcpus is lesson 3's: add --lesson 3");
  // Single-stepping makes every instruction an exit and a dozen ioctls: a
  // guest that takes milliseconds takes seconds (lesson 3's two vCPUs on one
  // busy emulated CPU took up to 12 s). Its watchdog waits longer, unless told.
  if (options.step_guest && !options.time_limit_given) options.time_limit = stepping_time_limit;
  return options;
}

inline void print_help() {
  std::printf(
      "usage: kvm-hello [--lesson N [--vcpus N]] [-q | -v | -vv] [--step-guest [--step-limit N]] [--break-at WHERE]\n"
      "                 [--caps] [--pause] [--bench [--json]] [--guest FILE [--guest-lines FILE]]\n"
      "                 [--kvm-device PATH] [--timeout SECONDS]\n"
      "Runs a tiny arm64 guest with KVM, step by step: it writes \"hello\" to an MMIO\n"
      "register, reads a value from the host, writes it back, and powers off.\n"
      "Lesson 2 gives it an interrupt controller inside KVM: its timer wakes it from WFI\n"
      "three times, then the program interrupts it twice (KVM_IRQ_LINE, an irqfd).\n"
      "Lesson 3 gives it two vCPUs, each on a thread of its own: vCPU 0 starts vCPU 1\n"
      "(PSCI CPU_ON) and interrupts it (an SGI); vCPU 1 turns itself off, vCPU 0 the VM.\n\n"
      "  --lesson N          1 (the default), 2: interrupts and time, or 3: a second vCPU\n"
      "  --vcpus N           with --lesson 3: create N vCPUs, 2 (the default) to 8, all but vCPU 0\n"
      "                      powered off until the guest's CPU_ON\n"
      "  -q                  only the guest's output and the outcome\n"
      "  -v                  also every ioctl: request, number decoded, arguments, result, time\n"
      "  -vv                 also the kvm_run fields at each exit\n"
      "  --step-guest        run the guest one instruction at a time (KVM_SET_GUEST_DEBUG); in\n"
      "                      lesson 3 each vCPU, each line starting with its name\n"
      "  --step-limit N      with --step-guest: show the first N instructions, then run on without\n"
      "                      showing them, to the end (default %u; 0: show all)\n"
      "  --break-at WHERE    all registers each time the guest gets to WHERE, a line of its source\n"
      "                      (guest.S:28, or 28) or an address (0x10010): a hardware breakpoint, or\n"
      "                      with --step-guest a look at each step; the first %u hits (lesson 3: on\n"
      "                      each vCPU that gets there)\n"
      "  --caps              show the capabilities the host reports, then stop\n"
      "  --bench             measure what an exit costs (the benchmark guest), and what an\n"
      "                      interrupt costs (KVM_IRQ_LINE, an irqfd: a guest with a vGIC), then stop\n"
      "  --json              with --bench: the figures as JSON\n"
      "  --bench-iterations N, --bench-repeats R   with --bench (default 65536, and 5 or,\n"
      "                      on an emulated CPU, 3)\n"
      "  --pause             explain each step and wait for Enter (on a terminal)\n"
      "  --guest FILE        run this raw arm64 image instead (loaded at 0x10000, entry at its start;\n"
      "                      with --lesson 2, x0 holds the GIC's version, 2 or 3)\n"
      "  --guest-lines FILE  its line table, for --step-guest and the dump (`make run GUEST=` makes one)\n"
      "  --kvm-device PATH   the KVM device to open (default /dev/kvm)\n"
      "  --timeout SECONDS   the watchdog: stop a guest that has not powered off (default %lld;\n"
      "                      with --step-guest %lld)\n"
      "  --version           print the version\n"
      "  -h, --help          this text\n\n"
      "Colour only on a terminal, and never when NO_COLOR is set. Ctrl-C stops the guest\n"
      "cleanly and shows its registers.\n\n"
      "exit status:\n",
      default_step_limit, breakpoint_hits_shown, static_cast<long long>(kh::default_time_limit.count() / 1000),
      static_cast<long long>(stepping_time_limit.count() / 1000));
  for (const StatusInfo& info : status_table) {
    std::printf("  %3d  %.*s\n", static_cast<int>(info.status), static_cast<int>(info.meaning.size()),
                info.meaning.data());
  }
}

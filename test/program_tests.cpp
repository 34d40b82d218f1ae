// SPDX-License-Identifier: MIT
// program_tests.cpp: what kvm-hello adds around the steps (program/ and
// bench/), without KVM: exit statuses and messages, the words for exits and
// syndromes, the -v trace, the register dump and the diagnosis of a stuck
// guest, the stepper, the command line, colour, --pause, the benchmark's
// arithmetic, and a fixed-seed run of the fuzz target.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <set>

#include "bench/bench.hpp"
#include "kvm_hello.hpp"
#include "program/command_line.hpp"
#include "program/describe.hpp"
#include "program/format.hpp"
#include "program/inspect.hpp"
#include "program/interrupts.hpp"
#include "program/kernel_version.hpp"
#include "program/messages.hpp"
#include "program/narration.hpp"
#include "program/output.hpp"
#include "program/report.hpp"
#include "program/stepper.hpp"
#include "program/trace.hpp"
#include "program/vcpus.hpp"
#include "test/fuzz_exits.hpp"

namespace kh = kvm_hello;

namespace {
// The line kvm-hello prints for an error, without its name.
std::string message_for(const kh::Error& error, std::string_view device) { return failure_for(error, device).message; }
}  // namespace

TEST_CASE("a request number decodes into direction, type, number and size") {
  const RequestFields init = decode_request(kh::request::arm_vcpu_init.number);
  CHECK(init.dir == _IOC_WRITE);
  CHECK(init.type == KVMIO);
  CHECK(init.nr == 0xae);
  CHECK(init.size == sizeof(kvm_vcpu_init));
  const RequestFields target = decode_request(kh::request::arm_preferred_target.number);
  CHECK(target.dir == _IOC_READ);
  CHECK(target.size == 32);
  const RequestFields run = decode_request(kh::request::run.number);
  CHECK(run.dir == _IOC_NONE);
  CHECK(run.size == 0);
}

TEST_CASE("every kind of failure has its own exit status") {
  std::set<int> seen;
  for (const StatusInfo& info : status_table) CHECK(seen.insert(static_cast<int>(info.status)).second);
  using kh::Problem;
  using kh::Step;
  CHECK(status_for({Step::open_kvm, Problem::call_failed, "open", ENOENT}) == Status::no_kvm);
  CHECK(status_for({Step::open_kvm, Problem::call_failed, "open", EACCES}) == Status::kvm_permission);
  CHECK(status_for({Step::check_api_version, Problem::call_failed, "KVM_GET_API_VERSION", ENOTTY}) ==
        Status::not_kvm_device);
  CHECK(status_for({Step::check_api_version, Problem::wrong_api_version}) == Status::api_version);
  CHECK(status_for({Step::check_capabilities, Problem::missing_capability}) == Status::missing_capability);
  CHECK(status_for({Step::create_vm, Problem::ipa_too_small}) == Status::ipa_size);
  CHECK(status_for({Step::create_vm, Problem::call_failed, "KVM_CREATE_VM", ENOMEM}) == Status::out_of_memory);
  CHECK(status_for({Step::run_guest, Problem::call_failed, "pthread_create", EAGAIN}) == Status::out_of_memory);
  CHECK(status_for({Step::run_guest, Problem::call_failed, "KVM_RUN", EAGAIN}) == Status::run_failed);
  CHECK(status_for({Step::init_vcpu, Problem::call_failed, "KVM_ARM_VCPU_INIT", EINVAL}) == Status::setup_failed);
  CHECK(status_for({Step::run_guest, Problem::call_failed, "KVM_RUN", ENOSYS}) == Status::run_failed);
  CHECK(status_for({Step::run_guest, Problem::watchdog_expired}) == Status::watchdog);
  CHECK(status_for({Step::run_guest, Problem::guest_reset}) == Status::guest_reset);
}

TEST_CASE("an error message names the step, the call, the errno and what to do") {
  using kh::Problem;
  using kh::Step;
  const std::string missing = message_for({Step::open_kvm, Problem::call_failed, "open", ENOENT}, "/dev/kvm");
  CHECK(missing.starts_with("step 1 (open_kvm): open failed with ENOENT (No such file or directory): "));
  CHECK(missing.find(why_no_kvm()) != std::string::npos);
  utsname machine{};
  ::uname(&machine);
  // Off arm64 it points to the emulated machine; on arm64, to the kernel's KVM.
  CHECK(why_no_kvm().find(std::string_view(machine.machine) == "aarch64" ? "CONFIG_KVM" : "make run") !=
        std::string::npos);
  CHECK(missing.find('\n') == std::string::npos);

  const std::string denied = message_for({Step::open_kvm, Problem::call_failed, "open", EACCES}, "/dev/kvm");
  CHECK(denied.find("EACCES") != std::string::npos);
  CHECK(denied.find("kvm") != std::string::npos);

  const std::string version = message_for({Step::check_api_version, Problem::wrong_api_version, {}, 0, 11}, "/dev/kvm");
  CHECK(version.find("says 11, this program needs 12") != std::string::npos);

  const std::string cap =
      message_for({Step::check_capabilities, Problem::missing_capability, {}, 0, KVM_CAP_ARM_PSCI_0_2}, "/dev/kvm");
  CHECK(cap.starts_with("step 3 (check_capabilities): "));
  CHECK(cap.find("KVM_CAP_ARM_PSCI_0_2") != std::string::npos);

  const std::string pair = message_for({Step::run_guest, Problem::call_failed, "KVM_RUN", ENOSYS}, "/dev/kvm");
  CHECK(pair.find("load/store pair") != std::string::npos);

  // A program of several vCPUs names the one that failed; lesson 1's one vCPU is not named.
  const kh::Error watchdog{Step::run_guest, Problem::watchdog_expired, "KVM_RUN", EINTR, 300};
  CHECK(message_for(watchdog, "/dev/kvm").starts_with("step 9 (run_guest): the guest did not power off within 300 ms"));
  CHECK(message_for(kh::on_vcpu(watchdog, 1), "/dev/kvm")
            .starts_with("step 9 (run_guest), vCPU 1: the guest did not power off within 300 ms"));
}

TEST_CASE("bytes are shown as hex and character, control characters escaped") {
  CHECK(describe_byte('h') == "0x68 'h'");
  CHECK(describe_byte('\n') == "0x0a '\\n'");
  CHECK(describe_byte(0) == "0x00 '\\x00'");
  CHECK(describe_byte(0xff) == "0xff '\\xff'");
  CHECK(escaped("hello\n") == "hello\\n");
  CHECK(escaped(std::string_view("a\x1b[2Jb", 6)) == "a\\x1b[2Jb");
}

TEST_CASE("an MMIO exit is reported with address, direction, length, data and each byte") {
  const std::string write = describe_mmio({0x1100, 1, true, {'h'}});
  CHECK(write == "KVM_EXIT_MMIO address=0x1100 is_write=1 len=1 data=0x68 bytes: 0x68 'h'");
  const std::string read = describe_mmio({0x1108, 4, false, {0x2a}});
  CHECK(read.starts_with("KVM_EXIT_MMIO address=0x1108 is_write=0 len=4 data=0x2a bytes: 0x2a '*' 0x00"));
}

TEST_CASE("the command line") {
  std::string prog = "kvm-hello", dev = "--kvm-device", path = "/dev/null", timeout = "--timeout", half = "0.5",
              bad = "--bogus", never = "0";
  SUBCASE("options") {
    char* argv[] = {prog.data(), dev.data(), path.data(), timeout.data(), half.data()};
    const auto options = parse_options(5, argv);
    REQUIRE(options);
    CHECK(options->kvm_device == "/dev/null");
    CHECK(options->time_limit == std::chrono::milliseconds(500));
  }
  SUBCASE("--lesson: 1 (the default), 2 or 3, nothing else; each steps and breaks") {
    std::string lesson = "--lesson", two = "2", three = "3", four = "4", two_attached = "--lesson=2";
    std::string step = "--step-guest", break_at = "--break-at", line = "28";
    char* none[] = {prog.data()};
    CHECK(parse_options(1, none)->lesson == 1);
    char* argv[] = {prog.data(), lesson.data(), two.data()};
    CHECK(parse_options(3, argv)->lesson == 2);
    char* attached[] = {prog.data(), two_attached.data()};
    CHECK(parse_options(2, attached)->lesson == 2);
    char* third[] = {prog.data(), lesson.data(), three.data()};
    CHECK(parse_options(3, third)->lesson == 3);
    char* wrong[] = {prog.data(), lesson.data(), four.data()};
    CHECK(parse_options(3, wrong).error() == "--lesson wants 1, 2 or 3: 4");
    char* stepped[] = {prog.data(), lesson.data(), three.data(), step.data()};
    REQUIRE(parse_options(4, stepped));
    CHECK(parse_options(4, stepped)->step_guest);
    char* broken[] = {prog.data(), break_at.data(), line.data(), lesson.data(), three.data()};
    REQUIRE(parse_options(5, broken));
    CHECK(parse_options(5, broken)->break_at == "28");
  }
  SUBCASE("--vcpus: lesson 3's, 2 (the default) to max_vcpus") {
    std::string lesson = "--lesson", three = "3", vcpus = "--vcpus", one = "1", count = "3", nine = "9";
    char* plain[] = {prog.data(), lesson.data(), three.data()};
    CHECK(parse_options(3, plain)->vcpus == 2);
    char* argv[] = {prog.data(), lesson.data(), three.data(), vcpus.data(), count.data()};
    CHECK(parse_options(5, argv)->vcpus == 3);
    const std::string range = "--vcpus wants a whole number from 2 to " + std::to_string(kh::max_vcpus) + ": ";
    char* too_few[] = {prog.data(), lesson.data(), three.data(), vcpus.data(), one.data()};
    CHECK(parse_options(5, too_few).error() == range + "1");
    char* too_many[] = {prog.data(), lesson.data(), three.data(), vcpus.data(), nine.data()};
    CHECK(parse_options(5, too_many).error() == range + "9");
    char* lesson1[] = {prog.data(), vcpus.data(), count.data()};
    CHECK(parse_options(3, lesson1).error() == "--vcpus is lesson 3's: add --lesson 3");
  }
  SUBCASE("unknown option") {
    char* argv[] = {prog.data(), bad.data()};
    CHECK(parse_options(2, argv).error().find("--bogus") != std::string::npos);
  }
  SUBCASE("the watchdog: 5 s, 60 s with --step-guest (each instruction an exit), --timeout's whenever given") {
    std::string step = "--step-guest", two = "2";
    char* plain[] = {prog.data()};
    CHECK(parse_options(1, plain)->time_limit == kh::default_time_limit);
    CHECK(kh::default_time_limit == std::chrono::seconds(5));
    char* stepped[] = {prog.data(), step.data()};
    CHECK(parse_options(2, stepped)->time_limit == stepping_time_limit);
    CHECK(stepping_time_limit == std::chrono::seconds(60));
    char* told_before[] = {prog.data(), timeout.data(), two.data(), step.data()};
    char* told_after[] = {prog.data(), step.data(), timeout.data(), two.data()};
    for (char** told : {told_before, told_after}) {
      const auto options = parse_options(4, told);
      REQUIRE(options);
      CHECK(options->step_guest);
      CHECK(options->time_limit == std::chrono::seconds(2));
    }
  }
  SUBCASE("a timeout of zero") {
    char* argv[] = {prog.data(), timeout.data(), never.data()};
    CHECK_FALSE(parse_options(3, argv));
  }
  SUBCASE("a timeout below a millisecond is one millisecond, never 0; a fraction of one is rounded up") {
    for (const auto& [seconds, ms] : {std::pair{"0.0004", 1}, {"0.000001", 1}, {"0.0015", 2}, {"3600", 3'600'000}}) {
      std::string given = seconds;
      char* argv[] = {prog.data(), timeout.data(), given.data()};
      const auto options = parse_options(3, argv);
      REQUIRE(options);
      CHECK(options->time_limit == std::chrono::milliseconds(ms));
    }
    std::string too_long = "3600.001";
    char* argv[] = {prog.data(), timeout.data(), too_long.data()};
    CHECK_FALSE(parse_options(3, argv));
  }
  SUBCASE("a value missing") {
    char* argv[] = {prog.data(), dev.data()};
    CHECK_FALSE(parse_options(2, argv));
  }
  SUBCASE("a value after '=', as GNU tools take it") {
    std::string timeout_one = "--timeout=1", guest = "--guest=/tmp/g.bin", repeats = "--bench-repeats=2";
    char* argv[] = {prog.data(), timeout_one.data(), guest.data(), repeats.data()};
    const auto options = parse_options(4, argv);
    REQUIRE(options);
    CHECK(options->time_limit == std::chrono::milliseconds(1000));
    CHECK(options->guest_file == "/tmp/g.bin");
    CHECK(options->bench.repeats == 2);
  }
  SUBCASE("'=' on an option that takes no value, or a value that is no number") {
    std::string caps = "--caps=yes", fraction = "--bench-repeats=2.5", empty = "--timeout=";
    for (std::string* arg : {&caps, &fraction, &empty}) {
      char* argv[] = {prog.data(), arg->data()};
      const auto options = parse_options(2, argv);
      REQUIRE_FALSE(options);
      CHECK(options.error().find(arg->substr(0, arg->find('='))) != std::string::npos);
    }
  }
}

TEST_CASE("the command line: --step-limit and --break-at") {
  const auto parse = [](std::vector<std::string> args) {
    args.insert(args.begin(), "kvm-hello");
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    return parse_options(static_cast<int>(argv.size()), argv.data());
  };
  SUBCASE("by default: the first 200 instructions shown, no breakpoint") {
    const auto options = parse({"--step-guest"});
    REQUIRE(options);
    CHECK(options->step_limit == default_step_limit);
    CHECK(default_step_limit == 200);
    CHECK(options->break_at.empty());
  }
  SUBCASE("a limit, 0 for none, and where to break, after a space or '='") {
    const auto options = parse({"--step-guest", "--step-limit", "0", "--break-at=guest.S:28"});
    REQUIRE(options);
    CHECK(options->step_limit == 0);
    CHECK(options->break_at == "guest.S:28");
    CHECK(parse({"--step-limit=20"})->step_limit == 20);
    CHECK(parse({"--break-at", "0x10010"})->break_at == "0x10010");
  }
  SUBCASE("a limit that is no whole number from 0 to max_step_limit, or no place to break") {
    for (const char* bad : {"-1", "1.5", "", "ten", "1073741825", "99999999999999999999"}) {
      const auto options = parse({"--step-limit", bad});
      REQUIRE_FALSE(options);
      CHECK(options.error() ==
            "--step-limit wants a whole number from 0 (no limit) to 1073741824: " + std::string(bad));
    }
    CHECK(parse({"--step-limit"}).error() == "--step-limit needs a value");
    CHECK(parse({"--break-at"}).error() == "--break-at needs a value");
    CHECK(parse({"--break-at="}).error().starts_with("--break-at needs a line (guest.S:28, or 28) or an address"));
  }
}

TEST_CASE("--break-at: a line of the guest's source, or an address, found in its line table") {
  // As program/guest-lines.sh writes guest.S's: lines 24 and 25 have no instruction, 30 has two.
  const GuestSource source = parse_guest_source(
      "guest.S\n0x10000 22 ldr x1, =OUT\n0x10004 23 adr x2, message\n0x10008 26 ldrb w0, [x2]\n"
      "0x1000c 27 cbz w0, ask_host\n0x10010 28 strb w0, [x1]\n0x10014 30 mov x0, #1\n0x10018 30 mov x0, #1\n"
      "0x1001c 41 b power_off\n");
  SUBCASE("a line: its first instruction, with or without the file's name") {
    CHECK(resolve_break_at("28", source) == 0x10010);
    CHECK(resolve_break_at("guest.S:28", source) == 0x10010);
    CHECK(resolve_break_at("guest.S:22", source) == 0x10000);
    CHECK(resolve_break_at("guest.S:30", source) == 0x10014);
    CHECK(resolve_break_at("some/folder/guest.S:41", source) == 0x1001c);  // the table knows the name only
  }
  SUBCASE("an address in guest RAM, with or without a line there") {
    CHECK(resolve_break_at("0x10010", source) == 0x10010);
    CHECK(resolve_break_at("0x1fffc", source) == 0x1fffc);
    CHECK(resolve_break_at("0x1fffc", GuestSource{}) == 0x1fffc);
  }
  SUBCASE("a line with no instruction: the nearest that have one") {
    CHECK(resolve_break_at("guest.S:25", source).error() ==
          "--break-at guest.S:25: guest.S:25 has no instruction; the nearest lines that have one: 23 and 26");
    CHECK(resolve_break_at("29", source).error() ==
          "--break-at 29: guest.S:29 has no instruction; the nearest lines that have one: 28 and 30");
    CHECK(resolve_break_at("1", source).error() ==
          "--break-at 1: guest.S:1 has no instruction; the nearest line that has one: 22");
    CHECK(resolve_break_at("99", source).error() ==
          "--break-at 99: guest.S:99 has no instruction; the nearest line that has one: 41");
    CHECK(nearest_lines_with_instructions(GuestSource{"guest.S", {}}, 25) == "no line of it has one");  // nor any
  }
  SUBCASE("another file, no line table, or no line or address at all") {
    CHECK(resolve_break_at("mine.S:28", source).error() ==
          "--break-at mine.S:28: the guest's source is guest.S, not mine.S");
    CHECK(resolve_break_at("28", GuestSource{}).error() ==
          "--break-at 28: this guest has no line table: give it with --guest-lines (make run GUEST= does), or "
          "give an address");
    for (const char* bad : {"abc", "0", "guest.S:", "guest.S:x", ":28x", "-3", "28.5"}) {
      CHECK(resolve_break_at(bad, source).error() ==
            "--break-at " + std::string(bad) +
                ": give a line of the guest's source (guest.S:28, or 28) or an address (0x10010)");
    }
  }
  SUBCASE("an address outside guest RAM, between two instructions, or not a number") {
    CHECK(resolve_break_at("0x20000", source).error() ==
          "--break-at 0x20000: outside guest RAM (0x10000..0x1ffff), where the guest's instructions are");
    CHECK(resolve_break_at("0xfffc", source).error().find("outside guest RAM") != std::string::npos);
    CHECK(resolve_break_at("0x10012", source).error() ==
          "--break-at 0x10012: an instruction's address is a multiple of 4");
    CHECK(resolve_break_at("0x", source).error() ==
          "--break-at 0x: not an address: give one in hexadecimal, like 0x10010");
    CHECK(resolve_break_at("0x1g", source).error().find("not an address") != std::string::npos);
  }
}

TEST_CASE("the stepper keeps the first call that failed while the guest ran, and then watches no more") {
  // An fd that is no vCPU: every KVM_GET_ONE_REG fails.
  const kh::VcpuFd not_a_vcpu(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  REQUIRE(not_a_vcpu.get() >= 0);
  const std::array<std::uint8_t, 8> ram{};
  const Output out{Verbosity::quiet, false};
  GuestStepper stepper(not_a_vcpu, GuestView{ram, nullptr}, out, {false, default_step_limit, 0x10010});
  CHECK_FALSE(stepper.failure());
  stepper.stopped(kh::DebugExit{exception_class::breakpoint << 26, 0});  // a hit: the registers cannot be read
  REQUIRE(stepper.failure());
  CHECK(stepper.failure()->step == kh::Step::run_guest);
  CHECK(stepper.failure()->call == "KVM_GET_ONE_REG");
  // ENOTTY from the kernel; ENOSYS under qemu-aarch64, which passes on no ioctl it does not know.
  CHECK((stepper.failure()->err == ENOTTY || stepper.failure()->err == ENOSYS));
  stepper.stopped(kh::DebugExit{exception_class::breakpoint << 26, 0});
  CHECK(stepper.breakpoint_hits() == 0);
}

TEST_CASE("the kernel's version from its release string") {
  CHECK(parse_kernel_release("6.1.0-50-arm64").major == 6);
  CHECK(parse_kernel_release("6.1.0-50-arm64").minor == 1);
  CHECK(parse_kernel_release("6.12.117+deb13-arm64").minor == 12);
  CHECK(parse_kernel_release("7.2.13+deb14-arm64").major == 7);
  CHECK(parse_kernel_release("7.2.13+deb14-arm64").at_least(6, 13));
  CHECK_FALSE(parse_kernel_release("6.12.117").at_least(6, 13));
  CHECK(parse_kernel_release("6.12.117").at_least(6, 4));
  CHECK(parse_kernel_release("").major == 0);
}

TEST_CASE("what changed between kernels is said where it shows") {
  SUBCASE("the syndrome of an injected abort, sign-extended before 6.12") {
    CHECK(describe_esr(0xffffffff86000010)
              .find("sign extension of the syndrome it injected, 0x86000010, fixed in 6.12") != std::string::npos);
    CHECK(describe_esr(0x86000010).find("sign extension") == std::string::npos);
    CHECK_FALSE(is_sign_extended_syndrome(0x0000000086000010));
    CHECK_FALSE(is_sign_extended_syndrome(0xffffffff06000010));  // bit 31 clear: not from a sign extension
  }
  SUBCASE("the PSCI version and conduit") {
    CHECK(describe_psci(0x10001, {6, 1}) ==
          "PSCI for the guest: version 1.1 (KVM_REG_ARM_PSCI_VERSION; 1.3 from Linux 6.13), called with hvc only: "
          "before Linux 6.4 an smc returns -1 (NOT_SUPPORTED)");
    CHECK(describe_psci(0x10001, {6, 12}) ==
          "PSCI for the guest: version 1.1 (KVM_REG_ARM_PSCI_VERSION; 1.3 from Linux 6.13), called with hvc or smc #0");
    CHECK(describe_psci(0x10003, {7, 2}) ==
          "PSCI for the guest: version 1.3 (KVM_REG_ARM_PSCI_VERSION), called with hvc or smc #0");
  }
  SUBCASE("the preferred target") {
    CHECK(describe_target(KVM_ARM_TARGET_GENERIC_V8) == "5 (KVM_ARM_TARGET_GENERIC_V8)");
    CHECK(describe_target(KVM_ARM_TARGET_CORTEX_A57).starts_with("2 (KVM_ARM_TARGET_CORTEX_A57: Linux before 6.6"));
    // Every type 6.1's kvm_target_cpu can answer is named, not only the two QEMU can be.
    CHECK(describe_target(KVM_ARM_TARGET_AEM_V8).starts_with("0 (KVM_ARM_TARGET_AEM_V8: Linux before 6.6"));
    CHECK(
        describe_target(KVM_ARM_TARGET_FOUNDATION_V8).starts_with("1 (KVM_ARM_TARGET_FOUNDATION_V8: Linux before 6.6"));
    CHECK(
        describe_target(KVM_ARM_TARGET_XGENE_POTENZA).starts_with("3 (KVM_ARM_TARGET_XGENE_POTENZA: Linux before 6.6"));
    CHECK(describe_target(KVM_ARM_TARGET_CORTEX_A53).starts_with("4 (KVM_ARM_TARGET_CORTEX_A53: Linux before 6.6"));
  }
  SUBCASE("an smc answered with -1: why, on this kernel") {
    CHECK(is_smc(0xd4000003));
    CHECK_FALSE(is_smc(0xd4000002));  // hvc #0
    std::array<std::uint8_t, 16> ram{};
    const std::uint32_t smc = 0xd4000003, branch_to_self = 0x14000000;
    std::memcpy(ram.data() + 4, &smc, 4);
    std::memcpy(ram.data() + 8, &branch_to_self, 4);
    kh::Registers regs;
    regs.pc = kh::ram_base + 8;
    regs.vbar_el1 = 0x100000;
    regs.x[0] = static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED);
    const kh::Error stuck{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR, 1000};
    const auto old_kernel = diagnose(stuck, regs, GuestView{ram, nullptr}, {6, 1});
    REQUIRE(old_kernel.size() == 2);
    CHECK(
        old_kernel[1].starts_with("the guest called smc #0 at 0x10004 and got x0 = -1 (NOT_SUPPORTED): Linux "
                                  "before 6.4 does not take smc as a PSCI call"));
    const auto new_kernel = diagnose(stuck, regs, GuestView{ram, nullptr}, {6, 12});
    REQUIRE(new_kernel.size() == 2);
    CHECK(new_kernel[1].find("KVM does not know the function id") != std::string::npos);
    // With the function id a re-run found, the same call is named.
    Replay found;
    found.end = Replay::End::refused_call;
    found.refused = RefusedCall{kh::ram_base + 4, smc, PSCI_0_2_FN_SYSTEM_OFF};
    const auto named = diagnose(stuck, regs, GuestView{ram, nullptr}, {6, 1}, &found);
    REQUIRE(named.size() == 2);
    CHECK(
        named[1].starts_with("the guest called smc #0 at 0x10004 with function id 0x84000008 (PSCI SYSTEM_OFF) "
                             "and got x0 = -1 (NOT_SUPPORTED): Linux before 6.4"));
  }
  SUBCASE("a call refused: an smc's immediate from 6.4, an id outside PSCI's range, one PSCI does not have") {
    const std::uint32_t smc_1 = 0xd4000023, hvc_0 = 0xd4000002;
    CHECK(is_smc(smc_1));
    CHECK(call_immediate(smc_1) == 1);
    CHECK(is_hvc(hvc_0));
    CHECK_FALSE(is_hvc(smc_1));
    CHECK(explain_refused_call({0x10004, smc_1, PSCI_0_2_FN_SYSTEM_OFF}, {6, 12})
              .ends_with("handle_smc (arch/arm64/kvm/handle_exit.c) answers an smc whose immediate is not 0 with -1 "
                         "without reading x0, as SMCCC reserves those immediates; write smc #0"));
    CHECK(explain_refused_call({0x10004, smc_1, PSCI_0_2_FN_SYSTEM_OFF}, {6, 1})
              .find("Linux before 6.4 does not take smc as a PSCI call") != std::string::npos);
    const std::string outside = explain_refused_call({0x10008, hvc_0, 0x84000080}, {7, 2});
    CHECK(outside.starts_with("the guest called hvc #0 at 0x10008 with function id 0x84000080 and got x0 = -1"));
    CHECK(
        outside.ends_with("kvm_smccc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it, as "
                          "kvm_smccc_get_action allows it no handler"));
    CHECK(explain_refused_call({0x10008, hvc_0, 0x84000080}, {6, 1})
              .ends_with(
                  "kvm_hvc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it, as kvm_hvc_call_allowed says no"));
    CHECK(explain_refused_call({0x10004, hvc_0, 0xc4000008}, {6, 12})
              .ends_with("kvm_psci_0_2_call (arch/arm64/kvm/psci.c) answers PSCI_RET_NOT_SUPPORTED; PSCI SYSTEM_OFF "
                         "is 0x84000008, and has no 64-bit form"));
    CHECK(is_in_psci_range(0x84000008));
    CHECK(is_in_psci_range(0xc400001f));
    CHECK_FALSE(is_in_psci_range(0x84000020));
    CHECK_FALSE(is_in_psci_range(0x86000000));  // owner 6: not the standard service
    CHECK(describe_function_id(0x84000009) == "0x84000009 (PSCI SYSTEM_RESET)");
    CHECK(describe_function_id(0x84000080) == "0x84000080");
  }
}

// ==== A stuck guest run again: what the re-run found, in words ================

namespace {
// Guest RAM holding `words` from ram_base; the image is as long.
struct Ram {
  std::array<std::uint8_t, 64> bytes{};
  std::size_t used = 0;
  explicit Ram(std::initializer_list<std::uint32_t> words) {
    for (const std::uint32_t word : words) {
      std::memcpy(bytes.data() + used, &word, 4);
      used += 4;
    }
  }
  GuestView view(const GuestSource* source = nullptr) const { return {bytes, source, std::span(bytes).first(used)}; }
};

// The registers a guest stuck in vectors at 0 that fault forever ends with.
kh::Registers stuck_in_vectors() {
  kh::Registers regs;
  regs.pc = 0x200;
  regs.elr_el1 = 0x200;
  regs.far_el1 = 0x200;
  regs.esr_el1 = 0x86000010;
  return regs;
}

const kh::Error watchdog{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR, 1000};

Replay found_exception(unsigned instructions, std::uint64_t pc, std::optional<std::uint64_t> previous = {}) {
  Replay replay;
  replay.end = Replay::End::exception;
  replay.instructions = instructions;
  replay.pc = pc;
  replay.previous_pc = previous;
  replay.last = stuck_in_vectors();
  return replay;
}
}  // namespace

static_assert(is_udf(0x00000000) && !is_udf(0xd503201f));  // udf #0; nop
static_assert(is_system_register_access(0xd53c1100) && system_register_op1(0xd53c1100) == 4);  // mrs x0, hcr_el2

TEST_CASE("an instruction that takes an exception at EL1 is named from its encoding") {
  CHECK(is_udf(0x00000000));
  CHECK(why_instruction_faults(0x00000000) ==
        "UDF #0 is permanently undefined: an undefined-instruction exception (EC 0x0)");
  CHECK(why_instruction_faults(0xd53c1100) ==  // mrs x0, hcr_el2
        "MRS reads a system register of EL2 (op1 = 4), which the guest at EL1 may not use: an undefined-instruction "
        "exception (EC 0x0)");
  CHECK(why_instruction_faults(0xd51c1100).starts_with("MSR writes a system register of EL2"));  // msr hcr_el2, x0
  CHECK(why_instruction_faults(0xd53e1100).starts_with("MRS reads a system register of EL3"));   // mrs x0, scr_el3
  CHECK(why_instruction_faults(0xd538c000).empty());  // mrs x0, vbar_el1: EL1's own
  CHECK(why_instruction_faults(0xd503201f).empty());  // nop
}

TEST_CASE("the first exception, as a re-run found it, is named with its line of source") {
  const GuestSource source = parse_guest_source("mine.S\n0x10000 12 ldr x0, =0x40000\n0x10004 13 br x0\n");
  const kh::Registers regs = stuck_in_vectors();
  SUBCASE("an undefined instruction in the code") {
    const Ram ram{0x00000000};
    const Replay replay = found_exception(0, 0x10000);
    const auto lines = diagnose(watchdog, regs, ram.view(&source), {6, 12}, &replay);
    REQUIRE(lines.size() == 5);
    CHECK(lines[2] ==
          "ESR_EL1 and ELR_EL1 describe an exception taken in the vectors themselves (EC 0x21 at 0x200), "
          "not the first one: its syndrome and address are lost.");
    CHECK(lines[3].ends_with("it took its first exception at instruction 1:"));
    CHECK(lines[4] ==
          "0x10000 (mine.S:12: ldr x0, =0x40000), encoding 00000000: UDF #0 is permanently undefined: an "
          "undefined-instruction exception (EC 0x0).");
  }
  SUBCASE("a jump to where there is no memory") {
    const Ram ram{0x58000040, 0xd61f0000};
    const std::string line = describe_first_exception(found_exception(2, 0x40000, 0x10004), ram.view(&source));
    CHECK(line ==
          "the fetch from 0x40000, where 0x10004 (mine.S:13: br x0) jumped: no memory is there (guest RAM is "
          "0x10000..0x1003f), so KVM injects an instruction abort (EC 0x21; kvm_handle_guest_abort in "
          "arch/arm64/kvm/mmu.c).");
    CHECK(describe_first_exception(found_exception(2, 0x10002, 0x10004), ram.view(&source))
              .ends_with("jumped: not a multiple of 4, so a PC alignment fault (EC 0x22)."));
  }
  SUBCASE("past the end of the code, into zeros") {
    const Ram ram{0xd503201f};  // nop
    const GuestSource nop = parse_guest_source("end.S\n0x10000 9 nop\n");
    CHECK(describe_first_exception(found_exception(1, 0x10004, 0x10000), ram.view(&nop)) ==
          "0x10004, past the end of the guest's code (its 4 bytes end at 0x10003; reached from 0x10000 (end.S:9: "
          "nop)), encoding 00000000: UDF #0 is permanently undefined: an undefined-instruction exception (EC 0x0).");
  }
  SUBCASE("the CPU's own syndrome, when the re-run saw the exception enter the vectors") {
    const Ram ram{0xd503201f, 0x00000000, 0xf9400020};  // nop; udf #0; ldr x0, [x1]
    Replay replay = found_exception(1, 0x10004, 0x10000);
    kh::Registers entry;
    entry.esr_el1 = 0x02000000;
    entry.far_el1 = unknown_register_value;
    replay.entry = entry;
    const std::string udf = describe_first_exception(replay, ram.view());
    replay.entry.reset();
    CHECK(udf == describe_first_exception(replay, ram.view()));  // the encoding says it: the same words
    replay = found_exception(2, 0x10008, 0x10004);
    entry.esr_el1 = 0x96000021;  // a data abort, alignment fault
    entry.far_el1 = 0x1101;
    replay.entry = entry;
    CHECK(describe_first_exception(replay, ram.view()) ==
          "0x10008, encoding f9400020: ESR_EL1 then said 0x96000021 (EC 0x25: data abort: a load or store the host "
          "could not complete), FAR_EL1 0x1101.");
    replay.entry.reset();
    CHECK(
        describe_first_exception(replay, ram.view())
            .ends_with("encoding f9400020: the encoding alone does not say why it faulted, and its syndrome is lost."));
  }
  SUBCASE("a refused call on the way, and a re-run that ended elsewhere") {
    const Ram ram{0xd2801000, 0xd4000002};
    Replay replay = found_exception(2, 0x10008, 0x10004);
    replay.refused = RefusedCall{0x10004, 0xd4000002, 0x84000080};
    replay.last->x[3] = 7;  // the re-run's registers differ from this run's
    const auto lines = explain_replay(replay, regs, ram.view(), {6, 12});
    REQUIRE(lines.size() == 4);
    CHECK(lines[2].starts_with("Before that, the guest called hvc #0 at 0x10004 with function id 0x84000080"));
    CHECK(lines[2].ends_with("; the guest went on past it."));
    CHECK(lines[3].starts_with("But the re-run ended with registers other than this run's"));
  }
}

TEST_CASE("a re-run that went another way, or found nothing within its bounds, says so") {
  const Ram ram{0x14000000};
  const kh::Registers regs = stuck_in_vectors();
  Replay replay;
  replay.instructions = 100000;
  replay.pc = 0x10000;
  replay.end = Replay::End::instruction_limit;
  CHECK(explain_replay(replay, regs, ram.view(), {6, 12})[0].ends_with(
      "it took no exception in its first 100000 instructions (the re-run's limit): the first came later; "
      "--step-guest shows every instruction."));
  replay.end = Replay::End::time_limit;
  replay.took = std::chrono::seconds(5);
  CHECK(explain_replay(replay, regs, ram.view(), {6, 12})[0].find("it took no exception in 5.00 s (the re-run's "
                                                                  "limit), 100000 instructions, and was then at "
                                                                  "0x10000") != std::string::npos);
  replay.end = Replay::End::powered_off;
  replay.instructions = 1;
  CHECK(explain_replay(replay, regs, ram.view(), {6, 12})[0].find(
            "it powered off after 1 instruction: the guest does not run the same way twice") != std::string::npos);
  replay.end = Replay::End::failed;
  replay.why = "step 1 (open_kvm): open failed with ENOENT";
  CHECK(explain_replay(replay, regs, ram.view(), {6, 12})[0] ==
        "Could not run the guest again to find its first exception: step 1 (open_kvm): open failed with ENOENT.");
}

TEST_CASE("a re-run is asked for only when the registers lost something, and only after the watchdog") {
  const Ram ram{0xd4000002, 0x14000000};  // hvc #0; b .
  kh::Registers regs = stuck_in_vectors();
  const auto lost = replay_goal_for(watchdog, regs, ram.view());
  REQUIRE(lost);
  CHECK(lost->kind == ReplayGoal::Kind::first_exception);
  CHECK_FALSE(replay_goal_for({kh::Step::run_guest, kh::Problem::interrupted, "KVM_RUN", EINTR}, regs, ram.view()));
  CHECK_FALSE(replay_goal_for(watchdog, regs, GuestView{ram.bytes}));  // no image to run again
  regs.elr_el1 = 0x10000;                                              // the first exception's address is still there
  CHECK_FALSE(replay_goal_for(watchdog, regs, ram.view()));
  regs = {};
  regs.pc = 0x10004;
  regs.vbar_el1 = 0x100000;
  regs.esr_el1 = unknown_register_value;
  regs.x[0] = static_cast<std::uint64_t>(PSCI_RET_NOT_SUPPORTED);  // the hvc at 0x10000 was refused
  const auto call = replay_goal_for(watchdog, regs, ram.view());
  REQUIRE(call);
  CHECK(call->kind == ReplayGoal::Kind::refused_call);
  CHECK(call->call_address == 0x10000);
  regs.x[0] = 0;  // answered: nothing lost
  CHECK_FALSE(replay_goal_for(watchdog, regs, ram.view()));
}

TEST_CASE("the watchdog's advice: --timeout for a guest still running, not for one that faults forever") {
  const Ram ram{0x14000000};
  CHECK(faults_forever(stuck_in_vectors(), ram.view()));
  kh::Registers spinning;
  spinning.pc = 0x10000;
  spinning.vbar_el1 = 0x100000;
  CHECK_FALSE(faults_forever(spinning, ram.view()));
  CHECK(failure_for(watchdog, "/dev/kvm").message.ends_with("a guest that runs longer needs --timeout"));
  CHECK(failure_for(watchdog, "/dev/kvm", StuckGuest::faulting_forever)
            .message.ends_with("it faults again and again, so more time (--timeout) would not help: fix the "
                               "instruction named above"));
}

TEST_CASE("at -q no registers come before the error line, and it points to none above") {
  const std::string running = failure_for(watchdog, "/dev/kvm", StuckGuest::running, Above::nothing).message;
  CHECK(running.ends_with("(KVM_RUN returned EINTR): a guest that runs longer needs --timeout (without -q, its "
                          "registers say where it was)"));
  const std::string forever = failure_for(watchdog, "/dev/kvm", StuckGuest::faulting_forever, Above::nothing).message;
  CHECK(forever.ends_with("(KVM_RUN returned EINTR): it faults again and again, so more time (--timeout) would not "
                          "help: run without -q to see the instruction to fix"));
  const kh::Error ctrl_c{kh::Step::run_guest, kh::Problem::interrupted, "KVM_RUN", EINTR};
  CHECK(failure_for(ctrl_c, "/dev/kvm").message.ends_with("the registers above say where it was"));
  CHECK(failure_for(ctrl_c, "/dev/kvm", StuckGuest::running, Above::nothing)
            .message.ends_with("Ctrl-C stopped the guest (KVM_RUN returned EINTR): without -q, its registers say "
                               "where it was"));
  for (const std::string& line : {running, forever}) CHECK(line.find("above") == std::string::npos);
}

TEST_CASE("after SYSTEM_OFF: x0's -6 explained in full, and an hvc with an immediate named") {
  const Ram ram{0x58000040, 0xd4000022, 0x14000000};  // ldr x0, =...; hvc #1; b .
  kh::Registers regs;
  regs.pc = 0x10008;
  regs.x[0] = static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE);
  const auto lines = explain_power_off(regs, ram.view());
  REQUIRE(lines.size() == 4);
  CHECK(lines[1] ==
        "which the guest would see only if it ran on after its call: SYSTEM_OFF stopped the vCPU, and "
        "kvm-hello does not start it again");
  CHECK(lines[2].starts_with("the guest called SYSTEM_OFF with hvc #1 at 0x10004: KVM ignores an hvc's immediate"));
  const Ram plain{0x58000040, 0xd4000002, 0x14000000};  // hvc #0: nothing to say
  CHECK(explain_power_off(regs, plain.view()).size() == 2);
}

TEST_CASE("the device's misuse is said: a wide write to OUT, a read of a write-only register, no output at all") {
  const kh::MmioAccess wide{kh::mmio_out, 8, true, {'h', 'i', '\n', 0, 0, 0, 0, 0}};
  CHECK(describe_wide_out_write(wide) ==
        "OUT prints one byte per write: of this 8-byte write it printed the first, 0x68 'h', and dropped the other 7 "
        "(write one byte at a time, with strb)");
  CHECK(describe_wide_out_write({kh::mmio_out, 1, true, {'h'}}).empty());
  CHECK(describe_wide_out_write({kh::mmio_echo, 4, true, {}}).empty());
  CHECK(describe_mmio({kh::mmio_out, 4, false, {}})
            .ends_with("  (OUT is write-only: there is nothing to read, the host answers 0x0)"));
  CHECK(describe_mmio({kh::mmio_answer, 4, false, {0x2a}}).ends_with("  (the host's answer)"));
  CHECK(describe_mmio({0x9000, 4, false, {}}).ends_with("  (no register here: nothing to read, the host answers 0x0)"));
  kh::HelloDevice device;
  CHECK(describe_guest_output(device, Output{Verbosity::normal, false}) == "(nothing: the guest wrote no byte to OUT)");
  kh::MmioAccess h{kh::mmio_out, 8, true, {'h', 'i'}};
  device.handle(h);
  CHECK(device.output() == "h");  // the device does what describe_wide_out_write says
  CHECK(describe_guest_output(device, Output{Verbosity::normal, false}) == "h");
}

TEST_CASE("counts are singular or plural as they should be") {
  CHECK(counted(1, "exit") == "1 exit");
  CHECK(counted(0, "exit") == "0 exits");
  CHECK(counted(9, "KVM_RUN call") == "9 KVM_RUN calls");
  kh::RunStats one;
  one.kvm_run_calls = 1;
  one.exits = 1;
  one.exits_by_reason[KVM_EXIT_SYSTEM_EVENT] = 1;
  CHECK(describe_stats(one).starts_with("1 KVM_RUN call, 1 exit (KVM_EXIT_SYSTEM_EVENT 1); "));
}

// ==== The docs and the README stay true to the code ==========================

TEST_CASE("PSTATE and ESR decode into the architecture's names") {
  CHECK(describe_pstate(0x3c5) == "0x3c5 (EL1h: EL1 on SP_EL1; D A I F masked; flags nzcv)");
  CHECK(describe_pstate(0x60000004) == "0x60000004 (EL1t: EL1 on SP_EL0; nothing masked; flags nZCv)");
  CHECK(exception_class_of(0x5a000000) == exception_class::hvc64);
  CHECK(describe_esr(0xca000000) == "0xca000000 (EC 0x32: software step: one instruction done)");
  CHECK(describe_esr(0x96000000).find("data abort") != std::string::npos);
}

TEST_CASE("a register id decodes into arch, size, kind, index and name") {
  CHECK(describe_register_id(kh::reg::pc.raw()) == "0x6030000000100040 (arm64 u64 core 0x40: pc)");
  CHECK(describe_register_id(kh::reg::esr_el1.raw()) == "0x603000000013c290 (arm64 u64 sysreg 0xc290: esr_el1)");
  CHECK(describe_register_id(kh::reg::v(0).raw()) == "0x6040000000100054 (arm64 u128 core 0x54)");
  CHECK(register_name(kh::reg::x(17).raw()) == "x17");
  CHECK(register_name(0x6030000000100099) == "");
}

TEST_CASE("a request number is shown as the macro that made it") {
  CHECK(describe_request_number(kh::request::set_user_memory_region.number) ==
        "0x4020ae46 = _IOW(0xae, 0x46, 32 bytes)");
  CHECK(describe_request_number(kh::request::arm_preferred_target.number) == "0x8020aeaf = _IOR(0xae, 0xaf, 32 bytes)");
  CHECK(describe_request_number(kh::request::run.number) == "0xae80 = _IO(0xae, 0x80)");
}

TEST_CASE("-v describes a call: fd, request, arguments that matter, result or errno, time") {
  std::uint64_t value = 0x10000;
  const kvm_one_reg one{.id = kh::reg::pc.raw(), .addr = reinterpret_cast<std::uintptr_t>(&value)};
  const kh::CallRecord set{
      kh::Step::set_boot_registers, "KVM_SET_ONE_REG", kh::request::set_one_reg.number, 5, &one, 0, 0,
      std::chrono::microseconds(12)};
  CHECK(describe_call(set) ==
        "ioctl(5, KVM_SET_ONE_REG, {id 0x6030000000100040 (arm64 u64 core 0x40: pc), value 0x10000}) = 0  "
        "[0x4010aeac = _IOW(0xae, 0xac, 16 bytes)]  12.0 us");
  const kh::CallRecord cap{kh::Step::check_capabilities,
                           "KVM_CHECK_EXTENSION",
                           kh::request::check_extension.number,
                           3,
                           static_cast<unsigned long>(KVM_CAP_ONE_REG),
                           1,
                           0,
                           std::chrono::nanoseconds(900)};
  CHECK(describe_call(cap).starts_with("ioctl(3, KVM_CHECK_EXTENSION, 70 KVM_CAP_ONE_REG) = 1  "));
  const kh::CallRecord bad{kh::Step::check_api_version,
                           "KVM_GET_API_VERSION",
                           kh::request::get_api_version.number,
                           3,
                           std::monostate{},
                           -1,
                           ENOTTY,
                           std::chrono::nanoseconds(0)};
  CHECK(describe_call(bad).starts_with("ioctl(3, KVM_GET_API_VERSION) = -1 ENOTTY (Inappropriate ioctl for device)"));
}

TEST_CASE("-v shows a register's value as KVM_REG_SIZE bytes: 4 read of a 32-bit one, both halves of v0") {
  const std::uint32_t fpsr = 0x8000010;  // AddressSanitizer: 8 bytes read here would be past the variable
  const kvm_one_reg small{.id = kh::reg::fpsr.raw(), .addr = reinterpret_cast<std::uintptr_t>(&fpsr)};
  CHECK(describe_register_value(small) == "0x8000010");
  const kh::Uint128 v0{.low = 0x1111, .high = 0x2222};
  const kvm_one_reg wide{.id = kh::reg::v(0).raw(), .addr = reinterpret_cast<std::uintptr_t>(&v0)};
  CHECK(describe_register_value(wide) == "{low 0x1111, high 0x2222}");
}

TEST_CASE("-v shows what KVM_SET_GUEST_DEBUG asks for: single steps, a hardware breakpoint, or nothing") {
  kvm_guest_debug debug{};
  CHECK(describe_guest_debug(debug) == "{control 0x0: debugging off}");
  debug.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
  CHECK(describe_guest_debug(debug) == "{control 0x3 = ENABLE | SINGLESTEP}");
  debug.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW;
  debug.arch.dbg_bvr[0] = 0x10010;
  debug.arch.dbg_bcr[0] = kh::breakpoint_control;
  CHECK(describe_guest_debug(debug) == "{control 0x20001 = ENABLE | USE_HW, dbg_bvr[0] 0x10010, dbg_bcr[0] 0x1e3}");
}

TEST_CASE("durations are shown in the unit that fits") {
  CHECK(format_duration(std::chrono::nanoseconds(850)) == "850 ns");
  CHECK(format_duration(std::chrono::nanoseconds(12'345)) == "12.3 us");
  CHECK(format_duration(std::chrono::microseconds(4'560)) == "4.6 ms");
  CHECK(format_duration(std::chrono::milliseconds(2'500)) == "2.50 s");
}

TEST_CASE("single-stepping: the registers an instruction changed, and its line of guest.S") {
  kh::Registers before, after;
  after.x[1] = 0x1100;
  after.pc = 4;  // pc always moves: not listed
  CHECK(register_changes(before, after) == "x1 0x0 -> 0x1100");
  CHECK(register_changes(before, before).empty());
  // The line table program/guest-lines.sh makes: the file, then "ADDRESS LINE TEXT".
  const GuestSource source = parse_guest_source("mine.S\n0x10000 21 ldr x1, =OUT\n0x10004 22 adr x2, message\n");
  CHECK(source.file == "mine.S");
  REQUIRE(source.lines.size() == 2);
  REQUIRE(source.find(0x10004) != nullptr);
  CHECK(source.find(0x10004)->line == 22);
  CHECK(source.find(0x10004)->text == "adr x2, message");
  CHECK(source.find(0x10008) == nullptr);
  const std::array<std::uint8_t, 8> ram{};
  CHECK(GuestView{ram, &source}.where(0x10004) == "0x10004 (mine.S:22: adr x2, message)");
  CHECK(GuestView{ram, nullptr}.where(0x10004) == "0x10004");
  CHECK(parse_guest_source("").lines.empty());
  CHECK(parse_guest_source("x.S\nnot a line\n0x10000\n").lines.empty());
}

TEST_CASE("the register dump explains ESR_EL1 only when the guest is in its exception vectors") {
  kh::Registers regs;
  regs.pc = 0x10034;
  regs.esr_el1 = unknown_register_value;
  CHECK(format_registers(regs).find("esr_el1") == std::string::npos);
  CHECK(format_registers(regs).find("no exception taken") != std::string::npos);
  regs.pc = 0x200;  // VBAR_EL1 0 + 0x200: synchronous exception from the current EL, on SP_ELx
  regs.esr_el1 = 0x86000010;
  CHECK(format_registers(regs).find("esr_el1 0x86000010 (EC 0x21: instruction abort") != std::string::npos);
  // ELR_EL1 in the vectors too: not where the first exception happened.
  regs.elr_el1 = 0x200;
  CHECK(format_registers(regs).find("elr_el1 0x200 (in the vectors: a fault there overwrote the first exception's)") !=
        std::string::npos);
  CHECK(format_registers(regs).find("the instruction it happened at") == std::string::npos);
}

TEST_CASE("--pause has words for every step") {
  for (const std::string_view text : narration) CHECK_FALSE(text.empty());
}

TEST_CASE("colour: never when NO_COLOR is set, never off a terminal") {
  ::setenv("NO_COLOR", "1", 1);
  CHECK_FALSE(wants_colour(STDOUT_FILENO));
  ::unsetenv("NO_COLOR");
  int ends[2];
  REQUIRE(::pipe(ends) == 0);
  CHECK_FALSE(wants_colour(ends[1]));  // a pipe is no terminal
  ::close(ends[0]);
  ::close(ends[1]);
  CHECK(Output{Verbosity::normal, false}.paint(colour::error, "x") == "x");
  CHECK(Output{Verbosity::normal, true}.paint(colour::error, "x") == "\033[31mx\033[0m");
}

TEST_CASE("output for several vCPUs: a record of lines, each line able to carry its vCPU") {
  const Output one{Verbosity::normal, false};
  CHECK(one.tagged("a\n  b\n") == "a\n  b\n");  // lesson 1: as ever
  CHECK(one.line(Verbosity::normal, "x %d", 1) == "      x 1\n");
  CHECK(one.line(Verbosity::verbose, "x").empty());  // below the level: nothing
  const Output second{Verbosity::normal, false, "vCPU 1"};
  CHECK(second.tagged("a\n  b\n") == "vCPU 1 a\nvCPU 1   b\n");
  CHECK(second.tagged("no newline") == "vCPU 1 no newline");
  CHECK(second.tagged("").empty());
}

TEST_CASE("the trace levels from the command line") {
  std::string prog = "kvm-hello", q = "-q", vv = "-vv", step = "--step-guest";
  char* quiet[] = {prog.data(), q.data()};
  CHECK(parse_options(2, quiet)->level == Verbosity::quiet);
  char* loud[] = {prog.data(), vv.data(), step.data()};
  const auto options = parse_options(3, loud);
  CHECK(options->level == Verbosity::very_verbose);
  CHECK(options->step_guest);
}

TEST_CASE("the exception vector entries by offset") {
  CHECK(vector_entry_name(0x200) == "offset 0x200 (synchronous, from the current EL on SP_ELx)");
  CHECK(vector_entry_name(0x480) == "offset 0x480 (IRQ, from the lower EL, AArch64)");
  CHECK(vector_entry_name(0x204) == "offset 0x200 (synchronous, from the current EL on SP_ELx)");
  CHECK(vector_entry_name(0x800) == "outside the table");
}

// One table, proven while compiling and checked again at run time (where a
// failure names the instruction).
struct MmioInstructionCase {
  std::uint32_t encoding;
  MmioInstruction kind;
  const char* assembly;
};
constexpr MmioInstructionCase mmio_instruction_cases[] = {
    {0x39000020, MmioInstruction::plain, "strb w0, [x1]"},
    {0xb9400064, MmioInstruction::plain, "ldr w4, [x3]"},
    {0xf8226820, MmioInstruction::plain, "str x0, [x1, x2]"},
    {0xa9000c22, MmioInstruction::pair, "stp x2, x3, [x1]"},
    {0x38001420, MmioInstruction::writeback, "strb w0, [x1], #1"},
    {0xf8008c20, MmioInstruction::writeback, "str x0, [x1, #8]!"},
    {0x3d800020, MmioInstruction::simd, "str q0, [x1]"},
    {0xc85f7c20, MmioInstruction::atomic, "ldxr x0, [x1]"},
    {0xd4000002, MmioInstruction::not_load_store, "hvc #0"},
};
static_assert(std::ranges::all_of(mmio_instruction_cases, [](const MmioInstructionCase& c) {
  return classify_mmio_instruction(c.encoding) == c.kind;
}));

TEST_CASE("MMIO instructions KVM cannot decode are told apart") {
  for (const MmioInstructionCase& c : mmio_instruction_cases) {
    CHECK_MESSAGE(classify_mmio_instruction(c.encoding) == c.kind, c.assembly);
  }
}

// ==== The fuzz target, on a fixed-seed sample (make fuzz runs it for real) ====

TEST_CASE("fuzz target: 20000 random kvm_run contents, fixed seed, nothing breaks") {
  std::mt19937_64 random(20261124);
  std::vector<std::uint8_t> bytes(sizeof(kvm_run));
  constexpr std::uint32_t interesting[] = {KVM_EXIT_MMIO,       KVM_EXIT_SYSTEM_EVENT,   KVM_EXIT_DEBUG,
                                           KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_UNKNOWN};
  for (int i = 0; i < 20000; ++i) {
    for (auto& byte : bytes) byte = static_cast<std::uint8_t>(random());
    if (i % 2 == 0) {  // half the time a reason the decoder knows, to reach its branches
      const std::uint32_t reason = interesting[random() % std::size(interesting)];
      std::memcpy(bytes.data() + offsetof(kvm_run, exit_reason), &reason, sizeof reason);
    }
    REQUIRE(fuzz_one_exit(bytes.data(), bytes.size()) == 0);
  }
}

TEST_CASE("reading the guest's instruction at PC: no sum wraps around (found by the fuzzer)") {
  const std::uint8_t ram[8] = {0x02, 0x00, 0x00, 0xd4, 0, 0, 0, 0};
  const GuestView guest{ram, {}};
  CHECK(guest.instruction_at(kh::ram_base) == 0xd4000002u);
  CHECK(guest.instruction_at(kh::ram_base + 4) == 0u);
  CHECK_FALSE(guest.instruction_at(kh::ram_base + 5));
  CHECK_FALSE(guest.instruction_at(0xfffffffffffffffe));  // address + 4 would wrap to a small number
  CHECK_FALSE(guest.instruction_at(kh::ram_base - 1));
}

TEST_CASE("exits this program does not handle are each explained, with their own statuses") {
  using kh::Problem;
  using kh::Step;
  const kh::Error fail_entry{Step::run_guest, Problem::unexpected_exit, {}, 0, KVM_EXIT_FAIL_ENTRY};
  const kh::Error internal{Step::run_guest, Problem::unexpected_exit, {}, 0, KVM_EXIT_INTERNAL_ERROR};
  const kh::Error unknown{Step::run_guest, Problem::unexpected_exit, {}, 0, 99};
  const kh::Error crash{Step::run_guest, Problem::guest_crash};
  CHECK(message_for(fail_entry, "/dev/kvm").find("KVM could not enter the guest") != std::string::npos);
  CHECK(message_for(internal, "/dev/kvm").find("kvm_run.internal.suberror") != std::string::npos);
  CHECK(message_for(unknown, "/dev/kvm").find("exit reason 99, which this program does not handle") !=
        std::string::npos);
  CHECK(message_for(crash, "/dev/kvm").find("reported a crash") != std::string::npos);
  CHECK(status_for(fail_entry) == Status::unexpected_exit);
  CHECK(status_for(crash) == Status::guest_crash);
  CHECK(status_for({Step::run_guest, Problem::interrupted}) == Status::interrupted);
  CHECK(static_cast<int>(Status::interrupted) == 130);
  // The decoder, the loop's decision and the message agree for a FAIL_ENTRY kvm_run.
  kvm_run run{};
  run.exit_reason = KVM_EXIT_FAIL_ENTRY;
  const auto decided = kh::keep_running(kh::decode_exit(run));
  REQUIRE_FALSE(decided);
  CHECK(message_for(decided.error(), "/dev/kvm") == message_for(fail_entry, "/dev/kvm"));
}

TEST_CASE("bench: ticks become nanoseconds per exit; median, min and spread") {
  const BenchSettings settings{.iterations = 1000, .repeats = 3, .json = false};
  // 1 GHz counter; write: 2000, 1000, 3000 ticks for 1000 exits: 2, 1, 3 ns each.
  const std::uint64_t results[] = {1'000'000'000, 2000, 1000, 3000, 5000, 5000, 5000, 100, 100, 100};
  const Figures write = figures(results, mmio_write, settings);
  CHECK(write.median_ns == doctest::Approx(2.0));
  CHECK(write.min_ns == doctest::Approx(1.0));
  CHECK(write.spread == doctest::Approx(1.0));  // (3 - 1) / 2
  const Figures read = figures(results, mmio_read, settings);
  CHECK(read.median_ns == doctest::Approx(5.0));
  CHECK(read.spread == doctest::Approx(0.0));
  CHECK(figures(results, hvc_in_kernel, settings).median_ns == doctest::Approx(0.1));
}

TEST_CASE("bench: the wrappers' verdict: noise says nothing, a faster bare loop says the load changed") {
  CHECK(std::string_view(wrapper_verdict(+900, 1000)) == "within the spread: nothing measurable");
  CHECK(std::string_view(wrapper_verdict(-1000, 1000)) == "within the spread: nothing measurable");
  CHECK(std::string_view(wrapper_verdict(+1500, 1000)).starts_with("beyond the spread: the wrappers' cost"));
  CHECK(std::string_view(wrapper_verdict(-1500, 1000)).starts_with("the bare loop was slower"));
}

TEST_CASE("bench, interrupts: round trips summed a measurement at a time, in fixed storage; ns per round trip") {
  CHECK(interrupt_rounds({.iterations = 65536, .repeats = 3, .json = false}) == 4096);
  CHECK(interrupt_rounds({.iterations = 8, .repeats = 3, .json = false}) == 1);  // never none
  RoundTrips trips(2);
  using ns = std::chrono::nanoseconds;
  for (const auto took : {ns(300), ns(500), ns(100), ns(100), ns(900), ns(1100), ns(7)})
    trips.add(irqfd_round_trip, took);
  REQUIRE(trips.measurements(irqfd_round_trip).size() == 3);  // the 7 ns begins a fourth, not complete
  CHECK(trips.measurements(irqfd_round_trip)[0] == ns(800));
  CHECK(trips.measurements(irq_line_round_trip).empty());
  const Figures f = round_trip_figures(trips, irqfd_round_trip);  // 400, 100, 1000 ns a round trip
  CHECK(f.median_ns == doctest::Approx(400.0));
  CHECK(f.min_ns == doctest::Approx(100.0));
  CHECK(f.spread == doctest::Approx(2.25));  // (1000 - 100) / 400
  RoundTrips many(1);
  for (std::uint64_t i = 0; i < max_bench_repeats + 5; ++i) many.add(mmio_exit_round_trip, ns(1));
  CHECK(many.measurements(mmio_exit_round_trip).size() == max_bench_repeats);
}

TEST_CASE("bench, interrupts: the device times SINK to SINK, a doorbell to its ack; a failed injection ends the run") {
  const kh::VmFd no_vm;  // -1: KVM_IRQ_LINE on it fails with EBADF
  const kh::Irqfd no_irqfd{};
  InterruptBenchDevice device(no_vm, no_irqfd, 1);
  const auto write = [&device](std::uint64_t address, std::uint8_t value) {
    kh::MmioAccess access{address, 4, true, {value}};
    device.handle(access);
  };
  write(kh::mmio_out, 0);   // the guest's first exit
  write(kh::mmio_sink, 0);  // after OUT: not a round trip
  CHECK(device.trips().measurements(mmio_exit_round_trip).empty());
  write(kh::mmio_sink, 0);
  CHECK(device.trips().measurements(mmio_exit_round_trip).size() == 1);
  write(kh::mmio_irq, kh::spi_line);  // an ack nothing rang for: not counted
  write(kh::mmio_doorbell, 7);        // a value the device does not know: nothing raised, no failure
  CHECK_FALSE(device.failure());
  write(kh::mmio_irq, kh::spi_irqfd);
  CHECK(device.trips().measurements(irq_line_round_trip).empty());
  CHECK(device.trips().measurements(irqfd_round_trip).empty());
  write(kh::mmio_doorbell, kh::doorbell_line);
  REQUIRE(device.failure());
  CHECK(device.failure()->step == kh::Step::inject_spi);
  CHECK(device.failure()->call == "KVM_IRQ_LINE");  // its errno: EBADF natively, QEMU's own under qemu-aarch64
}

TEST_CASE("bench: the device keeps RESULT writes in fixed storage, answers reads, and never overflows") {
  BenchDevice device;
  kh::MmioAccess read{kh::mmio_answer, 4, false, {}};
  device.handle(read);
  CHECK(read.data[0] == kh::host_answer);
  kh::MmioAccess sink{kh::mmio_sink, 1, true, {7}};
  device.handle(sink);
  CHECK(device.results().empty());
  for (std::size_t i = 0; i < BenchDevice::capacity + 5; ++i) {
    kh::MmioAccess result{kh::mmio_result, 8, true, {static_cast<std::uint8_t>(i)}};
    device.handle(result);
  }
  CHECK(device.results().size() == BenchDevice::capacity);
  CHECK(device.results()[3] == 3);
}

TEST_CASE("a stuck guest is explained from the instruction it is at: WFI, WFE, a branch to itself") {
  std::array<std::uint8_t, 16> ram{};
  const auto put = [&ram](std::size_t at, std::uint32_t encoding) { std::memcpy(ram.data() + at, &encoding, 4); };
  kh::Registers regs;
  regs.vbar_el1 = 0x100000;
  const GuestView view{ram, nullptr};
  put(0, 0xd503207f);          // wfi
  put(4, 0x17ffffff);          // b 0x10000
  regs.pc = kh::ram_base + 4;  // KVM stepped past the WFI it handled
  CHECK(explain_what_it_does(regs, view, {6, 12}).starts_with("It waits in WFI at 0x10000 for an interrupt"));
  regs.pc = kh::ram_base;  // or the CPU is still at it
  CHECK(explain_what_it_does(regs, view, {6, 1}).starts_with("It waits in WFI at 0x10000"));
  put(0, 0xd503205f);  // wfe
  CHECK(explain_what_it_does(regs, view, {6, 12}).starts_with("It waits in WFE for an event no one sends"));
  put(0, 0x14000000);  // b .
  CHECK(explain_what_it_does(regs, view, {6, 12}) ==
        "The instruction there is b 0x10000, a branch to itself: the guest spins in place, inside KVM_RUN, until the "
        "watchdog stops it.");
  put(0, 0x91000400);  // add x0, x0, #1: nothing to say
  CHECK(explain_what_it_does(regs, view, {6, 12}).empty());
}

TEST_CASE("the register dump shows ESR_EL1 once an exception was taken, even after its handler moved on") {
  kh::Registers regs;
  regs.pc = 0x10900;  // in a handler past its vectors at 0x10800 (exercise 4)
  regs.vbar_el1 = 0x10000;
  regs.esr_el1 = 0x02000000;  // EC 0x00, IL: an undefined instruction
  regs.elr_el1 = 0x1000c;
  regs.far_el1 = unknown_register_value;  // no abort wrote it
  const std::string dump = format_registers(regs);
  CHECK(dump.find("no exception taken") == std::string::npos);
  CHECK(dump.find("esr_el1 0x2000000 (EC 0x0: unknown reason, e.g. an undefined instruction)") != std::string::npos);
  CHECK(dump.find("elr_el1 0x1000c (the instruction it happened at)  far_el1 not written (no abort)") !=
        std::string::npos);
  CHECK(dump.find("(PC is outside them: a handler went on)") != std::string::npos);
}

TEST_CASE("a kernel release with a number too large for a version is no version (no signed overflow)") {
  CHECK(parse_kernel_release("99999999999.1").major == 0);  // UBSan: before, major * 10 overflowed an int
  CHECK(parse_kernel_release("6.99999999999").minor == 0);
  CHECK(parse_kernel_release("9999.1").major == 9999);
}

TEST_CASE("an MMIO access of the widest length is described and kept in full, never more") {
  const kh::MmioAccess wide{kh::mmio_result, 8, true, {1, 2, 3, 4, 5, 6, 7, 8}};
  CHECK(describe_mmio(wide).find("len=8 data=0x807060504030201") != std::string::npos);
  BenchDevice device;
  kh::MmioAccess again = wide;
  device.handle(again);
  REQUIRE(device.results().size() == 1);
  CHECK(device.results()[0] == 0x0807060504030201);
}

TEST_CASE("an MMIO exit with an impossible length is explained, and -vv names the length") {
  const kh::Exit exit = kh::OtherExit{KVM_EXIT_MMIO, 16};
  CHECK(describe_exit(exit) == "KVM_EXIT_MMIO len=16: not 1, 2, 4 or 8");
  const Failure failure = failure_for(kh::keep_running(exit).error(), "/dev/kvm");
  CHECK(failure.status == Status::unexpected_exit);
  CHECK(failure.message.find("mmio.len is not 1, 2, 4 or 8") != std::string::npos);
}

TEST_CASE("a register of the wrong size and inconsistent statistics: each a message, a status") {
  const kh::Error wrong{kh::Step::run_guest, kh::Problem::bad_register_size, {}, 0, kh::reg::v(0).raw()};
  const Failure size = failure_for(wrong, "/dev/kvm");
  CHECK(size.status == Status::run_failed);
  CHECK(size.message.find("names a register of 16 bytes") != std::string::npos);
  const Failure stats = failure_for(kh::Error{kh::Step::run_guest, kh::Problem::bad_statistics, {}, 0, 56}, "/dev/kvm");
  CHECK(stats.status == Status::run_failed);
  CHECK(stats.message.find("56-byte file of KVM_GET_STATS_FD") != std::string::npos);
  const Failure unknown = failure_for(kh::Error{static_cast<kh::Step>(42)}, "/dev/kvm");
  CHECK(unknown.message.starts_with("step 42 (unknown): "));
}

// ==== Lesson 2's calls and errors ============================================

namespace {
kh::CallRecord record(std::string_view name, unsigned long number, kh::CallArgument argument, kh::FdKind made_on,
                      int result = 0, int err = 0) {
  return kh::CallRecord{kh::Step::create_vgic, name, number, 4, argument, result, err, std::chrono::nanoseconds(0),
                        made_on};
}
}  // namespace

TEST_CASE("-v names KVM_CREATE_DEVICE's device type and flags, and the fd that came back") {
  const kvm_create_device test{.type = KVM_DEV_TYPE_ARM_VGIC_V3, .fd = 0, .flags = KVM_CREATE_DEVICE_TEST};
  CHECK(describe_call(record("KVM_CREATE_DEVICE", kh::request::create_device.number, &test, kh::FdKind::vm))
            .starts_with("ioctl(4, KVM_CREATE_DEVICE, {type 7 KVM_DEV_TYPE_ARM_VGIC_V3, flags 0x1 = "
                         "KVM_CREATE_DEVICE_TEST (ask, do not create), fd 0}) = 0  [0xc00caee0 = _IOWR(0xae, 0xe0, "
                         "12 bytes)]"));
  const kvm_create_device made{.type = KVM_DEV_TYPE_ARM_VGIC_V2, .fd = 6, .flags = 0};
  CHECK(describe_create_device(made) == "{type 5 KVM_DEV_TYPE_ARM_VGIC_V2, flags 0x0, fd 6}");
  CHECK(describe_device_type(99) == "99");
}

TEST_CASE("-v names a device attribute's group and attribute, as the kind of fd says, and its value") {
  std::uint64_t base = KVM_HELLO_GIC_REDIST;
  const kvm_device_attr redist{.flags = 0,
                               .group = KVM_DEV_ARM_VGIC_GRP_ADDR,
                               .attr = KVM_VGIC_V3_ADDR_TYPE_REDIST,
                               .addr = reinterpret_cast<std::uintptr_t>(&base)};
  CHECK(describe_device_attr(kh::FdKind::device, redist) ==
        "{group 0 KVM_DEV_ARM_VGIC_GRP_ADDR, attr 3 KVM_VGIC_V3_ADDR_TYPE_REDIST, value 0x80a0000}");
  std::uint32_t nr_irqs = 64;
  const kvm_device_attr size{.flags = 0,
                             .group = KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
                             .attr = 0,
                             .addr = reinterpret_cast<std::uintptr_t>(&nr_irqs)};
  CHECK(describe_device_attr(kh::FdKind::device, size) == "{group 3 KVM_DEV_ARM_VGIC_GRP_NR_IRQS, attr 0, value 64}");
  const kvm_device_attr init{
      .flags = 0, .group = KVM_DEV_ARM_VGIC_GRP_CTRL, .attr = KVM_DEV_ARM_VGIC_CTRL_INIT, .addr = 0};
  CHECK(describe_device_attr(kh::FdKind::device, init) ==
        "{group 4 KVM_DEV_ARM_VGIC_GRP_CTRL, attr 0 KVM_DEV_ARM_VGIC_CTRL_INIT}");
  // Group 1 on a vCPU's fd is the timer's; on the GIC's, the distributor's registers.
  int intid = 27;
  const kvm_device_attr timer{.flags = 0,
                              .group = KVM_ARM_VCPU_TIMER_CTRL,
                              .attr = KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
                              .addr = reinterpret_cast<std::uintptr_t>(&intid)};
  CHECK(describe_device_attr(kh::FdKind::vcpu, timer) ==
        "{group 1 KVM_ARM_VCPU_TIMER_CTRL, attr 0 KVM_ARM_VCPU_TIMER_IRQ_VTIMER, value 27}");
  CHECK(describe_device_attr(kh::FdKind::device, timer) == "{group 1 KVM_DEV_ARM_VGIC_GRP_DIST_REGS, attr 0}");
  CHECK(describe_call(record("KVM_GET_DEVICE_ATTR", kh::request::get_vcpu_attr.number, &timer, kh::FdKind::vcpu))
            .starts_with("ioctl(4, KVM_GET_DEVICE_ATTR, {group 1 KVM_ARM_VCPU_TIMER_CTRL, attr 0 "
                         "KVM_ARM_VCPU_TIMER_IRQ_VTIMER, value 27}) = 0"));
}

TEST_CASE("-v takes KVM_IRQ_LINE's irq apart (type, vCPU, INTID) and names KVM_IRQFD's fd and gsi") {
  const kvm_irq_level spi{.irq = kh::irq_line_spi(40), .level = 1};
  CHECK(describe_irq_level(spi) == "{irq 0x1000028 = type 1 SPI, vcpu 0, INTID 40, level 1}");
  const kvm_irq_level ppi{.irq = kh::irq_line_ppi(1, 27), .level = 0};
  CHECK(describe_irq_level(ppi) == "{irq 0x201001b = type 2 PPI, vcpu 1, INTID 27, level 0}");
  const kvm_irq_level cpu{.irq = 1, .level = 1};
  CHECK(describe_irq_level(cpu) == "{irq 0x1 = type 0 CPU, vcpu 0, INTID 1, level 1}");
  CHECK(describe_call(record("KVM_IRQ_LINE", kh::request::irq_line.number, &cpu, kh::FdKind::vm, -1, ENXIO))
            .starts_with("ioctl(4, KVM_IRQ_LINE, {irq 0x1 = type 0 CPU, vcpu 0, INTID 1, level 1}) = -1 ENXIO"));
  const kvm_irqfd wire{.fd = 6, .gsi = 9, .flags = 0, .resamplefd = 0, .pad = {}};
  CHECK(describe_irqfd(wire) == "{fd 6, gsi 9 (INTID 41), flags 0x0}");
}

TEST_CASE("lesson 2's errors: a status each, keeping lesson 1's; a message that says what to do") {
  using kh::Step, kh::Problem;
  CHECK(static_cast<int>(Status::watchdog) == 24);  // lesson 1's statuses stay as they were
  CHECK(status_for({Step::probe_vgic, Problem::no_vgic, "KVM_CHECK_EXTENSION"}) == Status::no_vgic);
  CHECK(status_for({Step::create_vgic, Problem::call_failed, "KVM_CREATE_DEVICE", EBUSY}) == Status::gic_setup);
  CHECK(status_for({Step::init_vgic, Problem::call_failed, "KVM_SET_DEVICE_ATTR", EIO}) == Status::gic_setup);
  CHECK(status_for({Step::attach_irqfd, Problem::call_failed, "KVM_IRQFD", EAGAIN}) == Status::gic_setup);
  CHECK(status_for({Step::attach_irqfd, Problem::not_an_spi, {}, 0, 27}) == Status::gic_setup);
  CHECK(status_for({Step::attach_irqfd, Problem::call_failed, "write", EBADF}) == Status::injection);
  CHECK(status_for({Step::inject_spi, Problem::call_failed, "KVM_IRQ_LINE", EINVAL}) == Status::injection);
  CHECK(status_for({Step::inject_spi, Problem::call_failed, "KVM_IRQ_LINE", ENOMEM}) == Status::out_of_memory);
  CHECK(status_for({Step::run_guest, Problem::call_failed, "KVM_RUN", EBUSY}) == Status::run_failed);
  CHECK(message_for({Step::probe_vgic, Problem::no_vgic, "KVM_CHECK_EXTENSION"}, "/dev/kvm") ==
        "step 10 (probe_vgic): KVM_CHECK_EXTENSION says this host's KVM has no in-kernel GIC (KVM_CAP_IRQCHIP is 0): "
        "lesson 2 needs one (`dmesg | grep -i vgic` says why KVM found none; the emulated machine has one); lesson 1 "
        "runs without");
  CHECK(message_for({Step::inject_spi, Problem::call_failed, "KVM_IRQ_LINE", EINVAL}, "/dev/kvm")
            .starts_with("step 15 (inject_spi): KVM_IRQ_LINE failed with EINVAL (Invalid argument): no such SPI: give "
                         "the INTID itself, 32 and up and below the GIC's 64 interrupts, not the INTID minus 32"));
  CHECK(message_for({Step::run_guest, Problem::call_failed, "KVM_RUN", EBUSY}, "/dev/kvm")
            .find("not initialised (init_vgic, step 12) before the first KVM_RUN") != std::string::npos);
  CHECK(message_for({Step::attach_irqfd, Problem::call_failed, "KVM_IRQFD", EAGAIN}, "/dev/kvm")
            .ends_with("attach irqfds after init_vgic (step 12)"));
  CHECK(message_for({Step::attach_irqfd, Problem::not_an_spi, {}, 0, 27}, "/dev/kvm") ==
        "step 14 (attach_irqfd): INTID 27 is no SPI: an irqfd raises an SPI, INTID 32 to 1019");
  // Every errno a step of Part II documents has advice of its own, not the default line.
  CHECK(message_for({Step::create_vcpu, Problem::call_failed, "KVM_CREATE_VCPU", EBUSY}, "/dev/kvm") ==
        "step 6 (create_vcpu): KVM_CREATE_VCPU failed with EBUSY (Device or resource busy): the VM's in-kernel GIC is "
        "initialised already (init_vgic, step 12), and KVM adds no vCPU after that: create every vCPU first, then "
        "init_vgic");
  for (const auto& [step, err] : {std::pair{Step::create_vcpu, EBUSY},
                                  {Step::create_vgic, EBUSY},
                                  {Step::create_vgic, EEXIST},
                                  {Step::create_vgic, ENODEV},
                                  {Step::create_vgic, ENXIO},
                                  {Step::create_vgic, E2BIG},
                                  {Step::init_vgic, EBUSY},
                                  {Step::init_vgic, EIO},
                                  {Step::read_timer_irq, ENXIO},
                                  {Step::attach_irqfd, EAGAIN},
                                  {Step::attach_irqfd, EBUSY},
                                  {Step::inject_spi, ENXIO},
                                  {Step::inject_spi, EINVAL},
                                  {Step::inject_spi, EBUSY},
                                  {Step::run_guest, EBUSY},
                                  {Step::run_guest, ENXIO},
                                  {Step::run_guest, EIO}}) {
    CHECK_MESSAGE(!advice_for_gic_call({step, Problem::call_failed, "call", err}).empty(),
                  "step " << static_cast<int>(step) << ", errno " << err);
  }
}


// ==== Lesson 2: what the program says about interrupts ========================

TEST_CASE("lesson 2's words: each INTID named, the list of those taken, the sleep counts from the statistics") {
  CHECK(describe_intid(27) == "INTID 27, the virtual timer's PPI");
  CHECK(describe_intid(40) == "INTID 40, the SPI we raised with KVM_IRQ_LINE");
  CHECK(describe_intid(41) == "INTID 41, the SPI our irqfd raised");
  CHECK(describe_intid(33) == "INTID 33, which no one here sent");
  CHECK(list_intids({27, 27, 27, 40, 41}) == "27 27 27 40 41");
  CHECK(list_intids({}) == "none");
  CHECK(explain_sleep(0).empty());  // no tick: nothing slept to explain
  CHECK_FALSE(explain_sleep(3).empty());
  const std::vector<kh::VcpuStatistic> stats{{"wfi_exit_stat", 3, 0}, {"halt_wakeup", 2, 0}, {"halt_wait_ns", 1500000, 0}};
  const auto lines = describe_interrupt_statistics(stats);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].starts_with("the GIC: mmio_exit_kernel (not on this kernel)"));
  CHECK(lines[1].starts_with("asleep: wfi_exit_stat 3 ("));
  CHECK(lines[1].find("halt_wakeup 2 (") != std::string::npos);
  CHECK(lines[2].find("1.5 ms asleep (halt_wait_ns)") != std::string::npos);
}

TEST_CASE("--pause in lesson 2: words after each step it pauses at, saying what comes next in lesson 2's order") {
  for (const kh::Step step : {kh::Step::setup_guest_memory, kh::Step::probe_vgic, kh::Step::create_vgic,
                              kh::Step::set_boot_registers, kh::Step::read_timer_irq, kh::Step::init_vgic,
                              kh::Step::attach_irqfd, kh::Step::create_vcpu, kh::Step::run_guest}) {
    CHECK_FALSE(narration_after(step, 2).empty());
  }
  CHECK(narration_after(kh::Step::setup_guest_memory, 2).find("interrupt controller") != std::string_view::npos);
  CHECK(narration_after(kh::Step::setup_guest_memory, 1) == narration[4]);  // lesson 1's words stay its own
  CHECK(narration_after(kh::Step::inject_spi, 2).empty());                 // inside the run: no pause
}

TEST_CASE("--pause in lesson 3: its own words where its order or its vCPUs differ; lesson 2's and 1's for the rest") {
  for (const auto& [step, text] : lesson3_narration) {
    CHECK(narration_after(step, 3) == text);
    CHECK(narration_after(step, 3) != narration_after(step, 2));  // lesson 3's words, not lesson 2's again
  }
  // Where lesson 3 goes on as lesson 2 does, lesson 2's words; before the vGIC, lesson 1's.
  CHECK(narration_after(kh::Step::setup_guest_memory, 3) == narration_after(kh::Step::setup_guest_memory, 2));
  CHECK(narration_after(kh::Step::read_timer_irq, 3) == narration_after(kh::Step::read_timer_irq, 2));
  CHECK(narration_after(kh::Step::create_vm, 3) == narration[3]);
  // Lessons 1 and 2 keep their own.
  CHECK(narration_after(kh::Step::create_vcpu, 1) == narration[5]);
  CHECK(narration_after(kh::Step::create_vgic, 2) == lesson2_narration[2].second);
  CHECK(narration_after(kh::Step::read_mp_state, 2).empty());
  CHECK(narration_after(kh::Step::stop_vcpus, 1).empty());
}

TEST_CASE("lesson 2's mistakes: a storm is one deadline taken twice with the timer's output high; WFI found at PC") {
  const TimerState masked{timer_enable | timer_imask | timer_istatus, 1000};  // lesson2/guest.S's handler: IMASK
  const TimerState high{timer_enable | timer_istatus, 1000};                  // no IMASK before the EOI
  CHECK(high.output_high());
  CHECK_FALSE(masked.output_high());
  CHECK_FALSE(TimerState{timer_enable, 1000}.output_high());   // not yet due
  CHECK_FALSE(TimerState{timer_istatus, 1000}.output_high());  // disabled
  CHECK(same_deadline_taken_again(high, high));
  CHECK_FALSE(same_deadline_taken_again(high, TimerState{timer_enable | timer_istatus, 2000}));  // the next tick
  CHECK_FALSE(same_deadline_taken_again(masked, masked));  // masked: taken once, however often reported
  // Where the guest waits: at the WFI, or just after it (KVM stepped PC past the WFI it trapped).
  std::vector<std::uint8_t> ram(64, 0);
  const std::uint32_t wfi = 0xd503207f;
  std::memcpy(ram.data() + 8, &wfi, sizeof wfi);
  kh::Registers regs;
  const GuestView guest{ram, nullptr};
  regs.pc = kh::ram_base + 8;
  CHECK(waits_in_wfi_at(regs, guest) == kh::ram_base + 8);
  regs.pc = kh::ram_base + 12;
  CHECK(waits_in_wfi_at(regs, guest) == kh::ram_base + 8);
  regs.pc = kh::ram_base + 16;
  CHECK(waits_in_wfi_at(regs, guest) == 0);
}

// ==== Lesson 3's calls and errors ============================================

TEST_CASE("-v names the mp_state KVM_GET_MP_STATE gave and KVM_SET_MP_STATE was given") {
  const kvm_mp_state stopped{.mp_state = KVM_MP_STATE_STOPPED};
  CHECK(describe_call(record("KVM_GET_MP_STATE", kh::request::get_mp_state.number, &stopped, kh::FdKind::vcpu))
            .starts_with("ioctl(4, KVM_GET_MP_STATE, {mp_state 5 STOPPED}) = 0  [0x8004ae98 = _IOR(0xae, 0x98, 4 "
                         "bytes)]"));
  const kvm_mp_state runnable{.mp_state = KVM_MP_STATE_RUNNABLE};
  CHECK(describe_call(record("KVM_SET_MP_STATE", kh::request::set_mp_state.number, &runnable, kh::FdKind::vcpu))
            .starts_with("ioctl(4, KVM_SET_MP_STATE, {mp_state 0 RUNNABLE}) = 0  [0x4004ae99 = _IOW(0xae, 0x99, 4 "
                         "bytes)]"));
  CHECK(describe_mp_state({.mp_state = KVM_MP_STATE_SUSPENDED}) == "{mp_state 10 SUSPENDED}");
  CHECK(describe_mp_state({.mp_state = 3}) == "{mp_state 3}");  // no arm64 state: the number alone
}

TEST_CASE("lesson 3's errors: steps 16 to 18 have their status; each message names the step and the vCPU") {
  using kh::Problem, kh::Step;
  const kh::Error mp{Step::read_mp_state, Problem::call_failed, "KVM_SET_MP_STATE", EINVAL, 0, 1};
  CHECK(status_for(mp) == Status::vcpu_threads);
  const Failure failure = failure_for(mp, "/dev/kvm");
  CHECK(failure.message.starts_with("step 16 (read_mp_state), vCPU 1: KVM_SET_MP_STATE failed with EINVAL"));
  CHECK(failure.message.find("RUNNABLE, STOPPED or SUSPENDED") != std::string::npos);
  CHECK(status_for({Step::start_vcpu_thread, Problem::call_failed, "pthread_create", EAGAIN}) ==
        Status::out_of_memory);  // no memory for its stack, as a Deadline's
  CHECK(status_for({Step::start_vcpu_thread, Problem::call_failed, "pthread_create", EPERM}) == Status::vcpu_threads);
  CHECK(status_for({Step::stop_vcpus, Problem::call_failed, "pthread_kill", ESRCH}) == Status::vcpu_threads);
  // A vCPU's watchdog is the watchdog's status whichever vCPU it stopped; the message says which.
  const kh::Error vcpu_watchdog = kh::on_vcpu({Step::run_guest, Problem::watchdog_expired, "KVM_RUN", EINTR, 1000}, 1);
  CHECK(status_for(vcpu_watchdog) == Status::watchdog);
  CHECK(failure_for(vcpu_watchdog, "/dev/kvm").message.starts_with("step 9 (run_guest), vCPU 1: the guest did not power"));
}

TEST_CASE("lesson 3's program mistakes, in words: a vCPU no thread ran, a thread left in KVM_RUN") {
  const std::string unrun = explain_vcpu_without_thread(1, kh::MpState::runnable);
  CHECK(unrun.starts_with("vCPU 1 is RUNNABLE (the guest's CPU_ON started it), but no thread ever called KVM_RUN"));
  CHECK(unrun.find("start_vcpu_thread, step 17") != std::string::npos);
  CHECK(explain_vcpu_without_thread(2, kh::MpState::stopped).starts_with("vCPU 2 is STOPPED, but no thread"));
  CHECK(explain_vcpu_without_thread(2, static_cast<kh::MpState>(3)).starts_with("vCPU 2 is mp_state 3, but"));
  const std::string left = explain_left_in_kvm_run(1, 0);
  CHECK(left.starts_with("vCPU 1 was still in KVM_RUN when its watchdog stopped it, after vCPU 0 had powered the "
                         "machine off"));
  CHECK(left.find("stop_vcpus (step 18)") != std::string::npos);
}

TEST_CASE("lesson 3: a PSCI call's x0 in words: CPU_ON's SUCCESS, INVALID_PARAMETERS, ALREADY_ON; AFFINITY_INFO's ON, OFF") {
  CHECK(explain_psci_result(kh::psci::cpu_on64, 0, 2).starts_with("0: SUCCESS: KVM found the vCPU of that MPIDR STOPPED"));
  const std::string nobody = explain_psci_result(kh::psci::cpu_on64, -2, 2);
  CHECK(nobody.starts_with("-2: INVALID_PARAMETERS: no vCPU of this VM has the MPIDR"));
  CHECK(nobody.find("vCPUs 0 to 1") != std::string::npos);
  CHECK(explain_psci_result(kh::psci::cpu_on64, -4, 2).starts_with("-4: ALREADY_ON: that vCPU is not STOPPED"));
  CHECK(explain_psci_result(kh::psci::affinity_info64, 1, 2).starts_with("1: OFF: that vCPU is STOPPED"));
  CHECK(explain_psci_result(kh::psci::affinity_info64, 0, 2).starts_with("0: ON"));
  CHECK(explain_psci_result(kh::psci::cpu_off, -3, 2) == "-3: DENIED");
  CHECK(explain_psci_result(kh::psci::cpu_off, 12345, 2) == "12345");
  CHECK(describe_power_state(kh::MpState::stopped) == "STOPPED (5)");
  CHECK(vcpu_name(1) == "vCPU 1");
}

TEST_CASE("lesson 3's kernel differences named: 6.1's features and KVM_IRQ_LINE, and 6.12's and later") {
  CHECK(describe_init_features({6, 1}).starts_with("POWER_OFF stays among this vCPU's features"));
  CHECK(describe_init_features({6, 12}).starts_with("POWER_OFF holds for this INIT only"));
  CHECK(describe_init_features({7, 2}) == describe_init_features({6, 12}));
  CHECK(describe_irq_line_vcpu({6, 1}).ends_with("a PPI reaches only a vCPU whose id is its index"));
  CHECK(describe_irq_line_vcpu({7, 2}) == "KVM_IRQ_LINE's vCPU field is the vCPU's id (kvm_get_vcpu_by_id)");
}

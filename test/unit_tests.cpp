// SPDX-License-Identifier: MIT
// unit_tests.cpp: the pure logic of kvm_hello.hpp and main.cpp, without KVM.
//
// Runs on the build machine (any 64-bit Linux) and, on other hosts, also as
// an arm64 binary under qemu-aarch64-static. Everything that needs a real
// /dev/kvm is in e2e_tests.cpp.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#define KVM_HELLO_NO_MAIN
#include "main.cpp"

#include <fcntl.h>
#include <time.h>

#include <set>

namespace kh = kvm_hello;

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

TEST_CASE("a request number decodes into direction, type, number and size") {
  const kh::RequestFields init = kh::decode_request(kh::request::arm_vcpu_init.number);
  CHECK(init.dir == _IOC_WRITE);
  CHECK(init.type == KVMIO);
  CHECK(init.nr == 0xae);
  CHECK(init.size == sizeof(kvm_vcpu_init));
  const kh::RequestFields target = kh::decode_request(kh::request::arm_preferred_target.number);
  CHECK(target.dir == _IOC_READ);
  CHECK(target.size == 32);
  const kh::RequestFields run = kh::decode_request(kh::request::run.number);
  CHECK(run.dir == _IOC_NONE);
  CHECK(run.size == 0);
}

TEST_CASE("core register ids come from offsetof(struct kvm_regs, ...)") {
  CHECK(kh::reg::pc == 0x6030000000100040ULL);
  CHECK(kh::reg::pstate == 0x6030000000100042ULL);
  CHECK(kh::reg::sp_el1 == 0x6030000000100044ULL);
  CHECK(kh::reg::elr_el1 == 0x6030000000100046ULL);
  CHECK(kh::reg::x(1) == 0x6030000000100002ULL);
  // SP_EL0 (regs.sp) is a different register from SP_EL1: the classic trap.
  CHECK(kh::core_register_id(offsetof(kvm_regs, regs.sp)) != kh::reg::sp_el1);
}

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
    CHECK(kh::capability_name(caps.error().value) == "KVM_CAP_ONE_REG");
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

TEST_CASE("the VM type carries the IPA size the guest needs") {
  CHECK(kh::vm_type_for(0).value() == 0);  // no capability: the default 40 bits
  CHECK(kh::vm_type_for(40).value() == 32);
  CHECK(kh::vm_type_for(48).value() == 32);
  CHECK(kh::vm_type_for(32).value() == 32);
  const auto small = kh::vm_type_for(31);
  REQUIRE_FALSE(small);
  CHECK(small.error().problem == kh::Problem::ipa_too_small);
}

TEST_CASE("PSCI 0.2 is added to the preferred target, keeping what was there") {
  kvm_vcpu_init preferred{};
  preferred.target = KVM_ARM_TARGET_GENERIC_V8;
  preferred.features[0] = 1u << KVM_ARM_VCPU_PMU_V3;
  const kvm_vcpu_init init = kh::with_psci_0_2(preferred);
  CHECK(init.target == KVM_ARM_TARGET_GENERIC_V8);
  CHECK(init.features[0] == ((1u << KVM_ARM_VCPU_PMU_V3) | (1u << KVM_ARM_VCPU_PSCI_0_2)));
}

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
  SUBCASE("a length beyond mmio.data is clamped") {
    const auto exit = kh::decode_exit(mmio_run(0x1100, 200, true, {}));
    CHECK(std::get<kh::MmioAccess>(exit).length == 8);
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
  CHECK(answer.data == std::array<std::uint8_t, 8>{0x2a, 0, 0, 0, 0, 0, 0, 0});
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
    CHECK(reader.get() == -1);
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

TEST_CASE("the watchdog sets immediate_exit when time is up, and the destructor clears it") {
  kvm_run run{};
  {
    // SIGALRM is held back until sigsuspend() waits for it, so it cannot come
    // too early, however slowly a busy machine gets there.
    sigset_t alarm_only{}, before{};
    sigemptyset(&alarm_only);
    sigaddset(&alarm_only, SIGALRM);
    REQUIRE(::sigprocmask(SIG_BLOCK, &alarm_only, &before) == 0);
    const kh::Watchdog watchdog(run, std::chrono::milliseconds(20));
    const int waited = ::sigsuspend(&before);  // returns once the handler has run
    ::sigprocmask(SIG_SETMASK, &before, nullptr);
    CHECK(waited == -1);
    CHECK(errno == EINTR);
    CHECK(watchdog.fired());
    CHECK(run.immediate_exit == 1);
  }
  CHECK(run.immediate_exit == 0);
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
  CHECK(status_for({Step::init_vcpu, Problem::call_failed, "KVM_ARM_VCPU_INIT", EINVAL}) == Status::setup_failed);
  CHECK(status_for({Step::run_guest, Problem::call_failed, "KVM_RUN", ENOSYS}) == Status::run_failed);
  CHECK(status_for({Step::run_guest, Problem::watchdog_expired}) == Status::watchdog);
  CHECK(status_for({Step::run_guest, Problem::guest_reset}) == Status::guest_reset);
}

TEST_CASE("an error message names the step, the call, the errno and what to do") {
  using kh::Problem;
  using kh::Step;
  const std::string missing = explain({Step::open_kvm, Problem::call_failed, "open", ENOENT}, "/dev/kvm");
  CHECK(missing.starts_with("step 1 (open_kvm): open failed with ENOENT (No such file or directory): "));
  CHECK(missing.find(why_no_kvm()) != std::string::npos);
  utsname machine{};
  ::uname(&machine);
  // Off arm64 it points to the emulated machine; on arm64, to the kernel's KVM.
  CHECK(why_no_kvm().find(std::string_view(machine.machine) == "aarch64" ? "CONFIG_KVM" : "make run") !=
        std::string::npos);
  CHECK(missing.find('\n') == std::string::npos);

  const std::string denied = explain({Step::open_kvm, Problem::call_failed, "open", EACCES}, "/dev/kvm");
  CHECK(denied.find("EACCES") != std::string::npos);
  CHECK(denied.find("kvm") != std::string::npos);

  const std::string version = explain({Step::check_api_version, Problem::wrong_api_version, {}, 0, 11}, "/dev/kvm");
  CHECK(version.find("says 11, this program needs 12") != std::string::npos);

  const std::string cap =
      explain({Step::check_capabilities, Problem::missing_capability, {}, 0, KVM_CAP_ARM_PSCI_0_2}, "/dev/kvm");
  CHECK(cap.starts_with("step 3 (check_capabilities): "));
  CHECK(cap.find("KVM_CAP_ARM_PSCI_0_2") != std::string::npos);

  const std::string pair = explain({Step::run_guest, Problem::call_failed, "KVM_RUN", ENOSYS}, "/dev/kvm");
  CHECK(pair.find("load/store pair") != std::string::npos);
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
  SUBCASE("unknown option") {
    char* argv[] = {prog.data(), bad.data()};
    CHECK(parse_options(2, argv).error().find("--bogus") != std::string::npos);
  }
  SUBCASE("a timeout of zero") {
    char* argv[] = {prog.data(), timeout.data(), never.data()};
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
    CHECK(describe_esr(0xffffffff86000010).find("sign extension of the syndrome it injected, 0x86000010, fixed in 6.12") !=
          std::string::npos);
    CHECK(describe_esr(0x86000010).find("sign extension") == std::string::npos);
    CHECK_FALSE(is_sign_extended_syndrome(0x0000000086000010));
    CHECK_FALSE(is_sign_extended_syndrome(0xffffffff06000010));  // bit 31 clear: not from a sign extension
  }
  SUBCASE("the PSCI version and conduit") {
    CHECK(describe_psci(0x10001, {6, 1}) ==
          "PSCI for the guest: version 1.1 (KVM_REG_ARM_PSCI_VERSION; 1.3 from Linux 6.13), called with hvc only: "
          "before Linux 6.4 an smc returns -1 (NOT_SUPPORTED)");
    CHECK(describe_psci(0x10001, {6, 12}) ==
          "PSCI for the guest: version 1.1 (KVM_REG_ARM_PSCI_VERSION; 1.3 from Linux 6.13), called with hvc or smc");
    CHECK(describe_psci(0x10003, {7, 2}) ==
          "PSCI for the guest: version 1.3 (KVM_REG_ARM_PSCI_VERSION), called with hvc or smc");
  }
  SUBCASE("the preferred target") {
    CHECK(describe_target(KVM_ARM_TARGET_GENERIC_V8) == "5 (KVM_ARM_TARGET_GENERIC_V8)");
    CHECK(describe_target(KVM_ARM_TARGET_CORTEX_A57).starts_with("2 (KVM_ARM_TARGET_CORTEX_A57: Linux before 6.6"));
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
    const auto old_kernel = diagnose(stuck, regs, GuestView{ram, {}}, {6, 1});
    REQUIRE(old_kernel.size() == 2);
    CHECK(old_kernel[1].starts_with("the guest called smc at 0x10004 and got x0 = -1 (PSCI NOT_SUPPORTED): Linux "
                                    "before 6.4 does not take smc as a PSCI call"));
    const auto new_kernel = diagnose(stuck, regs, GuestView{ram, {}}, {6, 12});
    REQUIRE(new_kernel.size() == 2);
    CHECK(new_kernel[1].find("KVM does not know the function id") != std::string::npos);
  }
}

// ==== The docs and the README stay true to the code ==========================

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace {

const std::filesystem::path source_dir = KVM_HELLO_SOURCE_DIR;  // set by the Makefile

std::string read_source(const std::filesystem::path& relative) {
  std::ifstream file(source_dir / relative);
  REQUIRE_MESSAGE(file.good(), "cannot read " << relative);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::vector<std::filesystem::path> markdown_files() {
  std::vector<std::filesystem::path> files{"README.md"};
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "docs")) {
    if (entry.path().extension() == ".md") files.push_back(std::filesystem::relative(entry.path(), source_dir));
  }
  return files;
}

}  // namespace

TEST_CASE("docs: every step function has its row, in order, with its number") {
  const std::string tutorial = read_source("docs/README.md");
  std::size_t previous = 0;
  for (int n = 1; n <= kh::step_count; ++n) {
    const std::string name(kh::step_info(static_cast<kh::Step>(n)).name);
    const std::string row = "| " + std::to_string(n) + " | `" + name + "()` |";
    const std::size_t at = tutorial.find(row);
    CHECK_MESSAGE(at != std::string::npos, "docs/README.md has no row " << row);
    CHECK_MESSAGE(at > previous, name << " is out of order");
    previous = at;
  }
}

TEST_CASE("docs: every `function()` they name exists in the code") {
  std::string code = read_source("kvm_hello.hpp") + read_source("main.cpp");
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "program")) {
    code += read_source(std::filesystem::relative(entry.path(), source_dir));
  }
  const std::regex called("`([A-Za-z_][A-Za-z_0-9]*)\\(\\)`");
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), called), end; it != end; ++it) {
      const std::string name = (*it)[1];
      CHECK_MESSAGE(std::regex_search(code, std::regex("\\b" + name + "\\(")),
                    file << " names " << name << "(), which the code does not define");
    }
  }
}

TEST_CASE("docs: relative links resolve") {
  const std::regex link("\\]\\(([^)#:]+)(#[^)]*)?\\)");
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), link), end; it != end; ++it) {
      const std::filesystem::path target = source_dir / file.parent_path() / std::string((*it)[1]);
      CHECK_MESSAGE(std::filesystem::exists(target), file << " links to " << (*it)[1] << ", which does not exist");
    }
  }
}

TEST_CASE("README: the exit status table is the program's") {
  const std::string readme = read_source("README.md");
  for (const StatusInfo& info : status_table) {
    const std::string row =
        "| " + std::to_string(static_cast<int>(info.status)) + " | " + std::string(info.meaning) + " |";
    CHECK_MESSAGE(readme.find(row) != std::string::npos, "README.md lacks the row " << row);
  }
}

namespace {

// Checks that every line of an excerpt of the program's output is real: each
// line is a line of the golden output, or, ending in "...", begins one; a
// line of only "..." stands for lines left out. Returns the lines checked.
int check_excerpt(const std::string& excerpt, const std::string& golden, const std::string& where) {
  std::istringstream lines(excerpt);
  int checked = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find_first_not_of(' ') == line.find("...")) continue;
    const bool shortened = line.ends_with("...");
    const std::string wanted = shortened ? line.substr(0, line.size() - 3) : line + "\n";
    const bool found = golden.find("\n" + wanted) != std::string::npos || golden.starts_with(wanted);
    CHECK_MESSAGE(found, where << " shows a line the program does not print: " << line);
    ++checked;
  }
  return checked;
}

}  // namespace

TEST_CASE("README: the sample output is the real one (test/golden/default.txt)") {
  const std::string readme = read_source("README.md");
  const std::size_t section = readme.find("## What you will see");
  REQUIRE(section != std::string::npos);
  const std::size_t start = readme.find("```\n", section) + 4;
  const std::size_t end = readme.find("```", start);
  CHECK(check_excerpt(readme.substr(start, end - start), read_source("test/golden/default.txt"), "README.md") > 10);
}

TEST_CASE("docs: every excerpt marked <!-- output: NAME --> is from test/golden/NAME.txt") {
  const std::regex marked("<!-- output: ([a-z-]+) -->\n```\n([^`]*)```");
  int excerpts = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), marked), end; it != end; ++it) {
      const std::string golden = read_source("test/golden/" + std::string((*it)[1]) + ".txt");
      CHECK(check_excerpt((*it)[2], golden, file.string()) > 0);
      ++excerpts;
    }
  }
  CHECK(excerpts >= kh::step_count);
}

TEST_CASE("docs: one chapter per step, numbered as main.cpp numbers them, titled with its function") {
  for (int n = 1; n <= kh::step_count; ++n) {
    const std::string name(kh::step_info(static_cast<kh::Step>(n)).name);
    std::string file_name = name;
    std::replace(file_name.begin(), file_name.end(), '_', '-');
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%02d-", n);
    const std::string chapter = "docs/" + std::string(prefix) + file_name + ".md";
    REQUIRE_MESSAGE(std::filesystem::exists(source_dir / chapter), chapter << " is missing");
    const std::string text = read_source(chapter);
    CHECK(text.starts_with("# Step " + std::to_string(n) + ": "));
    CHECK(text.substr(0, text.find('\n')).find("`" + name + "()`") != std::string::npos);
    CHECK_MESSAGE(
        read_source("docs/README.md").find("(" + std::string(prefix) + file_name + ".md)") != std::string::npos,
        "docs/README.md does not link " << chapter);
  }
}

TEST_CASE("PSTATE and ESR decode into the architecture's names") {
  CHECK(describe_pstate(0x3c5) == "0x3c5 (EL1h: EL1 on SP_EL1; D A I F masked; flags nzcv)");
  CHECK(describe_pstate(0x60000004) == "0x60000004 (EL1t: EL1 on SP_EL0; nothing masked; flags nZCv)");
  CHECK(kh::exception_class_of(0x5a000000) == kh::exception_class::hvc64);
  CHECK(describe_esr(0xca000000) == "0xca000000 (EC 0x32: software step: one instruction done)");
  CHECK(describe_esr(0x96000000).find("data abort") != std::string::npos);
}

TEST_CASE("a register id decodes into arch, size, kind, index and name") {
  CHECK(describe_register_id(kh::reg::pc) == "0x6030000000100040 (arm64 u64 core 0x40: pc)");
  CHECK(describe_register_id(kh::reg::esr_el1) == "0x603000000013c290 (arm64 u64 sysreg 0xc290: esr_el1)");
  CHECK(kh::register_name(kh::reg::x(17)) == "x17");
  CHECK(kh::register_name(0x6030000000100099) == "");
}

TEST_CASE("a request number is shown as the macro that made it") {
  CHECK(describe_request_number(kh::request::set_user_memory_region.number) ==
        "0x4020ae46 = _IOW(0xae, 0x46, 32 bytes)");
  CHECK(describe_request_number(kh::request::arm_preferred_target.number) == "0x8020aeaf = _IOR(0xae, 0xaf, 32 bytes)");
  CHECK(describe_request_number(kh::request::run.number) == "0xae80 = _IO(0xae, 0x80)");
}

TEST_CASE("-v describes a call: fd, request, arguments that matter, result or errno, time") {
  std::uint64_t value = 0x10000;
  const kvm_one_reg one{.id = kh::reg::pc, .addr = reinterpret_cast<std::uintptr_t>(&value)};
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
  const GuestLine lines[] = {{0x10000, 21, "ldr x1, =OUT"}, {0x10004, 22, "adr x2, message"}};
  REQUIRE(find_guest_line(lines, 0x10004) != nullptr);
  CHECK(find_guest_line(lines, 0x10004)->line == 22);
  CHECK(find_guest_line(lines, 0x10008) == nullptr);
}

TEST_CASE("the register dump explains ESR_EL1 only when the guest is in its exception vectors") {
  kh::Registers regs;
  regs.pc = 0x10034;
  regs.esr_el1 = kh::unknown_register_value;
  CHECK(format_registers(regs).find("esr_el1") == std::string::npos);
  CHECK(format_registers(regs).find("no exception taken") != std::string::npos);
  regs.pc = 0x200;  // VBAR_EL1 0 + 0x200: synchronous exception from the current EL, on SP_ELx
  regs.esr_el1 = 0x86000010;
  CHECK(format_registers(regs).find("esr_el1 0x86000010 (EC 0x21: instruction abort") != std::string::npos);
}

TEST_CASE("--pause has words for every step") {
  for (int n = 1; n <= kh::step_count; ++n) CHECK_FALSE(walkthrough(static_cast<kh::Step>(n)).empty());
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
  style.colour = false;
  CHECK(paint(colour::error, "x") == "x");
  style.colour = true;
  CHECK(paint(colour::error, "x") == "\033[31mx\033[0m");
  style.colour = false;
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

TEST_CASE("MMIO instructions KVM cannot decode are told apart") {
  using kh::MmioInstruction;
  CHECK(kh::classify_mmio_instruction(0x39000020) == MmioInstruction::plain);           // strb w0, [x1]
  CHECK(kh::classify_mmio_instruction(0xb9400064) == MmioInstruction::plain);           // ldr w4, [x3]
  CHECK(kh::classify_mmio_instruction(0xf8226820) == MmioInstruction::plain);           // str x0, [x1, x2]
  CHECK(kh::classify_mmio_instruction(0xa9000c22) == MmioInstruction::pair);            // stp x2, x3, [x1]
  CHECK(kh::classify_mmio_instruction(0x38001420) == MmioInstruction::writeback);       // strb w0, [x1], #1
  CHECK(kh::classify_mmio_instruction(0xf8008c20) == MmioInstruction::writeback);       // str x0, [x1, #8]!
  CHECK(kh::classify_mmio_instruction(0x3d800020) == MmioInstruction::simd);            // str q0, [x1]
  CHECK(kh::classify_mmio_instruction(0xc85f7c20) == MmioInstruction::atomic);          // ldxr x0, [x1]
  CHECK(kh::classify_mmio_instruction(0xd4000002) == MmioInstruction::not_load_store);  // hvc #0
}

// ==== The fuzz target, on a fixed-seed sample (make fuzz runs it for real) ====

#include "fuzz_exits.cpp"

#include <random>

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
    REQUIRE(LLVMFuzzerTestOneInput(bytes.data(), bytes.size()) == 0);
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
  CHECK(explain(fail_entry, "/dev/kvm").find("KVM could not enter the guest") != std::string::npos);
  CHECK(explain(internal, "/dev/kvm").find("kvm_run.internal.suberror") != std::string::npos);
  CHECK(explain(unknown, "/dev/kvm").find("exit reason 99, which this program does not handle") != std::string::npos);
  CHECK(explain(crash, "/dev/kvm").find("reported a crash") != std::string::npos);
  CHECK(status_for(fail_entry) == Status::unexpected_exit);
  CHECK(status_for(crash) == Status::guest_crash);
  CHECK(status_for({Step::run_guest, Problem::interrupted}) == Status::interrupted);
  CHECK(static_cast<int>(Status::interrupted) == 130);
  // The decoder, the loop's decision and the message agree for a FAIL_ENTRY kvm_run.
  kvm_run run{};
  run.exit_reason = KVM_EXIT_FAIL_ENTRY;
  const auto decided = kh::keep_running(kh::decode_exit(run));
  REQUIRE_FALSE(decided);
  CHECK(explain(decided.error(), "/dev/kvm") == explain(fail_entry, "/dev/kvm"));
}

TEST_CASE("README: the table of broken guests is test/guests/, no more, no less") {
  const std::string whole = read_source("README.md");
  const std::size_t start = whole.find("## Run your own guest");
  REQUIRE(start != std::string::npos);
  const std::string readme = whole.substr(start, whole.find("\n## ", start + 1) - start);
  std::set<std::string> in_readme, on_disk;
  const std::regex row("\\n\\| `([a-z_]+\\.S)` \\|");
  for (std::sregex_iterator it(readme.begin(), readme.end(), row), end; it != end; ++it) in_readme.insert((*it)[1]);
  for (const auto& entry : std::filesystem::directory_iterator(source_dir / "test/guests")) {
    on_disk.insert(entry.path().filename().string());
  }
  INFO("README: " << in_readme.size() << " guests, test/guests: " << on_disk.size());
  for (const auto& name : on_disk) CHECK_MESSAGE(in_readme.count(name) == 1, "README.md lacks " << name);
  for (const auto& name : in_readme) CHECK_MESSAGE(on_disk.count(name) == 1, "test/guests lacks " << name);
}

// ==== The benchmark's arithmetic (main.cpp) ===================================

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

TEST_CASE("docs: every block marked <!-- source: FILE --> is still, line for line, in FILE") {
  const std::regex marked("<!-- source: ([A-Za-z0-9_./-]+) -->\\n```\\n([^`]*)```");
  int blocks = 0;
  for (const auto& file : markdown_files()) {
    const std::string text = read_source(file);
    for (std::sregex_iterator it(text.begin(), text.end(), marked), end; it != end; ++it) {
      const std::string source = "\n" + read_source(std::string((*it)[1]));
      std::istringstream lines((*it)[2]);
      for (std::string line; std::getline(lines, line);) {
        CHECK_MESSAGE(source.find("\n" + line + "\n") != std::string::npos,
                      file << " quotes a line " << (*it)[1] << " does not have: " << line);
      }
      ++blocks;
    }
  }
  CHECK(blocks >= 4);
}

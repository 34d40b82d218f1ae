// SPDX-License-Identifier: MIT
// e2e_tests.cpp: kvm-hello against real arm64 KVM.
//
// Runs where /dev/kvm is an arm64 KVM: natively on arm64, otherwise inside the
// emulated machine (`make test` boots it once for this whole file). Two kinds
// of test: the kvm-hello program run as a user runs it (output and exit
// status), and the header's steps called in-process (each step's result, and
// the traps the comments warn about).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <set>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "bench_guest_image.h"  // bench_guest_bin[]: the benchmark guest
#include "guest_image.h"        // guest_bin[]: the guest kvm-hello embeds
#include "kvm_hello.hpp"
#include "test_guests.h"  // spin_bin[], reset_bin[], stp_mmio_bin[]: from test/guests/*.S

namespace kh = kvm_hello;

// Every allocation in this program is counted, to prove the run loop makes none.
// (Replacement operators may pair malloc and free; GCC 12 warns about them anyway.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<std::size_t> allocations{0};
void* operator new(std::size_t size) {
  ++allocations;
  if (void* memory = std::malloc(size == 0 ? 1 : size)) return memory;
  throw std::bad_alloc();
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }
#pragma GCC diagnostic pop

namespace {

std::string program_path;  // kvm-hello, beside this test binary

struct Outcome {
  int status = -1;
  std::string out, err;
  double seconds = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Runs kvm-hello with `args`, as user `uid` when it is not -1; sends it
// SIGINT (as Ctrl-C would) after `interrupt_after` when that is not zero.
Outcome run_program(std::vector<std::string> args, uid_t uid = static_cast<uid_t>(-1),
                    std::chrono::milliseconds interrupt_after = {}, std::string program = program_path,
                    rlim_t address_space = RLIM_INFINITY) {
  const std::string out_path = "/tmp/kvm-hello-e2e.out", err_path = "/tmp/kvm-hello-e2e.err";
  const auto start = std::chrono::steady_clock::now();
  const pid_t child = fork();
  if (child == 0) {
    // O_CLOEXEC: the program gets exactly fds 0, 1 and 2 from us, as from a shell.
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int in = open("/dev/null", O_RDONLY | O_CLOEXEC);  // not a terminal: --pause runs straight through
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    if (uid != static_cast<uid_t>(-1) && (setgid(uid) != 0 || setuid(uid) != 0)) _exit(126);
    const rlimit limit{address_space, address_space};
    if (address_space != RLIM_INFINITY && setrlimit(RLIMIT_AS, &limit) != 0) _exit(126);
    std::vector<char*> argv{program.data()};
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (interrupt_after.count() > 0) {
    std::this_thread::sleep_for(interrupt_after);
    kill(child, SIGINT);
  }
  int wait_status = 0;
  waitpid(child, &wait_status, 0);
  Outcome outcome;
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  outcome.status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
  outcome.out = read_file(out_path);
  outcome.err = read_file(err_path);
  return outcome;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::size_t line_count(const std::string& text) { return count(text, "\n"); }

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

// Steps 1 to 8, in-process, as main.cpp does them: a VM ready to run `image`.
struct Machine {
  kh::Fd kvm, vm;
  kh::GuestMemory memory;
  kh::Vcpu vcpu;
};

Machine build_machine(std::span<const std::uint8_t> image) {
  Machine m;
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  REQUIRE(kh::check_api_version(kvm->get()).value() == 12);
  const auto caps = kh::check_capabilities(kvm->get());
  REQUIRE(caps);
  auto vm = kh::create_vm(kvm->get(), kh::vm_type_for(caps->ipa_limit).value());
  REQUIRE(vm);
  auto memory = kh::setup_guest_memory(vm->get(), image);
  REQUIRE(memory);
  auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
  REQUIRE(vcpu);
  REQUIRE(kh::init_vcpu(vm->get(), vcpu->fd.get()));
  REQUIRE(kh::set_boot_registers(vcpu->fd.get()));
  m.kvm = std::move(*kvm);
  m.vm = std::move(*vm);
  m.memory = std::move(*memory);
  m.vcpu = std::move(*vcpu);
  return m;
}

std::span<const std::uint8_t> image(const unsigned char* bytes, unsigned int length) { return {bytes, length}; }

int open_fd_count() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

std::size_t mapping_count() { return line_count(read_file("/proc/self/maps")); }

}  // namespace

TEST_CASE("kvm-hello: every step, the MMIO exits, hello, a clean shutdown, status 0") {
  const Outcome run = run_program({});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  for (int step = 1; step <= kh::step_count; ++step) {
    const std::string tag = "[" + std::to_string(step) + "/" + std::to_string(kh::step_count) + "] ";
    const std::string name(kh::step_info(static_cast<kh::Step>(step)).name);
    CHECK(run.out.find(tag + name) != std::string::npos);
  }
  CHECK(count(run.out, "KVM_EXIT_MMIO address=0x1100 is_write=1 len=1") == 6);
  for (const char* byte : {"0x68 'h'", "0x65 'e'", "0x6c 'l'", "0x6f 'o'", "0x0a '\\n'"}) {
    CHECK(run.out.find(byte) != std::string::npos);
  }
  CHECK(run.out.find("KVM_EXIT_MMIO address=0x1108 is_write=0 len=4 data=0x2a") != std::string::npos);
  CHECK(run.out.find("KVM_EXIT_MMIO address=0x1110 is_write=1 len=4 data=0x2a") != std::string::npos);
  CHECK(run.out.find("KVM_EXIT_SYSTEM_EVENT type=1 (SHUTDOWN") != std::string::npos);
  CHECK(run.out.find("guest output: hello\\n\n") != std::string::npos);
  CHECK(run.out.find("the guest read 0x2a from the host and wrote it back") != std::string::npos);
  CHECK(run.out.find("shutdown: the guest powered off (PSCI SYSTEM_OFF) after 9 exits") != std::string::npos);
}

TEST_CASE("no KVM device: one line naming step 1, ENOENT and what to do; status 10") {
  const Outcome run = run_program({"--kvm-device", "/no/such/kvm"});
  CHECK(run.status == 10);
  CHECK(line_count(run.err) == 1);
  CHECK(run.err.starts_with("kvm-hello: step 1 (open_kvm): open failed with ENOENT"));
  CHECK(run.err.find("this arm64 kernel has no KVM: it needs CONFIG_KVM") != std::string::npos);
}

TEST_CASE("a file that is not a KVM device: step 2, ENOTTY; status 12") {
  const Outcome run = run_program({"--kvm-device", "/dev/null"});
  CHECK(run.status == 12);
  CHECK(line_count(run.err) == 1);
  CHECK(run.err.starts_with("kvm-hello: step 2 (check_api_version): KVM_GET_API_VERSION failed with ENOTTY"));
}

TEST_CASE("permission denied: step 1, EACCES, the kvm group; status 11") {
  if (getuid() != 0) {
    MESSAGE("not root: cannot switch to an unprivileged user, so this case is not run");
    return;
  }
  struct stat device {};
  REQUIRE(stat(kh::default_kvm_path, &device) == 0);
  if ((device.st_mode & S_IROTH) && (device.st_mode & S_IWOTH)) {
    MESSAGE("/dev/kvm is open to everyone here, so no permission can be denied");
    return;
  }
  const Outcome run = run_program({}, 65534);  // nobody
  CHECK(run.status == 11);
  CHECK(line_count(run.err) == 1);
  CHECK(run.err.starts_with("kvm-hello: step 1 (open_kvm): open failed with EACCES"));
  CHECK(run.err.find("usermod -aG kvm") != std::string::npos);
}

TEST_CASE("the bad command line: status 2") {
  const Outcome run = run_program({"--no-such-option"});
  CHECK(run.status == 2);
  CHECK(run.err.find("--no-such-option") != std::string::npos);
}

TEST_CASE("the steps in-process: the guest says hello and powers off") {
  const int fds_before = open_fd_count();
  {
    Machine m = build_machine(image(guest_bin, guest_bin_len));
    kh::HelloDevice device;
    std::vector<kh::Exit> exits;
    const auto stats =
        kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [&](const kh::Exit& exit) { exits.push_back(exit); });
    REQUIRE(stats);
    CHECK(device.output() == "hello\n");
    CHECK(device.answer_came_back());
    CHECK(stats->exits == 9);
    CHECK(stats->kvm_run_calls == 9);
    REQUIRE(exits.size() == 9);
    CHECK(std::get<kh::SystemEvent>(exits.back()).type == KVM_SYSTEM_EVENT_SHUTDOWN);
    // After SYSTEM_OFF the vCPU is off: the guest stopped at the hvc.
    const auto pc = kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::pc);
    REQUIRE(pc);
    CHECK(*pc > kh::ram_base);
    CHECK(*pc < kh::ram_base + guest_bin_len);
  }
  CHECK(open_fd_count() == fds_before);  // the owners closed every fd
}

TEST_CASE("after INIT, PSTATE is EL1h with D, A, I and F masked, and PC is where step 8 put it") {
  Machine m = build_machine(image(guest_bin, guest_bin_len));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::pstate).value() == 0x3c5);
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::pc).value() == kh::ram_base);
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::sp_el1).value() == kh::ram_base + kh::ram_size);
}

TEST_CASE("after INIT, system registers the architecture leaves UNKNOWN hold KVM's marker") {
  Machine m = build_machine(image(guest_bin, guest_bin_len));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::esr_el1).value() == kh::unknown_register_value);
}

TEST_CASE("the call observer sees every ioctl of the steps, in order, with results") {
  static std::vector<std::string> seen;
  seen.clear();
  kh::call_observer = [](const kh::CallRecord& call) {
    seen.push_back(std::string(call.name) + (call.result < 0 ? " failed" : ""));
  };
  {
    Machine m = build_machine(image(guest_bin, guest_bin_len));
    kh::HelloDevice device;
    CHECK(kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {}));
  }
  kh::call_observer = nullptr;
  const std::vector<std::string> setup{"KVM_GET_API_VERSION",
                                       "KVM_CHECK_EXTENSION",
                                       "KVM_CHECK_EXTENSION",
                                       "KVM_CHECK_EXTENSION",
                                       "KVM_CHECK_EXTENSION",
                                       "KVM_CHECK_EXTENSION",
                                       "KVM_CREATE_VM",
                                       "KVM_SET_USER_MEMORY_REGION",
                                       "KVM_CREATE_VCPU",
                                       "KVM_GET_VCPU_MMAP_SIZE",
                                       "KVM_ARM_PREFERRED_TARGET",
                                       "KVM_ARM_VCPU_INIT",
                                       "KVM_SET_ONE_REG",
                                       "KVM_SET_ONE_REG"};
  REQUIRE(seen.size() == setup.size() + 9);
  CHECK(std::equal(setup.begin(), setup.end(), seen.begin()));
  CHECK(std::all_of(seen.begin() + static_cast<long>(setup.size()), seen.end(),
                    [](const std::string& name) { return name == "KVM_RUN"; }));
}

TEST_CASE("single-stepping: one KVM_EXIT_DEBUG per instruction, software step in the ESR") {
  Machine m = build_machine(image(guest_bin, guest_bin_len));
  REQUIRE(kh::enable_single_step(m.kvm.get(), m.vcpu.fd.get()));
  kh::HelloDevice device;
  unsigned steps = 0, other = 0;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(20), [&](const kh::Exit& exit) {
    if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) {
      CHECK(kh::exception_class_of(debug->esr) == kh::exception_class::software_step);
      ++steps;
    } else {
      ++other;
    }
  });
  REQUIRE(stats);
  CHECK(device.output() == "hello\n");
  CHECK(other == 9);  // the same MMIO exits and the shutdown as without stepping
  CHECK(steps > 30);  // the loop runs 6 times over 5 instructions, and more
  CHECK(stats->exits_by_reason[KVM_EXIT_DEBUG] == steps);
}

TEST_CASE("trap: a register before KVM_ARM_VCPU_INIT fails with ENOEXEC") {
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  auto vm = kh::create_vm(kvm->get(), kh::vm_type_for(kh::check_capabilities(kvm->get())->ipa_limit).value());
  REQUIRE(vm);
  auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
  REQUIRE(vcpu);
  const auto set = kh::set_boot_registers(vcpu->fd.get());
  REQUIRE_FALSE(set);
  CHECK(set.error().err == ENOEXEC);
  CHECK(set.error().call == "KVM_SET_ONE_REG");
}

TEST_CASE("trap: a second memory region over the first fails with EEXIST") {
  Machine m = build_machine(image(guest_bin, guest_bin_len));
  kvm_userspace_memory_region overlap = m.memory.region;
  overlap.slot = 1;
  const auto again = kh::call(kh::Step::setup_guest_memory, m.vm.get(), kh::request::set_user_memory_region, &overlap);
  REQUIRE_FALSE(again);
  CHECK(again.error().err == EEXIST);
}

TEST_CASE("a guest that never powers off is stopped by the watchdog") {
  Machine m = build_machine(image(spin_bin, spin_bin_len));
  kh::HelloDevice device;
  const auto start = std::chrono::steady_clock::now();
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::milliseconds(300), [](const kh::Exit&) {});
  const auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::watchdog_expired);
  CHECK(stats.error().err == EINTR);
  CHECK(took < std::chrono::seconds(5));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd.get(), kh::reg::pc).value() == kh::ram_base);
}

TEST_CASE("a guest that asks for a reset ends the run with Problem::guest_reset") {
  Machine m = build_machine(image(reset_bin, reset_bin_len));
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {});
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::guest_reset);
}

TEST_CASE("trap: a store pair to MMIO makes KVM_RUN fail with ENOSYS") {
  Machine m = build_machine(image(stp_mmio_bin, stp_mmio_bin_len));
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {});
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::call_failed);
  CHECK(stats.error().err == ENOSYS);
}

// ==== Bad guests, bad files, Ctrl-C ==========================================

namespace {

std::string guest_binaries;                       // guests/ beside this binary: test/guests/*.S assembled
std::string guest_sources;                        // guest-sources/ beside it: test/guests/*.S themselves
std::string exercise_binaries, exercise_sources;  // the same for test/exercises/

// What a test guest's comments say it must produce:
//   // args: --timeout 1       // expect-status: 24
//   // expect-stdout: TEXT     // expect-stderr: TEXT
struct Expectation {
  std::vector<std::string> args;
  int status = 0;
  std::vector<std::string> out, err;
};

Expectation read_expectation(const std::filesystem::path& source) {
  Expectation expected;
  std::istringstream text(read_file(source));
  for (std::string line; std::getline(text, line);) {
    const auto value = [&line](std::string_view key) { return line.substr(key.size()); };
    if (line.starts_with("// args: ")) expected.args = split_words(value("// args: "));
    if (line.starts_with("// expect-status: ")) expected.status = std::stoi(value("// expect-status: "));
    if (line.starts_with("// expect-stdout: ")) expected.out.push_back(value("// expect-stdout: "));
    if (line.starts_with("// expect-stderr: ")) expected.err.push_back(value("// expect-stderr: "));
  }
  return expected;
}

// The watchdog's limit a run has, from its arguments.
double time_limit_seconds(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--timeout") return std::stod(args[i + 1]);
  }
  return static_cast<double>(kh::default_time_limit.count()) / 1000;
}

}  // namespace

// Runs each guest of a folder of .S files (their binaries in `binaries`) and
// checks what its comments say it must produce, and that it does not hang.
static void check_guests(const std::string& sources_dir, const std::string& binaries, std::size_t at_least) {
  std::vector<std::filesystem::path> sources;
  for (const auto& entry : std::filesystem::directory_iterator(sources_dir)) sources.push_back(entry.path());
  std::sort(sources.begin(), sources.end());
  REQUIRE(sources.size() >= at_least);
  for (const auto& source : sources) {
    const Expectation expected = read_expectation(source);
    std::vector<std::string> args{"--guest", binaries + "/" + source.stem().string() + ".bin"};
    args.insert(args.end(), expected.args.begin(), expected.args.end());
    const Outcome run = run_program(args);
    INFO(source.filename().string() << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    CHECK(run.status == expected.status);
    for (const auto& text : expected.out)
      CHECK_MESSAGE(run.out.find(text) != std::string::npos, "stdout lacks: " << text);
    for (const auto& text : expected.err)
      CHECK_MESSAGE(run.err.find(text) != std::string::npos, "stderr lacks: " << text);
    CHECK(run.seconds < time_limit_seconds(args) + 1.0);
    if (expected.status != 0) CHECK(run.err.find("kvm-hello: step ") != std::string::npos);
  }
}

TEST_CASE("bad guests: each gives its message and exit status; none hangs past the watchdog plus a second") {
  check_guests(guest_sources, guest_binaries, 10);
}

TEST_CASE("the tutorial's exercises: each answer does what docs/15-exercises.md asks") {
  check_guests(exercise_sources, exercise_binaries, 4);
}

TEST_CASE("--guest FILE is checked before any VM exists") {
  const auto guest_error = [](std::vector<std::string> args, int status, const std::string& text) {
    const Outcome run = run_program(args);
    INFO("stderr: " << run.err);
    CHECK(run.status == status);
    CHECK(run.out.empty());  // not even step 1
    CHECK(line_count(run.err) == 1);
    CHECK(run.err.find(text) != std::string::npos);
  };
  guest_error({"--guest", "/no/such/guest.bin"}, 19, "--guest /no/such/guest.bin: cannot open it: ENOENT");
  guest_error({"--guest", "/tmp"}, 19, "it is a directory");
  { std::ofstream empty("/tmp/empty.bin"); }
  guest_error({"--guest", "/tmp/empty.bin"}, 18, "it is empty");
  {
    std::ofstream big("/tmp/big.bin");
    big << std::string(kh::ram_size + 1, '\0');
  }
  guest_error({"--guest", "/tmp/big.bin"}, 18, "it is 65537 bytes, more than guest RAM (65536 bytes)");
  if (getuid() == 0) {
    {
      std::ofstream secret("/tmp/secret.bin");
      secret << "abcd";
    }
    chmod("/tmp/secret.bin", 0600);
    const Outcome run = run_program({"--guest", "/tmp/secret.bin"}, 65534);
    CHECK(run.status == 19);
    CHECK(run.err.find("cannot open it: EACCES") != std::string::npos);
  }
}

TEST_CASE("out of memory, wherever it strikes: status 16 and a message, never a crash") {
  // Address-space limits from too small to start, up to enough, 32 KiB apart:
  // each run either never reaches main() (the kernel cannot set up the
  // process, or the C library cannot start: nothing of ours is printed), says
  // "out of memory" with status 16, or succeeds.
  std::set<int> statuses;
  for (rlim_t kib = 512; kib <= 16384; kib += 32) {
    const Outcome run = run_program({}, static_cast<uid_t>(-1), {}, program_path, kib << 10);
    INFO("limit " << kib << " KiB: status " << run.status << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    const bool never_started = run.out.empty() && run.err.find("kvm-hello") == std::string::npos && run.status != 0;
    CHECK((never_started || run.status == 16 || run.status == 0));
    if (run.status == 16) CHECK(run.err.find("out of memory") != std::string::npos);
    if (!never_started) statuses.insert(run.status);
    if (run.status == 0) break;
  }
  CHECK(statuses.count(16) == 1);  // some limit did run out in a step, or in our own allocations
  CHECK(statuses.count(0) == 1);   // and enough memory is enough
}

TEST_CASE("Ctrl-C stops the guest cleanly: the registers, then status 130") {
  const Outcome run = run_program({"--guest", guest_binaries + "/spin.bin", "--timeout", "60"}, static_cast<uid_t>(-1),
                                  std::chrono::milliseconds(500));
  INFO("stderr: " << run.err);
  CHECK(run.status == 130);
  CHECK(run.err.find("registers (read with KVM_GET_ONE_REG") != std::string::npos);
  CHECK(run.err.find("kvm-hello: step 9 (run_guest): Ctrl-C stopped the guest") != std::string::npos);
  CHECK(run.seconds < 5);
}

TEST_CASE("no fd and no mapping is left open after a run, or after any error") {
  const auto run_once = [](std::span<const std::uint8_t> guest, std::chrono::milliseconds limit) {
    Machine m = build_machine(guest);
    kh::HelloDevice device;
    return kh::run_guest(m.vcpu, device, limit, [](const kh::Exit&) {}).has_value();
  };
  const auto unused_vcpu = [] {  // ENOEXEC: registers before INIT
    auto kvm = kh::open_kvm();
    auto vm = kh::create_vm(kvm->get(), kh::vm_type_for(kh::check_capabilities(kvm->get())->ipa_limit).value());
    auto vcpu = kh::create_vcpu(kvm->get(), vm->get());
    return kh::set_boot_registers(vcpu->fd.get()).has_value();
  };
  const auto empty_image = [] {
    auto kvm = kh::open_kvm();
    auto vm = kh::create_vm(kvm->get(), kh::vm_type_for(kh::check_capabilities(kvm->get())->ipa_limit).value());
    return kh::setup_guest_memory(vm->get(), {}).has_value();
  };
  const auto all_paths = [&] {
    CHECK(run_once(image(guest_bin, guest_bin_len), std::chrono::seconds(10)));
    CHECK_FALSE(run_once(image(reset_bin, reset_bin_len), std::chrono::seconds(10)));
    CHECK_FALSE(run_once(image(stp_mmio_bin, stp_mmio_bin_len), std::chrono::seconds(10)));
    CHECK_FALSE(run_once(image(spin_bin, spin_bin_len), std::chrono::milliseconds(100)));
    CHECK_FALSE(unused_vcpu());
    CHECK_FALSE(empty_image());
    CHECK_FALSE(kh::open_kvm("/no/such/kvm"));
  };
  all_paths();  // once first: the C library's own first-use allocations are not ours
  const int fds = open_fd_count();
  const std::size_t mappings = mapping_count();
  for (int round = 0; round < 3; ++round) all_paths();
  CHECK(open_fd_count() == fds);
  CHECK(mapping_count() == mappings);
}

TEST_CASE("the sanitized build (ASan, LeakSanitizer, UBSan) runs clean, on the good path and the bad ones") {
  const std::string sanitized = program_path + "-sanitized";
  REQUIRE_MESSAGE(access(sanitized.c_str(), X_OK) == 0, sanitized << " is missing");
  // Four runs that between them reach most of the code (each sanitized start
  // takes seconds under emulation): every trace level and the stepper; a
  // stuck guest through the watchdog, the dump and its diagnosis; a failed
  // KVM_RUN and the instruction decoder.
  const std::pair<std::vector<std::string>, int> runs[] = {
      {{}, 0},
      {{"-vv", "--step-guest"}, 0},
      {{"--guest", guest_binaries + "/undefined.bin", "--timeout", "1"}, 24},
      {{"--guest", guest_binaries + "/stp_mmio.bin"}, 20},
  };
  for (const auto& [args, status] : runs) {
    const Outcome run = run_program(args, static_cast<uid_t>(-1), {}, sanitized);
    INFO("args: " << args.size() << (args.empty() ? "" : " " + args[0]) << "\nstderr:\n" << run.err);
    CHECK(run.status == status);
    CHECK(run.err.find("Sanitizer") == std::string::npos);
    CHECK(run.err.find("runtime error") == std::string::npos);
  }
}

TEST_CASE("--bench: the table's structure, and every figure sane (no timing is asserted)") {
  const Outcome json = run_program({"--bench", "--bench-iterations", "256", "--bench-repeats", "3", "--json"});
  INFO("stdout:\n" << json.out << "\nstderr:\n" << json.err);
  REQUIRE(json.status == 0);
  const std::regex figure(
      "\"([a-z_]+_ns)\": \\{\"median\": ([0-9.e+-]+), \"min\": ([0-9.e+-]+), \"spread\": ([0-9.e+-]+)\\}");
  std::set<std::string> kinds;
  for (std::sregex_iterator it(json.out.begin(), json.out.end(), figure), end; it != end; ++it) {
    const double median = std::stod((*it)[2]), min = std::stod((*it)[3]), spread = std::stod((*it)[4]);
    kinds.insert((*it)[1]);
    CHECK(median > 0);
    CHECK(min > 0);
    CHECK(min <= median);
    CHECK(std::isfinite(spread));
    CHECK(spread >= 0);
  }
  CHECK(kinds == std::set<std::string>{"mmio_write_ns", "mmio_read_ns", "hvc_ns", "mmio_write_bare_ioctl_ns"});
  std::smatch ratio;
  REQUIRE(std::regex_search(json.out, ratio, std::regex("\"ratio_mmio_read_to_hvc\": ([0-9.]+)")));
  CHECK(std::isfinite(std::stod(ratio[1])));
  CHECK(std::stod(ratio[1]) > 0);
  std::smatch steps;
  REQUIRE(std::regex_search(json.out, steps, std::regex("\"step_ns\": \\[([0-9, ]+)\\]")));
  const std::vector<std::string> step_ns = split_words(std::regex_replace(std::string(steps[1]), std::regex(","), " "));
  CHECK(step_ns.size() == static_cast<std::size_t>(kh::step_count));
  for (const auto& ns : step_ns) CHECK(std::stoll(ns) > 0);
  CHECK(json.out.find(std::getenv("KVM_HELLO_EMULATED") ? "\"where\": \"emulated\"" : "\"where\": \"native\"") !=
        std::string::npos);

  const Outcome text = run_program({"--bench", "--bench-iterations", "256", "--bench-repeats", "2"});
  REQUIRE(text.status == 0);
  // On an emulated CPU the first line says so; the reference figures are labelled as such.
  const std::string first_line = text.out.substr(0, text.out.find('\n'));
  CHECK(first_line.find(std::getenv("KVM_HELLO_EMULATED") ? "EMULATED" : "own arm64 CPU") != std::string::npos);
  CHECK(text.out.find("reference (not measured here)") != std::string::npos);
  CHECK(text.out.find("wrappers: ") != std::string::npos);
  CHECK(count(text.out, "] ") >= static_cast<std::size_t>(kh::step_count));
}

TEST_CASE("the run loop allocates nothing when tracing is off (the benchmark guest, thousands of exits)") {
  Machine m = build_machine(image(bench_guest_bin, bench_guest_bin_len));
  for (const auto& [n, value] : {std::pair{0, 512}, {1, 2}, {2, 7}}) {  // iterations, repeats, all three kinds
    REQUIRE(kh::set_register(kh::Step::set_boot_registers, m.vcpu.fd.get(), kh::reg::x(n), value));
  }
  kh::HelloDevice device;  // SINK and RESULT have no register here: nothing is kept
  const std::size_t before = allocations.load();
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(60), [](const kh::Exit&) {});
  const std::size_t during = allocations.load() - before;
  REQUIRE(stats);
  CHECK(stats->exits > 2 * 2 * 512);  // MMIO writes and reads exit; the hvc calls do not
  CHECK(during == 0);
  INFO("allocations during the run: " << during);
}

// ==== Golden output ===========================================================
//
// test/golden/NAME.txt holds what a user sees for one command line:
//   # args: -v
//   # status: 0
//   <stdout>
//   --- stderr ---      (only when there is any)
//   <stderr>
// Values that change from run to run or host to host are normalised first.
// `make golden` rewrites the files from a real run (KVM_HELLO_PRINT_GOLDEN=1).

namespace {

std::string golden_dir;  // golden/ beside this binary

std::string normalise(std::string text) {
  const std::pair<const char*, const char*> rules[] = {
      {R"(\b[0-9]+(\.[0-9]+)? (ns|us|ms|s)\b)", "<time>"},               // durations
      {R"((mapped at |userspace_addr )0x[0-9a-f]+)", "$1<address>"},     // where mmap put things
      {R"((KVM_CAP_ARM_VM_IPA_SIZE\)? += )[0-9]+)", "$1<ipa bits>"},     // the host's IPA limit
      {R"(target [0-9]+)", "target <n>"},                                // the host's preferred target
      {R"((first of |KVM_GET_VCPU_MMAP_SIZE\) = )[0-9]+)", "$1<size>"},  // two host pages
  };
  for (const auto& [pattern, replacement] : rules) text = std::regex_replace(text, std::regex(pattern), replacement);
  return text;
}

std::string render(const std::string& args, const Outcome& run) {
  std::string text = "# args: " + args + "\n# status: " + std::to_string(run.status) + "\n" + normalise(run.out);
  if (!run.err.empty()) text += "--- stderr ---\n" + normalise(run.err);
  return text;
}

// "line 12: expected ... / actual ...": the first place two texts differ.
std::string first_difference(const std::string& expected, const std::string& actual) {
  std::istringstream e(expected), a(actual);
  std::string el, al;
  for (int line = 1;; ++line) {
    const bool more_e = static_cast<bool>(std::getline(e, el)), more_a = static_cast<bool>(std::getline(a, al));
    if (!more_e && !more_a) return "no difference";
    if (el != al || more_e != more_a) {
      return "line " + std::to_string(line) + "\n  expected: " + (more_e ? el : "<end>") +
             "\n  actual:   " + (more_a ? al : "<end>");
    }
  }
}

}  // namespace

TEST_CASE("golden output: kvm-hello prints what test/golden/ shows") {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(golden_dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  REQUIRE_MESSAGE(!files.empty(), "no golden files in " << golden_dir);
  const bool print = std::getenv("KVM_HELLO_PRINT_GOLDEN") != nullptr;
  for (const auto& file : files) {
    const std::string expected = read_file(file);
    const std::string header = expected.substr(0, expected.find('\n'));
    REQUIRE_MESSAGE(header.starts_with("# args:"), file << " must start with '# args:'");
    const std::string args = header.size() > 8 ? header.substr(8) : "";
    // "{guests}" in the arguments: the folder of the test guests, wherever it is.
    const std::string actual =
        render(args, run_program(split_words(std::regex_replace(args, std::regex("\\{guests\\}"), guest_binaries))));
    if (print) {
      std::printf("=== golden %s ===\n%s=== end ===\n", file.filename().c_str(), actual.c_str());
      continue;
    }
    CHECK_MESSAGE(actual == expected, file.filename() << " differs at " << first_difference(expected, actual));
  }
}

int main(int argc, char** argv) {
  // kvm-hello lies beside this binary: /kvm-hello in the emulated machine, build/kvm-hello natively.
  std::string self = std::filesystem::read_symlink("/proc/self/exe");
  program_path = self.substr(0, self.rfind('/') + 1) + "kvm-hello";
  golden_dir = self.substr(0, self.rfind('/') + 1) + "golden";
  guest_binaries = self.substr(0, self.rfind('/') + 1) + "guests";
  guest_sources = self.substr(0, self.rfind('/') + 1) + "guest-sources";
  exercise_binaries = self.substr(0, self.rfind('/') + 1) + "exercises";
  exercise_sources = self.substr(0, self.rfind('/') + 1) + "exercise-sources";
  doctest::Context context;
  context.setOption("no-colors", true);  // the emulated machine's console is a terminal, the log is not
  context.applyCommandLine(argc, argv);
  return context.run();
}

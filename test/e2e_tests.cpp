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
#include <functional>
#include <new>
#include <set>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "bench_guest_image.h"  // bench_guest_bin[]: the benchmark guest
#include "guest_image.h"        // guest_bin[]: the guest kvm-hello embeds
#include "lesson2_guest_image.h"  // lesson2_guest_bin[]: lesson 2's guest
#include "kvm_hello.hpp"
#include "program/capabilities.hpp"
#include "program/describe.hpp"
#include "program/narration.hpp"
#include "program/inspect.hpp"
#include "program/kernel_version.hpp"
#include "program/messages.hpp"
#include "program/replay.hpp"
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

// How to run it, beyond its arguments.
struct How {
  uid_t uid = static_cast<uid_t>(-1);    // run as this user, when not -1 (needs root)
  rlim_t address_space = RLIM_INFINITY;  // its address-space limit (ulimit -v)
  std::string program = program_path;
  // Called once it runs, with its pid and the file its stdout goes to: to
  // send it signals, as a user at the terminal would.
  std::function<void(pid_t, const std::string&)> meanwhile = {};
};

const std::string out_path = "/tmp/kvm-hello-e2e.out", err_path = "/tmp/kvm-hello-e2e.err";

// Runs kvm-hello (or `how.program`) with `args`; returns its status and output.
Outcome run_program(std::vector<std::string> args, const How& how = {}) {
  const auto start = std::chrono::steady_clock::now();
  // Emptied before the program starts, not by it: a `meanwhile` waiting for a
  // line ("[9/9]") must not find it in the previous run's output before the
  // child's open(O_TRUNC) (seen on a busy machine: a stop sent at step 4).
  for (const std::string& path : {out_path, err_path}) std::ofstream(path, std::ios::trunc);
  const pid_t child = fork();
  if (child == 0) {
    // O_CLOEXEC: the program gets exactly fds 0, 1 and 2 from us, as from a shell.
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int in = open("/dev/null", O_RDONLY | O_CLOEXEC);  // not a terminal: --pause runs straight through
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    if (how.uid != static_cast<uid_t>(-1) && (setgid(how.uid) != 0 || setuid(how.uid) != 0)) _exit(126);
    const rlimit limit{how.address_space, how.address_space};
    if (how.address_space != RLIM_INFINITY && setrlimit(RLIMIT_AS, &limit) != 0) _exit(126);
    std::string program = how.program;
    std::vector<char*> argv{program.data()};
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (how.meanwhile) how.meanwhile(child, out_path);
  int wait_status = 0;
  waitpid(child, &wait_status, 0);
  Outcome outcome;
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  outcome.status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
  outcome.out = read_file(out_path);
  outcome.err = read_file(err_path);
  return outcome;
}

// Waits until `file` holds `text` (the program got that far), or 30 s.
bool wait_for_output(const std::string& file, const std::string& text) {
  for (int i = 0; i < 3000; ++i) {
    if (read_file(file).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
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

// Steps 1 to 8, in-process (kvm_hello::build_machine): a VM ready to run `image`.
kh::Machine build_machine(std::span<const std::uint8_t> image) {
  auto machine = kh::build_machine(image);
  REQUIRE_MESSAGE(machine, "steps 1 to 8 failed at step " << static_cast<int>(machine.error().step));
  return std::move(*machine);
}

std::span<const std::uint8_t> image(const unsigned char* bytes, unsigned int length) { return {bytes, length}; }

// What guest.S says is written once, in the golden outputs (test/golden/):
// the tests here that run guest.S check what any message must satisfy, so
// that a change of message (exercise 1) fails the golden test alone, which
// says what to do. guest.S's message is a 0-terminated string in its image.
bool is_guest_message(std::string_view output) {
  const std::string wanted = std::string(output) + '\0';
  const std::span<const std::uint8_t> guest = image(guest_bin, guest_bin_len);
  return !output.empty() && std::search(guest.begin(), guest.end(), wanted.begin(), wanted.end()) != guest.end();
}

// guest.S's exits for a message: one per byte (a 1-byte store to OUT each),
// then the read of ANSWER, the write to ECHO, and SYSTEM_OFF's hvc.
std::size_t guest_exits(std::string_view message) { return message.size() + 3; }

int open_fd_count() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

std::size_t mapping_count() { return line_count(read_file("/proc/self/maps")); }

}  // namespace

TEST_CASE("kvm-hello: every step, an exit per byte of the message, the answer, a clean shutdown, status 0") {
  const Outcome run = run_program({});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  for (int step = 1; step <= kh::lesson1_step_count; ++step) {
    const std::string tag = "[" + std::to_string(step) + "/" + std::to_string(kh::lesson1_step_count) + "] ";
    const std::string name(kh::step_info(static_cast<kh::Step>(step)).name);
    CHECK(run.out.find(tag + name) != std::string::npos);
  }
  // Which message, exit by exit, is test/golden/default.txt's to say.
  const std::size_t bytes = count(run.out, "KVM_EXIT_MMIO address=0x1100 is_write=1 len=1");
  CHECK(bytes > 0);
  const std::string answer = hex(kh::host_answer);  // KVM_HELLO_HOST_ANSWER
  CHECK(run.out.find("KVM_EXIT_MMIO address=0x1108 is_write=0 len=4 data=" + answer) != std::string::npos);
  CHECK(run.out.find("KVM_EXIT_MMIO address=0x1110 is_write=1 len=4 data=" + answer) != std::string::npos);
  CHECK(run.out.find("KVM_EXIT_SYSTEM_EVENT type=1 (SHUTDOWN") != std::string::npos);
  CHECK(run.out.find("\nguest output: ") != std::string::npos);
  CHECK(run.out.find("the guest read " + answer + " from the host and wrote it back") != std::string::npos);
  CHECK(run.out.find("shutdown: the guest powered off (PSCI SYSTEM_OFF) after " + std::to_string(bytes + 3) +
                     " exits") != std::string::npos);
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

namespace {
// kvm-hello where user nobody may run it: a copy in /tmp (the build tree may
// be in a home nobody can enter, /root say).
std::string program_for_nobody() {
  static const std::string copy = [] {
    const std::string path = "/tmp/kvm-hello-for-nobody";
    std::filesystem::copy_file(program_path, path, std::filesystem::copy_options::overwrite_existing);
    chmod(path.c_str(), 0755);
    return path;
  }();
  return copy;
}
}  // namespace

TEST_CASE("permission denied: step 1, EACCES, the kvm group; status 11") {
  const auto denied = [](const std::string& device, const How& how) {
    const Outcome run = run_program({"--kvm-device", device}, how);
    INFO(device << ": status " << run.status << ", stderr: " << run.err);
    CHECK(run.status == 11);
    CHECK(line_count(run.err) == 1);
    CHECK(run.err.starts_with("kvm-hello: step 1 (open_kvm): open failed with EACCES"));
    CHECK(run.err.find("usermod -aG kvm") != std::string::npos);
  };
  // A device node nobody may open, as any user: root is denied it too once
  // it runs as nobody (root itself passes every permission check).
  const std::string locked = "/tmp/kvm-hello-locked-device";
  { std::ofstream create(locked); }
  REQUIRE(chmod(locked.c_str(), 0) == 0);
  denied(locked, getuid() == 0 ? How{.uid = 65534, .program = program_for_nobody()} : How{});
  // The real /dev/kvm, for a user outside its group: only root can become one.
  struct stat device {};
  REQUIRE(stat(kh::default_kvm_path, &device) == 0);
  if (getuid() == 0 && !((device.st_mode & S_IROTH) && (device.st_mode & S_IWOTH))) {
    denied(kh::default_kvm_path, How{.uid = 65534, .program = program_for_nobody()});
  }
}

TEST_CASE("the bad command line: status 2") {
  const Outcome run = run_program({"--no-such-option"});
  CHECK(run.status == 2);
  CHECK(run.err.find("--no-such-option") != std::string::npos);
}

TEST_CASE("the steps in-process: the guest says its message and powers off") {
  const int fds_before = open_fd_count();
  {
    kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
    kh::HelloDevice device;
    std::vector<kh::Exit> exits;
    const auto stats =
        kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [&](const kh::Exit& exit) { exits.push_back(exit); });
    REQUIRE(stats);
    CHECK_MESSAGE(is_guest_message(device.output()), "not guest.S's message: " << device.output());
    CHECK(device.answer_came_back());
    const std::size_t expected = guest_exits(device.output());
    CHECK(stats->exits == expected);
    CHECK(stats->kvm_run_calls == expected);
    REQUIRE(exits.size() == expected);
    CHECK(std::get<kh::SystemEvent>(exits.back()).type == KVM_SYSTEM_EVENT_SHUTDOWN);
    // After SYSTEM_OFF the vCPU is off: the guest stopped at the hvc.
    const auto pc = kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::pc);
    REQUIRE(pc);
    CHECK(*pc > kh::ram_base);
    CHECK(*pc < kh::ram_base + guest_bin_len);
  }
  CHECK(open_fd_count() == fds_before);  // the owners closed every fd
}

// ==== Lesson 2: interrupts and time ===========================================

namespace {

// Where each of `tags` first appears in `text`, in order: npos for one missing.
std::vector<std::size_t> positions(const std::string& text, const std::vector<std::string>& tags) {
  std::vector<std::size_t> found;
  for (const std::string& tag : tags) found.push_back(text.find(tag));
  return found;
}

// Lesson 2's steps, in the order KVM wants them and kvm-hello --lesson 2 takes them.
const std::vector<std::string> lesson2_order = {
    "[1/15] open_kvm",  "[2/15] check_api_version", "[3/15] check_capabilities", "[4/15] create_vm",
    "[5/15] setup_guest_memory", "[10/15] probe_vgic", "[11/15] create_vgic", "[6/15] create_vcpu",
    "[7/15] init_vcpu", "[8/15] set_boot_registers", "[13/15] read_timer_irq", "[12/15] init_vgic",
    "[14/15] attach_irqfd", "[9/15] run_guest"};

// The value of a statistic in a "-v" line "... name N, ...", or -1.
long long statistic(const std::string& out, const std::string& name) {
  std::smatch match;
  if (!std::regex_search(out, match, std::regex("\\b" + name + " ([0-9]+)"))) return -1;
  return std::stoll(match[1]);
}

}  // namespace

TEST_CASE("lesson 2: three ticks of the timer, SPI 40 by KVM_IRQ_LINE, SPI 41 by the irqfd, SYSTEM_OFF, status 0") {
  const Outcome run = run_program({"--lesson", "2"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  const auto at = positions(run.out, lesson2_order);
  for (std::size_t i = 0; i < at.size(); ++i) {
    CHECK_MESSAGE(at[i] != std::string::npos, lesson2_order[i] << " is not announced");
    if (i > 0) CHECK_MESSAGE(at[i - 1] < at[i], lesson2_order[i - 1] << " comes before " << lesson2_order[i]);
  }
  CHECK(run.out.find("guest output: hello\\n\n") != std::string::npos);  // the hello before the GIC
  CHECK(count(run.out, "the guest's handler took INTID 27, the virtual timer's PPI") == 3);
  CHECK(run.out.find("tick 3: ") != std::string::npos);
  CHECK(run.out.find("doorbell 1: the guest asks for SPI 40") != std::string::npos);
  CHECK(run.out.find("the guest's handler took INTID 40, the SPI we raised with KVM_IRQ_LINE") != std::string::npos);
  CHECK(run.out.find("doorbell 2: the guest asks for SPI 41") != std::string::npos);
  CHECK(run.out.find("the guest's handler took INTID 41, the SPI our irqfd raised") != std::string::npos);
  CHECK(run.out.find("\ninterrupts the guest took: 27 27 27 40 41\n") != std::string::npos);
  // 6 bytes of hello, 5 reports, 2 rings of the doorbell, SYSTEM_OFF: no exit for any of the sleeps.
  CHECK(run.out.find("shutdown: the guest powered off (PSCI SYSTEM_OFF) after 14 exits") != std::string::npos);
}

TEST_CASE("lesson 2 -v: the injections' ioctls decoded, and KVM's counts of the WFIs it slept through") {
  const Outcome run = run_program({"--lesson", "2", "-v"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  CHECK(run.out.find("INTID 40, level 1}") != std::string::npos);
  CHECK(run.out.find("INTID 40, level 0}") != std::string::npos);
  CHECK(run.out.find("KVM_IRQFD") != std::string::npos);
  // The ticks' WFIs trapped into KVM (a WFI with an interrupt already pending does not): at least one. How
  // many, and how often KVM's polling caught the interrupt before the thread slept, varies: not pinned.
  CHECK(statistic(run.out, "wfi_exit_stat") >= 1);
  CHECK(statistic(run.out, "halt_wakeup") >= 0);
  CHECK(statistic(run.out, "mmio_exit_user") == 13);
}

TEST_CASE("lesson 2 in-process: the steps in KVM's order, then the device answers the doorbell") {
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  const auto caps = kh::check_capabilities(*kvm);
  REQUIRE(caps);
  const auto type = kh::vm_type_for(caps->ipa_limit);
  REQUIRE(type);
  auto vm = kh::create_vm(*kvm, *type);
  REQUIRE(vm);
  const auto memory = kh::setup_guest_memory(*vm, image(lesson2_guest_bin, lesson2_guest_bin_len));
  REQUIRE(memory);
  const auto version = kh::probe_vgic(*vm);
  REQUIRE(version);
  const auto vgic = kh::create_vgic(*vm, *version);
  REQUIRE(vgic);
  auto vcpu = kh::create_vcpu(*kvm, *vm, 0);
  REQUIRE(vcpu);
  REQUIRE(kh::init_vcpu(*vm, vcpu->fd, kh::first_vcpu_features));
  REQUIRE(kh::set_boot_registers(vcpu->fd));
  REQUIRE(kh::set_register(kh::Step::set_boot_registers, vcpu->fd, kh::reg::x(0), static_cast<std::uint64_t>(*version)));
  REQUIRE(kh::init_vgic(*vgic));
  const auto irqfd = kh::attach_irqfd(*vm, kh::spi_irqfd);
  REQUIRE(irqfd);
  CHECK(kh::read_priority_mask(*vgic, *vcpu).value() == 0);  // KVM's reset value: nothing can be signalled
  kh::InterruptDevice device(*vm, *irqfd);
  const auto stats = kh::run_guest(*vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {});
  REQUIRE_MESSAGE(stats, "step " << static_cast<int>(stats.error().step) << ", errno " << stats.error().err);
  CHECK(device.hello().output() == "hello\n");
  CHECK(device.taken() == std::vector<std::uint32_t>{27, 27, 27, 40, 41});
  CHECK(!device.failure());
  REQUIRE(device.events().size() == 7);  // 3 ticks, ring, 40, ring, 41
  CHECK(device.events()[3].kind == kh::InterruptEvent::Kind::rang);
  CHECK(device.events()[3].value == kh::doorbell_line);
  CHECK(device.events()[5].value == kh::doorbell_irqfd);
  CHECK(stats->exits == 14);
  // What the guest wrote to ICC_PMR_EL1 or GICC_PMR (a GICv2's 5 bits, put back in place), read from KVM.
  CHECK(kh::read_priority_mask(*vgic, *vcpu).value() == 0xf0);
}

// ==== Lesson 3: a second vCPU ================================================

namespace {

// Lesson 3's steps, in the order kvm-hello --lesson 3 announces them: as
// lesson 2 up to the GIC, 6 and 7 for each vCPU, 8 for vCPU 0, 13, 12, 16
// for each, 17 and 9 for each, 18 once, 16 for each again.
const std::vector<std::string> lesson3_order = {
    "[1/18] open_kvm",          "[2/18] check_api_version", "[3/18] check_capabilities", "[4/18] create_vm",
    "[5/18] setup_guest_memory", "[10/18] probe_vgic",       "[11/18] create_vgic",       "[6/18] create_vcpu",
    "[7/18] init_vcpu",         "[6/18] create_vcpu",       "[7/18] init_vcpu",          "[8/18] set_boot_registers",
    "[13/18] read_timer_irq",   "[12/18] init_vgic",        "[16/18] read_mp_state",     "[16/18] read_mp_state",
    "[17/18] start_vcpu_thread", "[9/18] run_guest",         "[17/18] start_vcpu_thread", "[9/18] run_guest",
    "[18/18] stop_vcpus",       "[16/18] read_mp_state",    "[16/18] read_mp_state"};

// The lines of `text`.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// What is wrong with lesson 3's standard output, "" when nothing: every line
// is whole (a step's, one under it, an outcome's, or one of a vCPU's, which
// starts with its name and then a line of its own), the step lines come in
// lesson3_order, and each vCPU's exits are numbered 1, 2, 3... with none
// missing: no line lost, none mixed into another.
std::string check_lesson3_lines(const std::string& out) {
  static const std::regex vcpu_line(R"(^vCPU ([01])       (.*)$)");
  static const std::regex exit_line(R"(^exit ([0-9]+): .*)");
  static const std::regex outcome(
      R"(^(kvm-hello lesson 3: |guest output, vCPU [01]: |interrupts vCPU [01] took: |summary, vCPU [01]: |shutdown: ))");
  std::map<std::string, unsigned> exits;  // per vCPU: the last exit's number
  std::size_t step = 0;
  for (const std::string& line : lines_of(out)) {
    std::smatch match;
    if (line.starts_with("[")) {
      if (step >= lesson3_order.size() || !line.starts_with(lesson3_order[step] + " ")) return "out of order: " + line;
      ++step;
    } else if (std::regex_match(line, match, vcpu_line)) {
      const std::string vcpu = match[1], rest = match[2];
      std::smatch number;
      if (std::regex_match(rest, number, exit_line) && std::stoul(number[1]) != ++exits[vcpu]) {
        return "vCPU " + vcpu + "'s exits not 1, 2, 3...: " + line;
      }
    } else if (!line.starts_with("      ") && !std::regex_search(line, outcome)) {
      return "not a whole line of kvm-hello's: " + line;
    }
  }
  if (step != lesson3_order.size()) return "only " + std::to_string(step) + " step lines";
  return "";
}

}  // namespace

TEST_CASE("lesson 3: vCPU 0 starts vCPU 1 (CPU_ON), its hello, tick and SGI, CPU_OFF, SYSTEM_OFF, the kick, status 0") {
  const Outcome run = run_program({"--lesson", "3"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  CHECK(check_lesson3_lines(run.out) == "");
  CHECK(run.out.find("      vCPU 1: STOPPED (5): powered off (POWER_OFF), until CPU_ON\n") != std::string::npos);
  CHECK(run.out.find("      vCPU 0: RUNNABLE (0): it runs when its thread calls KVM_RUN\n") != std::string::npos);
  // In the order the guest's two flags make certain: vCPU 0's report of CPU_ON before vCPU 1 speaks, vCPU 1's
  // SGI before vCPU 0 finds it OFF.
  const auto at = positions(run.out, {"vCPU 0       the guest says: hello 0\n",
                                      "vCPU 0       the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = 0: SUCCESS",
                                      "vCPU 1       the guest says: hello 1\n",
                                      "vCPU 1       the guest's handler took INTID 27, the virtual timer's PPI",
                                      "vCPU 1       the guest's handler took INTID 1, an SGI: another vCPU sent it",
                                      "vCPU 0       the guest called 0xc4000004 (PSCI AFFINITY_INFO, 64-bit) and got x0 = 1: OFF",
                                      "vCPU 0       exit 13: KVM_EXIT_SYSTEM_EVENT type=1 (SHUTDOWN",
                                      "      vCPU 1: asked to stop, kicked (SIGUSR1): its KVM_RUN returned EINTR"});
  for (std::size_t i = 0; i < at.size(); ++i) {
    CHECK_MESSAGE(at[i] != std::string::npos, "line " << i << " is missing");
    if (i > 0) CHECK_MESSAGE(at[i - 1] < at[i], "line " << i - 1 << " comes before line " << i);
  }
  CHECK(count(run.out, "      vCPU 0: STOPPED (5): SYSTEM_OFF stopped every vCPU") == 1);
  CHECK(count(run.out, "      vCPU 1: STOPPED (5): SYSTEM_OFF stopped every vCPU") == 1);
  CHECK(run.out.find("\nguest output, vCPU 0: hello 0\\n\nguest output, vCPU 1: hello 1\\n\n") != std::string::npos);
  CHECK(run.out.find("\ninterrupts vCPU 0 took: none\ninterrupts vCPU 1 took: 27 1\n") != std::string::npos);
  // vCPU 0: 8 bytes of hello, 2 reports of PSCI twice, SYSTEM_OFF; vCPU 1: 8 bytes, 2 interrupts; the sleeps,
  // the CPU_ON, the SGI and the CPU_OFF made no exit.
  CHECK(run.out.find("shutdown: the guest powered off (PSCI SYSTEM_OFF) after 13 exits of vCPU 0 and 10 exits of "
                     "vCPU 1\n") != std::string::npos);
}

TEST_CASE("lesson 3, five runs in a row: the same lines each time, none lost, none mixed with another") {
  std::string first;
  for (int n = 0; n < 5; ++n) {
    const Outcome run = run_program({"--lesson", "3", "-q"});
    INFO("run " << n << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    REQUIRE(run.status == 0);
    if (n == 0) first = run.out;
    CHECK(run.out == first);
  }
  CHECK(first == "guest output, vCPU 0: hello 0\\n\nguest output, vCPU 1: hello 1\\n\ninterrupts vCPU 0 took: none\n"
                 "interrupts vCPU 1 took: 27 1\nshutdown: the guest powered off (PSCI SYSTEM_OFF) after 13 exits of "
                 "vCPU 0 and 10 exits of vCPU 1\n");
}

TEST_CASE("lesson 3 --pause: lesson 3's words after each step it pauses at, in its order, each vCPU's steps 6 and 7 "
          "told for each; none from inside the threads") {
  // Its stdin is not a terminal: each pause tells its words and goes on without waiting for Enter.
  const Outcome run = run_program({"--lesson", "3", "--pause", "-q"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  using S = kh::Step;
  std::string told;
  for (const S step : {S::open_kvm, S::check_api_version, S::check_capabilities, S::create_vm, S::setup_guest_memory,
                       S::probe_vgic, S::create_vgic, S::create_vcpu, S::init_vcpu, S::create_vcpu, S::init_vcpu,
                       S::set_boot_registers, S::read_timer_irq, S::init_vgic, S::read_mp_state, S::stop_vcpus}) {
    told += "      -- " + std::string(narration_after(step, 3)) + "\n";
  }
  CHECK(run.out == told + "guest output, vCPU 0: hello 0\\n\nguest output, vCPU 1: hello 1\\n\n"
                          "interrupts vCPU 0 took: none\ninterrupts vCPU 1 took: 27 1\nshutdown: the guest powered "
                          "off (PSCI SYSTEM_OFF) after 13 exits of vCPU 0 and 10 exits of vCPU 1\n");
}

TEST_CASE("lesson 3 -v: each vCPU's ioctls under its name; KVM_GET_MP_STATE's state by name") {
  const Outcome run = run_program({"--lesson", "3", "-v"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  CHECK(run.out.find("{mp_state 5 STOPPED}") != std::string::npos);
  CHECK(run.out.find("{mp_state 0 RUNNABLE}") != std::string::npos);
  CHECK(std::regex_search(run.out, std::regex("\nvCPU 0 .*KVM_RUN")));
  CHECK(std::regex_search(run.out, std::regex("\nvCPU 1 .*KVM_RUN")));
}

namespace {

// How many of lesson 3's lines have another vCPU's line begun inside them: 0
// when each vCPU's lines are written whole.
std::size_t lines_mixed(const std::string& out) {
  static const std::regex begun_inside(".vCPU [0-9]+       ");
  std::size_t mixed = 0;
  for (const std::string& line : lines_of(out)) mixed += std::regex_search(line, begun_inside) ? 1U : 0U;
  return mixed;
}

// The GIC version lesson 3 found: the x0 the guest's CPU_ON passes on as vCPU 1's context id.
unsigned lesson3_gic_version(const std::string& out) {
  std::smatch match;
  if (!std::regex_search(out, match, std::regex("KVM can give this VM a GICv([23])"))) return 0;
  return static_cast<unsigned>(std::stoul(match[1]));
}

constexpr std::size_t step_limit_default = 200;  // --step-limit's, for each vCPU

}  // namespace

TEST_CASE("lesson 3 --step-guest: each vCPU stepped on its own thread, every line named; vCPU 1 from its first step "
          "exit; status 0") {
  // No --timeout: as `make trace LESSON=3` runs it, with the stepping watchdog (60 s). On one emulated host CPU,
  // vCPU 0's step exits while it waits for vCPU 1 share the CPU with vCPU 1's shown steps (39 register reads
  // each): on a busy machine this took up to 12 s, more than the 5 s of a run that does not step.
  const Outcome run = run_program({"--lesson", "3", "--step-guest"});
  MESSAGE("lesson 3 --step-guest took " << run.seconds << " s");
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  CHECK(check_lesson3_lines(run.out) == "");
  CHECK(lines_mixed(run.out) == 0);
  // Each vCPU's KVM_SET_GUEST_DEBUG, set before its thread starts.
  CHECK(count(run.out, "      vCPU 0: single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP), before its thread "
                       "starts") == 1);
  CHECK(count(run.out, "      vCPU 1: single-stepping: KVM_SET_GUEST_DEBUG(ENABLE | SINGLESTEP), kept across the "
                       "reset of CPU_ON") == 1);
  // vCPU 0 from its first instruction, shown before it runs. The limit counts for each vCPU on its own, and
  // which one gets there depends on how the host runs the two threads (a vCPU spins in its loop, stepped,
  // while it waits for the other): a vCPU that shows 200 says it reached the limit, then how many more ran.
  CHECK(run.out.find("vCPU 0       guest 0x10000  aa0003f3  guest.S:76  mov     x19, x0") != std::string::npos);
  for (const std::string& vcpu : std::vector<std::string>{"vCPU 0", "vCPU 1"}) {
    const std::size_t shown = count(run.out, vcpu + "       guest 0x");
    INFO(vcpu << " showed " << shown);
    CHECK(shown >= 30);
    CHECK(shown <= step_limit_default);
    const bool limited = shown == step_limit_default;
    CHECK(count(run.out, vcpu + "       (--step-limit 200 reached: the guest runs on, one instruction at a time, "
                                "unshown)\n") == (limited ? 1U : 0U));
    CHECK(std::regex_search(run.out, std::regex("\n" + vcpu + "       [0-9]+ more instructions not shown")) == limited);
  }
  // vCPU 1: no instruction before its first step exit (no PC 0, no entry point), said so; then the one after
  // the entry, which already ran (x19 = x0, unshown), and on from there.
  CHECK(count(run.out, "vCPU 1       (its first instruction, at the entry point of the guest's CPU_ON, ran unshown "
                       "inside KVM_RUN") == 1);
  std::string vcpu1;  // vCPU 1's lines alone: vCPU 0's may come between two of them, never inside one
  for (const std::string& line : lines_of(run.out)) {
    if (line.starts_with("vCPU 1 ")) vcpu1 += line + "\n";
  }
  CHECK(std::regex_search(vcpu1, std::regex(R"(^vCPU 1       \(its first instruction[^\n]*\)\nvCPU 1       guest )"
                                            R"(0x[0-9a-f]+  d53800b5  guest\.S:138 mrs     x21, mpidr_el1)")));
  CHECK(count(run.out, "vCPU 1       guest 0x0 ") == 0);
  CHECK(count(run.out, "guest.S:137 ") == 0);
  // Exits other than the steps' still said, each under its vCPU's name; the run ends as without stepping.
  CHECK(run.out.find("vCPU 1       the guest says: hello 1\n") != std::string::npos);
  CHECK(run.out.find("vCPU 1       the guest's handler took INTID 1, an SGI") != std::string::npos);
  CHECK(run.out.find("      vCPU 1: asked to stop, kicked (SIGUSR1): its KVM_RUN returned EINTR") != std::string::npos);
  CHECK(run.out.find("\nguest output, vCPU 0: hello 0\\n\nguest output, vCPU 1: hello 1\\n\n") != std::string::npos);
  CHECK(run.out.find("\ninterrupts vCPU 0 took: none\ninterrupts vCPU 1 took: 27 1\n") != std::string::npos);
  CHECK(std::regex_search(run.out, std::regex("\nshutdown: the guest powered off \\(PSCI SYSTEM_OFF\\) after [0-9]+ "
                                              "exits of vCPU 0 and [0-9]+ exits of vCPU 1\n$")));
}

TEST_CASE("lesson 3 --break-at vCPU 1's entry (guest.S:137, CPU_ON's): the stepper's hardware breakpoint hits on "
          "vCPU 1 once, x0 = the context id; vCPU 0 never gets there; status 0") {
  const Outcome run = run_program({"--lesson", "3", "--break-at", "guest.S:137"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  CHECK(lines_mixed(run.out) == 0);
  std::smatch armed;
  REQUIRE(std::regex_search(run.out, armed,
                            std::regex(R"(\n      vCPU 1: hardware breakpoint at (0x[0-9a-f]+) \(guest\.S:137\): )"
                                       R"(KVM_SET_GUEST_DEBUG\(ENABLE \| USE_HW\), kept across the reset of CPU_ON\n)")));
  const std::string entry = armed[1];
  CHECK(count(run.out, "      vCPU 0: hardware breakpoint at " + entry + " (guest.S:137)") == 1);
  CHECK(count(run.out, "breakpoint at " + entry + " (guest.S:137), hit ") == 1);
  const std::string heading = "vCPU 1       breakpoint at " + entry + " (guest.S:137), hit 1 (KVM_EXIT_DEBUG, EC 0x30): "
                              "the registers before it runs\n";
  const auto at = run.out.find(heading);
  REQUIRE(at != std::string::npos);
  const std::string hit = run.out.substr(at, run.out.find("vbar_el1", at) - at);
  INFO("hit:\n" << hit);
  // From CPU_ON's reset: at the entry, x0 the context id (the GIC version), every other register 0, EL1h masked.
  CHECK(hit.find("vCPU 1       guest " + entry + "  aa0003f3  guest.S:137 mov     x19, x0") != std::string::npos);
  char x0[64];
  std::snprintf(x0, sizeof x0, "vCPU 1         x0 0x%016x    x1 0x0000000000000000", lesson3_gic_version(run.out));
  CHECK(hit.find(x0) != std::string::npos);
  CHECK(hit.find("vCPU 1         pc " + entry + "  pstate 0x3c5 (EL1h") != std::string::npos);
  CHECK(hit.find("vCPU 1     sp_el1 0x0  sp_el0 0x0") != std::string::npos);
  CHECK(run.out.find("vCPU 0       this vCPU never got to the breakpoint at " + entry + " (guest.S:137)\n") !=
        std::string::npos);
  // The hit and the step over it: two exits more for vCPU 1 than lesson 3's 10.
  CHECK(run.out.find("shutdown: the guest powered off (PSCI SYSTEM_OFF) after 13 exits of vCPU 0 and 12 exits of "
                     "vCPU 1\n") != std::string::npos);
}

TEST_CASE("lesson 3 --step-guest --break-at vCPU 1's entry: stepping cannot stop there, its first instruction "
          "runs unshown, and kvm-hello says so") {
  const Outcome run = run_program({"--lesson", "3", "--step-guest", "--break-at", "guest.S:137"});
  MESSAGE("lesson 3 --step-guest --break-at took " << run.seconds << " s");
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(count(run.out, "breakpoint at 0x") == 2);  // only each vCPU's "never got to the breakpoint at"
  CHECK(std::regex_search(run.out, std::regex(R"(\nvCPU 1       this vCPU never got to the breakpoint at 0x[0-9a-f]+ )"
                                              R"(\(guest\.S:137\) after its first instruction, which ran unshown )"
                                              R"(\(--break-at without --step-guest, a hardware breakpoint, stops at )"
                                              R"(that one too\)\n)")));
  CHECK(std::regex_search(run.out, std::regex(R"(\nvCPU 0       this vCPU never got to the breakpoint at 0x[0-9a-f]+ )"
                                              R"(\(guest\.S:137\)\n)")));
}

TEST_CASE("after INIT, PSTATE is EL1h with D, A, I and F masked, and PC is where step 8 put it") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::pstate).value() == 0x3c5);
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::pc).value() == kh::ram_base);
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::sp_el1).value() == kh::ram_base + kh::ram_size);
}

TEST_CASE("after INIT, system registers the architecture leaves UNKNOWN hold KVM's marker") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::esr_el1).value() == unknown_register_value);
}

TEST_CASE("v0 is 128 bits: get_register and set_register move its 16 bytes; fpsr's 4; a wrong size is an Error") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  const kh::VcpuFd& vcpu = m.vcpu.fd;
  const kh::Uint128 pattern{.low = 0x1111111111111111, .high = 0x2222222222222222};
  REQUIRE(kh::set_register(kh::Step::run_guest, vcpu, kh::reg::v(0), pattern));
  // What KVM wrote at the address get_register gave it: all of v0, into a
  // value of 16 bytes (before: a value of 8, and KVM's other 8 landed past it).
  kh::Uint128 at_addr{};
  const kh::CallObserver observe{[](void* watcher, const kh::CallRecord& call) {
                                   const auto* one = std::get<const kvm_one_reg*>(call.argument);
                                   REQUIRE(kh::register_size(one->id) == sizeof(kh::Uint128));
                                   std::memcpy(watcher, reinterpret_cast<const void*>(one->addr), sizeof(kh::Uint128));
                                 },
                                 &at_addr};
  const auto v0 = kh::get_register(kh::Step::run_guest, vcpu, kh::reg::v(0), observe);
  REQUIRE(v0);
  CHECK(*v0 == pattern);
  CHECK(at_addr == pattern);

  REQUIRE(kh::set_register(kh::Step::run_guest, vcpu, kh::reg::fpsr, 0x8000000));  // QC, the saturation flag
  CHECK(kh::get_register(kh::Step::run_guest, vcpu, kh::reg::fpsr).value() == 0x8000000);

  const auto raw = kh::RegisterId<std::uint64_t>::checked(kh::Step::run_guest, kh::reg::v(0).raw());
  REQUIRE_FALSE(raw);
  CHECK(raw.error().problem == kh::Problem::bad_register_size);
}

TEST_CASE("the call observer sees every ioctl of the steps, in order, with results") {
  std::vector<std::string> seen;
  std::string message;  // what the guest wrote: one KVM_RUN per exit
  const kh::CallObserver observe{[](void* watcher, const kh::CallRecord& call) {
                                   static_cast<std::vector<std::string>*>(watcher)->push_back(
                                       std::string(call.name) + (call.result < 0 ? " failed" : ""));
                                 },
                                 &seen};
  {
    auto m = kh::build_machine(
        image(guest_bin, guest_bin_len), kh::default_kvm_path, [](kh::Step) {}, observe);
    REQUIRE(m);
    kh::HelloDevice device;
    CHECK(kh::run_guest(
        m->vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {}, observe));
    message = device.output();
  }
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
  REQUIRE(is_guest_message(message));
  REQUIRE(seen.size() == setup.size() + guest_exits(message));
  CHECK(std::equal(setup.begin(), setup.end(), seen.begin()));
  CHECK(std::all_of(seen.begin() + static_cast<long>(setup.size()), seen.end(),
                    [](const std::string& name) { return name == "KVM_RUN"; }));
}

TEST_CASE("single-stepping: one KVM_EXIT_DEBUG per instruction, software step in the ESR") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  REQUIRE(kh::enable_single_step(m.kvm, m.vcpu.fd));
  kh::HelloDevice device;
  unsigned steps = 0, other = 0;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(20), [&](const kh::Exit& exit) {
    if (const auto* debug = std::get_if<kh::DebugExit>(&exit)) {
      CHECK(exception_class_of(debug->esr) == exception_class::software_step);
      ++steps;
    } else {
      ++other;
    }
  });
  REQUIRE(stats);
  CHECK(is_guest_message(device.output()));
  CHECK(other == guest_exits(device.output()));  // the same MMIO exits and the shutdown as without stepping
  CHECK(steps > 5 * device.output().size());     // the loop's 5 instructions once per byte, and more
  CHECK(stats->exits_by_reason[KVM_EXIT_DEBUG] == steps);
}

TEST_CASE(
    "a hardware breakpoint: KVM_EXIT_DEBUG with EC 0x30 before the instruction runs; stepped over, the guest goes on") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  constexpr std::uint64_t strb = 0x10010;  // guest.S:28, strb w0, [x1]: one byte of output
  REQUIRE(kh::set_hardware_breakpoint(m.kvm, m.vcpu.fd, strb));
  kh::HelloDevice device;
  unsigned hits = 0, steps = 0;
  std::string seen_before_each_hit;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(20), [&](const kh::Exit& exit) {
    const auto* debug = std::get_if<kh::DebugExit>(&exit);
    if (debug == nullptr) return;
    const auto pc = kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::pc);
    REQUIRE(pc);
    if (exception_class_of(debug->esr) == exception_class::breakpoint) {
      ++hits;
      CHECK(*pc == strb);                         // stopped at the instruction...
      CHECK(device.output().size() == hits - 1);  // ...before it ran: this hit's byte is not out yet
      seen_before_each_hit += std::string(device.output().substr(device.output().size() - (hits > 1)));
      REQUIRE(kh::set_guest_debug(m.vcpu.fd, {.single_step = true, .breakpoint = std::nullopt}));
    } else {
      CHECK(exception_class_of(debug->esr) == exception_class::software_step);
      CHECK(*pc == strb + 4);  // the step over it: it has run
      ++steps;
      REQUIRE(kh::set_guest_debug(m.vcpu.fd, {.single_step = false, .breakpoint = strb}));
    }
  });
  REQUIRE(stats);
  CHECK(device.output() == "hello\n");
  CHECK(hits == 6);  // once per byte of "hello\n"
  CHECK(steps == 6);
  CHECK(seen_before_each_hit == "hello");  // at each hit, the bytes before it were out
  CHECK(stats->exits_by_reason[KVM_EXIT_DEBUG] == 12);
  CHECK(stats->exits_by_reason[KVM_EXIT_MMIO] == 8);  // the same as without the breakpoint
}

TEST_CASE("a hardware breakpoint the guest never gets to costs no exit") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  REQUIRE(kh::set_hardware_breakpoint(m.kvm, m.vcpu.fd, 0x10034));  // guest.S:41, after the hvc
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(20), [](const kh::Exit&) {});
  REQUIRE(stats);
  CHECK(device.output() == "hello\n");
  CHECK(stats->exits_by_reason[KVM_EXIT_DEBUG] == 0);
  CHECK(stats->exits == 9);
}

TEST_CASE("trap: a register before KVM_ARM_VCPU_INIT fails with ENOEXEC") {
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
  REQUIRE(vm);
  auto vcpu = kh::create_vcpu(*kvm, *vm, 0);
  REQUIRE(vcpu);
  const auto set = kh::set_boot_registers(vcpu->fd);
  REQUIRE_FALSE(set);
  CHECK(set.error().err == ENOEXEC);
  CHECK(set.error().call == "KVM_SET_ONE_REG");
}

TEST_CASE("trap: a second memory region over the first fails with EEXIST") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  kvm_userspace_memory_region overlap = m.memory.region;
  overlap.slot = 1;
  const auto again = kh::call(kh::Step::setup_guest_memory, m.vm, kh::request::set_user_memory_region, &overlap);
  REQUIRE_FALSE(again);
  CHECK(again.error().err == EEXIST);
}

TEST_CASE("a guest that never powers off is stopped by the watchdog") {
  kh::Machine m = build_machine(image(spin_bin, spin_bin_len));
  kh::HelloDevice device;
  const auto start = std::chrono::steady_clock::now();
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::milliseconds(300), [](const kh::Exit&) {});
  const auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::watchdog_expired);
  CHECK(stats.error().err == EINTR);
  CHECK(took < std::chrono::seconds(5));
  CHECK(kh::get_register(kh::Step::run_guest, m.vcpu.fd, kh::reg::pc).value() == kh::ram_base);
}

TEST_CASE("a guest that asks for a reset ends the run with Problem::guest_reset") {
  kh::Machine m = build_machine(image(reset_bin, reset_bin_len));
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {});
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::guest_reset);
}

TEST_CASE("trap: a store pair to MMIO makes KVM_RUN fail with ENOSYS") {
  kh::Machine m = build_machine(image(stp_mmio_bin, stp_mmio_bin_len));
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {});
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::call_failed);
  CHECK(stats.error().err == ENOSYS);
}

// ==== What KVM does, as docs/ says it, on this kernel ========================

namespace {

// One KVM_RUN, with no watchdog and no signal handler: its result, and kvm_run.
kh::Result<int> run_once(kh::Machine& m) { return kh::call(kh::Step::run_guest, m.vcpu.fd, kh::request::run); }

std::uint64_t register_value(kh::Machine& m, kh::reg::U64 id) {
  return kh::get_register(kh::Step::run_guest, m.vcpu.fd, id).value();
}

}  // namespace

TEST_CASE("SYSTEM_OFF stops the vCPU: KVM_RUN sleeps; KVM_SET_MP_STATE(RUNNABLE) resumes it after its hvc, x0 = -6") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  kh::HelloDevice device;
  REQUIRE(kh::run_guest(m.vcpu, device, std::chrono::seconds(10), [](const kh::Exit&) {}));
  kvm_mp_state state{};
  REQUIRE(ioctl(m.vcpu.fd.get(), KVM_GET_MP_STATE, &state) == 0);
  CHECK(state.mp_state == KVM_MP_STATE_STOPPED);
  const std::uint64_t after_hvc = register_value(m, kh::reg::pc);
  CHECK(register_value(m, kh::reg::x(0)) == static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE));
  // Stopped: a further KVM_RUN sleeps (kvm_vcpu_sleep) until the watchdog's signal.
  const auto asleep = kh::run_guest(m.vcpu, device, std::chrono::milliseconds(300), [](const kh::Exit&) {});
  REQUIRE_FALSE(asleep);
  CHECK(asleep.error().problem == kh::Problem::watchdog_expired);
  CHECK(register_value(m, kh::reg::pc) == after_hvc);
  // Runnable again, registers kept: one step runs the instruction after the hvc (guest.S: b power_off), with x0 = -6.
  state.mp_state = KVM_MP_STATE_RUNNABLE;
  REQUIRE(ioctl(m.vcpu.fd.get(), KVM_SET_MP_STATE, &state) == 0);
  REQUIRE(kh::enable_single_step(m.kvm, m.vcpu.fd));
  REQUIRE(run_once(m));
  REQUIRE(m.vcpu.run().exit_reason == KVM_EXIT_DEBUG);
  CHECK(register_value(m, kh::reg::x(0)) == static_cast<std::uint64_t>(PSCI_RET_INTERNAL_FAILURE));
  CHECK(register_value(m, kh::reg::pc) == after_hvc - 8);  // power_off: the ldr before the hvc
  // And on: it calls SYSTEM_OFF again, without starting over (no "hello").
  kh::HelloDevice again;
  std::vector<kh::Exit> exits;
  REQUIRE(kh::run_guest(m.vcpu, again, std::chrono::seconds(10), [&](const kh::Exit& exit) { exits.push_back(exit); }));
  REQUIRE_FALSE(exits.empty());
  CHECK(std::get<kh::SystemEvent>(exits.back()).type == KVM_SYSTEM_EVENT_SHUTDOWN);
  CHECK(again.output().empty());
  CHECK(register_value(m, kh::reg::pc) == after_hvc);
}

TEST_CASE("wfi traps into KVM even for a lone vCPU, on every kernel (TWI stays set without GICv4)") {
  kh::Machine m = build_machine(image(wfi_bin, wfi_bin_len));
  kh::HelloDevice device;
  const auto stats = kh::run_guest(m.vcpu, device, std::chrono::milliseconds(300), [](const kh::Exit&) {});
  REQUIRE_FALSE(stats);
  CHECK(stats.error().problem == kh::Problem::watchdog_expired);
  // Trapped once, then asleep in KVM (kvm_vcpu_wfi) until the signal; KVM stepped PC past the wfi first.
  const auto counted = kh::read_vcpu_statistics(m.vcpu.fd);
  REQUIRE(counted);
  const auto wfi = std::find_if(counted->begin(), counted->end(),
                                [](const kh::VcpuStatistic& stat) { return stat.name == "wfi_exit_stat"; });
  REQUIRE(wfi != counted->end());
  CHECK(wfi->value == 1);
  CHECK(register_value(m, kh::reg::pc) == kh::ram_base + 4);
}

TEST_CASE("EINTR with no signal: the guest arms its timer, no interrupt controller in the kernel, KVM_EXIT_INTR") {
  kh::Machine m = build_machine(image(timer_bin, timer_bin_len));
  kh::HelloDevice device;
  unsigned interrupted = 0;
  bool powered_off = false;
  for (int calls = 0; calls < 100 && !powered_off; ++calls) {  // no Watchdog: no signal handler at all
    const auto entered = run_once(m);
    if (!entered) {
      REQUIRE(entered.error().err == EINTR);
      CHECK(m.vcpu.run().exit_reason == KVM_EXIT_INTR);
      ++interrupted;
      continue;
    }
    kh::Exit exit = kh::decode_exit(m.vcpu.run());
    if (auto* access = std::get_if<kh::MmioAccess>(&exit)) device.handle(*access);
    powered_off = std::holds_alternative<kh::SystemEvent>(exit);
  }
  CHECK(powered_off);
  CHECK(interrupted >= 1);
  CHECK(device.output() == "t\n");
  // What KVM told the program on the way out: the timer's output is high.
  CHECK((m.vcpu.run().s.regs.device_irq_level & KVM_ARM_DEV_EL1_VTIMER) != 0);
}

TEST_CASE("KVM_EXIT_ARM_NISV: only CM, WnR and FSC of the syndrome, the IPA, and PC still at the instruction") {
  kh::Machine m = build_machine(image(stp_mmio_bin, stp_mmio_bin_len));
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_ARM_NISV_TO_USER;
  REQUIRE(ioctl(m.vm.get(), KVM_ENABLE_CAP, &cap) == 0);
  for (int time = 0; time < 2; ++time) {  // KVM does not skip the stp: the next KVM_RUN faults on it again
    REQUIRE(run_once(m));
    REQUIRE(m.vcpu.run().exit_reason == KVM_EXIT_ARM_NISV);
    const std::uint64_t iss = m.vcpu.run().arm_nisv.esr_iss;
    constexpr std::uint64_t cm = 1u << 8, wnr = 1u << 6, fsc = 0x3f;
    CHECK((iss & ~(cm | wnr | fsc)) == 0);  // no EC, no IL, no ISV, no SRT: kvm_vcpu_dabt_iss_nisv_sanitized
    CHECK((iss & wnr) != 0);                // a store
    CHECK(m.vcpu.run().arm_nisv.fault_ipa == kh::mmio_out);
    CHECK(register_value(m, kh::reg::pc) == kh::ram_base + 4);  // stp_mmio.S: the stp, after one ldr
  }
}

TEST_CASE("trap: KVM_ARM_VCPU_INIT with a feature bit the kernel does not know fails with ENOENT") {
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
  REQUIRE(vm);
  auto vcpu = kh::create_vcpu(*kvm, *vm, 0);
  REQUIRE(vcpu);
  kvm_vcpu_init init{};
  REQUIRE(kh::call(kh::Step::init_vcpu, *vm, kh::request::arm_preferred_target, &init));
  init = kh::with_psci_0_2(init);
  init.features[1] = 1;  // feature 32: no kernel has one there
  const auto done = kh::call(kh::Step::init_vcpu, vcpu->fd, kh::request::arm_vcpu_init, &init);
  REQUIRE_FALSE(done);
  CHECK(done.error().err == ENOENT);
}

// ==== Lesson 2: the vGIC's order rules, on this kernel ========================
//
// Each rule of kvm_hello.hpp's "Part II" broken on purpose against real KVM,
// with lesson 1's guest (its first instruction is an MMIO store: a first
// KVM_RUN comes back at once). The host's GIC decides the version: a GICv3
// (the default emulated machine) or a GICv2 (KVM_HELLO_GIC=2); where the two
// differ the test says which does what.

namespace {

// Steps 1-5, 10, 11, 6-8 (lesson 2's order): a VM whose GIC is created and
// placed (or, for Frames::distributor_only, only its distributor placed), and
// not initialised (no step 12).
enum class Frames { all, distributor_only };
struct GicVm {
  kh::KvmFd kvm;
  kh::VmFd vm;
  kh::GuestMemory memory;
  kh::Vgic vgic{};
  kh::Vcpu vcpu;
};

GicVm build_gic_vm(Frames frames = Frames::all) {
  GicVm m;
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  m.kvm = std::move(*kvm);
  auto vm = kh::create_vm(m.kvm, kh::vm_type_for(kh::check_capabilities(m.kvm)->ipa_limit).value());
  REQUIRE(vm);
  m.vm = std::move(*vm);
  auto memory = kh::setup_guest_memory(m.vm, image(guest_bin, guest_bin_len));
  REQUIRE(memory);
  m.memory = std::move(*memory);
  const auto version = kh::probe_vgic(m.vm);
  REQUIRE_MESSAGE(version, "probe_vgic: this host's KVM has no in-kernel GIC");
  if (frames == Frames::all) {
    auto vgic = kh::create_vgic(m.vm, *version);
    REQUIRE(vgic);
    m.vgic = std::move(*vgic);
  } else {
    kvm_create_device create{.type = kh::device_type_for(*version), .fd = 0, .flags = 0};
    REQUIRE(kh::call(kh::Step::create_vgic, m.vm, kh::request::create_device, &create));
    m.vgic = kh::Vgic{kh::DeviceFd{static_cast<int>(create.fd)}, *version};
    REQUIRE(kh::place_gic_frame(m.vgic.fd, kh::gic_frames(*version)[0]));  // GICD only
  }
  auto vcpu = kh::create_vcpu(m.kvm, m.vm, 0);
  REQUIRE(vcpu);
  m.vcpu = std::move(*vcpu);
  REQUIRE(kh::init_vcpu(m.vm, m.vcpu.fd));
  REQUIRE(kh::set_boot_registers(m.vcpu.fd));
  return m;
}

kh::Result<int> run_once(GicVm& m) { return kh::call(kh::Step::run_guest, m.vcpu.fd, kh::request::run); }

// The errno of a failed result; 0 for a success.
template <class T>
int errno_of(const kh::Result<T>& result) {
  return result ? 0 : result.error().err;
}

std::string gic_name(kh::GicVersion version) { return version == kh::GicVersion::v3 ? "GICv3" : "GICv2"; }

// A GICv3's line levels of vCPU 0's interrupts 0-31 (KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
// vgic_read_irq_line_level_info in vgic-mmio.c): bit n is INTID n's, for a level-triggered one.
std::uint32_t private_line_levels(const GicVm& m) {
  std::uint32_t levels = 0;
  const kvm_device_attr attr{.flags = 0,
                             .group = KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                             .attr = std::uint64_t{VGIC_LEVEL_INFO_LINE_LEVEL}
                                     << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT,  // MPIDR 0 (vCPU 0), INTID 0
                             .addr = reinterpret_cast<std::uintptr_t>(&levels)};
  REQUIRE(kh::call(kh::Step::inject_spi, m.vgic.fd, kh::request::get_device_attr, &attr));
  return levels;
}

}  // namespace

TEST_CASE("order rule: without init_vgic, a GICv3's first KVM_RUN fails with EBUSY and the VM is dead (EIO)") {
  GicVm m = build_gic_vm();
  INFO(gic_name(m.vgic.version) << ", Linux " << running_kernel().major << "." << running_kernel().minor);
  const auto first = run_once(m);
  if (m.vgic.version == kh::GicVersion::v3) {
    CHECK(errno_of(first) == EBUSY);  // vgic_v3_map_resources: not initialised
    CHECK(errno_of(run_once(m)) == EIO);  // kvm_vm_dead: every vCPU ioctl now
    const auto late = kh::init_vgic(m.vgic);
    CHECK(errno_of(late) == EIO);  // and every device ioctl: init_vgic cannot repair it
    CHECK(errno_of(kh::inject_spi(m.vm, kh::spi_line)) == EIO);  // and every VM ioctl
  } else {
    // A GICv2 initialises itself at the first KVM_RUN (vgic_lazy_init), with the default 256 interrupts:
    CHECK(first);
    CHECK(m.vcpu.run().exit_reason == KVM_EXIT_MMIO);
    const auto late = kh::init_vgic(m.vgic);
    CHECK(errno_of(late) == EBUSY);  // NR_IRQS: the number is fixed already
  }
}

TEST_CASE("order rule: a GIC frame never placed: the first KVM_RUN fails with ENXIO, and the VM is dead") {
  GicVm m = build_gic_vm(Frames::distributor_only);  // a GICv3 without its redistributors, a GICv2 without GICC
  INFO(gic_name(m.vgic.version) << ", Linux " << running_kernel().major << "." << running_kernel().minor);
  REQUIRE(kh::init_vgic(m.vgic));  // CTRL_INIT does not look at the frames: the first KVM_RUN does
  CHECK(errno_of(run_once(m)) == ENXIO);  // vgic_v3_map_resources / vgic_v2_map_resources
  CHECK(errno_of(run_once(m)) == EIO);
}

TEST_CASE("order rule: KVM_CREATE_VCPU after init_vgic fails with EBUSY; before it, a second vCPU is fine") {
  GicVm m = build_gic_vm();
  auto second = kh::create_vcpu(m.kvm, m.vm, 1);
  CHECK(second);
  REQUIRE(kh::init_vgic(m.vgic));
  const auto third = kh::create_vcpu(m.kvm, m.vm, 2);
  CHECK(errno_of(third) == EBUSY);  // kvm_arch_vcpu_precreate
  CHECK(kh::init_vgic(m.vgic).error().err == EBUSY);  // and NR_IRQS again: fixed (CTRL_INIT again would be 0)
}

TEST_CASE("order rule: KVM_IRQFD before init_vgic fails with EAGAIN; after it, the irqfd is wired and rings") {
  GicVm m = build_gic_vm();
  const auto early = kh::attach_irqfd(m.vm, kh::spi_irqfd);
  CHECK(errno_of(early) == EAGAIN);  // kvm_irqfd_assign: kvm_arch_intc_initialized
  REQUIRE(kh::init_vgic(m.vgic));
  const auto irqfd = kh::attach_irqfd(m.vm, kh::spi_irqfd);
  REQUIRE(irqfd);
  CHECK(irqfd->gsi == kh::spi_irqfd - 32);
  CHECK(kh::ring_irqfd(*irqfd));
  const auto ppi = kh::attach_irqfd(m.vm, 20);  // no SPI: refused before any call
  REQUIRE_FALSE(ppi);
  CHECK(ppi.error().problem == kh::Problem::not_an_spi);
}

TEST_CASE("order rule: KVM_IRQ_LINE before init_vgic: a GICv3 says EBUSY, a GICv2 initialises itself") {
  GicVm m = build_gic_vm();
  INFO(gic_name(m.vgic.version) << ", Linux " << running_kernel().major << "." << running_kernel().minor);
  const auto early = kh::inject_spi(m.vm, kh::spi_line);
  if (m.vgic.version == kh::GicVersion::v3) {
    CHECK(errno_of(early) == EBUSY);  // vgic_lazy_init refuses a GICv3
    REQUIRE(kh::init_vgic(m.vgic));
    CHECK(kh::inject_spi(m.vm, kh::spi_line));
  } else {
    CHECK(early);  // vgic_lazy_init: the defaults are frozen now ...
    CHECK(errno_of(kh::init_vgic(m.vgic)) == EBUSY);  // ... so NR_IRQS fails
  }
}

TEST_CASE("KVM_IRQ_LINE with a GIC: type CPU (0) fails with ENXIO, an SPI below INTID 32 with EINVAL, one past NR_IRQS too") {
  GicVm m = build_gic_vm();
  REQUIRE(kh::init_vgic(m.vgic));
  const kvm_irq_level cpu_line{.irq = std::uint32_t{KVM_ARM_IRQ_TYPE_CPU} << KVM_ARM_IRQ_TYPE_SHIFT, .level = 1};
  CHECK(errno_of(kh::call(kh::Step::inject_spi, m.vm, kh::request::irq_line, &cpu_line)) == ENXIO);
  CHECK(errno_of(kh::inject_spi(m.vm, kh::spi_line - 32)) == EINVAL);  // INTID - 32: the common mistake
  CHECK(errno_of(kh::inject_spi(m.vm, kh::vgic_nr_irqs)) == EINVAL);  // INTID 64: past the GIC's 64
  CHECK(kh::inject_spi(m.vm, kh::vgic_nr_irqs - 1));
  const auto error = kh::inject_spi(m.vm, kh::spi_line - 32).error();
  CHECK(error.step == kh::Step::inject_spi);
  CHECK(error.call == "KVM_IRQ_LINE");
}

TEST_CASE("KVM_IRQ_LINE on PPI 27 returns 0 and, once the vCPU has run, is ignored: the timer owns that line") {
  GicVm m = build_gic_vm();
  INFO(gic_name(m.vgic.version) << ", Linux " << running_kernel().major << "." << running_kernel().minor);
  REQUIRE(kh::init_vgic(m.vgic));
  const auto timer = kh::read_timer_irq(m.vcpu.fd);
  REQUIRE(timer);
  CHECK(*timer == kh::timer_intid);
  REQUIRE(run_once(m));  // the first KVM_RUN gives the timer its PPI (kvm_timer_enable: kvm_vgic_set_owner)
  REQUIRE(m.vcpu.run().exit_reason == KVM_EXIT_MMIO);
  CHECK(kh::set_irq_line(m.vm, kh::irq_line_ppi(0, kh::timer_intid), true));
  CHECK(kh::set_irq_line(m.vm, kh::irq_line_ppi(0, 20), true));  // a PPI no one owns
  if (m.vgic.version == kh::GicVersion::v3) {
    const std::uint32_t levels = private_line_levels(m);
    CHECK((levels & (1u << 20)) != 0);           // taken: its line is high now
    CHECK((levels & (1u << kh::timer_intid)) == 0);  // ignored (vgic_validate_injection: not the owner)
  } else {
    MESSAGE("a GICv2 has no KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO: only the return value is checked");
  }
}

TEST_CASE("the steps of Part II on this host, observed: each call named with its step, the timer's INTID 27") {
  std::vector<std::pair<kh::Step, std::string>> seen;
  const kh::CallObserver observe{[](void* list, const kh::CallRecord& call) {
                                   static_cast<decltype(seen)*>(list)->emplace_back(call.step, std::string(call.name));
                                 },
                                 &seen};
  GicVm m = build_gic_vm();
  const auto version = kh::probe_vgic(m.vm, observe);
  REQUIRE(version);
  CHECK(*version == m.vgic.version);
  CHECK(kh::offers_device(m.vm, kh::device_type_for(*version)).value());
  REQUIRE(kh::init_vgic(m.vgic, observe));
  CHECK(kh::read_timer_irq(m.vcpu.fd, observe).value() == kh::timer_intid);
  const auto irqfd = kh::attach_irqfd(m.vm, kh::spi_irqfd, observe);
  REQUIRE(irqfd);
  REQUIRE(kh::inject_spi(m.vm, kh::spi_line, observe));
  std::vector<std::pair<kh::Step, std::string>> wanted{{kh::Step::probe_vgic, "KVM_CHECK_EXTENSION"},
                                                       {kh::Step::probe_vgic, "KVM_CREATE_DEVICE"}};
  if (*version == kh::GicVersion::v2) wanted.emplace_back(kh::Step::probe_vgic, "KVM_CREATE_DEVICE");
  for (const auto& call : std::vector<std::pair<kh::Step, std::string>>{{kh::Step::init_vgic, "KVM_SET_DEVICE_ATTR"},
                                                                        {kh::Step::init_vgic, "KVM_SET_DEVICE_ATTR"},
                                                                        {kh::Step::read_timer_irq, "KVM_GET_DEVICE_ATTR"},
                                                                        {kh::Step::attach_irqfd, "KVM_IRQFD"},
                                                                        {kh::Step::inject_spi, "KVM_IRQ_LINE"},
                                                                        {kh::Step::inject_spi, "KVM_IRQ_LINE"}}) {
    wanted.push_back(call);
  }
  CHECK(seen == wanted);
}

TEST_CASE("probe_vgic: the host offers a GICv3 or a GICv2 as the emulated machine's GIC is; a second GIC is EEXIST") {
  GicVm m = build_gic_vm();
  MESSAGE("this host's in-kernel GIC: " << gic_name(m.vgic.version));
  const auto other = kh::offers_device(m.vm, kh::device_type_for(kh::GicVersion::v2));
  REQUIRE(other);
  // QEMU's GICv3 has no GICv2 compatibility (no GICV frame): a GICv3 host offers no GICv2 (vgic_v3_probe).
  if (m.vgic.version == kh::GicVersion::v3) CHECK_FALSE(*other);
  const auto twice = kh::create_vgic(m.vm, m.vgic.version);
  CHECK(errno_of(twice) == EEXIST);  // kvm_vgic_create: irqchip_in_kernel
  CHECK(twice.error().step == kh::Step::create_vgic);
}

// ==== Bad guests, bad files, Ctrl-C ==========================================

namespace {

std::string guest_binaries;                       // guests/ beside this binary: test/guests/*.S assembled
std::string guest_sources;                        // guest-sources/ beside it: test/guests/*.S themselves
std::string exercise_binaries, exercise_sources;  // the same for test/exercises/

// What a test guest's comments say it must produce:
//   // args: --timeout 1       // expect-status: 24
//   // expect-stdout: TEXT     // expect-stderr: TEXT
// A line may hold only on some kernels: "// linux < 6.4: expect-status: 24"
// (or >=): a behaviour of KVM that changed there.
struct Expectation {
  std::vector<std::string> args;
  int status = 0;
  std::vector<std::string> out, err;
};

// "linux >= 6.4: " at the start of `line`: whether the running kernel is one
// it names; the line without it. Lines without a condition hold everywhere.
bool holds_here(std::string& line) {
  static const std::regex condition(R"(^// linux (<|>=) ([0-9]+)\.([0-9]+): )");
  std::smatch match;
  if (!std::regex_search(line, match, condition)) return true;
  const bool at_least = running_kernel().at_least(std::stoi(match[2]), std::stoi(match[3]));
  const bool holds = match[1] == ">=" ? at_least : !at_least;
  line = "// " + match.suffix().str();  // (match refers into line: read it first)
  return holds;
}

Expectation read_expectation(const std::filesystem::path& source) {
  Expectation expected;
  std::istringstream text(read_file(source));
  for (std::string line; std::getline(text, line);) {
    if (!holds_here(line)) continue;
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
    // Its line table, when there is one: what kvm-hello says names lines of its source.
    const std::string lines = binaries + "/" + source.stem().string() + ".lines";
    if (std::filesystem::exists(lines)) args.insert(args.end(), {"--guest-lines", lines});
    args.insert(args.end(), expected.args.begin(), expected.args.end());
    const Outcome run = run_program(args);
    INFO(source.filename().string() << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    CHECK(run.status == expected.status);
    for (const auto& text : expected.out)
      CHECK_MESSAGE(run.out.find(text) != std::string::npos, "stdout lacks: " << text);
    for (const auto& text : expected.err)
      CHECK_MESSAGE(run.err.find(text) != std::string::npos, "stderr lacks: " << text);
    // Not a timing test: a margin for a busy machine, well short of a hang.
    CHECK(run.seconds < time_limit_seconds(args) + 15.0);
    if (expected.status != 0) CHECK(run.err.find("kvm-hello: step ") != std::string::npos);
  }
}

TEST_CASE("test guests: each gives its message and exit status; none hangs past its watchdog") {
  check_guests(guest_sources, guest_binaries, 10);
}

TEST_CASE("the tutorial's exercises: each answer does what docs/19-exercises.md, 29-lesson-2-exercises.md and 37-lesson-3-exercises.md ask") {
  check_guests(exercise_sources, exercise_binaries, 10);
}

// Each tick's time after the one before, in ms, from lesson 2's "tick N:" lines.
static std::vector<double> tick_gaps_ms(const std::string& out) {
  static const std::regex gap(R"(, ([0-9.]+) (us|ms|s) after the one before\))");
  std::vector<double> gaps;
  for (std::sregex_iterator it(out.begin(), out.end(), gap), end; it != end; ++it) {
    const double value = std::stod((*it)[1]);
    gaps.push_back((*it)[2] == "s" ? value * 1000 : (*it)[2] == "us" ? value / 1000 : value);
  }
  return gaps;
}

TEST_CASE("lesson 2's exercise 1: ticks 250 ms apart, never less (a lower bound: KVM never wakes a vCPU early)") {
  const Outcome run = run_program({"--lesson", "2", "--guest", exercise_binaries + "/lesson2-1-tick-period.bin"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  const auto gaps = tick_gaps_ms(run.out);
  REQUIRE(gaps.size() == 2);
  // The guest arms each deadline after its last report came to us: the next report cannot come sooner. (The
  // shown times are rounded: 1 ms of margin. No upper bound: a busy machine may be late by any amount.)
  for (const double gap : gaps) CHECK(gap >= 249.0);
}

TEST_CASE("lesson 2's exercise 2: five ticks and no KVM_IRQ_LINE at all, even at -v") {
  const Outcome run = run_program({"--lesson", "2", "-v", "--guest", exercise_binaries + "/lesson2-2-five-ticks.bin"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  CHECK(count(run.out, "the guest's handler took INTID 27") == 5);
  CHECK(run.out.find("KVM_IRQ_LINE") == std::string::npos);
  CHECK(run.out.find("doorbell") == std::string::npos);
}

// Lesson 3's exercises: what each answer must show beyond its expect- lines (check_guests), counted.
static Outcome run_lesson3_exercise(const std::string& name, std::vector<std::string> more = {}) {
  std::vector<std::string> args{"--lesson", "3", "--guest", exercise_binaries + "/" + name + ".bin"};
  args.insert(args.end(), more.begin(), more.end());
  return run_program(args);
}

TEST_CASE("lesson 3's exercise 1: --vcpus 3, two CPU_ONs, one SGI for two vCPUs, two threads kicked at the end") {
  const auto run = run_lesson3_exercise("lesson3-1-third-vcpu", {"--vcpus", "3"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  CHECK(count(run.out, "the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = 0: SUCCESS") == 2);
  CHECK(count(run.out, "the guest called 0xc4000004 (PSCI AFFINITY_INFO, 64-bit) and got x0 = 1: OFF") == 2);
  CHECK(count(run.out, "the guest's handler took INTID 1, an SGI") == 2);
  CHECK(count(run.out, ": asked to stop, kicked") == 2);
  CHECK(count(run.out, "STOPPED (5): SYSTEM_OFF stopped every vCPU") == 3);
  // Their hellos come in turn (the guest's `go`), so vCPU 1's is before vCPU 2's.
  CHECK(run.out.find("vCPU 1       the guest says: hello 1") < run.out.find("vCPU 2       the guest says: hello 2"));
}

TEST_CASE("lesson 3's exercise 2: vCPU 1 sends the SGI back, and vCPU 0 takes it before it asks AFFINITY_INFO") {
  const auto run = run_lesson3_exercise("lesson3-2-sgi-back");
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  const auto took = run.out.find("vCPU 0       the guest's handler took INTID 1, an SGI");
  REQUIRE(took != std::string::npos);
  CHECK(took < run.out.find("(PSCI AFFINITY_INFO, 64-bit) and got x0 = 1: OFF"));
}

TEST_CASE("lesson 3's exercise 3: CPU_ON answers SUCCESS, ALREADY_ON, then SUCCESS again once vCPU 1 is off") {
  const auto run = run_lesson3_exercise("lesson3-3-cpu-on-twice");
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  REQUIRE(run.status == 0);
  const std::string on = "the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = ";
  const auto first = run.out.find(on + "0: SUCCESS");
  const auto second = run.out.find(on + "-4: ALREADY_ON");
  const auto third = run.out.find(on + "0: SUCCESS", second);
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  REQUIRE(third != std::string::npos);
  CHECK(first < second);
  // The third comes after vCPU 1 is OFF, and vCPU 1 starts again from reset: a second hello.
  CHECK(run.out.find("(PSCI AFFINITY_INFO, 64-bit) and got x0 = 1: OFF") < third);
  CHECK(count(run.out, "vCPU 1       the guest says: hello 1") == 2);
  CHECK(run.out.find("guest output, vCPU 1: hello 1\\nhello 1\\n") != std::string::npos);
}

// The lines of kvm-hello's output from the one that starts with `heading`
// (after its indent) to the end of the register dump after it (its vbar_el1):
// a breakpoint hit's heading, its instruction, and its registers.
static std::string section(const std::string& out, const std::string& heading) {
  const auto at = out.find("      " + heading);
  if (at == std::string::npos) return "";
  const auto end = out.find("vbar_el1", at);
  return out.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

TEST_CASE("make trace, a guest that never ends: --step-limit instructions, one line for the rest, the watchdog") {
  const Outcome run =
      run_program({"--guest", guest_binaries + "/spin.bin", "--step-guest", "--step-limit", "20", "--timeout", "1"});
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 24);
  CHECK(count(run.out, "      guest 0x10000  14000000") == 20);
  CHECK(run.out.find("      (--step-limit 20 reached: the guest runs on, one instruction at a time, unshown)\n") !=
        std::string::npos);
  static const std::regex rest(
      R"(\n      ([0-9]+) more instructions not shown: make trace ARGS='--step-limit N' shows the first N \(0: all\)\n)");
  std::smatch match;
  REQUIRE(std::regex_search(run.out, match, rest));
  CHECK(std::stoul(match[1]) > 0);
  CHECK(run.err.find("did not power off within 1000 ms, so the watchdog stopped it") != std::string::npos);
  CHECK(run.seconds < 1 + 15.0);  // a margin for a busy machine, well short of a hang
}

TEST_CASE("--break-at guest.S:28: every register there, at each of its 6 hits, however the guest is stopped") {
  const std::vector<std::vector<std::string>> ways{
      {"--break-at", "guest.S:28"}, {"--break-at=0x10010"}, {"--step-guest", "--break-at", "28"}};
  for (const auto& args : ways) {
    const Outcome run = run_program(args);
    INFO(args.back() << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    CHECK(run.status == 0);
    CHECK(run.out.find("guest output: hello\\n\n") != std::string::npos);
    const bool hardware = args.front() != "--step-guest";
    CHECK((run.out.find("hardware breakpoint at 0x10010 (guest.S:28): KVM_SET_GUEST_DEBUG(ENABLE | USE_HW)") !=
           std::string::npos) == hardware);
    CHECK(count(run.out, "      breakpoint at 0x10010 (guest.S:28), hit ") == 6);
    // Before each strb: x0 the byte it is about to write, x1 OUT, x2 the byte's address, PC the strb.
    const char* bytes = "hello\n";
    for (unsigned hit = 1; hit <= 6; ++hit) {
      const std::string hit_text = section(run.out, "breakpoint at 0x10010 (guest.S:28), hit " + std::to_string(hit));
      INFO("hit " << hit << ":\n" << hit_text);
      CHECK(hit_text.find(hardware ? "(KVM_EXIT_DEBUG, EC 0x30): the registers before it runs"
                                   : ": the registers before it runs") != std::string::npos);
      char x0[32], x2[32];
      std::snprintf(x0, sizeof x0, "x0 0x%016x", static_cast<unsigned>(bytes[hit - 1]));
      std::snprintf(x2, sizeof x2, "x2 0x%016x", 0x10038 + hit - 1);
      CHECK(hit_text.find(x0) != std::string::npos);
      CHECK(hit_text.find("x1 0x0000000000001100") != std::string::npos);
      CHECK(hit_text.find(x2) != std::string::npos);
      CHECK(hit_text.find("        pc 0x10010  pstate 0x3c5") != std::string::npos);
      CHECK(count(hit_text, "guest 0x10010  39000020  guest.S:28  strb    w0, [x1]") == (hardware ? 1U : 0U));
    }
  }
}

TEST_CASE("--break-at in a guest of your own that never ends: 10 hits shown, then it runs on to the watchdog") {
  const Outcome run = run_program({"--guest", guest_binaries + "/spin.bin", "--guest-lines",
                                   guest_binaries + "/spin.lines", "--break-at", "spin.S:12", "--timeout", "5"});
  // 5 s, not 1: ten stops at the breakpoint, each a KVM_RUN and a register
  // dump, took more than a second on a busy emulated machine (5 hits seen).
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 24);
  CHECK(count(run.out, "      breakpoint at 0x10000 (spin.S:12), hit ") == 10);
  CHECK(count(run.out, "guest 0x10000  14000000  spin.S:12   b       _start") == 10);
  CHECK(run.out.find("(breakpoint hit 10 times, as many as are shown: the guest runs on without it)") !=
        std::string::npos);
  CHECK(run.err.find("did not power off within 5000 ms, so the watchdog stopped it") != std::string::npos);
  CHECK(run.seconds < 5 + 15.0);
}

TEST_CASE("--break-at where no instruction is: status 2, the nearest lines that have one, before any VM exists") {
  for (const auto& [where, says] :
       {std::pair{"guest.S:25", "guest.S:25 has no instruction; the nearest lines that have one: 23 and 26"},
        {"mine.S:28", "the guest's source is guest.S, not mine.S"},
        {"0x10012", "an instruction's address is a multiple of 4"}}) {
    const Outcome run = run_program({"--break-at", where});
    INFO("stderr: " << run.err);
    CHECK(run.status == 2);
    CHECK(run.out.empty());  // not even step 1
    CHECK(run.err == "kvm-hello: --break-at " + std::string(where) + ": " + says + " (try --help)\n");
  }
  const Outcome no_table = run_program({"--guest", guest_binaries + "/spin.bin", "--break-at", "11"});
  CHECK(no_table.status == 2);
  CHECK(no_table.err.find("this guest has no line table") != std::string::npos);
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
    const Outcome run = run_program({"--guest", "/tmp/secret.bin"}, How{.uid = 65534, .program = program_for_nobody()});
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
    const Outcome run = run_program({}, How{.address_space = kib << 10});
    INFO("limit " << kib << " KiB: status " << run.status << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
    // Never started: nothing on stdout, and no line of ours ("kvm-hello: ...")
    // on stderr; the dynamic loader's own message names the program by its
    // path ("/.../kvm-hello: error while loading shared libraries").
    const bool ours = run.err.starts_with("kvm-hello: ") || run.err.find("\nkvm-hello: ") != std::string::npos;
    const bool never_started = run.out.empty() && !ours && run.status != 0;
    CHECK((never_started || run.status == 16 || run.status == 0));
    if (run.status == 16) CHECK(run.err.find("out of memory") != std::string::npos);
    if (!never_started) statuses.insert(run.status);
    if (run.status == 0) break;
  }
  CHECK(statuses.count(16) == 1);  // some limit did run out in a step, or in our own allocations
  CHECK(statuses.count(0) == 1);   // and enough memory is enough
}

TEST_CASE("Ctrl-C stops the guest cleanly: the registers, then status 130") {
  const How ctrl_c{.meanwhile = [](pid_t pid, const std::string& out) {
    CHECK(wait_for_output(out, "[9/9]"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    kill(pid, SIGINT);
  }};
  const Outcome run = run_program({"--guest", guest_binaries + "/spin.bin", "--timeout", "60"}, ctrl_c);
  INFO("stderr: " << run.err);
  CHECK(run.status == 130);
  CHECK(run.err.find("registers (read with KVM_GET_ONE_REG") != std::string::npos);
  CHECK(run.err.find("kvm-hello: step 9 (run_guest): Ctrl-C stopped the guest") != std::string::npos);
  CHECK(run.seconds < 10);
}

TEST_CASE("lesson 3, Ctrl-C: both vCPUs stopped and joined, each one's registers under its name, status 130") {
  const How stop{.meanwhile = [](pid_t pid, const std::string& out) {
    CHECK(wait_for_output(out, "vCPU 1: its thread calls KVM_RUN"));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    kill(pid, SIGINT);
  }};
  const Outcome run = run_program(
      {"--lesson", "3", "--guest", guest_binaries + "/lesson3_sgi_no_cpu_interface.bin", "--timeout", "60"}, stop);
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 130);
  CHECK(run.err.find("vCPU 0 registers (read with KVM_GET_ONE_REG") != std::string::npos);
  CHECK(run.err.find("vCPU 1 registers (read with KVM_GET_ONE_REG") != std::string::npos);
  CHECK(run.err.find("vCPU 1       KVM says this vCPU's PMR is 0") != std::string::npos);
  CHECK(run.err.find("kvm-hello: step 9 (run_guest), vCPU 0: Ctrl-C stopped the guest") != std::string::npos);
  CHECK(run.seconds < 20);
}

TEST_CASE("stopped and continued (Ctrl-Z then fg, a debugger): KVM_RUN returns EINTR, the guest goes on, status 0") {
  // wait_a_second.S runs for a second by its own clock, inside KVM_RUN; a
  // stop interrupts that KVM_RUN, and kvm-hello enters the guest again. Nothing
  // outside shows the moment kvm-hello is inside KVM_RUN (the "[9/9]" line comes
  // just before), and on a busy machine it can sit between the two for longer
  // than any fixed wait; so it is stopped and continued every 150 ms until it
  // ends: the stops land in KVM_RUN, where it spends that second.
  const How stop_and_continue{.meanwhile = [](pid_t pid, const std::string& out) {
    CHECK(wait_for_output(out, "[9/9]"));
    for (int round = 0; round < 60 && read_file(out).find("shutdown:") == std::string::npos; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      kill(pid, SIGSTOP);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      kill(pid, SIGCONT);
    }
  }};
  const Outcome run = run_program({"--guest", guest_binaries + "/wait_a_second.bin"}, stop_and_continue);
  INFO("stdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.err.empty());
  // One exit (SYSTEM_OFF), but more KVM_RUN calls: each EINTR was a call that came back without an exit.
  std::smatch summary;
  REQUIRE(std::regex_search(run.out, summary, std::regex("summary: ([0-9]+) KVM_RUN calls?, ([0-9]+) exits?")));
  CHECK(std::stoi(summary[2]) == 1);
  CHECK(std::stoi(summary[1]) > 1);
}

// ==== Stopping a vCPU: threads, deadlines, the program's own signals ========

namespace {

// A `meanwhile` for run_program: kills the program if it has not ended after
// `limit`, so that one that hangs fails its test (status 137) and the suite
// goes on. (waitid with WNOWAIT looks without reaping: run_program reaps.)
std::function<void(pid_t, const std::string&)> kill_after(std::chrono::seconds limit) {
  return [limit](pid_t pid, const std::string&) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      siginfo_t info{};
      if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGKILL);
  };
}

// Runs kvm-hello with `args`, its standard output a pipe of one page that
// nobody reads for `unread` (as `kvm-hello -v | less` before the pager
// reads), then read to its end. Returns the status, what came through the
// pipe (as out), stderr, and the pipe's size.
struct PipedOutcome {
  Outcome outcome;
  std::size_t pipe_size = 0;
};
PipedOutcome run_into_unread_pipe(std::vector<std::string> args, std::chrono::milliseconds unread) {
  int ends[2];
  REQUIRE(pipe2(ends, O_CLOEXEC) == 0);
  PipedOutcome piped;
  const int size = fcntl(ends[1], F_SETPIPE_SZ, 4096);  // the smallest: one page (4 KiB, or 16 KiB or 64 KiB)
  REQUIRE(size > 0);
  piped.pipe_size = static_cast<std::size_t>(size);
  const pid_t child = fork();
  if (child == 0) {
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0 || err < 0 || dup2(in, 0) < 0 || dup2(ends[1], 1) < 0 || dup2(err, 2) < 0) _exit(126);
    std::string program = program_path;
    std::vector<char*> argv{program.data()};
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(ends[1]);
  std::this_thread::sleep_for(unread);
  char buffer[65536];
  for (;;) {
    const ssize_t got = read(ends[0], buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    piped.outcome.out.append(buffer, static_cast<std::size_t>(got));
  }
  close(ends[0]);
  int wait_status = 0;
  waitpid(child, &wait_status, 0);
  piped.outcome.status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
  piped.outcome.err = read_file(err_path);
  return piped;
}

}  // namespace

TEST_CASE("KVM_RUN returns EINTR for a signal whose handler has SA_RESTART, as for one without") {
  // A thread kicks the vCPU's (this one) with SIGUSR2 every 100 ms, no
  // immediate_exit. Were KVM_RUN restarted after an SA_RESTART handler, no
  // kick would end it: after 5 s the kicker sets immediate_exit, and the
  // test fails rather than hangs.
  for (const int flags : {SA_RESTART, 0}) {
    INFO("sa_flags " << flags);
    kh::Machine m = build_machine(image(spin_bin, spin_bin_len));
    struct sigaction action {}, before {};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = flags;
    REQUIRE(sigaction(SIGUSR2, &action, &before) == 0);
    const pthread_t vcpu_thread = pthread_self();
    std::atomic<bool> returned{false}, needed_immediate_exit{false};
    std::thread kicker([&] {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!returned && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!returned) pthread_kill(vcpu_thread, SIGUSR2);
      }
      if (returned) return;
      needed_immediate_exit = true;
      std::atomic_ref<std::uint8_t>(m.vcpu.run().immediate_exit).store(1);
      while (!returned) {
        pthread_kill(vcpu_thread, SIGUSR2);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    const auto entered = run_once(m);
    returned = true;
    kicker.join();
    sigaction(SIGUSR2, &before, nullptr);
    REQUIRE_FALSE(entered);
    CHECK(entered.error().err == EINTR);
    CHECK(m.vcpu.run().exit_reason == KVM_EXIT_INTR);  // kvm_handle_signal_exit(), as for any pending signal
    CHECK_FALSE(needed_immediate_exit);
  }
}

TEST_CASE("a Deadline's thread blocks every signal: the program's SIGALRM or SIGINT never lands there") {
  kvm_run run{};
  kh::VcpuStopper stopper(run);
  const kh::Deadline deadline(stopper, std::chrono::seconds(60));
  const std::string self = std::to_string(gettid());
  int others = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    if (task.path().filename() == self) continue;
    ++others;
    std::istringstream status(read_file(task.path() / "status"));
    for (std::string line; std::getline(status, line);) {
      if (!line.starts_with("SigBlk:")) continue;
      INFO(line);
      const unsigned long long blocked = std::stoull(line.substr(7), nullptr, 16);
      for (const int signal : {SIGINT, SIGALRM, SIGTERM, SIGUSR1, SIGUSR2, SIGCHLD}) {
        CHECK(((blocked >> (signal - 1)) & 1) == 1);
      }
    }
  }
  CHECK(others == 1);  // the Deadline's
}

TEST_CASE("a program of its own: two VMs on two threads, each stopped by its own deadline; its own alarm() comes") {
  const std::string program = program_path.substr(0, program_path.rfind('/') + 1) + "two-vms-two-threads";
  REQUIRE_MESSAGE(access(program.c_str(), X_OK) == 0, program << " is missing");
  const Outcome run = run_program({}, How{.program = program, .meanwhile = kill_after(std::chrono::seconds(60))});
  INFO("status " << run.status << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
  CHECK(run.status == 0);
  CHECK(run.out.find("all checks hold\n") != std::string::npos);
  CHECK(run.out.find("FAILED") == std::string::npos);
}

TEST_CASE("--timeout below a millisecond is one millisecond, never \"no deadline\": the spin guest is stopped") {
  const Outcome run = run_program({"--guest", guest_binaries + "/spin.bin", "--timeout", "0.0004"},
                                  How{.meanwhile = kill_after(std::chrono::seconds(60))});
  INFO("stderr:\n" << run.err);
  CHECK(run.status == 24);
  CHECK(run.err.find("did not power off within 1 ms, so the watchdog stopped it") != std::string::npos);
}

TEST_CASE("kvm-hello -v into a pipe nobody reads yet (a pager): the deadline's signal loses no line") {
  // Single-stepped with every call traced, each instruction is the same
  // lines: KVM_RUN, the register reads, the instruction. The pipe fills,
  // kvm-hello waits in write(2), the deadline comes while it waits; then the
  // pipe is read. A write the signal failed with EINTR would lose its line.
  const PipedOutcome piped = run_into_unread_pipe(
      {"-v", "--step-guest", "--step-limit", "0", "--guest", guest_binaries + "/spin.bin", "--timeout", "3"},
      std::chrono::milliseconds(6000));
  const Outcome& run = piped.outcome;
  INFO("stderr:\n" << run.err);
  CHECK(run.status == 24);
  CHECK(run.out.size() > piped.pipe_size);  // it did fill the pipe, and wait
  std::vector<std::size_t> runs;  // the line numbers of the KVM_RUN calls
  std::istringstream lines(run.out);
  std::size_t number = 0;
  for (std::string line; std::getline(lines, line); ++number) {
    if (line.find("ioctl(") != std::string::npos && line.find(", KVM_RUN)") != std::string::npos) runs.push_back(number);
  }
  INFO("stdout:\n" << run.out);
  REQUIRE(runs.size() >= 3);  // the pipe holds about a step: the deadline comes while the second or third waits
  for (std::size_t i = 2; i < runs.size(); ++i) {
    INFO("KVM_RUN calls " << i << " and " << i + 1 << ": lines " << runs[i - 1] << " and " << runs[i]);
    CHECK(runs[i] - runs[i - 1] == runs[1] - runs[0]);
  }
}

TEST_CASE("the bench's bare loop: a guest stopped at its deadline is the watchdog's stop (status 24)") {
  kh::Machine m = build_machine(image(spin_bin, spin_bin_len));
  BenchDevice sink;
  const auto ran = raw_run_loop(m.vcpu, sink, std::chrono::milliseconds(300));
  REQUIRE_FALSE(ran);
  CHECK(ran.error().problem == kh::Problem::watchdog_expired);
  CHECK(status_for(ran.error()) == Status::watchdog);
}

TEST_CASE("no fd and no mapping is left open after a run, or after any error") {
  const auto run_once = [](std::span<const std::uint8_t> guest, std::chrono::milliseconds limit) {
    kh::Machine m = build_machine(guest);
    kh::HelloDevice device;
    return kh::run_guest(m.vcpu, device, limit, [](const kh::Exit&) {}).has_value();
  };
  const auto unused_vcpu = [] {  // ENOEXEC: registers before INIT
    auto kvm = kh::open_kvm();
    auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
    auto vcpu = kh::create_vcpu(*kvm, *vm, 0);
    return kh::set_boot_registers(vcpu->fd).has_value();
  };
  const auto empty_image = [] {
    auto kvm = kh::open_kvm();
    auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
    return kh::setup_guest_memory(*vm, {}).has_value();
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
  // Seven runs that between them reach most of the code (each sanitized run
  // takes seconds under emulation): every trace level, the stepper past its
  // limit and at a breakpoint; a hardware breakpoint, stepped over; a stuck
  // guest through the watchdog, the dump and its diagnosis; a failed KVM_RUN
  // and the instruction decoder. Most of each run's time is LeakSanitizer's
  // check at exit (lesson 1 in a fresh boot, emulated: 9 to 12 s with it, 3 to
  // 4 s with ASAN_OPTIONS=detect_leaks=0), whatever it is told to scan: on
  // arm64, GCC's ASan allocator is a SizeClassAllocator32 (its symbols in
  // libasan.a), whose ForEachChunk visits every possible region of the address
  // space, in use or not (compiler-rt, sanitizer_allocator_primary32.h).
  const std::pair<std::vector<std::string>, int> runs[] = {
      {{}, 0},
      {{"-vv", "--step-guest", "--step-limit", "20", "--break-at", "guest.S:26"}, 0},
      {{"--break-at", "guest.S:28"}, 0},
      {{"--guest", guest_binaries + "/undefined.bin", "--timeout", "1"}, 24},
      {{"--guest", guest_binaries + "/stp_mmio.bin"}, 20},
      // Lesson 3's threads: two vCPUs and their device, the stop after SYSTEM_OFF; and both stopped by the
      // watchdog, each one's registers read after the joins.
      {{"--lesson", "3", "-v"}, 0},
      {{"--lesson", "3", "--guest", guest_binaries + "/lesson3_sgi_no_cpu_interface.bin", "--timeout", "2"}, 24},
  };
  for (const auto& [args, status] : runs) {
    const Outcome run = run_program(args, How{.program = sanitized});
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
  CHECK(kinds == std::set<std::string>{"mmio_write_ns", "mmio_read_ns", "hvc_ns", "mmio_write_bare_ioctl_ns",
                                       "mmio_exit_round_trip_ns", "irq_line_round_trip_ns", "irqfd_round_trip_ns"});
  // The interrupt VM has the GIC this host's KVM offers first, and 256 / 16 round trips a measurement.
  std::smatch gic;
  REQUIRE(std::regex_search(json.out, gic, std::regex("\"interrupt_gic\": ([0-9]+),")));
  const auto host_gic = kh::probe_vgic(build_machine(image(guest_bin, guest_bin_len)).vm);
  REQUIRE(host_gic);
  CHECK(std::stoul(gic[1]) == static_cast<unsigned>(*host_gic));
  CHECK(json.out.find("\"interrupt_rounds\": 16,") != std::string::npos);
  std::smatch ratio;
  REQUIRE(std::regex_search(json.out, ratio, std::regex("\"ratio_mmio_read_to_hvc\": ([0-9.]+)")));
  CHECK(std::isfinite(std::stod(ratio[1])));
  CHECK(std::stod(ratio[1]) > 0);
  std::smatch steps;
  REQUIRE(std::regex_search(json.out, steps, std::regex("\"step_ns\": \\[([0-9, ]+)\\]")));
  const std::vector<std::string> step_ns = split_words(std::regex_replace(std::string(steps[1]), std::regex(","), " "));
  CHECK(step_ns.size() == static_cast<std::size_t>(kh::lesson1_step_count));
  for (const auto& ns : step_ns) CHECK(std::stoll(ns) > 0);
  CHECK(json.out.find(std::getenv("KVM_HELLO_EMULATED") ? "\"where\": \"emulated\"" : "\"where\": \"native\"") !=
        std::string::npos);

  const Outcome text = run_program({"--bench", "--bench-iterations", "256", "--bench-repeats", "2"});
  REQUIRE(text.status == 0);
  // On an emulated CPU the first line says so.
  const std::string first_line = text.out.substr(0, text.out.find('\n'));
  CHECK(first_line.find(std::getenv("KVM_HELLO_EMULATED") ? "EMULATED" : "own arm64 CPU") != std::string::npos);
  CHECK(text.out.find("ratio MMIO read to userspace / hvc in the kernel: ") != std::string::npos);
  CHECK(text.out.find("wrappers: ") != std::string::npos);
  CHECK(text.out.find("interrupts, host-timed (clock_gettime), a VM with a GICv") != std::string::npos);
  for (const char* kind : interrupt_kind_name)
    CHECK(text.out.find(std::string("  ") + kind + " ") != std::string::npos);
  CHECK(text.out.find("an interrupt, beyond an MMIO exit: ") != std::string::npos);
  CHECK(count(text.out, "] ") >= static_cast<std::size_t>(kh::lesson1_step_count));
}

TEST_CASE("the run loop allocates nothing when tracing is off (the benchmark guest, thousands of exits)") {
  kh::Machine m = build_machine(image(bench_guest_bin, bench_guest_bin_len));
  for (const auto& [x, value] : {std::pair{kh::reg::x(0), std::uint64_t{512}}, {kh::reg::x(1), 2}, {kh::reg::x(2), 7}}) {
    // iterations, repeats, all three kinds
    REQUIRE(kh::set_register(kh::Step::set_boot_registers, m.vcpu.fd, x, value));
  }
  kh::HelloDevice device;  // SINK and RESULT have no register here: nothing is kept
  // The Deadline's thread is made (and allocated) once, before the loop: what is counted is the loop.
  kh::VcpuStopper stopper(m.vcpu.run());
  const kh::Deadline deadline(stopper, std::chrono::seconds(60));
  REQUIRE(deadline.status());
  const std::size_t before = allocations.load();
  const auto stats = kh::run_guest(m.vcpu, stopper, device, [](const kh::Exit&) {});
  const std::size_t during = allocations.load() - before;
  REQUIRE(stats);
  CHECK(stats->exits > 2 * 2 * 512);  // MMIO writes and reads exit; the hvc calls do not
  CHECK(during == 0);
  INFO("allocations during the run: " << during);
}

// ==== A stuck guest run again, one instruction at a time (program/replay.hpp) ====

namespace {
Replay run_again(std::span<const std::uint8_t> guest, ReplayGoal goal = {ReplayGoal::Kind::first_exception},
                 ReplayBounds bounds = {}) {
  return replay_guest(guest, kh::default_kvm_path, goal, bounds);
}
}  // namespace

TEST_CASE("run again, a guest whose vectors fault forever shows the instruction of its first exception") {
  const Replay udf = run_again(image(undefined_bin, undefined_bin_len));
  INFO("why: " << udf.why);
  CHECK(udf.end == Replay::End::exception);
  CHECK(udf.pc == kh::ram_base);  // udf #0, the first instruction
  CHECK(udf.instructions == 0);
  CHECK_FALSE(udf.refused);
  const Replay mrs = run_again(image(el2_register_bin, el2_register_bin_len));
  CHECK(mrs.end == Replay::End::exception);
  CHECK(mrs.pc == kh::ram_base);
  const Replay jump = run_again(image(jump_outside_ram_bin, jump_outside_ram_bin_len));
  CHECK(jump.end == Replay::End::exception);
  CHECK(jump.pc == 0x40000);  // the fetch where br x0 went
  CHECK(jump.previous_pc == kh::ram_base + 4);
  CHECK(jump.instructions == 2);
  const Replay off = run_again(image(off_the_end_bin, off_the_end_bin_len));
  CHECK(off.end == Replay::End::exception);
  CHECK(off.pc == kh::ram_base + off_the_end_bin_len);  // the first word past its code
  CHECK(off.previous_pc == kh::ram_base);               // after its nop, not after a branch
  CHECK(off.instructions == 1);
  // A refused call on the way is kept, with the function id the guest asked for.
  const Replay call = run_again(image(smccc_unknown_function_bin, smccc_unknown_function_bin_len));
  CHECK(call.end == Replay::End::exception);
  CHECK(call.pc == kh::ram_base + 12);
  REQUIRE(call.refused);
  CHECK(call.refused->address == kh::ram_base + 8);
  CHECK(call.refused->function_id == 0x84000080);
}

TEST_CASE("run again, a branch into the vectors is no exception: the fetch where it went is") {
  // mov x0, #0; br x0: to 0, where VBAR_EL1 (0) puts the vectors and there is no memory. ELR_EL1 there
  // still reads 0 (INIT's), which is in the vectors too; only the fetch at 0 writes ESR_EL1.
  static constexpr unsigned char to_zero[] = {0x00, 0x00, 0x80, 0xd2, 0x00, 0x00, 0x1f, 0xd6};
  const Replay branch = run_again(image(to_zero, sizeof to_zero));
  INFO("why: " << branch.why);
  CHECK(branch.end == Replay::End::exception);
  CHECK(branch.pc == 0);
  CHECK(branch.previous_pc == kh::ram_base + 4);
  CHECK(branch.instructions == 2);
}

TEST_CASE("guest RAM: each VM runs its own image, even from a page an earlier VM ran other code from") {
  // jump_outside_ram.S has br x0 at ram_base + 4, where off_the_end.S has a zero (UDF) and
  // smccc_unknown_function.S a movk. Linux 6.12 gives the next VM's RAM the page just freed; QEMU 7.2
  // kept its translated br there unless every word was written with ordinary stores (write_guest_ram()).
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    REQUIRE(run_again(image(jump_outside_ram_bin, jump_outside_ram_bin_len)).end == Replay::End::exception);
    const Replay off = run_again(image(off_the_end_bin, off_the_end_bin_len));
    CHECK(off.end == Replay::End::exception);
    CHECK(off.pc == kh::ram_base + 4);
    CHECK(off.previous_pc == kh::ram_base);
    REQUIRE(run_again(image(jump_outside_ram_bin, jump_outside_ram_bin_len)).end == Replay::End::exception);
    const Replay call = run_again(image(smccc_unknown_function_bin, smccc_unknown_function_bin_len));
    CHECK(call.pc == kh::ram_base + 12);
    CHECK(call.refused);
  }
}

TEST_CASE("at -q a stuck guest's error line stands alone: no registers above it, and it points to none") {
  const Outcome spin = run_program({"-q", "--guest", guest_binaries + "/spin.bin", "--timeout", "1"});
  INFO("stderr: " << spin.err);
  CHECK(spin.status == 24);
  CHECK(count(spin.err, "\n") == 1);
  CHECK(spin.err.ends_with("a guest that runs longer needs --timeout (without -q, its registers say where it was)\n"));
  const Outcome udf = run_program({"-q", "--guest", guest_binaries + "/undefined.bin", "--timeout", "1"});
  INFO("stderr: " << udf.err);
  CHECK(count(udf.err, "\n") == 1);
  CHECK(udf.err.ends_with("would not help: run without -q to see the instruction to fix\n"));
}

TEST_CASE("run again, the guest goes the same way: the registers it ends with are the first run's") {
  kh::Machine m = build_machine(image(undefined_bin, undefined_bin_len));
  kh::HelloDevice device;
  const auto first = kh::run_guest(m.vcpu, device, std::chrono::milliseconds(300), [](const kh::Exit&) {});
  REQUIRE_FALSE(first);
  const auto regs = kh::read_registers(m.vcpu.fd);
  REQUIRE(regs);
  const Replay again = run_again(image(undefined_bin, undefined_bin_len));
  REQUIRE(again.last);
  CHECK(same_way(*regs, *again.last));
  CHECK(again.last->pc == regs->pc);
  CHECK(again.last->esr_el1 == regs->esr_el1);
}

TEST_CASE("run again, a refused call's function id is found; reads get the first run's answers; bounds hold") {
  const Replay call = run_again(image(psci_unknown_function_bin, psci_unknown_function_bin_len),
                                {ReplayGoal::Kind::refused_call, kh::ram_base + 4});
  CHECK(call.end == Replay::End::refused_call);
  REQUIRE(call.refused);
  CHECK(call.refused->function_id == 0xc4000008);
  // guest.S takes no exception: the re-run says it powered off; on the way it
  // read ANSWER into w4, and got the host's answer, as in the first run.
  const Replay hello = run_again(image(guest_bin, guest_bin_len));
  CHECK(hello.end == Replay::End::powered_off);
  REQUIRE(hello.last);
  CHECK(hello.last->x[4] == kh::host_answer);
  // A guest that spins: the bounds end the re-run, in instructions or in time.
  const Replay bounded =
      run_again(image(spin_bin, spin_bin_len), {ReplayGoal::Kind::first_exception}, {.instructions = 50});
  CHECK(bounded.end == Replay::End::instruction_limit);
  CHECK(bounded.instructions == 50);
  CHECK(bounded.pc == kh::ram_base);
  const auto start = std::chrono::steady_clock::now();
  const Replay timed = run_again(image(spin_bin, spin_bin_len), {ReplayGoal::Kind::first_exception},
                                 {.time = std::chrono::milliseconds(300)});
  CHECK(timed.end == Replay::End::time_limit);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  // A KVM device that is not there: said, not thrown.
  const Replay none = replay_guest(image(spin_bin, spin_bin_len), "/no/such/kvm", {ReplayGoal::Kind::first_exception});
  CHECK(none.end == Replay::End::failed);
  CHECK(none.why.starts_with("step 1 (open_kvm): open failed with ENOENT"));
}

// ==== Golden output ===========================================================
//
// test/golden/NAME.txt holds what a user sees for one command line:
//   # args: -v
//   # linux: >= 6.12     (only when the output holds on some kernels only)
//   # gic: 3             (only when it holds with one GIC only: lesson 2's)
//   # status: 0
//   <stdout>
//   --- stderr ---      (only when there is any)
//   <stderr>
// Values that change from run to run, or from host to host, are normalised
// first; the tests below check the host's values against what its KVM says.
// Output that changed between kernel versions has one file per behaviour,
// each with its "# linux:" line; the tests compare the one for this kernel.
// `make golden` rewrites the files of this kernel from a real run
// (e2e-tests --print-golden).

namespace {

std::string golden_dir;     // golden/ beside this binary
bool print_golden = false;  // --print-golden: print what the files would hold, compare nothing

std::string normalise(std::string text) {
  const std::pair<const char*, const char*> rules[] = {
      {R"(\b[0-9]+(\.[0-9]+)? (ns|us|ms|s)\b)", "<time>"},                // durations
      {R"((mapped at |userspace_addr )0x[0-9a-f]+)", "$1<address>"},      // where mmap put things
      {R"((KVM_CAP_ARM_VM_IPA_SIZE\)? += )[0-9]+)", "$1<ipa bits>"},      // the host's IPA limit
      {R"(target [0-9]+( \([^)]*\))?)", "target <n>"},                    // the host's preferred target
      {R"((first of |KVM_GET_VCPU_MMAP_SIZE\) = )[0-9]+)", "$1<size>"},   // two host pages
      {R"((PSCI for the guest: ).*)", "$1<this kernel's>"},               // checked by its own test below
      {R"((: psci_version\), value )0x[0-9a-f]+)", "$1<this kernel's>"},  // -v: the same, read by step 7
      {R"((KVM_GET_STATS_FD\): exits )[0-9]+)", "$1<n>"},                 // -v: host interrupts vary; the test
      {R"((left for KVM )[0-9]+( times; 9 of them came on to us, and KVM handled the other )[0-9]+)", "$1<n>$2<n>"},
      {R"((?:^|\n)(KVM_CAP_[A-Z0-9_]+) +(-?[0-9]+|error)  )", "\n$1 <value>  "},  // --caps: the host's values
      {R"((?:^|\n)(KVM_DEV_TYPE_ARM_VGIC_V[23]) +(yes|no|error)  )", "\n$1 <offered>  "},  // --caps: the host's GIC
  };
  for (const auto& [pattern, replacement] : rules) text = std::regex_replace(text, std::regex(pattern), replacement);
  return text;
}

// The GIC version KVM gives a VM on this host (2 or 3; 0: none), as lesson 2's probe_vgic() finds it.
unsigned host_gic() {
  static const unsigned version = [] {
    auto kvm = kh::open_kvm();
    if (!kvm) return 0u;
    const auto vm = kh::create_vm(*kvm, 0);
    if (!vm) return 0u;
    const auto gic = kh::probe_vgic(*vm);
    return gic ? static_cast<unsigned>(*gic) : 0u;
  }();
  return version;
}

// "# gic: 3": whether the host's GIC is the one it names.
bool gic_matches(const std::string& condition) {
  static const std::regex form(R"(^# gic: ([23])$)");
  std::smatch match;
  REQUIRE_MESSAGE(std::regex_match(condition, match, form), "not a GIC condition: " << condition);
  return std::stoul(match[1]) == host_gic();
}

// "# linux: >= 6.12" (or <): whether the running kernel is one it names.
bool kernel_matches(const std::string& condition) {
  static const std::regex form(R"(^# linux: (<|>=) ([0-9]+)\.([0-9]+)$)");
  std::smatch match;
  REQUIRE_MESSAGE(std::regex_match(condition, match, form), "not a kernel condition: " << condition);
  const bool at_least = running_kernel().at_least(std::stoi(match[2]), std::stoi(match[3]));
  return match[1] == ">=" ? at_least : !at_least;
}

std::string render(const std::string& header, const Outcome& run) {
  std::string text = header + "# status: " + std::to_string(run.status) + "\n" + normalise(run.out);
  if (!run.err.empty()) text += "--- stderr ---\n" + normalise(run.err);
  return text;
}

// The first line where two texts differ: its number, and the line in each
// ("<end>" where a text has no more).
struct Difference {
  int line = 0;
  std::string expected, actual;
};
Difference first_difference(const std::string& expected, const std::string& actual) {
  std::istringstream e(expected), a(actual);
  std::string el, al;
  for (int line = 1;; ++line) {
    const bool more_e = static_cast<bool>(std::getline(e, el)), more_a = static_cast<bool>(std::getline(a, al));
    if (!more_e && !more_a) return {};
    if (el != al || more_e != more_a) return {line, more_e ? el : "<end>", more_a ? al : "<end>"};
  }
}

// The golden files that no longer hold, in a few lines: files whose first
// difference is the same pair of lines are named together, each with its line
// number; then what to do about it.
std::string report_differences(const std::vector<std::pair<std::string, Difference>>& differing) {
  std::vector<std::pair<std::string, std::string>> groups;  // where (files and lines), and the pair of lines
  for (const auto& [file, difference] : differing) {
    const std::string pair = "    expected: " + difference.expected + "\n    actual:   " + difference.actual + "\n";
    const std::string where = file + " line " + std::to_string(difference.line);
    const auto same =
        std::find_if(groups.begin(), groups.end(), [&](const auto& group) { return group.second == pair; });
    if (same == groups.end()) {
      groups.emplace_back("test/golden/" + where, pair);
    } else {
      same->first += ", " + where;
    }
  }
  std::string report = "kvm-hello no longer prints what test/golden/ holds:\n";
  for (const auto& [where, pair] : groups) report += "  " + where + ":\n" + pair;
  return report +
         "  To keep the new output (you changed guest.S or the program on purpose): `make golden` writes it to\n"
         "  test/golden/, and `git diff test/golden` shows what changed.\n"
         "  To go back: `git diff` shows what you changed, and `git checkout guest.S` (or the file you changed) undoes "
         "it.";
}

// A golden file: its name, its header (the "# args:" line and its
// conditions), kvm-hello's arguments as written there, its whole text, and
// whether its conditions hold on this host.
struct GoldenFile {
  std::string name, header, args, expected;
  bool holds = true;
};

std::vector<GoldenFile> golden_files() {
  std::vector<std::filesystem::path> paths;
  for (const auto& entry : std::filesystem::directory_iterator(golden_dir)) paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  REQUIRE_MESSAGE(!paths.empty(), "no golden files in " << golden_dir);
  std::vector<GoldenFile> files;
  for (const auto& path : paths) {
    GoldenFile golden{path.filename().string(), "", "", read_file(path)};
    std::istringstream lines(golden.expected);
    std::string args_line;
    std::getline(lines, args_line);
    REQUIRE_MESSAGE(args_line.starts_with("# args:"), path << " must start with '# args:'");
    golden.args = args_line.size() > 8 ? args_line.substr(8) : "";
    golden.header = args_line + "\n";
    // The conditions: "# linux:" and "# gic:" lines, in any order, before "# status:".
    for (std::string condition; std::getline(lines, condition) && !condition.starts_with("# status:");) {
      golden.holds = golden.holds && (condition.starts_with("# gic:") ? gic_matches(condition) : kernel_matches(condition));
      golden.header += condition + "\n";
    }
    files.push_back(std::move(golden));
  }
  return files;
}

// kvm-hello's run for a golden file, rendered as the file shows it.
// "{guests}" and "{exercises}" in the arguments: the folders of the test
// guests and exercises, wherever they are.
std::string run_as_golden(const GoldenFile& golden) {
  const std::string where = std::regex_replace(std::regex_replace(golden.args, std::regex("\\{guests\\}"), guest_binaries),
                                               std::regex("\\{exercises\\}"), exercise_binaries);
  return render(golden.header, run_program(split_words(where)));
}

int soak_lesson = 1;  // --soak-lesson: the lesson whose golden run `make soak` repeats
int soak_runs = 20;   // --soak-runs: how many times

}  // namespace

TEST_CASE("golden output: kvm-hello prints what test/golden/ shows for this kernel") {
  const bool print = print_golden;
  std::map<std::string, int> compared;                        // per command line: how many files held for this kernel
  std::vector<std::pair<std::string, Difference>> differing;  // the files that do not hold
  for (const GoldenFile& golden : golden_files()) {
    compared[golden.args] += golden.holds ? 1 : 0;
    if (!golden.holds) continue;
    const std::string actual = run_as_golden(golden);
    if (print) {
      std::printf("=== golden %s ===\n%s=== end ===\n", golden.name.c_str(), actual.c_str());
      continue;
    }
    if (actual != golden.expected) differing.emplace_back(golden.name, first_difference(golden.expected, actual));
  }
  // One short report for every file, rather than each whole output twice.
  if (!differing.empty()) FAIL_CHECK(report_differences(differing));
  for (const auto& [args, count] : compared) {
    CHECK_MESSAGE(count == 1, "golden files for '" << args << "' that hold on this kernel: " << count);
  }
}

// `make soak LESSON=N RUNS=R`: one lesson's run, R times in a row in one
// machine, each output compared whole with the golden file for this host (a
// lost, doubled or interleaved line, a hang stopped by the watchdog, a
// status that is not 0: each run that differs is counted and its first
// difference shown). Skipped in `make test` (doctest::skip): the Makefile's
// soak target runs it with --no-skip. Run it while another build keeps every
// core busy: a race shows itself under load.
TEST_CASE("soak: the same run again and again, its golden output each time" * doctest::skip()) {
  const std::string soak_args = soak_lesson == 1 ? "" : "--lesson " + std::to_string(soak_lesson);
  const auto files = golden_files();
  const auto golden = std::find_if(files.begin(), files.end(), [&](const GoldenFile& file) {
    return file.holds && file.args == soak_args;
  });
  REQUIRE_MESSAGE(golden != files.end(), "no golden file for '" << soak_args << "' holds on this host");
  REQUIRE(soak_runs > 0);
  int same = 0;
  for (int run = 1; run <= soak_runs; ++run) {
    const auto started = std::chrono::steady_clock::now();
    const std::string actual = run_as_golden(*golden);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (actual == golden->expected) {
      ++same;
      std::printf("soak: run %d of %d: as %s (%.1f s)\n", run, soak_runs, golden->name.c_str(), seconds);
    } else {
      const Difference difference = first_difference(golden->expected, actual);
      FAIL_CHECK("run " << run << " of " << soak_runs << " differs from " << golden->name << " at line "
                        << difference.line << ":\n    expected: " << difference.expected
                        << "\n    actual:   " << difference.actual);
    }
  }
  std::printf("soak: %d of %d runs of kvm-hello %s printed %s\n", same, soak_runs,
              soak_args.empty() ? "(lesson 1)" : soak_args.c_str(), golden->name.c_str());
  CHECK(same == soak_runs);
}

// ==== What differs from host to host, checked against the host ===============

TEST_CASE("--caps: each value is what this host's KVM_CHECK_EXTENSION says") {
  const Outcome run = run_program({"--caps"});
  INFO("stdout:\n" << run.out);
  REQUIRE(run.status == 0);
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  const std::regex row(R"(\n(KVM_CAP_[A-Z0-9_]+) +(-?[0-9]+)  )");
  std::size_t rows = 0;
  for (std::sregex_iterator it(run.out.begin(), run.out.end(), row), end; it != end; ++it, ++rows) {
    const std::string name = (*it)[1];
    const auto known = std::find_if(std::begin(known_capabilities), std::end(known_capabilities),
                                    [&](const KnownCapability& cap) { return name == cap.name; });
    REQUIRE_MESSAGE(known != std::end(known_capabilities), name << " is not in known_capabilities");
    const int value = ioctl(kvm->get(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(known->id));
    CHECK_MESSAGE(std::stoi((*it)[2]) == value, name << ": kvm-hello says " << (*it)[2] << ", KVM says " << value);
  }
  CHECK(rows == std::size(known_capabilities));
}

TEST_CASE("--caps: each vGIC model is offered as KVM_CREATE_DEVICE_TEST says on this host; KVM_CAP_IRQCHIP is 1") {
  const Outcome run = run_program({"--caps"});
  INFO("stdout:\n" << run.out);
  REQUIRE(run.status == 0);
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
  REQUIRE(vm);
  const std::regex row(R"(\n(KVM_DEV_TYPE_ARM_VGIC_V([23])) +(yes|no)  )");
  std::size_t rows = 0, offered = 0;
  for (std::sregex_iterator it(run.out.begin(), run.out.end(), row), end; it != end; ++it, ++rows) {
    const auto version = (*it)[2] == "3" ? kh::GicVersion::v3 : kh::GicVersion::v2;
    const bool says = (*it)[3] == "yes";
    CHECK_MESSAGE(kh::offers_device(*vm, kh::device_type_for(version)).value() == says, (*it)[1]);
    offered += says;
  }
  CHECK(rows == 2);
  CHECK(offered >= 1);  // the emulated machine's GIC, v3 or v2, has virtualization
  CHECK(ioctl(kvm->get(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(KVM_CAP_IRQCHIP)) == 1);
}

TEST_CASE("step 3's IPA limit is what this host's KVM says") {
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  const int limit = ioctl(kvm->get(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(KVM_CAP_ARM_VM_IPA_SIZE));
  const Outcome run = run_program({});
  CHECK(run.out.find("KVM_CAP_ARM_VM_IPA_SIZE = " + std::to_string(limit) + "  ") != std::string::npos);
}

TEST_CASE("-v: the vCPU's statistics add up: KVM counted the MMIO exits we saw and 1 hvc, and every exit") {
  const Outcome run = run_program({"-v"});
  INFO("stdout:\n" << run.out);
  REQUIRE(run.status == 0);
  std::smatch stats, ours;
  REQUIRE(
      std::regex_search(run.out, stats,
                        std::regex("vCPU statistics \\(KVM_GET_STATS_FD\\): exits ([0-9]+), mmio_exit_user ([0-9]+), "
                                   "mmio_exit_kernel ([0-9]+), hvc_exit_stat ([0-9]+)")));
  REQUIRE(std::regex_search(run.out, ours, std::regex("exits \\(KVM_EXIT_MMIO ([0-9]+), KVM_EXIT_SYSTEM_EVENT 1\\)")));
  const unsigned long mmio = std::stoul(ours[1]);  // the MMIO exits we saw (8 for "hello\n")
  CHECK(mmio > 2);
  CHECK(std::stoul(stats[2]) == mmio);
  CHECK(std::stoul(stats[3]) == 0);         // no device of ours lives in the kernel
  CHECK(std::stoul(stats[4]) == 1);         // the hvc of SYSTEM_OFF (the one exit that is not MMIO)
  CHECK(std::stoul(stats[1]) >= mmio + 1);  // and every exit KVM handled itself besides
}

TEST_CASE("the preferred target is this kernel's: GENERIC_V8 from Linux 6.6, before it the host CPU's own type") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  kvm_vcpu_init preferred{};
  REQUIRE(kh::call(kh::Step::init_vcpu, m.vm, kh::request::arm_preferred_target, &preferred));
  // Before 6.6: Cortex-A57 (part 0xd07) and A53 (0xd03) had types of their own (so did the AEM, Foundation
  // and X-Gene, which QEMU does not emulate: kvm_target_cpu in 6.1's arch/arm64/kvm/guest.c).
  const std::string cpuinfo = read_file("/proc/cpuinfo");
  std::uint32_t expected = KVM_ARM_TARGET_GENERIC_V8;
  if (!running_kernel().at_least(6, 6) && cpuinfo.find("CPU implementer\t: 0x41") != std::string::npos) {
    if (cpuinfo.find("CPU part\t: 0xd07") != std::string::npos) expected = KVM_ARM_TARGET_CORTEX_A57;
    if (cpuinfo.find("CPU part\t: 0xd03") != std::string::npos) expected = KVM_ARM_TARGET_CORTEX_A53;
  }
  CHECK(preferred.target == expected);
  const Outcome run = run_program({});
  CHECK(run.out.find("      target " + std::to_string(expected) + " (") != std::string::npos);
}

TEST_CASE("PSCI for the guest: version 1.1 before Linux 6.13, 1.3 from it; smc as a conduit from 6.4") {
  kh::Machine m = build_machine(image(guest_bin, guest_bin_len));
  const KernelVersion linux_version = running_kernel();
  const std::uint64_t expected = linux_version.at_least(6, 13) ? PSCI_VERSION(1, 3) : PSCI_VERSION(1, 1);
  CHECK(kh::get_register(kh::Step::init_vcpu, m.vcpu.fd, kh::reg::psci_version).value() == expected);
  const Outcome run = run_program({});
  const std::string line =
      std::string("PSCI for the guest: version ") + (linux_version.at_least(6, 13) ? "1.3" : "1.1") +
      " (KVM_REG_ARM_PSCI_VERSION" + (linux_version.at_least(6, 13) ? ")" : "; 1.3 from Linux 6.13)") +
      (linux_version.at_least(6, 4) ? ", called with hvc or smc #0"
                                    : ", called with hvc only: before Linux 6.4 an smc returns -1 (NOT_SUPPORTED)");
  CHECK_MESSAGE(run.out.find("      " + line + "\n") != std::string::npos, "no line: " << line << "\n" << run.out);
}

// ==== Lesson 3: several vCPUs, against this kernel =============================
//
// Part III of kvm_hello.hpp on real KVM: a VM of two vCPUs made as lesson 3
// makes it (every vCPU before init_vgic, the second powered off, the first's
// registers only), test/guests/two_vcpus.S run on a thread per vCPU, and the
// program's mistakes (a vCPU with no thread, a thread never kicked), each
// bounded by a deadline so that no test can hang. Then the kernel
// differences, each asserted as the running kernel has it.

namespace {

// Steps 1-5, 10, 11, then 6 and 7 for each id (the first as it boots, the
// others powered off: other_vcpu_features), 8 for the first, and 12.
struct VcpusVm {
  kh::KvmFd kvm;
  kh::VmFd vm;
  kh::GuestMemory memory;
  kh::Vgic vgic{};
  std::vector<kh::Vcpu> vcpus;
};

VcpusVm build_vcpus_vm(std::span<const std::uint8_t> guest, std::initializer_list<std::uint32_t> ids = {0, 1}) {
  VcpusVm m;
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  m.kvm = std::move(*kvm);
  auto vm = kh::create_vm(m.kvm, kh::vm_type_for(kh::check_capabilities(m.kvm)->ipa_limit).value());
  REQUIRE(vm);
  m.vm = std::move(*vm);
  auto memory = kh::setup_guest_memory(m.vm, guest);
  REQUIRE(memory);
  m.memory = std::move(*memory);
  const auto version = kh::probe_vgic(m.vm);
  REQUIRE(version);
  auto vgic = kh::create_vgic(m.vm, *version);
  REQUIRE(vgic);
  m.vgic = std::move(*vgic);
  for (const std::uint32_t id : ids) {
    auto vcpu = kh::create_vcpu(m.kvm, m.vm, id);
    REQUIRE(vcpu);
    const bool first = m.vcpus.empty();
    REQUIRE(kh::init_vcpu(m.vm, vcpu->fd, first ? kh::first_vcpu_features : kh::other_vcpu_features));
    if (first) REQUIRE(kh::set_boot_registers(vcpu->fd));
    m.vcpus.push_back(std::move(*vcpu));
  }
  REQUIRE(kh::init_vgic(m.vgic));
  return m;
}

// One device for every vCPU, locked: each vCPU's OUT bytes apart.
class OutputByVcpu {
 public:
  class View {  // what one vCPU's run_guest() sees: the device, and which vCPU it is
   public:
    View(OutputByVcpu& device, std::uint32_t id) : device_(device), id_(id) {}
    void handle(kh::MmioAccess& access) {
      const std::scoped_lock lock(device_.mutex_);
      if (access.is_write && access.address == kh::mmio_out) device_.text_[id_].push_back(static_cast<char>(access.data[0]));
      if (!access.is_write) access.data = {};
    }

   private:
    OutputByVcpu& device_;
    std::uint32_t id_;
  };
  std::string of(std::uint32_t id) {
    const std::scoped_lock lock(mutex_);
    return text_[id];
  }

 private:
  std::mutex mutex_;
  std::map<std::uint32_t, std::string> text_;
};

// Starts vCPU `vcpu`'s thread: run_guest() with `device`'s view for it, and a deadline of `limit`.
kh::VcpuThread start_thread(kh::Vcpu& vcpu, OutputByVcpu& device, std::chrono::milliseconds limit) {
  auto thread = kh::start_vcpu_thread(
      vcpu,
      [&device](kh::Vcpu& v, const kh::VcpuStopper& stopper) {
        OutputByVcpu::View view(device, v.id);
        return kh::run_guest(v, stopper, view, [](const kh::Exit&) {});
      },
      limit);
  REQUIRE(thread);
  return std::move(*thread);
}

kh::MpState mp_state_of(const kh::Vcpu& vcpu) { return kh::read_mp_state(vcpu.fd).value(); }
std::uint64_t x_of(const kh::Vcpu& vcpu, std::size_t n) {
  return kh::get_register(kh::Step::run_guest, vcpu.fd, kh::reg::x_registers[n]).value();
}

std::string kernel_name() {
  return "Linux " + std::to_string(running_kernel().major) + "." + std::to_string(running_kernel().minor);
}

constexpr std::uint64_t two_vcpus_context = 0x5ec0d;  // two_vcpus.S's x3 for CPU_ON

}  // namespace

TEST_CASE("lesson 3 in-process: vCPU 1 STOPPED until CPU_ON, starts at its entry with x0 = the context; after "
          "SYSTEM_OFF stop_vcpus kicks it out of KVM_RUN, and both are STOPPED") {
  VcpusVm m = build_vcpus_vm(image(two_vcpus_bin, two_vcpus_bin_len));
  INFO(kernel_name());
  CHECK(mp_state_of(m.vcpus[0]) == kh::MpState::runnable);
  CHECK(mp_state_of(m.vcpus[1]) == kh::MpState::stopped);  // KVM_ARM_VCPU_POWER_OFF
  OutputByVcpu device;
  std::vector<kh::VcpuThread> threads;
  for (kh::Vcpu& vcpu : m.vcpus) threads.push_back(start_thread(vcpu, device, std::chrono::seconds(30)));
  CHECK(kh::wait_for_first_to_end(threads) == 0);  // vCPU 0's SYSTEM_OFF; vCPU 1 sleeps in KVM after CPU_OFF
  CHECK_FALSE(threads[1].finished());
  const auto start = std::chrono::steady_clock::now();
  const auto results = kh::stop_vcpus(threads, kh::StopReason::powered_off);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));  // the kick, not the 30 s deadline
  REQUIRE(results.size() == 2);
  REQUIRE(results[0]);
  CHECK(results[0]->exits_by_reason[KVM_EXIT_SYSTEM_EVENT] == 1);
  REQUIRE(results[1]);  // stopped for powered_off: a clean end
  CHECK(results[1]->exits_by_reason[KVM_EXIT_SYSTEM_EVENT] == 0);  // CPU_OFF and SYSTEM_OFF never came to us
  CHECK(device.of(1) == "1\n");
  CHECK(device.of(0) == "0\n");
  CHECK(x_of(m.vcpus[0], 19) == static_cast<std::uint64_t>(kh::psci::success));
  CHECK(x_of(m.vcpus[0], 20) == two_vcpus_context);  // what vCPU 1 found in x0
  CHECK(mp_state_of(m.vcpus[0]) == kh::MpState::stopped);  // SYSTEM_OFF stopped every vCPU
  CHECK(mp_state_of(m.vcpus[1]) == kh::MpState::stopped);
}

TEST_CASE("lesson 3's mistake: vCPU 1 never kicked after SYSTEM_OFF stays in KVM_RUN; its deadline ends it, naming it") {
  VcpusVm m = build_vcpus_vm(image(two_vcpus_bin, two_vcpus_bin_len));
  OutputByVcpu device;
  std::vector<kh::VcpuThread> threads;
  threads.push_back(start_thread(m.vcpus[0], device, std::chrono::seconds(30)));
  threads.push_back(start_thread(m.vcpus[1], device, std::chrono::milliseconds(1500)));
  REQUIRE(threads[0].join());  // vCPU 0 powered the machine off
  CHECK(device.of(1) == "1\n");
  const auto start = std::chrono::steady_clock::now();
  const auto left = threads[1].join();  // the mistake: joined with no request and no kick
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
  REQUIRE_FALSE(left);
  CHECK(left.error().problem == kh::Problem::watchdog_expired);
  REQUIRE(left.error().vcpu);
  CHECK(*left.error().vcpu == 1);
  CHECK(failure_for(left.error(), "/dev/kvm").message.starts_with("step 9 (run_guest), vCPU 1: "));
  CHECK(mp_state_of(m.vcpus[1]) == kh::MpState::stopped);  // asleep in KVM, as SYSTEM_OFF left it
  CHECK(explain_left_in_kvm_run(*left.error().vcpu, 0).starts_with("vCPU 1 was still in KVM_RUN"));
}

TEST_CASE("lesson 3's mistake: vCPU 1 with no thread never runs, though CPU_ON said SUCCESS; vCPU 0 waits until its "
          "deadline") {
  VcpusVm m = build_vcpus_vm(image(two_vcpus_bin, two_vcpus_bin_len));
  OutputByVcpu device;
  kh::VcpuThread only = start_thread(m.vcpus[0], device, std::chrono::milliseconds(1500));
  const auto waited = only.join();
  REQUIRE_FALSE(waited);
  CHECK(waited.error().problem == kh::Problem::watchdog_expired);
  CHECK(*waited.error().vcpu == 0);
  CHECK(x_of(m.vcpus[0], 19) == static_cast<std::uint64_t>(kh::psci::success));  // CPU_ON worked, in KVM
  CHECK(x_of(m.vcpus[0], 20) == 0);                                               // vCPU 1 never stored its x0
  const kh::MpState state = mp_state_of(m.vcpus[1]);
  CHECK(state == kh::MpState::runnable);  // started by CPU_ON, run by no one
  CHECK(device.of(1).empty());
  CHECK(explain_vcpu_without_thread(1, state).starts_with("vCPU 1 is RUNNABLE (the guest's CPU_ON started it), but "
                                                          "no thread ever called KVM_RUN on it"));
}

TEST_CASE("lesson 3, kernel difference: POWER_OFF is kept for a re-INIT on Linux 6.1, holds for one INIT from 6.12") {
  VcpusVm m = build_vcpus_vm(image(two_vcpus_bin, two_vcpus_bin_len));
  INFO(kernel_name());
  const kh::Vcpu& second = m.vcpus[1];
  REQUIRE(mp_state_of(second) == kh::MpState::stopped);
  const auto again_on = kh::init_vcpu(m.vm, second.fd, kh::first_vcpu_features);  // INIT again, without POWER_OFF
  if (running_kernel().at_least(6, 12)) {
    CHECK(again_on);  // kvm_arch_vcpu_ioctl_vcpu_init cleared it: no feature differs
    CHECK(mp_state_of(second) == kh::MpState::runnable);
  } else {
    REQUIRE_FALSE(again_on);
    CHECK(again_on.error().err == EINVAL);  // kvm_vcpu_set_target: "must use the same feature set"
    CHECK(mp_state_of(second) == kh::MpState::stopped);
  }
  CHECK(kh::init_vcpu(m.vm, second.fd, kh::other_vcpu_features));  // with it again: off again, everywhere
  CHECK(mp_state_of(second) == kh::MpState::stopped);
  // What kvm-hello says of this kernel is what it did.
  CHECK(describe_init_features(running_kernel())
            .starts_with(again_on ? "POWER_OFF holds for this INIT only" : "POWER_OFF stays among"));
}

TEST_CASE("lesson 3, kernel difference: from Linux 6.12 every vCPU's INIT asks for the same features (EINVAL else)") {
  INFO(kernel_name());
  auto kvm = kh::open_kvm();
  REQUIRE(kvm);
  auto vm = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
  REQUIRE(vm);
  auto first = kh::create_vcpu(*kvm, *vm, 0);
  auto other = kh::create_vcpu(*kvm, *vm, 1);
  REQUIRE((first && other));
  REQUIRE(kh::init_vcpu(*vm, first->fd, kh::first_vcpu_features));  // PSCI 0.2
  const auto without_psci = kh::init_vcpu(*vm, other->fd, {.psci_0_2 = false, .power_off = true});
  if (running_kernel().at_least(6, 12)) {
    REQUIRE_FALSE(without_psci);
    CHECK(without_psci.error().err == EINVAL);  // __kvm_vcpu_set_target: kvm_vcpu_init_changed
  } else {
    CHECK(without_psci);  // 6.1: the features are each vCPU's own
    CHECK(mp_state_of(*other) == kh::MpState::stopped);
  }
  // A VM whose vCPUs ask for the same features, POWER_OFF apart: fine on every kernel.
  auto vm2 = kh::create_vm(*kvm, kh::vm_type_for(kh::check_capabilities(*kvm)->ipa_limit).value());
  REQUIRE(vm2);
  auto first2 = kh::create_vcpu(*kvm, *vm2, 0);
  auto other2 = kh::create_vcpu(*kvm, *vm2, 1);
  REQUIRE((first2 && other2));
  REQUIRE(kh::init_vcpu(*vm2, first2->fd, kh::first_vcpu_features));
  CHECK(kh::init_vcpu(*vm2, other2->fd, kh::other_vcpu_features));
}

TEST_CASE("lesson 3, kernel difference: KVM_IRQ_LINE's vCPU field is an id from Linux 6.12; 6.1 reaches only a vCPU "
          "whose id is its index (vCPUs 0 and 2)") {
  VcpusVm m = build_vcpus_vm(image(two_vcpus_bin, two_vcpus_bin_len), {0, 2});  // vCPU id 2 is index 1
  INFO(kernel_name() << ", " << gic_name(m.vgic.version));
  constexpr std::uint32_t ppi = 20;  // a PPI no device of KVM owns (the timer's 27 would be ignored)
  const auto field_1 = kh::set_irq_line(m.vm, kh::irq_line_ppi(1, ppi), true);
  const auto field_2 = kh::set_irq_line(m.vm, kh::irq_line_ppi(2, ppi), true);
  if (running_kernel().at_least(6, 12)) {
    CHECK(errno_of(field_1) == EINVAL);  // kvm_get_vcpu_by_id(1): no vCPU has id 1
    CHECK(field_2);                      // id 2
  } else {
    // 1: index 1 is vCPU id 2 (kvm_get_vcpu), whose id kvm_vgic_inject_irq takes for an index again: none.
    CHECK(errno_of(field_1) == EINVAL);
    CHECK(errno_of(field_2) == EINVAL);  // 2: no index 2, two vCPUs (kvm_vm_ioctl_irq_line)
  }
  CHECK(describe_irq_line_vcpu(running_kernel()).ends_with(field_2 ? "the vCPU's id (kvm_get_vcpu_by_id)"
                                                                   : "a vCPU whose id is its index"));
  // With a GICv3, where the line went: vCPU id 2's PPI 20 (MPIDR 2), or nowhere.
  if (m.vgic.version == kh::GicVersion::v3) {
    std::uint32_t levels = 0;
    const kvm_device_attr attr{.flags = 0,
                               .group = KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                               .attr = kh::vgic_mpidr_field(kh::mpidr_affinity(2)) |
                                       (std::uint64_t{VGIC_LEVEL_INFO_LINE_LEVEL}
                                        << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT),  // INTIDs 0 to 31
                               .addr = reinterpret_cast<std::uintptr_t>(&levels)};
    REQUIRE(kh::call(kh::Step::inject_spi, m.vgic.fd, kh::request::get_device_attr, &attr));
    CHECK(((levels >> ppi) & 1) == (running_kernel().at_least(6, 12) ? 1u : 0u));
  }
}

TEST_CASE("lesson 3's threads under ThreadSanitizer: two vCPU threads, one locked device, the kick, stop_vcpus; no race") {
  const std::string program = program_path.substr(0, program_path.rfind('/') + 1) + "vcpu-threads-tsan";
  REQUIRE_MESSAGE(access(program.c_str(), X_OK) == 0, program << " is missing");
  ::setenv("TSAN_OPTIONS", "halt_on_error=1 exitcode=66 second_deadlock_stack=1", 1);
  const Outcome run = run_program({}, How{.program = program, .meanwhile = kill_after(std::chrono::seconds(240))});
  ::unsetenv("TSAN_OPTIONS");
  INFO("status " << run.status << "\nstdout:\n" << run.out << "\nstderr:\n" << run.err);
  // GCC 12's ThreadSanitizer knows arm64 address spaces of 39, 42 and 48
  // bits. A kernel with 16 KiB pages gives a process 47 (Debian's
  // arm64-16k), and TSan stops before main: "unsupported VMA range". There
  // the threads cannot be checked under it; every 4 KiB-page host checks them.
  if (run.err.find("ThreadSanitizer: unsupported VMA range") != std::string::npos) {
    CHECK_MESSAGE(::sysconf(_SC_PAGESIZE) != 4096, "ThreadSanitizer refused a 4 KiB-page host's address space");
    MESSAGE("ThreadSanitizer cannot run on this host (" << ::sysconf(_SC_PAGESIZE) / 1024
                                                          << " KiB pages, a 47-bit address space): not checked here");
    return;
  }
  CHECK(run.status == 0);
  CHECK(run.err.find("ThreadSanitizer") == std::string::npos);
  CHECK(count(run.out, "ok: ") == 17);  // 5 clean runs of 3 checks, a request, a forgotten kick
  CHECK(run.out.find("FAILED") == std::string::npos);
}

int main(int argc, char** argv) {
  // kvm-hello lies beside this binary: /kvm-hello in the emulated machine, build/kvm-hello natively.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe");
  const std::string here = self.substr(0, self.rfind('/') + 1);
  program_path = here + "kvm-hello";
  golden_dir = here + "golden";
  guest_binaries = here + "guests";
  guest_sources = here + "guest-sources";
  exercise_binaries = here + "exercises";
  exercise_sources = here + "exercise-sources";
  // --print-golden (make golden), --soak-lesson and --soak-runs (make soak) are ours; the other arguments are doctest's.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--print-golden") {
      print_golden = true;
    } else if (std::string_view(argv[i]) == "--soak-lesson" && i + 1 < argc) {
      soak_lesson = std::atoi(argv[++i]);
    } else if (std::string_view(argv[i]) == "--soak-runs" && i + 1 < argc) {
      soak_runs = std::atoi(argv[++i]);
    } else {
      args.push_back(argv[i]);
    }
  }
  doctest::Context context;
  context.setOption("no-colors", true);  // the emulated machine's console is a terminal, the log is not
  context.applyCommandLine(static_cast<int>(args.size()), args.data());
  return context.run();
}

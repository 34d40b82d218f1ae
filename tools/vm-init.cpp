// SPDX-License-Identifier: MIT
// vm-init.cpp: /init of the emulated arm64 machine that `make run` boots on
// hosts that are not arm64.
//
// The kernel runs it as the first process, with the words after "--" on the
// kernel command line as its arguments: a program and its arguments. It
// mounts /dev (which holds the real arm64 /dev/kvm), /proc and /sys, prints one line
// naming the host the program runs on (read here, inside the machine), runs
// the program, prints "kvm-hello-vm: exit status N" for tools/run-in-vm.sh, and
// powers the machine off. QEMU's own exit status cannot carry N. The program's
// stdout is the machine's console; its stderr comes to the console through
// us, marked, so that run-in-vm.sh can keep the two apart.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/klog.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace {

// ---- The host line: what this machine is, as the program sees it -----------

// "CPU implementer : 0x41" -> "0x41": the first value of a /proc/cpuinfo field.
std::string cpuinfo_field(const std::string& cpuinfo, const std::string& name) {
  const auto at = cpuinfo.find("\n" + name);
  if (at == std::string::npos) return "";
  const auto colon = cpuinfo.find(':', at);
  const auto end = cpuinfo.find('\n', colon);
  if (colon == std::string::npos) return "";
  return cpuinfo.substr(colon + 2, end == std::string::npos ? std::string::npos : end - colon - 2);
}

// The CPU's name from MIDR_EL1's implementer and part numbers (Arm's own
// parts that QEMU emulates); QEMU's "max" has implementer 0 ("software").
std::string cpu_name(const std::string& cpuinfo) {
  const unsigned long implementer = std::strtoul(cpuinfo_field(cpuinfo, "CPU implementer").c_str(), nullptr, 0);
  const unsigned long part = std::strtoul(cpuinfo_field(cpuinfo, "CPU part").c_str(), nullptr, 0);
  const struct {
    unsigned long implementer, part;
    const char* name;
  } known[] = {{0x41, 0xd03, "Cortex-A53"}, {0x41, 0xd04, "Cortex-A35"}, {0x41, 0xd07, "Cortex-A57"},
               {0x41, 0xd08, "Cortex-A72"}, {0x41, 0xd0b, "Cortex-A76"}, {0x41, 0xd0c, "Neoverse-N1"},
               {0x46, 0x001, "A64FX"},      {0x00, 0x051, "QEMU max"}};
  for (const auto& cpu : known) {
    if (cpu.implementer == implementer && cpu.part == part) return cpu.name;
  }
  char text[64];
  std::snprintf(text, sizeof text, "implementer 0x%02lx part 0x%03lx", implementer, part);
  return text;
}

// The kernel's log of the boot so far (KVM_HELLO_BOOT_LOG: see run-in-vm.sh).
std::string kernel_log() {
  std::vector<char> log(1 << 20);
  const int size = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log.data(), static_cast<int>(log.size()));
  return std::string(log.data(), size > 0 ? static_cast<std::size_t>(size) : 0);
}

// How KVM runs here, from its own boot message "kvm [1]: <mode> mode
// initialized successfully": "VHE" ("VHE+NV2" in 7.2 with nested
// virtualization); nVHE says "Hyp" (6.1) or "Hyp nVHE" (6.12 and 7.2); pKVM
// says "Protected nVHE", or, in 6.12 and 7.2 on a CPU with VHE, "Protected
// hVHE": the kernel at EL1 still, its hyp code at EL2 with HCR_EL2.E2H set
// (kvm_arm_init in arch/arm64/kvm/arm.c).
std::string kvm_mode() {
  if (access("/dev/kvm", F_OK) != 0) return "no /dev/kvm";
  const std::string text = kernel_log();
  const auto end = text.find(" mode initialized successfully");
  if (end == std::string::npos) return "KVM (its mode was not logged)";
  const auto start = text.rfind(": ", end);
  const std::string mode = text.substr(start + 2, end - start - 2);
  if (mode.starts_with("Protected "))
    return "pKVM (protected " + mode.substr(10) + "): the kernel at EL1, KVM's hyp code at EL2";
  if (mode.starts_with("VHE")) return "KVM " + mode + ": the kernel runs at EL2";
  return "KVM nVHE: the kernel at EL1, KVM's hyp code at EL2";
}

// The device tree the kernel was booted with (QEMU writes it for its "virt"
// board), as the kernel shows it once sysfs is mounted: a directory per node,
// a file per property, each holding the property's bytes.
const std::filesystem::path device_tree = "/sys/firmware/devicetree/base";

// A file's bytes, or "" when it cannot be read.
std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), {});
}

// The node (directory) of the device tree whose "phandle" property holds
// `phandle` (its 4 bytes as stored, big-endian), or an empty path.
std::filesystem::path node_with_phandle(const std::string& phandle) {
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator node(device_tree, error), end; !error && node != end;
       node.increment(error)) {
    if (node->path().filename() == "phandle" && file_bytes(node->path()) == phandle) return node->path().parent_path();
  }
  return {};
}

// The machine's interrupt controller, as the kernel was told of it: the root
// node's "interrupt-parent" names it by phandle, and its "compatible" (a list
// of NUL-terminated strings) says which GIC it is. QEMU's virt board writes
// "arm,gic-v3" for gic-version=3 and "arm,cortex-a15-gic" (the GICv2 binding)
// for gic-version=2; "arm,gic-400" is the other usual GICv2.
std::string interrupt_controller() {
  const std::string parent = file_bytes(device_tree / "interrupt-parent");
  if (parent.size() != 4) return "no interrupt controller in the device tree";
  const std::filesystem::path node = node_with_phandle(parent);
  const std::string compatible = node.empty() ? "" : file_bytes(node / "compatible");
  if (compatible.empty()) return "an interrupt controller the device tree does not describe";
  for (std::size_t start = 0; start < compatible.size();) {
    const std::size_t end = compatible.find('\0', start);
    const std::string name = compatible.substr(start, end - start);
    if (name == "arm,gic-v3") return "GICv3";
    if (name == "arm,cortex-a15-gic" || name == "arm,gic-400") return "GICv2";
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return "interrupt controller " + std::string(compatible.c_str());
}

// "host: Linux 6.12.117+deb13-arm64 (Debian 6.12.117-1), Cortex-A57, 1 CPU,
// 4 KiB pages, GICv3, KVM nVHE: ...": every value read from inside the machine.
void print_host_line() {
  utsname system{};
  uname(&system);
  std::string version = system.version;  // "#1 SMP Debian 6.12.117-1 (2025-11-12)"
  const auto debian = version.find("Debian ");
  version =
      debian == std::string::npos ? "" : " (" + version.substr(debian, version.find(' ', debian + 7) - debian) + ")";
  std::ifstream file("/proc/cpuinfo");
  const std::string cpuinfo = "\n" + std::string(std::istreambuf_iterator<char>(file), {});
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  std::printf("kvm-hello-vm: host: Linux %s%s, %s, %ld CPU%s, %ld KiB pages, %s, %s\n", system.release,
              version.c_str(), cpu_name(cpuinfo).c_str(), cpus, cpus == 1 ? "" : "s", sysconf(_SC_PAGESIZE) / 1024,
              interrupt_controller().c_str(), kvm_mode().c_str());
  std::fflush(stdout);
}

// ---- The program's stderr: a stream of its own through the one console ------
//
// The machine has one console, and the program's stdout is that console. Its
// stderr is a pipe to us instead: each line we read from it goes to the
// console behind the marker "kvm-hello-vm: stderr: ", and run-in-vm.sh makes
// it a line of its own stderr again. One console keeps the order: the program
// flushes stdout before it writes to stderr, so its stdout is on the console
// before we put the stderr line after it. When run-in-vm.sh's stderr is a
// terminal (KVM_HELLO_STDERR_TERMINAL), the pipe is a pseudo-terminal, so that
// isatty(2) answers inside as it would outside (kvm-hello colours its error
// line only on a terminal).

constexpr char stderr_marker[] = "kvm-hello-vm: stderr: ";

// Puts `text` (one line, without its \n) on the console as a line of stderr,
// in one write: a write to a terminal is not mixed with another's.
void write_stderr_line(const std::string& text) {
  const std::string line = stderr_marker + text + "\n";
  for (std::size_t done = 0; done < line.size();) {
    const ssize_t written = write(STDOUT_FILENO, line.data() + done, line.size() - done);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) return;
    done += static_cast<std::size_t>(written);
  }
}

// The program's fd 2 (write_end) and ours to read it from (read_end), both
// closed on exec.
struct StderrChannel {
  int read_end = -1;
  int write_end = -1;
};

// A pseudo-terminal whose slave side writes \n as \n (no \r added), or
// nothing when it cannot be made.
std::optional<StderrChannel> open_pseudo_terminal() {
  const int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return std::nullopt;
  char name[64];
  const int slave = grantpt(master) == 0 && unlockpt(master) == 0 && ptsname_r(master, name, sizeof name) == 0
                        ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)
                        : -1;
  termios mode{};
  if (slave < 0 || tcgetattr(slave, &mode) != 0) {
    close(master);
    if (slave >= 0) close(slave);
    return std::nullopt;
  }
  mode.c_oflag &= ~tcflag_t{OPOST};
  tcsetattr(slave, TCSANOW, &mode);
  return StderrChannel{master, slave};
}

// A pseudo-terminal when one was asked for (and can be made), else a pipe.
std::optional<StderrChannel> open_stderr_channel() {
  if (std::getenv("KVM_HELLO_STDERR_TERMINAL") != nullptr) {
    if (const auto terminal = open_pseudo_terminal()) return terminal;
  }
  int ends[2];
  if (pipe2(ends, O_CLOEXEC) != 0) return std::nullopt;
  return StderrChannel{ends[0], ends[1]};
}

// Passes each line the program writes to stderr on to the console, until no
// one has the channel open any more (the program, and anything it started,
// has ended: a pipe then reads 0, a pseudo-terminal EIO); a last line without
// its \n goes too.
void forward_stderr(int from) {
  std::string pending;
  char buffer[4096];
  for (;;) {
    const ssize_t got = read(from, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    pending.append(buffer, static_cast<std::size_t>(got));
    for (std::size_t end; (end = pending.find('\n')) != std::string::npos; pending.erase(0, end + 1)) {
      write_stderr_line(pending.substr(0, end));
    }
  }
  if (!pending.empty()) write_stderr_line(pending);
}

// ---- Ctrl-C: the console is the program's controlling terminal -------------
//
// run-in-vm.sh passes Ctrl-C into the machine as the byte 0x03 on the console.
// We make the console our controlling terminal (a new session, TIOCSCTTY), so
// its line discipline turns that byte into SIGINT for the console's foreground
// process group: ours, which the program, forked from us, is in too. The
// program gets it as it would from a terminal natively (kvm-hello stops the
// guest and ends with status 130). We take it too: before the program starts,
// it means "do not start it"; after, it is the program's business.

volatile std::sig_atomic_t interrupted = 0;

void on_interrupt(int) { interrupted = 1; }

// SIGINT noted (the kernel delivers to process 1 only the signals it has a
// handler for), then our session, with the console its controlling terminal.
void take_console(int console) {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  setsid();
  ioctl(console, TIOCSCTTY, 0);
}

// ---- Running the program -----------------------------------------------------

// The program's exit status as a shell reports it: 128 + N when killed by signal N.
int status_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 125;
}

// In the child, before exec: fd 0 is the console, or /dev/null when no
// keyboard is behind it (KVM_HELLO_NO_INPUT: see run-in-vm.sh), so the
// program's input is empty, not a terminal; fd 2 is the stderr channel.
void set_up_child_fds(const StderrChannel& channel) {
  if (std::getenv("KVM_HELLO_NO_INPUT") != nullptr) {
    const int none = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (none >= 0) dup2(none, STDIN_FILENO);
  }
  dup2(channel.write_end, STDERR_FILENO);  // dup2 clears close-on-exec: the program starts with fds 0, 1 and 2 only
}

// Runs the program with its stderr passed on, and returns its exit status.
int run(char** command) {
  const auto channel = open_stderr_channel();
  if (!channel) {
    write_stderr_line(std::string("kvm-hello-vm: no pipe for the program's stderr: ") + std::strerror(errno));
    return 125;
  }
  const pid_t child = fork();
  if (child < 0) return 125;
  if (child == 0) {
    set_up_child_fds(*channel);
    execv(command[0], command);
    std::fprintf(stderr, "kvm-hello-vm: cannot run %s: %s\n", command[0], std::strerror(errno));
    _exit(127);
  }
  close(channel->write_end);
  forward_stderr(channel->read_end);
  close(channel->read_end);
  int wait_status = 0;
  while (waitpid(child, &wait_status, 0) < 0) {
    if (errno != EINTR) return 125;
  }
  return status_of(wait_status);
}

}  // namespace

int main(int argc, char** argv) {
  mkdir("/dev", 0755);
  mkdir("/proc", 0755);
  mkdir("/sys", 0755);  // for the device tree (the host line's GIC)
  mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr);
  mount("proc", "/proc", "proc", 0, nullptr);
  mount("sysfs", "/sys", "sysfs", 0, nullptr);
  // A /tmp of its own, unless the initramfs brought one (a file from the host's
  // /tmp that run-in-vm.sh put in): the initramfs is in memory and writable too.
  if (mkdir("/tmp", 01777) == 0) mount("tmpfs", "/tmp", "tmpfs", 0, nullptr);
  mkdir("/dev/pts", 0755);  // for the stderr channel's pseudo-terminal
  mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=0666");
  // Our initramfs has no /dev/console entry: open it now that devtmpfs is there.
  const int console = open("/dev/console", O_RDWR);
  if (console >= 0) {
    take_console(console);
    for (int fd = 0; fd <= 2; ++fd) dup2(console, fd);
    if (console > 2) close(console);
  }

  if (std::getenv("KVM_HELLO_BOOT_LOG") != nullptr) std::printf("%s", kernel_log().c_str());
  print_host_line();
  int status = 125;
  if (argc < 2) {
    write_stderr_line("kvm-hello-vm: no program given after -- on the kernel command line");
  } else if (interrupted) {
    write_stderr_line(std::string("kvm-hello-vm: Ctrl-C before ") + argv[1] + " started: it was not run");
    status = 130;
  } else {
    status = run(argv + 1);
  }
  std::printf("kvm-hello-vm: exit status %d\n", status);
  std::fflush(stdout);
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}

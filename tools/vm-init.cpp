// SPDX-License-Identifier: MIT
// vm-init.cpp: /init of the emulated arm64 machine that `make run` boots on
// hosts that are not arm64.
//
// The kernel runs it as the first process, with the words after "--" on the
// kernel command line as its arguments: a program and its arguments. It
// mounts /dev (which holds the real arm64 /dev/kvm) and /proc, prints one line
// naming the host the program runs on (read here, inside the machine), runs
// the program, prints "kvm-hello-vm: exit status N" for tools/run-in-vm.sh, and
// powers the machine off. QEMU's own exit status cannot carry N.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/klog.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
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

// "host: Linux 6.12.117+deb13-arm64 (Debian 6.12.117-1), Cortex-A57, 1 CPU,
// 4 KiB pages, KVM nVHE: ...": every value read from inside the machine.
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
  std::printf("kvm-hello-vm: host: Linux %s%s, %s, %ld CPU%s, %ld KiB pages, %s\n", system.release, version.c_str(),
              cpu_name(cpuinfo).c_str(), cpus, cpus == 1 ? "" : "s", sysconf(_SC_PAGESIZE) / 1024,
              kvm_mode().c_str());
  std::fflush(stdout);
}

// The program's exit status as a shell reports it: 128 + N when killed by signal N.
int status_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 125;
}

int run(char** command) {
  const pid_t child = fork();
  if (child < 0) return 125;
  if (child == 0) {
    // No keyboard behind the console (see run-in-vm.sh): the program's input is empty, not a terminal.
    if (std::getenv("KVM_HELLO_NO_INPUT") != nullptr) {
      const int none = open("/dev/null", O_RDONLY);
      if (none > STDIN_FILENO) {
        dup2(none, STDIN_FILENO);
        close(none);  // the program starts with fds 0, 1 and 2 only
      }
    }
    execv(command[0], command);
    std::fprintf(stderr, "kvm-hello-vm: cannot run %s: %s\n", command[0], std::strerror(errno));
    _exit(127);
  }
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
  mkdir("/tmp", 01777);
  mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr);
  mount("proc", "/proc", "proc", 0, nullptr);
  mount("tmpfs", "/tmp", "tmpfs", 0, nullptr);
  // Our initramfs has no /dev/console entry: open it now that devtmpfs is there.
  const int console = open("/dev/console", O_RDWR);
  if (console >= 0) {
    for (int fd = 0; fd <= 2; ++fd) dup2(console, fd);
    if (console > 2) close(console);
  }

  if (std::getenv("KVM_HELLO_BOOT_LOG") != nullptr) std::printf("%s", kernel_log().c_str());
  print_host_line();
  int status = 125;
  if (argc < 2) {
    std::fprintf(stderr, "kvm-hello-vm: no program given after -- on the kernel command line\n");
  } else {
    status = run(argv + 1);
  }
  std::printf("kvm-hello-vm: exit status %d\n", status);
  std::fflush(stdout);
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}

// SPDX-License-Identifier: MIT
// vm-init.cpp: /init of the emulated arm64 machine that `make run` boots on
// hosts that are not arm64.
//
// The kernel runs it as the first process, with the words after "--" on the
// kernel command line as its arguments: a program and its arguments. It
// mounts /dev (which holds the real arm64 /dev/kvm) and /proc, runs the
// program, prints "kvm-hello-vm: exit status N" for tools/run-in-vm.sh, and
// powers the machine off. QEMU's own exit status cannot carry N.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

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

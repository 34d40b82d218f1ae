// SPDX-License-Identifier: MIT
// program/kernel_version.hpp: which Linux the host runs, for the behaviours
// of KVM that changed between versions (docs/ names the kernel source of
// each). kvm-hello says which behaviour this kernel has; the tests expect it.
#pragma once

#include <sys/utsname.h>

#include <string_view>

struct KernelVersion {
  int major = 0, minor = 0;
  constexpr bool at_least(int want_major, int want_minor) const {
    return major > want_major || (major == want_major && minor >= want_minor);
  }
};

// "6.12.117+deb13-arm64" -> 6.12; {0, 0} when the release does not start
// with a version (or with a number of more than four digits: no kernel's).
constexpr KernelVersion parse_kernel_release(std::string_view release) {
  KernelVersion version;
  int* field = &version.major;
  for (const char c : release) {
    if (c >= '0' && c <= '9') {
      if (*field >= 1000) return {};
      *field = *field * 10 + (c - '0');
    } else if (c == '.' && field == &version.major) {
      field = &version.minor;
    } else {
      break;
    }
  }
  return version;
}

// The kernel this program runs on.
inline KernelVersion running_kernel() {
  utsname system{};
  ::uname(&system);
  return parse_kernel_release(system.release);
}

// SPDX-License-Identifier: MIT
// program/format.hpp: numbers, bytes, errnos and durations as kvm-hello
// writes them. Nothing here knows about KVM.
#pragma once

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <string>
#include <string_view>

// "0x1100"
inline std::string hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%" PRIx64, value);
  return text;
}

// "ENOENT (No such file or directory)"; glibc knows the names.
inline std::string errno_text(int err) {
  const char* name = strerrorname_np(err);
  return std::string(name != nullptr ? name : "errno " + std::to_string(err)) + " (" + std::strerror(err) + ")";
}

// A byte as hex and as a character, with control characters escaped: 0x68 'h', 0x0a '\n'.
inline std::string describe_byte(std::uint8_t byte) {
  char text[16];
  switch (byte) {
    case '\n': return "0x0a '\\n'";
    case '\r': return "0x0d '\\r'";
    case '\t': return "0x09 '\\t'";
    case '\'': return "0x27 '\\''";
    case '\\': return "0x5c '\\\\'";
    default: break;
  }
  if (byte >= 0x20 && byte < 0x7f) {
    std::snprintf(text, sizeof text, "0x%02x '%c'", byte, byte);
  } else {
    std::snprintf(text, sizeof text, "0x%02x '\\x%02x'", byte, byte);
  }
  return text;
}

// Text as C would write it: printable characters as they are, others escaped.
inline std::string escaped(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<std::uint8_t>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '\\') {
      out += c;
    } else {
      const std::string described = describe_byte(byte);  // "0x0a '\n'": take what is between the quotes
      out += described.substr(6, described.size() - 7);
    }
  }
  return out;
}

// "412 us", "1.3 ms": a duration for people.
inline std::string format_duration(std::chrono::nanoseconds time) {
  char text[32];
  const double ns = static_cast<double>(time.count());
  if (ns < 1e3) {
    std::snprintf(text, sizeof text, "%.0f ns", ns);
  } else if (ns < 1e6) {
    std::snprintf(text, sizeof text, "%.1f us", ns / 1e3);
  } else if (ns < 1e9) {
    std::snprintf(text, sizeof text, "%.1f ms", ns / 1e6);
  } else {
    std::snprintf(text, sizeof text, "%.2f s", ns / 1e9);
  }
  return text;
}

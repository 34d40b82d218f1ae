// SPDX-License-Identifier: MIT
// program/output.hpp: how much kvm-hello says, and whether in colour. One
// Output is made from the command line and handed to whatever prints.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "kvm_hello.hpp"

enum class Verbosity { quiet, normal, verbose, very_verbose };

// https://no-color.org: any non-empty NO_COLOR turns colour off; so does a
// stream that is not a terminal.
inline bool wants_colour(int fd) {
  const char* no_colour = std::getenv("NO_COLOR");
  return ::isatty(fd) == 1 && (no_colour == nullptr || *no_colour == '\0');
}

namespace colour {
inline constexpr const char* step = "\033[1m";    // bold
inline constexpr const char* guest = "\033[32m";  // green
inline constexpr const char* error = "\033[31m";  // red
inline constexpr const char* detail = "\033[2m";  // dim
}  // namespace colour

struct Output {
  Verbosity level = Verbosity::normal;
  bool colour = false;  // on standard output
  // Whose lines these are, when several vCPUs print: "vCPU 1" starts each
  // line written through this Output with "vCPU 1 ". Empty (lesson 1's one
  // vCPU): the lines are as they always were.
  std::string_view vcpu = {};
  // How many steps the walk-through announces, the N of "[n/N]": lesson 1's
  // nine unless a walk-through of more sets it.
  int steps_in_walk = kvm_hello::lesson1_step_count;

  bool shows(Verbosity at) const { return level >= at; }

  std::string paint(const char* sgr, std::string_view text) const {
    if (!colour) return std::string(text);
    return std::string(sgr) + std::string(text) + "\033[0m";
  }

  // The text of a line under the current step, as say() prints it, "\n"
  // included; empty below `at`. For a record of several lines.
  [[gnu::format(printf, 3, 4)]] std::string line(Verbosity at, const char* format, ...) const {
    if (!shows(at)) return {};
    char text[2048];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    return "      " + (at >= Verbosity::verbose ? paint(colour::detail, text) : std::string(text)) + "\n";
  }

  // A line under the current step, at `at` and above; -v and -vv lines dimmed.
  [[gnu::format(printf, 3, 4)]] void say(Verbosity at, const char* format, ...) const {
    if (!shows(at)) return;
    char text[2048];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    record(line(at, "%s", text));
  }

  // "[5/9] setup_guest_memory  give the guest its RAM: mmap, KVM_SET_USER_MEMORY_REGION"
  void announce(kvm_hello::Step step) const {
    if (!shows(Verbosity::normal)) return;
    const kvm_hello::StepInfo& info = kvm_hello::step_info(step);
    char text[256];
    std::snprintf(text, sizeof text, "[%d/%d] %-19.*s %.*s: %.*s", static_cast<int>(step), steps_in_walk,
                  static_cast<int>(info.name.size()), info.name.data(), static_cast<int>(info.title.size()),
                  info.title.data(), static_cast<int>(info.calls.size()), info.calls.data());
    record(paint(colour::step, text) + "\n");
  }

  // `lines` ("...\n...\n"), each started with the vCPU's name when there is one.
  std::string tagged(std::string_view lines) const {
    if (vcpu.empty()) return std::string(lines);
    std::string text;
    for (std::size_t at = 0; at < lines.size();) {
      const std::size_t end = std::min(lines.find('\n', at), lines.size() - 1) + 1;
      text.append(vcpu).append(" ").append(lines.substr(at, end - at));
      at = end;
    }
    return text;
  }

  // Whole lines, tagged(), written to stdout with one call: stdio locks the
  // stream for the whole call, so no other thread's line comes between them.
  void record(std::string_view lines) const {
    const std::string text = tagged(lines);
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
};

// SPDX-License-Identifier: MIT
// fuzz_exits.hpp: arbitrary struct kvm_run contents, as a broken or hostile
// kernel could leave them, fed to the exit decoder, the run loop's decision,
// the device and every report kvm-hello prints. Nothing may crash, read out
// of bounds or hit undefined behaviour.
//
// `make fuzz` runs it under clang's libFuzzer (coverage-guided, time-bounded:
// test/fuzz_exits.cpp); program_tests.cpp runs it on a fixed-seed sample in
// `make test`.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "kvm_hello.hpp"
#include "program/describe.hpp"
#include "program/inspect.hpp"
#include "program/messages.hpp"
#include "program/trace.hpp"

// One input: returns 0 (libFuzzer's "go on"), or 1 when nothing was reported (never).
inline int fuzz_one_exit(const std::uint8_t* data, std::size_t size) {
  namespace kh = kvm_hello;
  kvm_run run{};
  std::memcpy(&run, data, std::min(size, sizeof run));

  kh::Exit exit = kh::decode_exit(run);
  kh::HelloDevice device;
  if (auto* access = std::get_if<kh::MmioAccess>(&exit)) device.handle(*access);
  const std::string reports = describe_exit(exit) + describe_run_fields(run);

  const auto more = kh::keep_running(exit);
  const std::string error = more ? "" : failure_for(more.error(), "/dev/kvm").message;

  // The registers a broken guest could leave, through the dump and its diagnosis.
  kh::Registers regs;
  std::memcpy(&regs, reinterpret_cast<const std::uint8_t*>(&run) + 8, std::min(sizeof regs, sizeof run - 8));
  const GuestView view{std::span(reinterpret_cast<const std::uint8_t*>(&run), sizeof run), nullptr};
  const kh::Error stuck{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR, 1000};
  const kh::Error undecodable{kh::Step::run_guest, kh::Problem::call_failed, "KVM_RUN", ENOSYS, 0};
  std::size_t lines = format_registers(regs).size();
  for (const auto& error_case : {stuck, undecodable}) lines += diagnose(error_case, regs, view).size();
  lines += describe_register_id(regs.x[0]).size() + describe_request_number(regs.x[1]).size();

  return reports.empty() || error.size() + lines == 0 ? 1 : 0;  // used, so nothing is optimised away
}

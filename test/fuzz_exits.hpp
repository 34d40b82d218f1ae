// SPDX-License-Identifier: MIT
// fuzz_exits.hpp: arbitrary struct kvm_run contents, as a broken or hostile
// kernel could leave them, fed to the exit decoder, the run loop's decision,
// the device and every report kvm-hello prints; the same bytes as an MMIO
// access a caller builds (a length AccessLength::checked() refuses is none),
// as a write of any size, and as a file of KVM_GET_STATS_FD. Nothing may
// crash, read out of bounds or hit undefined behaviour.
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

#include "bench/bench.hpp"
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

  // The MMIO boundary, as a caller crosses it: a length from the input,
  // checked; both devices, the reports; a write of 0 to 16 bytes.
  const std::uint32_t length = size > 0 ? data[0] % 17u : 0;
  std::size_t mmio_text = 0;
  if (const auto checked = kh::AccessLength::checked(length)) {
    kh::MmioAccess access{run.mmio.phys_addr, *checked, run.mmio.is_write != 0, {}};
    std::memcpy(access.data.data(), run.mmio.data, sizeof access.data);
    BenchDevice bench;
    bench.handle(access);
    device.handle(access);
    mmio_text = describe_mmio(access).size() + describe_wide_out_write(access).size();
  }
  device.write(size > 1 && data[1] % 2 ? kh::mmio_out : kh::mmio_echo,
               std::span(data, std::min<std::size_t>(size, length)));

  // The same bytes as a statistics file: as they are, and with the header's
  // counts and offsets made small, so that descriptors are read too.
  std::size_t statistics =
      kh::parse_statistics(std::span(data, size)).value_or(std::vector<kh::VcpuStatistic>{}).size();
  if (size >= sizeof(kvm_stats_header)) {
    std::vector<std::uint8_t> file(data, data + size);
    kvm_stats_header header{};
    std::memcpy(&header, file.data(), sizeof header);
    header.name_size %= 64;
    header.num_desc %= 8;
    header.desc_offset %= static_cast<std::uint32_t>(size);
    header.data_offset %= static_cast<std::uint32_t>(size);
    std::memcpy(file.data(), &header, sizeof header);
    if (const auto parsed = kh::parse_statistics(file)) {
      for (const auto& statistic : *parsed) statistics += statistic.name.size() + 1;
    }
  }

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

  return reports.empty() || error.size() + lines + mmio_text + statistics == 0
             ? 1
             : 0;  // used, so nothing is optimised away
}

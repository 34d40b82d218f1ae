// SPDX-License-Identifier: MIT
// fuzz_exits.cpp: arbitrary struct kvm_run contents, as a broken or hostile
// kernel could leave them, fed to the exit decoder, the run loop's decision,
// the device and every report main.cpp prints. Nothing may crash, read out
// of bounds or hit undefined behaviour.
//
// `make fuzz` builds it with clang's libFuzzer (coverage-guided, time-bounded);
// unit_tests.cpp runs the same function on a fixed-seed sample in `make test`.
#ifndef KVM_HELLO_NO_MAIN  // on its own: the libFuzzer build
#define KVM_HELLO_NO_MAIN
#include "main.cpp"
#endif

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  kvm_run run{};
  std::memcpy(&run, data, std::min(size, sizeof run));

  kh::Exit exit = kh::decode_exit(run);
  kh::HelloDevice device;
  if (auto* access = std::get_if<kh::MmioAccess>(&exit)) device.handle(*access);
  const std::string reports = describe_exit(exit) + describe_run_fields(run);

  const auto more = kh::keep_running(exit);
  const std::string error = more ? "" : explain(more.error(), "/dev/kvm");

  // The registers a broken guest could leave, through the dump and its diagnosis.
  kh::Registers regs;
  std::memcpy(&regs, reinterpret_cast<const std::uint8_t*>(&run) + 8, std::min(sizeof regs, sizeof run - 8));
  const GuestView view{std::span(reinterpret_cast<const std::uint8_t*>(&run), sizeof run), {}};
  const kh::Error stuck{kh::Step::run_guest, kh::Problem::watchdog_expired, "KVM_RUN", EINTR, 1000};
  const kh::Error undecodable{kh::Step::run_guest, kh::Problem::call_failed, "KVM_RUN", ENOSYS, 0};
  std::size_t lines = format_registers(regs).size();
  for (const auto& error_case : {stuck, undecodable}) lines += diagnose(error_case, regs, view).size();
  lines += describe_register_id(regs.x[0]).size() + describe_request_number(regs.x[1]).size();

  return reports.empty() || error.size() + lines == 0 ? 1 : 0;  // used, so nothing is optimised away
}

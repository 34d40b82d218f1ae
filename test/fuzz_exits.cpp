// SPDX-License-Identifier: MIT
// fuzz_exits.cpp: the libFuzzer entry point for `make fuzz`; the target
// itself is fuzz_one_exit() in fuzz_exits.hpp.
#include "test/fuzz_exits.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { return fuzz_one_exit(data, size); }

// SPDX-License-Identifier: MIT
// unit_main.cpp: doctest's main for the unit tests (steps_tests.cpp,
// program_tests.cpp, docs_tests.cpp), linked into one binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

# Makefile for kvm-hello. `make help` lists the targets.
#
# On an arm64 machine the program is built and run natively. On any other
# machine it is cross-built for arm64 and run inside an emulated arm64 machine
# (tools/run-in-vm.sh) whose kernel has a real /dev/kvm. Either way `make run`
# and `make test` first install what is missing (tools/ensure-packages.sh)
# and, when emulating, download Debian's arm64 kernel once into $(CACHE).

HOST_ARCH := $(shell uname -m)
BUILD     := build
CACHE     ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kvm-hello

ifeq ($(HOST_ARCH),aarch64)
  NATIVE     := 1
  CROSS      :=
  ARM64_LINK :=
  PACKAGES   := g++ xxd doctest-dev gdb
else
  CROSS      := aarch64-linux-gnu-
  ARM64_LINK := -static
  PACKAGES   := g++ xxd doctest-dev g++-aarch64-linux-gnu qemu-system-arm qemu-user-static cpio gdb-multiarch
endif

# KVM_HELLO_KERNEL=/path/to/arm64/Image uses that kernel instead of downloading one.
KERNEL := $(or $(KVM_HELLO_KERNEL),$(CACHE)/vmlinuz)

CXXSTD   := -std=c++23
WARNINGS := -Wall -Wextra -Werror
OPTIMISE := -O2 -g
HOST_CXX := g++
ARM64_CXX := $(CROSS)g++

# The unit tests run on the build machine but test code written against
# arm64's KVM structs. When the build machine is not arm64, these headers come
# from the arm64 kernel headers that the cross compiler ships (package
# linux-libc-dev-arm64-cross); the rest (<linux/types.h>, <asm/ioctl.h>, ...)
# is the same on every 64-bit Linux.
ARM64_UAPI   := /usr/aarch64-linux-gnu/include
UAPI_HEADERS := linux/kvm.h linux/psci.h asm/kvm.h asm/ptrace.h asm/hwcap.h asm/sve_context.h
UAPI_OVERLAY := $(BUILD)/arm64-uapi
ifdef NATIVE
  HOST_UAPI :=
else
  HOST_UAPI := -isystem $(UAPI_OVERLAY)
endif

# The guest is linked where it will run: the start of guest RAM, read from
# kvm_hello.hpp's memory map (deferred: the cross preprocessor may not be
# installed yet when make starts).
GUEST_LOAD_ADDRESS = $(shell printf '#include "kvm_hello.hpp"\nKVM_HELLO_RAM_BASE\n' | $(CROSS)cpp -P -D__ASSEMBLER__ -I. - | tail -n 1)

# Guests the tests run besides the embedded one (test/guests/*.S).
GOLDEN      := $(wildcard test/golden/*.txt)
TEST_GUESTS := $(patsubst test/guests/%.S,$(BUILD)/guests/%.bin,$(wildcard test/guests/*.S))
# The tutorial's exercises, answered (docs/15-exercises.md).
EXERCISES   := $(patsubst test/exercises/%.S,$(BUILD)/exercises/%.bin,$(wildcard test/exercises/*.S))

# Every guest image made from a .S file. Their .o and .elf are kept (gdb and
# --step-guest's line table read the guest's); naming them, rather
# than a bare .SECONDARY:, keeps make rebuilding an image that is missing.
GUEST_IMAGES = $(BUILD)/guest.bin $(BUILD)/tools/bench-guest.bin $(TEST_GUESTS) $(EXERCISES)
.SECONDARY: $(GUEST_IMAGES:.bin=.o) $(GUEST_IMAGES:.bin=.elf)


# Everything built, named here before any rule uses the names.
PROGRAM           := $(BUILD)/kvm-hello
DEBUG_PROGRAM     := $(BUILD)/kvm-hello-debug
SANITIZED_PROGRAM := $(BUILD)/kvm-hello-sanitized
UNIT_HOST         := $(BUILD)/unit-tests
UNIT_SANITIZED    := $(BUILD)/unit-tests-sanitized
UNIT_ARM64        := $(BUILD)/unit-tests-arm64
E2E               := $(BUILD)/e2e-tests
PACKAGES_OK       := $(BUILD)/.packages-ok

# Build with every core (GNU make 4.3 and later take -j from here); the
# test suites themselves run one after another.
MAKEFLAGS += --jobs=$(shell nproc 2>/dev/null || echo 2)

.DEFAULT_GOAL := all
.PHONY: all run trace gdb bench test golden fuzz help clean distclean format
.DELETE_ON_ERROR:

## all        build the program and every test (the default)
ifdef NATIVE
all: $(PROGRAM) $(UNIT_HOST) $(UNIT_SANITIZED) $(E2E) $(DEBUG_PROGRAM) $(SANITIZED_PROGRAM)
else
all: $(PROGRAM) $(UNIT_HOST) $(UNIT_SANITIZED) $(UNIT_ARM64) $(E2E) $(BUILD)/run.cpio $(BUILD)/test.cpio \
  $(BUILD)/gdb.cpio
endif

## run        build and run kvm-hello (options: make run ARGS="--timeout 2")
##            GUEST=path/to/file.S assembles that guest and runs it instead
ifdef GUEST
  # Your guest, assembled like guest.S into build/your-guest/NAME.bin.
  GUEST_BIN := $(BUILD)/your-guest/$(basename $(notdir $(GUEST))).bin
  GUEST_ARGS = --guest $(if $(NATIVE),$(GUEST_BIN),/$(notdir $(GUEST_BIN)))
  $(GUEST_BIN:.bin=.o): $(GUEST) kvm_hello.hpp | $(PACKAGES_OK)
	@mkdir -p $(@D)
	$(CROSS)gcc -c -g -D__ASSEMBLY__ -I. -o $@ $<
endif
ifdef NATIVE
run: $(PROGRAM) $(GUEST_BIN)
	@$(PROGRAM) $(GUEST_ARGS) $(ARGS)
else
run: $(BUILD)/run.cpio $(KERNEL)
	@tools/run-in-vm.sh $(KERNEL) $(BUILD)/run.cpio /kvm-hello $(GUEST_ARGS) $(ARGS)
endif

## trace      run the guest one instruction at a time (make run ARGS=--step-guest)
trace: ARGS += --step-guest
trace: run

## gdb        gdb on kvm-hello, with a breakpoint on each step function (tools/steps.gdb)
ifdef NATIVE
gdb: $(DEBUG_PROGRAM)
	gdb -q -x tools/steps.gdb --args $(DEBUG_PROGRAM) $(ARGS)
else
gdb: $(BUILD)/gdb.cpio $(KERNEL)
	@tools/gdb-in-vm.sh $(KERNEL) $(BUILD)/gdb.cpio $(DEBUG_PROGRAM)
endif

## bench      what a VM exit costs, measured here (make bench ARGS=--json for JSON)
bench: ARGS += --bench
bench: run

## test       unit tests, then end-to-end tests against real KVM; ends with "N passed, M failed"
TEST_LOGS := $(BUILD)/test-logs
ifdef NATIVE
test: $(UNIT_HOST) $(UNIT_SANITIZED) $(E2E) $(PROGRAM) $(SANITIZED_PROGRAM) $(DEBUG_PROGRAM)
	@rm -rf $(TEST_LOGS)
	@test/run-suite.sh $(TEST_LOGS) unit $(UNIT_HOST)
	@test/run-suite.sh $(TEST_LOGS) unit-sanitized $(UNIT_SANITIZED)
	@test/run-suite.sh $(TEST_LOGS) e2e $(E2E)
	@test/run-suite.sh $(TEST_LOGS) gdb test/gdb-test.sh run gdb -q -x tools/steps.gdb $(DEBUG_PROGRAM)
	@test/summarize.sh $(TEST_LOGS)
else
test: $(UNIT_HOST) $(UNIT_SANITIZED) $(UNIT_ARM64) $(BUILD)/test.cpio $(BUILD)/gdb.cpio $(KERNEL)
	@rm -rf $(TEST_LOGS)
	@test/run-suite.sh $(TEST_LOGS) unit-$(HOST_ARCH) $(UNIT_HOST)
	@test/run-suite.sh $(TEST_LOGS) unit-$(HOST_ARCH)-sanitized $(UNIT_SANITIZED)
	@test/run-suite.sh $(TEST_LOGS) unit-arm64-user-mode qemu-aarch64-static $(UNIT_ARM64)
	@test/run-suite.sh $(TEST_LOGS) e2e-in-emulated-arm64 tools/run-in-vm.sh $(KERNEL) $(BUILD)/test.cpio /e2e-tests
	@test/run-suite.sh $(TEST_LOGS) gdb-in-emulated-arm64 \
	  test/gdb-test.sh continue tools/gdb-in-vm.sh $(KERNEL) $(BUILD)/gdb.cpio $(DEBUG_PROGRAM)
	@test/summarize.sh $(TEST_LOGS)
endif

## golden     rewrite test/golden/ from a real run (then review it with git diff)
ifdef NATIVE
golden: $(E2E) $(PROGRAM)
	KVM_HELLO_PRINT_GOLDEN=1 $(E2E) '-tc=golden*' | test/update-golden.sh test/golden
else
golden: $(BUILD)/test.cpio $(KERNEL)
	tools/run-in-vm.sh $(KERNEL) $(BUILD)/test.cpio KVM_HELLO_PRINT_GOLDEN=1 /e2e-tests '-tc=golden*' | \
	  test/update-golden.sh test/golden
endif

## fuzz       libFuzzer on the exit decoder and reports (FUZZ_SECONDS, default 60)
FUZZ_SECONDS ?= 60
FUZZER := $(BUILD)/fuzz-exits
$(FUZZER): test/fuzz_exits.cpp main.cpp kvm_hello.hpp $(if $(NATIVE),,$(UAPI_OVERLAY)/.done)
	@tools/ensure-packages.sh clang-19 libclang-rt-19-dev
	clang++-19 $(CXXSTD) -O1 -g $(WARNINGS) -fsanitize=fuzzer,address,undefined $(HOST_UAPI) -I. -o $@ $<

fuzz: $(FUZZER)
	@mkdir -p $(BUILD)/fuzz-corpus
	$(FUZZER) -max_total_time=$(FUZZ_SECONDS) -seed=1 -print_final_stats=1 -artifact_prefix=$(BUILD)/ \
	  $(BUILD)/fuzz-corpus

## format     reformat the C++ sources with clang-format
format:
	clang-format -i kvm_hello.hpp main.cpp test/*.cpp tools/*.cpp

## help       this list
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## clean      remove build/ (the downloaded kernel stays in the cache)
clean:
	rm -rf $(BUILD)

## distclean  clean, and remove the downloaded kernel from $(CACHE)
distclean: clean
	rm -rf $(CACHE)

# ---- Set-up ----------------------------------------------------------------

$(PACKAGES_OK):
	@mkdir -p $(@D)
	@tools/ensure-packages.sh $(PACKAGES)
	@touch $@

$(CACHE)/vmlinuz: | $(PACKAGES_OK)
	@tools/fetch-kernel.sh $(CACHE)

# ---- The guest: assembled, linked at guest RAM, raw bytes, a C array -------

$(BUILD)/%.o: %.S kvm_hello.hpp | $(PACKAGES_OK)
	@mkdir -p $(@D)
	$(CROSS)gcc -c -g -D__ASSEMBLY__ -I. -o $@ $<

$(BUILD)/guests/%.o: test/guests/%.S kvm_hello.hpp | $(PACKAGES_OK)
	@mkdir -p $(@D)
	$(CROSS)gcc -c -g -D__ASSEMBLY__ -I. -o $@ $<

$(BUILD)/exercises/%.o: test/exercises/%.S kvm_hello.hpp | $(PACKAGES_OK)
	@mkdir -p $(@D)
	$(CROSS)gcc -c -g -D__ASSEMBLY__ -I. -o $@ $<

$(BUILD)/%.elf: $(BUILD)/%.o
	$(CROSS)ld -Ttext=$(GUEST_LOAD_ADDRESS) -e _start --no-warn-rwx-segments -o $@ $<

$(BUILD)/%.bin: $(BUILD)/%.elf
	$(CROSS)objcopy -O binary $< $@

$(BUILD)/guest_image.h: $(BUILD)/guest.bin
	cd $(BUILD) && xxd -i guest.bin > guest_image.h

# The benchmark guest (kvm-hello --bench), the same way: bench_guest_bin[].
$(BUILD)/bench_guest_image.h: $(BUILD)/tools/bench-guest.bin
	cd $(BUILD)/tools && xxd -i bench-guest.bin > ../bench_guest_image.h

# ---- Programs ----------------------------------------------------------------

# guest.S's instruction addresses and lines, for --step-guest.
$(BUILD)/guest_lines.h: $(BUILD)/guest.elf guest.S tools/guest-lines.sh
	tools/guest-lines.sh $(CROSS)readelf $(BUILD)/guest.elf guest.S > $@

$(PROGRAM): main.cpp kvm_hello.hpp $(BUILD)/guest_image.h $(BUILD)/guest_lines.h $(BUILD)/bench_guest_image.h
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -I$(BUILD) $(ARM64_LINK) -o $@ main.cpp

# For gdb: no optimisation, so every step is a function of its own; and, when
# it runs in the emulated machine, linked at an address no other program there
# uses (gdb's breakpoints there are by virtual address).
DEBUG_LINK := $(if $(NATIVE),,-static -Wl,-Ttext-segment=0x1000000)
$(DEBUG_PROGRAM): main.cpp kvm_hello.hpp $(BUILD)/guest_image.h $(BUILD)/guest_lines.h $(BUILD)/bench_guest_image.h
	$(ARM64_CXX) $(CXXSTD) -O0 -g $(WARNINGS) -I$(BUILD) $(DEBUG_LINK) -o $@ main.cpp

# Sanitizers: AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer,
# every finding fatal. The unit tests run under them on the build machine; a
# build of kvm-hello runs under them against real KVM (e2e_tests.cpp). The
# sanitizers need dynamic linking: the emulated machine gets the arm64 shared
# libraries it needs in /lib.
# (-Wno-maybe-uninitialized: with ASan, GCC 12 warns falsely inside <regex>.)
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -Wno-maybe-uninitialized
ARM64_LIBS := ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libstdc++.so.6 libgcc_s.so.1 libasan.so.8 libubsan.so.1
$(SANITIZED_PROGRAM): main.cpp kvm_hello.hpp $(BUILD)/guest_image.h $(BUILD)/guest_lines.h $(BUILD)/bench_guest_image.h
	$(ARM64_CXX) $(CXXSTD) -O1 -g $(WARNINGS) $(SANITIZE) -I$(BUILD) -o $@ main.cpp

$(UAPI_OVERLAY)/.done: | $(PACKAGES_OK)
	@for header in $(UAPI_HEADERS); do \
	  mkdir -p $(UAPI_OVERLAY)/$$(dirname $$header) && ln -sf $(ARM64_UAPI)/$$header $(UAPI_OVERLAY)/$$header; \
	done
	@touch $@

# The unit tests also check README.md and docs/ against the code: they read them from here.
SOURCE_DIR := -DKVM_HELLO_SOURCE_DIR=\"$(CURDIR)\"
UNIT_SOURCES := test/unit_tests.cpp test/fuzz_exits.cpp main.cpp kvm_hello.hpp

$(UNIT_HOST): $(UNIT_SOURCES) $(if $(NATIVE),,$(UAPI_OVERLAY)/.done) | $(PACKAGES_OK)
	$(HOST_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) $(HOST_UAPI) -I. $(SOURCE_DIR) -o $@ test/unit_tests.cpp

$(UNIT_SANITIZED): $(UNIT_SOURCES) $(if $(NATIVE),,$(UAPI_OVERLAY)/.done) | $(PACKAGES_OK)
	$(HOST_CXX) $(CXXSTD) -O1 -g $(WARNINGS) $(SANITIZE) $(HOST_UAPI) -I. $(SOURCE_DIR) -o $@ test/unit_tests.cpp

$(UNIT_ARM64): $(UNIT_SOURCES) | $(PACKAGES_OK)
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -I. $(SOURCE_DIR) $(ARM64_LINK) -o $@ test/unit_tests.cpp

# The e2e tests find beside themselves: kvm-hello, golden/, guests/ (the
# test guests assembled) and guest-sources/ (their .S, which say what to expect).
$(E2E): $(EXERCISES) test/e2e_tests.cpp kvm_hello.hpp $(BUILD)/guest_image.h $(BUILD)/test_guests.h $(BUILD)/bench_guest_image.h
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -I. -I$(BUILD) $(ARM64_LINK) -o $@ test/e2e_tests.cpp
	ln -sfn ../test/golden $(BUILD)/golden
	ln -sfn ../test/guests $(BUILD)/guest-sources
	ln -sfn ../test/exercises $(BUILD)/exercise-sources

# Every test guest as a C array named after its file: spin.S -> spin_bin[].
$(BUILD)/test_guests.h: $(TEST_GUESTS)
	cd $(BUILD)/guests && for bin in $(notdir $^); do xxd -i $$bin; done > ../test_guests.h

$(BUILD)/vm-init: tools/vm-init.cpp | $(PACKAGES_OK)
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -static -o $@ $<

# ---- The emulated machine's initramfs: /init and the programs it runs -------
# Stripped copies: the initramfs is smaller and boots faster; build/ keeps the
# binaries with their debug information.

# $(call make-initramfs,PROGRAMS,SOURCE:DESTINATION...,LIBRARIES): /init, the
# programs, copies of files or directories at the paths given, and shared
# libraries in /lib.
define make-initramfs
	rm -rf $@.root && mkdir -p $@.root
	$(CROSS)strip -o $@.root/init $(BUILD)/vm-init
	for program in $(1); do $(CROSS)strip -o $@.root/$$(basename $$program) $$program; done
	for pair in $(2); do \
	  mkdir -p $$(dirname $@.root/$${pair##*:}) && cp -rL $${pair%%:*} $@.root/$${pair##*:}; done
	$(if $(3),mkdir -p $@.root/lib)
	for lib in $(3); do $(CROSS)strip --strip-unneeded -o $@.root/lib/$$(basename $$lib) $$lib; done
	cd $@.root && find . | cpio -o -H newc --quiet > ../$(notdir $@)
	rm -rf $@.root
endef

# Rebuilt whenever GUEST changes what it holds.
$(BUILD)/run.cpio: $(BUILD)/vm-init $(PROGRAM) $(GUEST_BIN) $(BUILD)/run-guest.txt
	$(call make-initramfs,$(PROGRAM),$(if $(GUEST_BIN),$(GUEST_BIN):$(notdir $(GUEST_BIN))))

$(BUILD)/run-guest.txt: FORCE
	@mkdir -p $(@D)
	@echo "$(GUEST)" | cmp -s - $@ || echo "$(GUEST)" > $@

FORCE:

$(BUILD)/gdb.cpio: $(BUILD)/vm-init $(DEBUG_PROGRAM)
	$(call make-initramfs,$(DEBUG_PROGRAM))

$(BUILD)/test.cpio: $(BUILD)/vm-init $(PROGRAM) $(E2E) $(SANITIZED_PROGRAM) $(GOLDEN) $(TEST_GUESTS) $(EXERCISES)
	$(call make-initramfs,$(PROGRAM) $(E2E) $(SANITIZED_PROGRAM),test/golden:golden $(BUILD)/guests:guests \
	  test/guests:guest-sources $(BUILD)/exercises:exercises test/exercises:exercise-sources,\
	  $(addprefix /usr/aarch64-linux-gnu/lib/,$(ARM64_LIBS)))

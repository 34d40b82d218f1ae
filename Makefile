# Makefile for kvm-hello. `make help` lists the targets and the settings.
#
# Where kvm-hello runs: natively on an arm64 machine whose /dev/kvm exists;
# anywhere else inside an emulated arm64 machine whose kernel has a real
# arm64 /dev/kvm (tools/run-in-vm.sh). KVM_HELLO_MACHINE picks one by hand.
# Either way each target first installs what it needs and is missing
# (setup/ensure-packages.sh, then setup/check-prerequisites.sh): make run
# what builds and runs kvm-hello, make test what the test suites need too
# (the set-up section below) and, when emulating, downloads the chosen Debian
# arm64 kernel once into $(CACHE).

## Targets:
##   make run         build and run kvm-hello (ARGS="--timeout 2" passes options;
##                    GUEST=path/to/file.S assembles that guest and runs it instead;
##                    LESSON=2 runs lesson 2, interrupts and time, LESSON=3 lesson 3,
##                    a second vCPU, instead of lesson 1);
##                    when kvm-hello fails, make says its exit status in words (also
##                    for trace and bench) and fails with it
##   make trace       run the guest one instruction at a time (--step-guest, plus ARGS)
##   make gdb         gdb on kvm-hello, stopped at each step function (gdb/steps.gdb);
##                    GUEST=, ARGS= and LESSON= as for run; GDB_ARGS="-batch -x FILE" runs FILE's commands
##   make bench       what a VM exit and an interrupt cost, measured here (ARGS=--json for JSON)
##   make test        every test suite, side by side as make's jobs allow (each says when
##                    it starts and ends; its output is in build/test-logs/); the last
##                    line is "N passed, M failed". ALSO_HOST="sid arm64 cortex-a76 1 3"
##                    (five words, as a line of test/hosts.txt) adds the e2e and gdb
##                    suites on that host
##   make test-e2e    only the suites against real KVM (e2e and gdb), on the chosen host
##   make test-hosts  the e2e and gdb suites on every host of test/hosts.txt, then a table
##   make soak        LESSON='s run RUNS times (default 20) in one machine, each output
##                    compared with its golden file: run it while another build keeps the cores busy
##   make timings     where the time of make run and make test goes, measured in fresh
##                    clones (TIMINGS="run test retest hosts ci", TIMINGS_RUNS=3): medians
##   make host        say where kvm-hello runs (native or emulated), and why
##   make golden      rewrite the golden outputs of this host's kernel from a real run
##   make fuzz        libFuzzer on the exit decoder and reports (FUZZ_SECONDS, default 60)
##   make format      reformat the C++ sources with clang-format
##   make lint        clang-tidy's checks of .clang-tidy on every C++ source; fails on
##                    any finding (installs clang-tidy 19 the first time)
##   make clean       remove build/ (downloaded kernels stay in the cache)
##   make distclean   clean, and remove the downloaded kernels from $(CACHE)
##
## Settings (on the command line or in the environment):
##   LESSON=1|2|3     which lesson run, trace and gdb walk through (default 1; 2: the
##                    in-kernel GIC, the timer waking a guest in WFI, injected interrupts;
##                    3: a second vCPU started by the guest, a thread each, an SGI)
##   KVM_HELLO_MACHINE=native|emulated  where kvm-hello runs (default: native on
##                    arm64 when /dev/kvm exists, else emulated)
##   The emulated host:
##   KVM_HELLO_SUITE  the Debian release whose arm64 kernel boots (default trixie;
##                    also bookworm, bookworm-backports, sid, ...)
##   KVM_HELLO_FLAVOUR  arm64 (4 KiB pages, the default) or arm64-16k (16 KiB pages)
##   KVM_HELLO_CPU    QEMU's -cpu model (default cortex-a57; neoverse-n1 for arm64-16k)
##   KVM_HELLO_HOST_CPUS  how many CPUs the emulated machine has (default 1; the
##                    guest has one vCPU on any host). KVM_HELLO_SMP is its old name
##   KVM_HELLO_GIC    its interrupt controller: 3 (a GICv3, the default) or 2 (a GICv2)
##   KVM_HELLO_KERNEL=/path/to/Image  boot that kernel instead of downloading one

.DEFAULT_GOAL := all
.PHONY: all run trace gdb bench test test-e2e test-hosts soak timings host golden fuzz format lint help clean distclean kvm-usable FORCE
.DELETE_ON_ERROR:

BUILD := build
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kvm-hello

# Everything built, named here before any rule uses the names.
PROGRAM           := $(BUILD)/kvm-hello
DEBUG_PROGRAM     := $(BUILD)/kvm-hello-debug
SANITIZED_PROGRAM := $(BUILD)/kvm-hello-sanitized
UNIT_HOST         := $(BUILD)/unit-tests
UNIT_SANITIZED    := $(BUILD)/unit-tests-sanitized
UNIT_ARM64        := $(BUILD)/unit-tests-arm64
E2E               := $(BUILD)/e2e-tests
LIBRARY_USER      := $(BUILD)/two-vms-two-threads
TSAN_PROGRAM      := $(BUILD)/vcpu-threads-tsan
FUZZER            := $(BUILD)/fuzz-exits
PACKAGES_OK       := $(BUILD)/.packages-ok
KERNEL_PACKAGES_OK  := $(BUILD)/.packages-kernel-ok
MACHINE_PACKAGES_OK := $(BUILD)/.packages-machine-ok
TEST_PACKAGES_OK  := $(BUILD)/.packages-test-ok
GDB_PACKAGES_OK   := $(BUILD)/.packages-gdb-ok
TEST_LOGS         := $(BUILD)/test-logs
# The lesson: 1 (a guest says hello through MMIO), 2 (interrupts and time)
# or 3 (a second vCPU).
LESSON ?= 1
ifeq ($(filter 1 2 3,$(LESSON)),)
  $(error LESSON=$(LESSON): kvm-hello has lessons 1, 2 and 3; for example make run LESSON=2)
endif
ifdef GUEST
  # Your guest (make run GUEST=path/to/file.S): any path, relative to this
  # folder or absolute, with spaces or "..". Make never takes it as a
  # prerequisite (its words and colons are make's syntax): the shell reads it,
  # quoted. A path that is no readable file stops make here, in one line.
  GUEST_QUOTED  := '$(subst ','\'',$(GUEST))'
  GUEST_PROBLEM := $(shell f=$(GUEST_QUOTED); if [ -d "$$f" ]; then echo "it is a folder"; \
    elif [ ! -e "$$f" ]; then echo "there is no such file"; elif [ ! -r "$$f" ]; then echo "you may not read it"; fi)
  ifneq ($(GUEST_PROBLEM),)
    $(error GUEST=$(GUEST): $(GUEST_PROBLEM) (a relative path starts at $(CURDIR)); give the path of your guest's assembly source, for example make run GUEST=test/guests/spin.S)
  endif
  # It becomes build/your-guest/NAME.bin, NAME its file's name in letters,
  # digits, '_', '.' and '-' (the rules below say how it is kept current).
  GUEST_NAME := $(shell basename -- $(GUEST_QUOTED) | sed 's/\.[^.]*$$//; s/[^A-Za-z0-9_.-]/_/g')
  GUEST_BIN  := $(BUILD)/your-guest/$(or $(GUEST_NAME),guest).bin
endif

# ==== Native or emulated: the one place that decides ========================
#
# The architecture is the compiler's, not the kernel's (`uname -m`): a 32-bit
# userland on an arm64 kernel, or an x86 container on an arm64 machine, builds
# for its own architecture. (Before any compiler is installed: dpkg's.)
CXX_MACHINE := $(shell $(CXX) -dumpmachine 2>/dev/null || dpkg --print-architecture 2>/dev/null || uname -m)
ARM64_BUILD := $(if $(filter aarch64% arm64%,$(CXX_MACHINE)),yes)
KVM_DEVICE ?= /dev/kvm

ifndef KVM_HELLO_MACHINE
  ifeq ($(ARM64_BUILD),yes)
    KVM_HELLO_MACHINE := $(if $(wildcard $(KVM_DEVICE)),native,emulated)
    ifeq ($(KVM_HELLO_MACHINE),emulated)
      MACHINE_NOTE := kvm-hello: this arm64 machine has no $(KVM_DEVICE) (no KVM in its kernel, or no EL2 for it): \
        running kvm-hello in the emulated arm64 machine instead (KVM_HELLO_MACHINE=native forces the native path)
    endif
    MACHINE_WHY := $(CXX) builds for $(CXX_MACHINE), and $(KVM_DEVICE) $(if $(wildcard $(KVM_DEVICE)),exists,does not exist)
  else
    KVM_HELLO_MACHINE := emulated
    MACHINE_WHY := $(CXX) builds for $(CXX_MACHINE), not arm64
  endif
else
  MACHINE_WHY := KVM_HELLO_MACHINE=$(KVM_HELLO_MACHINE) says so
endif
ifeq ($(filter native emulated,$(KVM_HELLO_MACHINE)),)
  $(error KVM_HELLO_MACHINE is "$(KVM_HELLO_MACHINE)": it must be native or emulated)
endif
ifeq ($(KVM_HELLO_MACHINE)$(ARM64_BUILD),native)
  $(error KVM_HELLO_MACHINE=native needs an arm64 compiler; $(CXX) builds for $(CXX_MACHINE))
endif

# The compilers: the build machine's own (unit tests, fuzzing), and arm64's
# (everything that runs against arm64 KVM): the same one on arm64.
CROSS := $(if $(ARM64_BUILD),,aarch64-linux-gnu-)
HOST_CXX := $(CXX)
ARM64_CXX ?= $(CROSS)g++

# The Debian packages each target installs the first time it needs them
# (the set-up section below). make run, trace and bench install three sets:
# BUILD_PACKAGES build kvm-hello; MACHINE_PACKAGES make and start the
# emulated machine (installed while kvm-hello compiles); KERNEL_PACKAGES
# check its kernel's download (apt and dpkg, which it uses too, come with
# every Debian). TEST_PACKAGES the test suites add (doctest; tmux for the
# terminal tests; gpg and xz, which sign and pack a mirror of the tests' own
# for the kernel download's; off arm64 the build machine's g++ and QEMU's
# user mode for the unit tests); GDB_PACKAGES make gdb's (the test suites
# install them too).
ifeq ($(KVM_HELLO_MACHINE),native)
  BUILD_PACKAGES := g++ xxd
  TEST_PACKAGES := doctest-dev tmux gpg gpg-agent xz-utils
  GDB_PACKAGES  := gdb
  # How each target runs kvm-hello, the tests and gdb: here, directly.
  RUN_WITH          := $(PROGRAM)
  GDB_WITH           = gdb -q -x gdb/steps.gdb $(GDB_ARGS) --args $(DEBUG_PROGRAM) $(PROGRAM_ARGS)
  E2E_WITH          := $(E2E)
  GDB_STARTS        := run
  RUN_NEEDS         := $(PROGRAM) $(GUEST_BIN) $(GUEST_BIN:.bin=.lines)
  GDB_NEEDS         := $(DEBUG_PROGRAM) $(GUEST_BIN) $(GUEST_BIN:.bin=.lines)
  E2E_NEEDS         := $(E2E) $(PROGRAM) $(SANITIZED_PROGRAM) $(DEBUG_PROGRAM) $(LIBRARY_USER) $(TSAN_PROGRAM)
  SUITE_WHERE       :=
else
  # The programs the emulated machine runs are linked statically: its
  # initramfs has no C library.
  ARM64_LINK := -static
  BUILD_PACKAGES   := $(if $(CROSS),g++-aarch64-linux-gnu,g++) xxd
  MACHINE_PACKAGES := qemu-system-arm cpio
  KERNEL_PACKAGES  := debian-archive-keyring
  TEST_PACKAGES := g++ doctest-dev tmux gpg gpg-agent xz-utils $(if $(CROSS),qemu-user-static)
  GDB_PACKAGES  := gdb-multiarch

  # The emulated host (README.md explains the default): a Debian suite's
  # kernel, downloaded once per suite and flavour.
  KVM_HELLO_SUITE   ?= trixie
  KVM_HELLO_FLAVOUR ?= arm64
  KVM_HELLO_CPU     ?= $(if $(findstring 16k,$(KVM_HELLO_FLAVOUR)),neoverse-n1,cortex-a57)
  KVM_HELLO_HOST_CPUS ?= $(or $(KVM_HELLO_SMP),1)
  KVM_HELLO_GIC ?= 3
  ifneq ($(words $(KVM_HELLO_GIC)) $(filter 2 3,$(KVM_HELLO_GIC)),1 $(strip $(KVM_HELLO_GIC)))
    $(error KVM_HELLO_GIC is "$(KVM_HELLO_GIC)": it must be 3 (a GICv3, the default) or 2 (a GICv2))
  endif
  export KVM_HELLO_CPU KVM_HELLO_HOST_CPUS KVM_HELLO_GIC
  KERNEL := $(or $(KVM_HELLO_KERNEL),$(CACHE)/kernels/$(KVM_HELLO_SUITE)-$(KVM_HELLO_FLAVOUR)/vmlinuz)
  IN_VM  := tools/run-in-vm.sh $(KERNEL)

  # How each target runs kvm-hello, the tests and gdb: inside the machine,
  # from an initramfs that holds them.
  RUN_WITH          := env KVM_HELLO_CTRL_C=program $(IN_VM) $(BUILD)/run.cpio /kvm-hello
  GDB_WITH           = GDB_ARGS="$(GDB_ARGS)" tools/gdb-in-vm.sh $(KERNEL) $(BUILD)/gdb.cpio $(DEBUG_PROGRAM) \
                       $(PROGRAM_ARGS)
  # The e2e suite is the longest run (both lessons' test cases, each with
  # its own watchdog): on a busy machine it needs more than run-in-vm.sh's
  # default 300 s for the whole boot, so it gets 900 s.
  E2E_WITH          := env KVM_HELLO_VM_TIMEOUT=$(or $(KVM_HELLO_VM_TIMEOUT),900) $(IN_VM) $(BUILD)/test.cpio /e2e-tests
  GDB_STARTS        := continue
  # (The emulated machine's packages first: their install waits for the
  # compiler's, apt installing one set at a time, and is the longest wait of a
  # first make run after it; so it takes the first free job, and kvm-hello
  # compiles beside it.)
  RUN_NEEDS         := $(MACHINE_PACKAGES_OK) $(BUILD)/run.cpio $(KERNEL) $(GUEST_BIN) $(GUEST_BIN:.bin=.lines)
  GDB_NEEDS         := $(BUILD)/gdb.cpio $(KERNEL) $(GUEST_BIN) $(GUEST_BIN:.bin=.lines)
  E2E_NEEDS         := $(BUILD)/test.cpio $(BUILD)/gdb.cpio $(KERNEL)
  SUITE_WHERE       := -in-emulated-arm64
endif

# ==== The targets ============================================================

# Build with every core (GNU make 4.3 and later take -j from here), and run
# the test suites side by side the same way. Only the make you start: a
# make that a recipe starts (`make test` runs `make gdb`) shares its parent's
# jobs, and setting them again would end that sharing (make warns "-j2 forced
# in makefile: resetting jobserver mode"). A -j of your own comes first.
ifeq ($(MAKELEVEL),0)
  MAKEFLAGS += --jobs=$(shell nproc 2>/dev/null || echo 2)
endif

UNIT_SUITES := $(UNIT_HOST) $(UNIT_SANITIZED) $(if $(CROSS),$(UNIT_ARM64))
all: $(UNIT_SUITES) $(E2E_NEEDS) $(RUN_NEEDS)

# What kvm-hello is given: the lesson, your guest and its line table, and ARGS. (In the
# emulated machine too: tools/run-in-vm.sh puts the files --guest and
# --guest-lines name into it.)
PROGRAM_ARGS = $(if $(filter 2 3,$(LESSON)),--lesson $(LESSON) )$(if $(GUEST),--guest $(GUEST_BIN) --guest-lines $(GUEST_BIN:.bin=.lines)) $(ARGS)

# run, trace and bench: kvm-hello's exit status becomes make's; one that is
# not 0 is first said in words by program/say-status.sh, from the table of
# kvm-hello's --help: run here; off arm64 under qemu-aarch64-static once the
# test suites' packages brought it, until then in the emulated machine (a
# boot more, which only a failed run pays).
QEMU_USER := $(shell command -v qemu-aarch64-static 2>/dev/null)
HELP_WITH := $(if $(CROSS),$(if $(QEMU_USER),$(QEMU_USER) $(PROGRAM),$(IN_VM) $(BUILD)/run.cpio /kvm-hello),$(PROGRAM))
trace: override ARGS += --step-guest
bench: override ARGS += --bench
run trace bench: $(RUN_NEEDS)
	$(if $(MACHINE_NOTE),@echo "$(MACHINE_NOTE)")
	@program/say-status.sh "make $@" "$(HELP_WITH)" $(RUN_WITH) $(PROGRAM_ARGS)

gdb: $(GDB_NEEDS) | $(GDB_PACKAGES_OK)
	@$(GDB_WITH)

# `make test`: every suite, each a target of its own (test-suite-NAME) that
# test/run-suite.sh runs: its output goes to $(TEST_LOGS)/NAME.log, and it
# says one line when the suite starts and one when it ends (or, when it
# failed, its whole log). make runs them side by side, as many as its jobs
# (2 on 2 cores), and beside the compiles still going: a suite starts once
# what it runs is built; the e2e suite first, the longest. Two suites use
# build/'s own run.cpio (the makefile suite makes it anew; the terminal suite
# runs it): the terminal suite waits for the makefile suite. Then
# test/summarize.sh adds them up, the last line "N passed, M failed".
# ALSO_HOST="SUITE FLAVOUR CPU CPUS GIC" (a line of test/hosts.txt) runs the
# e2e and gdb suites on that emulated host too (.ci/run does, on sid's).
SUITE := test/run-suite.sh $(TEST_LOGS)
UNIT_NAME := unit-$(firstword $(subst -, ,$(CXX_MACHINE)))
TEST_SUITES := e2e $(if $(ALSO_HOST),also-host) makefile gdb unit unit-sanitized $(if $(CROSS),unit-arm64) \
  compile-fail terminal
E2E_SUITES := e2e gdb
CLEAR_TEST_LOGS := clear-test-logs

test: $(TEST_SUITES:%=test-suite-%)
	@test/summarize.sh $(TEST_LOGS)
test-e2e: $(E2E_SUITES:%=test-suite-%)
	@test/summarize.sh $(TEST_LOGS)
.PHONY: $(TEST_SUITES:%=test-suite-%) test-suite-also-host clear-test-logs

clear-test-logs: | kvm-usable
	@rm -rf $(TEST_LOGS) && mkdir -p $(TEST_LOGS)
	$(if $(MACHINE_NOTE),@echo "$(MACHINE_NOTE)")
SUITE_NEEDS := $(CLEAR_TEST_LOGS) $(TEST_PACKAGES_OK)

test-suite-e2e: $(E2E_NEEDS) | $(SUITE_NEEDS)
	@$(SUITE) e2e$(SUITE_WHERE) $(E2E_WITH)
test-suite-gdb: $(GDB_NEEDS) | $(SUITE_NEEDS)
	@+$(SUITE) gdb$(SUITE_WHERE) test/gdb-test.sh $(GDB_STARTS)
test-suite-unit: $(UNIT_HOST) | $(SUITE_NEEDS)
	@$(SUITE) $(UNIT_NAME) $(UNIT_HOST)
test-suite-unit-sanitized: $(UNIT_SANITIZED) | $(SUITE_NEEDS)
	@$(SUITE) $(UNIT_NAME)-sanitized $(UNIT_SANITIZED)
test-suite-unit-arm64: $(UNIT_ARM64) | $(SUITE_NEEDS)
	@$(SUITE) unit-arm64-user-mode qemu-aarch64-static $(UNIT_ARM64)
# It runs make itself (make all, run, trace, lint): after everything make all builds.
test-suite-makefile: $(UNIT_SUITES) $(E2E_NEEDS) $(RUN_NEEDS) | $(SUITE_NEEDS)
	@ARM64_CXX=$(ARM64_CXX) $(SUITE) makefile test/make-tests.sh
test-suite-compile-fail: | $(SUITE_NEEDS)
	@ARM64_CXX=$(ARM64_CXX) WARNINGS="$(WARNINGS)" $(SUITE) compile-fail test/compile-fail-tests.sh
test-suite-terminal: $(RUN_NEEDS) $(GDB_NEEDS) | $(SUITE_NEEDS) test-suite-makefile
	@$(SUITE) terminal test/terminal-test.sh
# The other host's suites: a make of their own, with that host's settings
# (it downloads that host's kernel the first time), into the same logs.
ifneq ($(ALSO_HOST),)
  ifneq ($(words $(ALSO_HOST)),5)
    $(error ALSO_HOST="$(ALSO_HOST)": it must be five words, as a line of test/hosts.txt: suite flavour cpu CPUs GIC)
  endif
endif
test-suite-also-host: $(BUILD)/test.cpio $(BUILD)/gdb.cpio | $(SUITE_NEEDS)
	@+$(MAKE) --no-print-directory $(E2E_SUITES:%=test-suite-%) CLEAR_TEST_LOGS= ALSO_HOST= \
	  KVM_HELLO_SUITE=$(word 1,$(ALSO_HOST)) KVM_HELLO_FLAVOUR=$(word 2,$(ALSO_HOST)) KVM_HELLO_CPU=$(word 3,$(ALSO_HOST)) \
	  KVM_HELLO_HOST_CPUS=$(word 4,$(ALSO_HOST)) KVM_HELLO_GIC=$(word 5,$(ALSO_HOST)) \
	  SUITE_WHERE=-on-$(subst $(space),-,$(strip $(ALSO_HOST)))

test-hosts: $(BUILD)/test.cpio $(BUILD)/gdb.cpio
	@+test/test-hosts.sh test/hosts.txt

# One lesson's run RUNS times in one machine, each output compared whole with
# its golden file (test/e2e_tests.cpp, "soak"): run it while another build
# keeps every core busy, as CI's machine is.
RUNS ?= 20
soak: $(E2E_NEEDS) | kvm-usable
	$(E2E_WITH) --no-skip '-tc=soak*' --soak-lesson $(LESSON) --soak-runs $(RUNS)

TIMINGS ?= run test retest
TIMINGS_RUNS ?= 3
timings:
	@tools/timings.sh --runs $(TIMINGS_RUNS) $(TIMINGS)

host:
	@echo "kvm-hello runs $(if $(filter native,$(KVM_HELLO_MACHINE)),natively,in the emulated arm64 machine): $(MACHINE_WHY)"
ifeq ($(KVM_HELLO_MACHINE),emulated)
	@echo "the emulated host: $(if $(KVM_HELLO_KERNEL),the kernel $(KVM_HELLO_KERNEL),Debian $(KVM_HELLO_SUITE)'s linux-image-$(KVM_HELLO_FLAVOUR)), -cpu $(KVM_HELLO_CPU), $(KVM_HELLO_HOST_CPUS) CPU$(if $(filter 1,$(KVM_HELLO_HOST_CPUS)),,s), GICv$(KVM_HELLO_GIC)"
endif

# The native suites need a KVM they may use: say so once, before any test runs.
kvm-usable:
	$(if $(filter native,$(KVM_HELLO_MACHINE)),@setup/check-kvm.sh $(KVM_DEVICE))

golden: $(E2E_NEEDS)
	$(E2E_WITH) --print-golden '-tc=golden*' | test/update-golden.sh test/golden

FUZZ_SECONDS ?= 60
fuzz: $(FUZZER)
	@mkdir -p $(BUILD)/fuzz-corpus
	$(FUZZER) -max_total_time=$(FUZZ_SECONDS) -seed=1 -print_final_stats=1 -artifact_prefix=$(BUILD)/ \
	  $(BUILD)/fuzz-corpus

format:
	clang-format -i kvm_hello.hpp main.cpp program/*.hpp bench/*.hpp test/*.cpp test/*.hpp tools/*.cpp

help:
	@sed -n 's/^## \{0,1\}//p' $(MAKEFILE_LIST) | sed 's|$$(CACHE)|$(CACHE)|'

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(CACHE)

# ==== Set-up: packages, prerequisites, the kernel ============================

# Each set of packages is installed when a target first needs it, then
# remembered: the kernel's by its download, which so runs beside the next
# installs; the build set ($(PACKAGES_OK)) by everything that compiles; the
# emulated machine's by the initramfs (cpio) and so by its runs (QEMU): it
# installs while kvm-hello compiles; the test suites' set by their builds
# and runs (make test, make lint); gdb's by make gdb. One apt at a time: each
# waits for the one before, and the test suites' set holds gdb's.
$(KERNEL_PACKAGES_OK):
	@mkdir -p $(@D)
	@setup/ensure-packages.sh $(KERNEL_PACKAGES)
	@touch $@
$(PACKAGES_OK): | $(KERNEL_PACKAGES_OK)
	@setup/ensure-packages.sh $(BUILD_PACKAGES)
	@setup/check-prerequisites.sh "" "$(ARM64_CXX)"
	@touch $@
$(MACHINE_PACKAGES_OK): | $(PACKAGES_OK)
	@setup/ensure-packages.sh $(MACHINE_PACKAGES)
	@touch $@
$(TEST_PACKAGES_OK): | $(MACHINE_PACKAGES_OK)
	@setup/ensure-packages.sh $(TEST_PACKAGES) $(GDB_PACKAGES)
	@setup/check-prerequisites.sh "$(HOST_CXX)" "" $(if $(CROSS),$(ARM64_UAPI))
	@touch $@
$(GDB_PACKAGES_OK): | $(MACHINE_PACKAGES_OK)
	@setup/ensure-packages.sh $(GDB_PACKAGES)
	@touch $@
# The e2e tests are doctest's too (the unit tests' objects say so in
# UNIT_DEPENDS); every initramfs is made with cpio.
$(E2E): | $(TEST_PACKAGES_OK)
$(BUILD)/run.cpio $(BUILD)/gdb.cpio $(BUILD)/test.cpio: | $(MACHINE_PACKAGES_OK)

$(CACHE)/kernels/%/vmlinuz: | $(KERNEL_PACKAGES_OK)
	@tools/fetch-kernel.sh $(KVM_HELLO_SUITE) $(KVM_HELLO_FLAVOUR) $(@D)

# ==== Guests: assembled, linked at guest RAM, raw bytes, a C array ==========
#
# Every guest .S becomes, under build/ at the path of its source, a .o, an
# .elf linked where guest RAM starts (read from kvm_hello.hpp's memory map),
# and a .bin of its raw bytes: guest.S -> build/guest.bin.

TEST_GUESTS := $(patsubst %.S,$(BUILD)/%.bin,$(wildcard test/guests/*.S))
EXERCISES   := $(patsubst %.S,$(BUILD)/%.bin,$(wildcard test/exercises/*.S))
GOLDEN      := $(wildcard test/golden/*.txt)
GUEST_IMAGES := $(BUILD)/guest.bin $(BUILD)/lesson2/guest.bin $(BUILD)/lesson3/guest.bin $(BUILD)/bench/bench-guest.bin \
  $(BUILD)/bench/irq-bench-guest.bin $(TEST_GUESTS) $(EXERCISES) $(GUEST_BIN)
# Their .o and .elf are kept (gdb and --step-guest's line table read the
# guest's), and their .bin and .lines (make would otherwise delete those it
# made on the way to a lesson's headers, saying "rm build/lesson2/guest.bin
# ..." after a run); naming them, rather than a bare .SECONDARY:, keeps make
# rebuilding an image that is missing.
.SECONDARY: $(GUEST_IMAGES:.bin=.o) $(GUEST_IMAGES:.bin=.elf) $(GUEST_IMAGES) $(GUEST_IMAGES:.bin=.lines)

GUEST_LOAD_ADDRESS = $(shell printf '#include "kvm_hello.hpp"\nKVM_HELLO_RAM_BASE\n' | \
  $(CROSS)cpp -P -D__ASSEMBLER__ -I. - | tail -n 1)

# $(call write-if-changed,COMMAND): COMMAND's output becomes $@ only when it
# differs from what $@ holds, so that what depends on $@ is rebuilt only then.
define write-if-changed
	@mkdir -p $(@D)
	@$(1) > $@.new || { rm -f $@.new; exit 1; }; if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi
endef

define assemble
	@mkdir -p $(@D)
	$(CROSS)gcc -c -g -D__ASSEMBLY__ -I. -o $@ $<
endef
$(BUILD)/%.o: %.S kvm_hello.hpp | $(PACKAGES_OK)
	$(assemble)

# Your guest is the file as it is now, whatever its name, folder or age: on
# every make it is preprocessed, with all it includes, into NAME.s (what is
# assembled; its line markers keep your file's name and lines, for the
# assembler's messages and line table), and copied into NAME.source (for the
# line table's text, comments and all); each is rewritten only when its text
# changed. So make rebuilds what follows exactly when the guest changed, and
# nothing when it did not.
ifdef GUEST
$(GUEST_BIN:.bin=.s): FORCE | $(PACKAGES_OK)
	$(call write-if-changed,$(CROSS)gcc -E -g -x assembler-with-cpp -D__ASSEMBLY__ -I. $(GUEST_QUOTED))
$(GUEST_BIN:.bin=.source): FORCE
	$(call write-if-changed,cat -- $(GUEST_QUOTED))
endif
$(BUILD)/your-guest/%.o: $(BUILD)/your-guest/%.s
	$(CROSS)gcc -c -g -x assembler -o $@ $<

$(BUILD)/%.elf: $(BUILD)/%.o
	$(CROSS)ld -Ttext=$(GUEST_LOAD_ADDRESS) -e _start --no-warn-rwx-segments -o $@ $<

# A guest with no bytes at all becomes an empty image, for kvm-hello to refuse
# with its own message (objcopy would stop at "has no sections").
$(BUILD)/%.bin: $(BUILD)/%.elf
	if $(CROSS)readelf -l $< | grep -q LOAD; then $(CROSS)objcopy -O binary $< $@; else : > $@; fi

# `xxd -i NAME.bin` names the array after the file: guest_bin[], bench_guest_bin[].
$(BUILD)/guest_image.h: $(BUILD)/guest.bin
	cd $(<D) && xxd -i $(<F) > $(abspath $@)
$(BUILD)/bench_guest_image.h: $(BUILD)/bench/bench-guest.bin
	cd $(<D) && xxd -i $(<F) > $(abspath $@)
$(BUILD)/irq_bench_guest_image.h: $(BUILD)/bench/irq-bench-guest.bin
	cd $(<D) && xxd -i $(<F) > $(abspath $@)
# Lessons 2's and 3's, named from build/: lesson2/guest.bin -> lesson2_guest_bin[].
$(BUILD)/lesson%_guest_image.h: $(BUILD)/lesson%/guest.bin
	cd $(BUILD) && xxd -i lesson$*/guest.bin > $(abspath $@)
# Every test guest as a C array named after its file: spin.S -> spin_bin[].
$(BUILD)/test_guests.h: $(TEST_GUESTS)
	cd $(BUILD)/test/guests && for bin in $(notdir $^); do xxd -i $$bin; done > $(abspath $@)

# A guest's line table, for --step-guest and the dump: its instruction
# addresses and lines of source. guest.S's is embedded as guest_lines[].
$(BUILD)/%.lines: $(BUILD)/%.elf %.S program/guest-lines.sh
	program/guest-lines.sh $(CROSS)readelf $< $*.S > $@
$(BUILD)/your-guest/%.lines: $(BUILD)/your-guest/%.elf $(BUILD)/your-guest/%.source program/guest-lines.sh
	program/guest-lines.sh $(CROSS)readelf $< $(GUEST_QUOTED) > $@
$(BUILD)/guest_lines.h: $(BUILD)/guest.lines
	cd $(<D) && xxd -i $(<F) > $(abspath $@)
$(BUILD)/lesson%_guest_lines.h: $(BUILD)/lesson%/guest.lines
	cd $(BUILD) && xxd -i lesson$*/guest.lines > $(abspath $@)

# ==== Programs ===============================================================

CXXSTD   := -std=c++23
# Every program and test is built with these, by each compiler: besides -Wall
# -Wextra, standard C++ only, no implicit conversion that may change a value or
# its sign, no name that hides another, and C++'s casts (each says what it does).
WARNINGS := -Wall -Wextra -Wpedantic -Wconversion -Wsign-conversion -Wshadow -Wold-style-cast -Werror
# -Og: the optimisations that keep a program debuggable (its variables and
# lines where gdb expects them), at about half -O2's compile time: 294 s of
# CPU instead of 506 for the unit tests and test.cpio, 14 s instead of 29 for
# kvm-hello alone (g++ 12, one 2-core x86 machine); 28 s instead of -O1's 61
# for its sanitized build. `make bench` measures this build too.
OPTIMISE := -Og -g
# make run's kvm-hello: the same -Og, without -g. Its debug information costs
# a third of its compile (5.6 s instead of 8.5, g++ 12, one 2-core x86
# machine), the longest step of a first make run; and nothing reads it:
# gdb runs kvm-hello-debug (below), and the emulated machine gets a stripped copy.
RUN_OPTIMISE := -Og
HEADERS  := kvm_hello.hpp $(wildcard program/*.hpp bench/*.hpp)
PROGRAM_SOURCES := main.cpp $(HEADERS) $(BUILD)/guest_image.h $(BUILD)/guest_lines.h $(BUILD)/bench_guest_image.h \
  $(BUILD)/irq_bench_guest_image.h $(BUILD)/lesson2_guest_image.h $(BUILD)/lesson2_guest_lines.h \
  $(BUILD)/lesson3_guest_image.h $(BUILD)/lesson3_guest_lines.h

$(PROGRAM): $(PROGRAM_SOURCES)
	$(ARM64_CXX) $(CXXSTD) $(RUN_OPTIMISE) $(WARNINGS) -I. -I$(BUILD) $(ARM64_LINK) -o $@ main.cpp

# For gdb: no optimisation, so every step is a function of its own; and, when
# it runs in the emulated machine, linked at an address no other program there
# uses (gdb's breakpoints there are by virtual address).
comma := ,
space := $(subst ,, )
DEBUG_LINK := $(if $(ARM64_LINK),-static -Wl$(comma)-Ttext-segment=0x1000000)
$(DEBUG_PROGRAM): $(PROGRAM_SOURCES)
	$(ARM64_CXX) $(CXXSTD) -O0 -g $(WARNINGS) -I. -I$(BUILD) $(DEBUG_LINK) -o $@ main.cpp

# Sanitizers: AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer,
# every finding fatal. The unit tests run under them on the build machine; a
# build of kvm-hello runs under them against real KVM (e2e_tests.cpp). The
# sanitizers need dynamic linking: the emulated machine gets the arm64 shared
# libraries it needs in /lib, wherever this compiler finds them; but a cross
# compiler's sanitizer runtimes come through tools/sanitizer-runtime.sh
# (Debian 13's cross libasan crashes at start: it then takes Debian's arm64 build).
# (-Wno-maybe-uninitialized: with ASan, GCC 12 warns falsely inside <regex>.)
# -fno-sanitize=vptr: with GCC 14 (Debian 13), UBSan's dynamic-type check recurses through
# std::type_info::operator== and __dynamic_cast until the stack overflows; nothing here relies on it.
SANITIZE := -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=all -fno-omit-frame-pointer \
            -Wno-maybe-uninitialized
$(SANITIZED_PROGRAM): $(PROGRAM_SOURCES)
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) $(SANITIZE) -I. -I$(BUILD) -o $@ main.cpp

SANITIZER_RUNTIME := $(BUILD)/arm64-sanitizer-runtime
SANITIZER_LIBS := $(if $(CROSS),$(SANITIZER_RUNTIME)/libasan.so.8 $(SANITIZER_RUNTIME)/libubsan.so.1,libasan.so.8 libubsan.so.1)
ARM64_LIBS := ld-linux-aarch64.so.1 libc.so.6 libm.so.6 libstdc++.so.6 libgcc_s.so.1 $(SANITIZER_LIBS)
# (It tries a runtime under qemu-aarch64-static, which the test packages bring.)
$(SANITIZER_RUNTIME)/.done: tools/sanitizer-runtime.sh tools/private-apt.sh | $(TEST_PACKAGES_OK)
	@tools/sanitizer-runtime.sh $(@D) $(CACHE)
	@touch $@

# ---- The unit tests: the lesson, the program, the docs -----------------------
#
# They run on the build machine but test code written against arm64's KVM
# structs. When the build machine is not arm64, these headers come from the
# arm64 kernel headers that the cross compiler ships (package
# linux-libc-dev-arm64-cross); the rest (<linux/types.h>, <asm/ioctl.h>, ...)
# is the same on every 64-bit Linux.
ARM64_UAPI   := /usr/aarch64-linux-gnu/include
UAPI_HEADERS := linux/kvm.h linux/psci.h asm/kvm.h asm/ptrace.h asm/hwcap.h asm/sve_context.h
UAPI_OVERLAY := $(BUILD)/arm64-uapi
HOST_UAPI    := $(if $(CROSS),-isystem $(UAPI_OVERLAY))
$(UAPI_OVERLAY)/.done: | $(PACKAGES_OK)
	@for header in $(UAPI_HEADERS); do \
	  mkdir -p $(UAPI_OVERLAY)/$$(dirname $$header) && ln -sf $(ARM64_UAPI)/$$header $(UAPI_OVERLAY)/$$header; \
	done
	@touch $@

# One binary from five sources: doctest's main, and the tests of the steps
# (kvm_hello.hpp), of the program (program/, bench/), of the docs, and of a
# program's own names beside the header's (own_names_tests.cpp). Each is
# built three ways: for the build machine, under the sanitizers, and (off
# arm64) by the cross compiler, run under qemu-aarch64-static. The docs tests
# read README.md and docs/ from here. The sanitized build is -O0: the
# sanitizers find the same mistakes, and it compiles in a third of -O1's time
# (24 s instead of 76 for program_tests.cpp, g++ 12); it takes doctest's main
# from the build machine's, as the sanitizers need only the code under test
# instrumented. (The arm64 build stays -Og: at -O0 it compiles in three
# quarters of the time, but runs four times slower under qemu-aarch64: 48 s
# instead of 12.)
UNIT_TESTED  := steps_tests program_tests docs_tests own_names_tests
UNIT_TESTS   := unit_main $(UNIT_TESTED)
UNIT_FLAGS   := $(CXXSTD) $(WARNINGS) -I. -I$(BUILD) -DKVM_HELLO_SOURCE_DIR=\"$(CURDIR)\"
UNIT_DEPENDS := $(HEADERS) test/fuzz_exits.hpp $(if $(CROSS),$(UAPI_OVERLAY)/.done) | $(TEST_PACKAGES_OK)
# steps_tests.cpp checks the assembled guests against the memory map.
$(foreach way,host sanitized arm64,$(BUILD)/unit/$(way)/steps_tests.o): \
  $(BUILD)/guest_image.h $(BUILD)/bench_guest_image.h $(BUILD)/irq_bench_guest_image.h $(BUILD)/guest_lines.h

$(BUILD)/unit/host/%.o: test/%.cpp $(UNIT_DEPENDS)
	@mkdir -p $(@D)
	$(HOST_CXX) $(UNIT_FLAGS) $(OPTIMISE) $(HOST_UAPI) -c -o $@ $<
$(BUILD)/unit/sanitized/%.o: test/%.cpp $(UNIT_DEPENDS)
	@mkdir -p $(@D)
	$(HOST_CXX) $(UNIT_FLAGS) -O0 -g $(SANITIZE) $(HOST_UAPI) -c -o $@ $<
$(BUILD)/unit/arm64/%.o: test/%.cpp $(UNIT_DEPENDS)
	@mkdir -p $(@D)
	$(ARM64_CXX) $(UNIT_FLAGS) $(OPTIMISE) -c -o $@ $<

$(UNIT_HOST): $(UNIT_TESTS:%=$(BUILD)/unit/host/%.o)
	$(HOST_CXX) -o $@ $^
$(UNIT_SANITIZED): $(BUILD)/unit/host/unit_main.o $(UNIT_TESTED:%=$(BUILD)/unit/sanitized/%.o)
	$(HOST_CXX) $(SANITIZE) -o $@ $^
$(UNIT_ARM64): $(UNIT_TESTS:%=$(BUILD)/unit/arm64/%.o)
	$(ARM64_CXX) $(ARM64_LINK) -o $@ $^

# ---- clang-tidy: `make lint` ------------------------------------------------
#
# Each source is checked as the unit tests are compiled (the same flags, the
# arm64 kernel headers), with the headers it includes; a source found clean
# is remembered in $(BUILD)/lint/ until it, a header or .clang-tidy changes.
# Debian 12's own clang-tidy (14) cannot read C++23's <expected>: 19 can.
LINT_SOURCES := main.cpp $(wildcard test/*.cpp) tools/vm-init.cpp
CLANG_TIDY   := clang-tidy-19
# Its package (the makefile suite runs make lint; tools/native-arm64.sh reads
# this line too, for its arm64 root, which has no network).
LINT_PACKAGES := clang-tidy-19
LINT_FLAGS   := $(UNIT_FLAGS) -I$(BUILD) $(HOST_UAPI)
GENERATED_HEADERS := $(BUILD)/guest_image.h $(BUILD)/guest_lines.h $(BUILD)/bench_guest_image.h \
  $(BUILD)/irq_bench_guest_image.h $(BUILD)/test_guests.h \
  $(BUILD)/lesson2_guest_image.h $(BUILD)/lesson2_guest_lines.h $(BUILD)/lesson3_guest_image.h \
  $(BUILD)/lesson3_guest_lines.h
lint: $(LINT_SOURCES:%=$(BUILD)/lint/%.ok)
	@echo "lint: $(CLANG_TIDY) found nothing in $(words $(LINT_SOURCES)) sources and the headers they include"
$(BUILD)/lint/%.ok: % .clang-tidy test/.clang-tidy $(GENERATED_HEADERS) $(BUILD)/.clang-tidy-ok $(UNIT_DEPENDS)
	@mkdir -p $(@D)
	@echo "lint $<"
	@$(CLANG_TIDY) --quiet $< -- $(LINT_FLAGS) >$@.log 2>&1; status=$$?; \
	  grep -v '^[0-9]* warnings\{0,1\} generated\.$$' $@.log; rm -f $@.log; exit $$status
	@touch $@
$(BUILD)/.clang-tidy-ok: | $(TEST_PACKAGES_OK)
	@setup/ensure-packages.sh $(LINT_PACKAGES)
	@touch $@

$(FUZZER): test/fuzz_exits.cpp $(HEADERS) test/fuzz_exits.hpp $(if $(CROSS),$(UAPI_OVERLAY)/.done)
	@setup/ensure-packages.sh clang-19 libclang-rt-19-dev
	clang++-19 $(CXXSTD) -O1 -g $(WARNINGS) -fsanitize=fuzzer,address,undefined $(HOST_UAPI) -I. -o $@ $<

# ---- The e2e tests ---------------------------------------------------------
#
# They find beside themselves: kvm-hello, golden/, guests/ (the test guests
# assembled, and their line tables) and guest-sources/ (their .S, which say
# what to expect); the same for the exercises.
$(E2E): $(EXERCISES) test/e2e_tests.cpp $(HEADERS) $(BUILD)/guest_image.h $(BUILD)/lesson2_guest_image.h \
  $(BUILD)/lesson3_guest_image.h $(BUILD)/test_guests.h \
  $(BUILD)/bench_guest_image.h $(BUILD)/irq_bench_guest_image.h $(TEST_GUESTS:.bin=.lines)
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -I. -I$(BUILD) $(ARM64_LINK) -o $@ test/e2e_tests.cpp
	ln -sfn ../test/golden $(BUILD)/golden
	ln -sfn test/guests $(BUILD)/guests
	ln -sfn ../test/guests $(BUILD)/guest-sources
	ln -sfn test/exercises $(BUILD)/exercises
	ln -sfn ../test/exercises $(BUILD)/exercise-sources

# A program of its own that uses kvm_hello.hpp as a library (two VMs on two
# threads, its own SIGALRM): e2e_tests.cpp runs it, from beside itself.
$(LIBRARY_USER): test/two_vms_two_threads.cpp $(HEADERS) $(BUILD)/test_guests.h
	$(ARM64_CXX) $(CXXSTD) $(OPTIMISE) $(WARNINGS) -I. -I$(BUILD) $(ARM64_LINK) -o $@ $<

# Lesson 3's vCPU threads under ThreadSanitizer: e2e_tests.cpp runs it. Its
# runtime is linked in (-static-libtsan); the C and C++ libraries are the
# shared ones the sanitized kvm-hello uses too.
$(TSAN_PROGRAM): test/vcpu_threads.cpp $(HEADERS) $(BUILD)/test_guests.h
	$(ARM64_CXX) $(CXXSTD) -O1 -g $(WARNINGS) -fsanitize=thread -static-libtsan -I. -I$(BUILD) -o $@ $<

# ==== The emulated machine's initramfs: /init and the programs it runs ======
# Stripped copies: the initramfs is smaller and boots faster; build/ keeps the
# binaries as built (kvm-hello-debug and the tests with debug information, for
# gdb and the sanitizers' reports). /init is built without it, as make run's
# kvm-hello is: only its stripped copy ever runs.

$(BUILD)/vm-init: tools/vm-init.cpp | $(PACKAGES_OK)
	$(ARM64_CXX) $(CXXSTD) $(RUN_OPTIMISE) $(WARNINGS) -static -o $@ $<

# $(call make-initramfs,PROGRAMS,SOURCE:DESTINATION...,LIBRARIES): /init, the
# programs, copies of files or directories at the paths given, and shared
# libraries in /lib (a path, or a name the arm64 compiler finds). It says
# one line, "initramfs build/run.cpio"; a step that fails says its own.
define make-initramfs
	@echo "initramfs $@"
	@rm -rf $@.root && mkdir -p $@.root
	@$(CROSS)strip -o $@.root/init $(BUILD)/vm-init
	@for program in $(1); do $(CROSS)strip -o $@.root/$$(basename $$program) $$program; done
	@for pair in $(2); do \
	  mkdir -p $$(dirname $@.root/$${pair##*:}) && cp -rL $${pair%%:*} $@.root/$${pair##*:}; done
	$(if $(3),@mkdir -p $@.root/lib)
	@for lib in $(3); do \
	  case $$lib in */*) from=$$lib ;; *) from=$$($(ARM64_CXX) -print-file-name=$$lib) ;; esac; \
	  $(CROSS)strip --strip-unneeded -o $@.root/lib/$$(basename $$lib) $$from; done
	@cd $@.root && find . | cpio -o -H newc --quiet > ../$(notdir $@)
	@rm -rf $@.root
endef

# kvm-hello first: its compile is the longest, and make starts the
# prerequisites in their order. The emulated machine's packages install
# while it compiles: once what it includes is made, so that they do not take
# a core before the compile starts.
$(BUILD)/run.cpio: $(PROGRAM) $(BUILD)/vm-init
	$(call make-initramfs,$(PROGRAM))
$(MACHINE_PACKAGES_OK): | $(filter $(BUILD)/%,$(PROGRAM_SOURCES))

$(BUILD)/gdb.cpio: $(BUILD)/vm-init $(DEBUG_PROGRAM)
	$(call make-initramfs,$(DEBUG_PROGRAM))

$(BUILD)/test.cpio: $(BUILD)/vm-init $(PROGRAM) $(E2E) $(SANITIZED_PROGRAM) $(LIBRARY_USER) $(TSAN_PROGRAM) $(GOLDEN) $(TEST_GUESTS) \
  $(EXERCISES) $(TEST_GUESTS:.bin=.lines) $(if $(CROSS),$(SANITIZER_RUNTIME)/.done)
	$(call make-initramfs,$(PROGRAM) $(E2E) $(SANITIZED_PROGRAM) $(LIBRARY_USER) $(TSAN_PROGRAM),test/golden:golden $(BUILD)/test/guests:guests \
	  test/guests:guest-sources $(BUILD)/test/exercises:exercises test/exercises:exercise-sources,$(ARM64_LIBS))

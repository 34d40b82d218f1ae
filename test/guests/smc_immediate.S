// smc_immediate.S: powers off with smc #1. KVM refuses it on every kernel,
// for two reasons: before Linux 6.4 KVM answers every smc with -1
// (handle_smc in arch/arm64/kvm/handle_exit.c); from 6.4 it takes smc #0 as
// a call like hvc, but answers an smc whose immediate is not 0 with -1
// without reading x0, as SMCCC reserves those immediates. The guest gets
// x0 = -1 and spins on the branch after it until the watchdog stops it.
// args: --timeout 1
// expect-status: 24
// expect-stderr: the guest called smc #1 at 0x10004 with function id 0x84000008 (PSCI SYSTEM_OFF) and got x0 = -1 (NOT_SUPPORTED):
// linux >= 6.4: expect-stderr: handle_smc (arch/arm64/kvm/handle_exit.c) answers an smc whose immediate is not 0 with -1 without reading x0, as SMCCC reserves those immediates; write smc #0.
// linux < 6.4: expect-stderr: Linux before 6.4 does not take smc as a PSCI call (handle_smc in arch/arm64/kvm/handle_exit.c answers every smc with -1); call PSCI with hvc.
// expect-stderr: a guest that runs longer needs --timeout
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        smc     #1                          // refused: x0 = -1
        b       .                           // reached: the call returned
        .balign 8
        .ltorg

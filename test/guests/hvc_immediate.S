// hvc_immediate.S: powers off with hvc #1 instead of hvc #0. SMCCC (Arm's
// SMC Calling Convention) reserves every immediate but 0 for its calls, yet
// KVM never reads an hvc's immediate (handle_hvc in
// arch/arm64/kvm/handle_exit.c, on Linux 6.1, 6.12 and 7.x alike): the
// guest powers off. kvm-hello says so. (An smc with an immediate is refused:
// smc_immediate.S.) It prints nothing, in one exit.
// expect-status: 0
// expect-stdout: guest output: (nothing: the guest wrote no byte to OUT)
// expect-stdout: the guest called SYSTEM_OFF with hvc #1 at 0x10004: KVM ignores an hvc's immediate (handle_hvc in arch/arm64/kvm/handle_exit.c),
// expect-stdout: but SMCCC reserves every other immediate, and KVM does check an smc's (handle_smc, Linux 6.4 and later): write hvc #0
// expect-stdout: summary: 1 KVM_RUN call, 1 exit (KVM_EXIT_SYSTEM_EVENT 1);
// expect-stdout: shutdown: the guest powered off (PSCI SYSTEM_OFF) after 1 exit
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #1                          // a reserved immediate: KVM does not look
        b       .                           // not reached: the guest powered off
        .balign 8
        .ltorg

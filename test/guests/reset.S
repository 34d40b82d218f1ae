// reset.S: a guest that asks for a reset instead of powering off, the answer
// to exercise 3 of docs/19-exercises.md. PSCI SYSTEM_RESET (function 9)
// instead of SYSTEM_OFF (8): KVM reports a system event of type RESET, and
// kvm-hello, which runs a guest once, says so and stops.
// expect-status: 22
// expect-stdout: KVM_EXIT_SYSTEM_EVENT type=2 (RESET)
// expect-stderr: the guest asked for a reset (PSCI SYSTEM_RESET)
#include <linux/psci.h>   // PSCI_0_2_FN_SYSTEM_RESET
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_RESET
        hvc     #0                          // KVM_EXIT_SYSTEM_EVENT (RESET)
        b       _start
        .ltorg

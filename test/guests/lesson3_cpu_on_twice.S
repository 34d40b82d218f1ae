// SPDX-License-Identifier: MIT
// lesson3_cpu_on_twice.S: a mistake of lesson 3: vCPU 0 starts vCPU 1 with
// PSCI CPU_ON, then again. The first makes vCPU 1 RUNNABLE at once (inside
// KVM, kvm_psci_vcpu_on), so the second finds it not STOPPED and answers
// ALREADY_ON (-4), whatever vCPU 1 is doing by then: here it waits in WFI
// for an interrupt no one sends, asleep in its KVM_RUN, until the program
// stops it after vCPU 0's SYSTEM_OFF.
// args: --lesson 3
// expect-status: 0
// expect-stdout: vCPU 0       the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = 0: SUCCESS
// expect-stdout: vCPU 0       the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = -4: ALREADY_ON: that vCPU is not STOPPED: a CPU_ON started it already
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map
#include <linux/psci.h>   // PSCI_0_2_FN*: the function ids KVM knows

        .text
        .global _start
_start:
        bl      start_vcpu1
        bl      start_vcpu1                 // the mistake: a second CPU_ON for the same vCPU
power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        b       power_off

// PSCI CPU_ON for MPIDR 1, at `parked`; then reports the call and its x0.
start_vcpu1:
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        mov     x1, #1                      // vCPU 1's MPIDR
        adr     x2, parked
        mov     x3, #0                      // its context id
        hvc     #0
        ldr     x2, =KVM_HELLO_MMIO_PSCI_CALL
        ldr     w1, =PSCI_0_2_FN64_CPU_ON
        str     w1, [x2]
        ldr     x2, =KVM_HELLO_MMIO_PSCI_RESULT
        str     x0, [x2]
        ret

// vCPU 1: waits for an interrupt, forever (its GIC is not set up: none comes).
parked:
        wfi
        b       parked

        .balign 8
        .ltorg

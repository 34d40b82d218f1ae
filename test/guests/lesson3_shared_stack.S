// SPDX-License-Identifier: MIT
// lesson3_shared_stack.S: a mistake of lesson 3: vCPU 1 takes the top of
// RAM for its stack, vCPU 0's. Both CPUs run at once, so a frame one pushes
// lands on what the other saved there: here vCPU 0 keeps a value on its
// stack while vCPU 1 runs, and gets vCPU 1's back. The program reads each
// vCPU's SP_EL1 at its exits and says whose stack it is in.
// args: --lesson 3
// expect-status: 0
// expect-stdout: vCPU 1       its stack pointer SP_EL1 is 0x1fff0, in vCPU 0's stack (0x1f000 to 0x20000)
// expect-stdout: vCPU 0       the guest says: 1
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map
#include <linux/psci.h>   // PSCI_0_2_FN*: the function ids KVM knows

        .text
        .global _start
_start:                                     // vCPU 0: SP_EL1 is the top of RAM (the host set it)
        mov     x4, #'0'
        stp     x4, xzr, [sp, #-16]!        // keeps '0' on its stack: what it will print
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        mov     x1, #1                      // vCPU 1's MPIDR
        adr     x2, secondary
        mov     x3, #0
        hvc     #0
        adr     x1, done
1:      ldar    w2, [x1]                    // wait until vCPU 1 has run
        cbz     w2, 1b
        ldp     x4, xzr, [sp], #16          // its '0'... or what vCPU 1 pushed over it
        ldr     x1, =KVM_HELLO_MMIO_OUT
        strb    w4, [x1]
        mov     w4, #'\n'
        strb    w4, [x1]
power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        b       power_off

secondary:                                  // vCPU 1, from a reset: no stack yet
        ldr     x1, =KVM_HELLO_RAM_BASE + KVM_HELLO_RAM_SIZE
        mov     sp, x1                      // the mistake: vCPU 0's stack top (vCPU 1's is STACK_SIZE lower)
        mov     x4, #'1'
        stp     x4, xzr, [sp, #-16]!        // a frame of its own, over vCPU 0's
        ldr     x1, =KVM_HELLO_MMIO_OUT
        strb    w4, [x1]                    // an exit: the program looks at SP_EL1 here
        mov     w4, #'\n'
        strb    w4, [x1]
        adr     x1, done
        mov     w2, #1
        stlr    w2, [x1]
        ldr     x0, =PSCI_0_2_FN_CPU_OFF
        hvc     #0
        b       .

        .balign 4
done:   .word   0
        .balign 8
        .ltorg

// SPDX-License-Identifier: MIT
// lesson3_sgi_no_cpu_interface.S: a mistake of lesson 3: vCPU 1 enables the
// SGI in its part of the GIC but never sets up its CPU interface: its
// priority mask (PMR) stays at 0, where KVM's reset leaves it, and nothing
// can be signalled to it. vCPU 0's SGI reaches the GIC and stays pending;
// vCPU 1 sleeps in WFI; vCPU 0 asks AFFINITY_INFO until vCPU 1 is off, which
// it never is; the watchdog stops both, and the program shows each vCPU's
// registers and, for vCPU 1, its PMR as KVM has it.
// args: --lesson 3 --timeout 2
// expect-status: 24
// expect-stderr: vCPU 1       It waits in WFI at
// expect-stderr: vCPU 1       KVM says this vCPU's PMR is 0
// expect-stderr: vCPU 0       PC 0x
// expect-stderr: step 9 (run_guest), vCPU 0: the guest did not power off within 2000 ms
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map, the SGI
#include <linux/psci.h>   // PSCI_0_2_FN*: the function ids KVM knows

        .equ GICD_CTLR, 0x0000
        .equ GICD_ISENABLER, 0x0100
        .equ GICD_SGIR, 0x0f00
        .equ GICR_SGI_BASE, 0x10000
        .equ GICR_STRIDE, 0x20000

        .text
        .global _start
_start:                                     // vCPU 0: x0 = the GIC version
        mov     x19, x0
        ldr     x20, =KVM_HELLO_GIC_DIST
        cmp     x19, #3
        mov     w1, #(1 << 4) | (1 << 1)    // GICv3: ARE | EnableGrp1
        mov     w2, #1                      // GICv2: EnableGrp0
        csel    w1, w1, w2, eq
        str     w1, [x20, #GICD_CTLR]
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        mov     x1, #1
        adr     x2, secondary
        mov     x3, x19                     // the context id: the GIC version
        hvc     #0
        adr     x1, ready
1:      ldar    w2, [x1]
        cbz     w2, 1b
        cmp     x19, #3                     // the SGI to vCPU 1
        b.ne    2f
        ldr     x1, =(KVM_HELLO_SGI_INTID << 24) | (1 << 1)
        msr     icc_sgi1r_el1, x1
        isb
        b       wait_for_off
2:      ldr     w1, =(1 << 17) | KVM_HELLO_SGI_INTID
        str     w1, [x20, #GICD_SGIR]
wait_for_off:
        ldr     x0, =PSCI_0_2_FN64_AFFINITY_INFO
        mov     x1, #1
        mov     x2, #0
        hvc     #0
        cmp     x0, #PSCI_0_2_AFFINITY_LEVEL_ON
        b.eq    wait_for_off                // forever: vCPU 1 never gets the SGI, never calls CPU_OFF
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0

secondary:                                  // vCPU 1: x0 = the GIC version
        mov     x19, x0
        ldr     x1, =KVM_HELLO_RAM_BASE + KVM_HELLO_RAM_SIZE - KVM_HELLO_STACK_SIZE
        mov     sp, x1                      // its own stack
        mov     w2, #1 << KVM_HELLO_SGI_INTID
        cmp     x19, #3
        b.ne    3f
        ldr     x1, =KVM_HELLO_GIC_REDIST + GICR_STRIDE + GICR_SGI_BASE
        str     w2, [x1, #GICD_ISENABLER]   // the SGI enabled in its redistributor
        b       4f
3:      ldr     x1, =KVM_HELLO_GIC_DIST
        str     w2, [x1, #GICD_ISENABLER]   // the SGI enabled (its banked copy)
4:      // The mistake: no CPU interface. No ICC_PMR_EL1 and ICC_IGRPEN1_EL1
        // (GICv3), no GICC_PMR and GICC_CTLR (GICv2): PMR stays 0.
        adr     x1, ready
        mov     w2, #1
        stlr    w2, [x1]
        msr     daifclr, #2                 // IRQs unmasked: none will come
wait:   wfi
        b       wait

        .balign 4
ready:  .word   0
        .balign 8
        .ltorg

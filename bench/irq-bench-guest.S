// SPDX-License-Identifier: MIT
// irq-bench-guest.S: the second guest of `kvm-hello --bench`, for what an
// interrupt costs. The program times it (bench/bench.hpp's
// InterruptBenchDevice), not the guest: each round trip starts and ends in
// the program.
//
// The host sets x0 to the GIC's version (2 or 3), as for lesson 2's guest,
// x1 to the round trips of each kind in one measurement, x2 to how many
// measurements, before the first KVM_RUN. The guest sets up the GIC as
// lesson2/guest.S does, for its two SPIs only (no timer), unmasks IRQs, and
// then, for each measurement, in turn:
//   1. x1 + 1 writes to SINK: an MMIO exit each, and nothing else. The host
//      times each but the first from its answer to the one before (KVM_RUN,
//      the guest's store, the exit);
//   2. x1 rings of DOORBELL with KVM_HELLO_RING_LINE: on that exit the host
//      raises SPI KVM_HELLO_SPI_LINE with KVM_IRQ_LINE; the SPI is pending
//      when KVM re-enters the vCPU, so it is taken just after the store; the
//      handler acknowledges it and writes its INTID to IRQ: an exit, where
//      the host stops the clock it started before KVM_IRQ_LINE;
//   3. the same with KVM_HELLO_RING_IRQFD: the host writes to its irqfd,
//      wired to SPI KVM_HELLO_SPI_IRQFD.
// Then it powers off. The three kinds take turns within each measurement, so
// that a change of the machine's load falls on all three alike.
//
// Registers kept for the whole run:
//   x19  the GIC version (2 or 3); the IRQ handler reads it too
//   x20  the distributor's address (GICD)
//   x21  round trips of each kind per measurement; x22 measurements left
//   x23  interrupts the guest has waited for so far
//   x24  SINK, x25 DOORBELL

#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map, the SPIs and the doorbell's values
#include <linux/psci.h>   // PSCI_0_2_FN_SYSTEM_OFF

// The GIC's registers used: offsets in their frame (as lesson2/guest.S).
        .equ GICD_CTLR, 0x0000          // distributor control
        .equ GICD_IGROUPR, 0x0080       // group of each interrupt, 1 bit each
        .equ GICD_ISENABLER, 0x0100     // set-enable, 1 bit each
        .equ GICD_IPRIORITYR, 0x0400    // priority, 1 byte each
        .equ GICD_ITARGETSR, 0x0800     // GICv2: which CPU interfaces an SPI goes to, 1 byte each
        .equ GICD_ICFGR, 0x0c00         // level or edge, 2 bits each
        .equ GICD_IROUTER, 0x6000       // GICv3: which CPU an SPI goes to, 8 bytes each
        .equ GICR_WAKER, 0x0014         // GICv3 redistributor: awake or asleep
        .equ GICC_CTLR, 0x0000          // GICv2 CPU interface: control
        .equ GICC_PMR, 0x0004           // GICv2 CPU interface: priority mask
        .equ GICC_IAR, 0x000c           // GICv2 CPU interface: acknowledge
        .equ GICC_EOIR, 0x0010          // GICv2 CPU interface: end of interrupt

        .equ PRIORITY, 0xa0             // our SPIs' priority
        .equ PRIORITY_MASK, 0xf0        // PMR: only priorities below this are signalled
        .equ SPURIOUS, 1023             // the INTID an acknowledge returns when nothing is pending

// SPI `intid`, in the distributor (x20) of a GIC of version `gic`: group 1
// (GICv3) or 0 (GICv2), to vCPU 0, PRIORITY, edge-triggered, enabled. Uses w1.
.macro setup_spi intid, gic
  .if \gic == 3
        ldr     w1, [x20, #GICD_IGROUPR + 4 * (\intid / 32)]
        orr     w1, w1, #1 << (\intid % 32)
        str     w1, [x20, #GICD_IGROUPR + 4 * (\intid / 32)]    // group 1
        str     xzr, [x20, #GICD_IROUTER + 8 * \intid]          // to affinity 0.0.0.0: vCPU 0
  .else
        mov     w1, #1
        strb    w1, [x20, #GICD_ITARGETSR + \intid]             // to CPU interface 0: vCPU 0
  .endif
        mov     w1, #PRIORITY
        strb    w1, [x20, #GICD_IPRIORITYR + \intid]
        ldr     w1, [x20, #GICD_ICFGR + 4 * (\intid / 16)]
        orr     w1, w1, #2 << (2 * (\intid % 16))               // edge-triggered
        str     w1, [x20, #GICD_ICFGR + 4 * (\intid / 16)]
        mov     w1, #1 << (\intid % 32)
        str     w1, [x20, #GICD_ISENABLER + 4 * (\intid / 32)]  // enabled
.endm

        .text
        .global _start
_start:
        mov     x19, x0                     // the GIC version, from the host
        mov     x21, x1                     // round trips per measurement, from the host
        mov     x22, x2                     // measurements, from the host
        ldr     x24, =KVM_HELLO_MMIO_SINK
        ldr     x25, =KVM_HELLO_MMIO_DOORBELL

// Hello first: one exit before the GIC is touched, as lesson 2's guest (Linux
// 6.1 may register the vGIC's distributor only after the first KVM_RUN has
// begun). OUT, not SINK: the host times no round trip to it.
        ldr     x1, =KVM_HELLO_MMIO_OUT
        strb    wzr, [x1]

        adr     x1, vectors
        msr     vbar_el1, x1                // exceptions now go to our vector table
        isb

        ldr     x20, =KVM_HELLO_GIC_DIST
        cmp     x19, #3
        b.ne    gicv2

gicv3:
        mov     w1, #(1 << 4) | (1 << 1)    // ARE | EnableGrp1
        str     w1, [x20, #GICD_CTLR]
        setup_spi KVM_HELLO_SPI_LINE, 3
        setup_spi KVM_HELLO_SPI_IRQFD, 3
        ldr     x1, =KVM_HELLO_GIC_REDIST   // vCPU 0's redistributor: awake
        ldr     w2, [x1, #GICR_WAKER]
        bic     w2, w2, #(1 << 1)           // ProcessorSleep = 0
        str     w2, [x1, #GICR_WAKER]
        mrs     x1, icc_sre_el1
        orr     x1, x1, #1                  // SRE: the CPU interface's system registers
        msr     icc_sre_el1, x1
        isb
        mov     x1, #PRIORITY_MASK
        msr     icc_pmr_el1, x1             // KVM starts it at 0: nothing would be signalled
        mov     x1, #1
        msr     icc_igrpen1_el1, x1         // group 1 interrupts reach this CPU
        isb
        b       interrupts_ready

gicv2:
        mov     w1, #1
        str     w1, [x20, #GICD_CTLR]       // EnableGrp0
        setup_spi KVM_HELLO_SPI_LINE, 2
        setup_spi KVM_HELLO_SPI_IRQFD, 2
        ldr     x1, =KVM_HELLO_GIC_CPU
        mov     w2, #PRIORITY_MASK
        str     w2, [x1, #GICC_PMR]         // KVM starts it at 0: nothing would be signalled
        mov     w2, #1
        str     w2, [x1, #GICC_CTLR]        // EnableGrp0, signalled as IRQ

interrupts_ready:
        mov     w23, #0
        msr     daifclr, #2                 // IRQs unmasked from now on
        isb

measurement:
        add     x26, x21, #1                // 1. plain MMIO exits: one more than the round trips,
plain:  strb    wzr, [x24]                  //    as the host times each from the exit before it
        subs    x26, x26, #1
        b.ne    plain
        mov     w2, #KVM_HELLO_RING_LINE    // 2. KVM_IRQ_LINE
        bl      rounds
        mov     w2, #KVM_HELLO_RING_IRQFD   // 3. the irqfd
        bl      rounds
        subs    x22, x22, #1
        b.ne    measurement

power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        b       power_off

// x21 round trips: ring DOORBELL with w2, wait for the interrupt. The SPI is
// normally taken right after the store (IRQs are unmasked, it is pending on
// re-entry); the wait below, which checks with IRQs masked as lesson 2's
// wait_for_interrupt does, covers one that comes later. Uses x3, x26.
rounds:
        mov     x26, x21
ring:   str     w2, [x25]                   // exit: the host raises the SPI, starts its clock
        add     w23, w23, #1
wait:   msr     daifset, #2
        adr     x3, taken
        ldr     w3, [x3]
        cmp     w3, w23
        b.hs    came
        wfi
        msr     daifclr, #2
        isb
        b       wait
came:   msr     daifclr, #2
        subs    x26, x26, #1
        b.ne    ring
        ret

// The IRQ handler: acknowledge, end the interrupt, report its INTID (the
// exit that stops the host's clock), count it.
irq:
        stp     x0, x1, [sp, #-32]!
        stp     x2, x3, [sp, #16]
        cmp     x19, #3
        b.ne    1f
        mrs     x0, icc_iar1_el1            // GICv3: acknowledge
        and     w1, w0, #0xffffff
        b       2f
1:      ldr     x2, =KVM_HELLO_GIC_CPU
        ldr     w0, [x2, #GICC_IAR]         // GICv2: acknowledge
        and     w1, w0, #0x3ff
2:      cmp     w1, #SPURIOUS
        b.eq    irq_return
        cmp     x19, #3
        b.ne    3f
        msr     icc_eoir1_el1, x0           // GICv3: end of interrupt
        b       4f
3:      ldr     x2, =KVM_HELLO_GIC_CPU
        str     w0, [x2, #GICC_EOIR]        // GICv2: end of interrupt
4:      ldr     x2, =KVM_HELLO_MMIO_IRQ
        str     w1, [x2]                    // the ack: an exit, the host stops its clock
        adr     x2, taken
        ldr     w3, [x2]
        add     w3, w3, #1
        str     w3, [x2]
irq_return:
        ldp     x2, x3, [sp, #16]
        ldp     x0, x1, [sp], #32
        eret

// Anything else: stay here; the watchdog stops the run.
unexpected:
        b       unexpected

        .balign 4
taken:  .word   0                           // interrupts the handler has taken

        .balign 8
        .ltorg

// The vector table (as lesson2/guest.S's): only an IRQ from EL1h is expected.
.macro vector to
        .balign 0x80
        b       \to
.endm
        .balign 0x800
vectors:
        .rept 5
        vector unexpected                   // EL1t (4), EL1h synchronous
        .endr
        vector irq                          // +0x280 EL1h: IRQ
        .rept 10
        vector unexpected                   // EL1h FIQ and SError, EL0 (AArch64, AArch32)
        .endr

// SPDX-License-Identifier: MIT
// Lesson 2, exercise 1, an answer: a tick every 250 ms instead of 10 ms.
// One number changes, TICKS_PER_SECOND: the guest computes its deadline from
// CNTFRQ_EL0 (the counter's ticks per second), so the source holds no count
// of counter ticks at all. Three ticks come, as before, then both SPIs.
// args: --lesson 2
// expect-status: 0
// expect-stdout: tick 3: the guest's handler took INTID 27
// expect-stdout: interrupts the guest took: 27 27 27 40 41
// expect-stdout: shutdown: the guest powered off (PSCI SYSTEM_OFF) after 14 exits
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map, the SPIs and the doorbell's values
#include <linux/psci.h>   // PSCI_0_2_FN_SYSTEM_OFF: the function id KVM knows

// The GIC's registers we use: offsets in their frame (the Arm GIC
// architecture specification; Linux names them in include/linux/irqchip/).
        .equ GICD_CTLR, 0x0000          // distributor control
        .equ GICD_IGROUPR, 0x0080       // group of each interrupt, 1 bit each
        .equ GICD_ISENABLER, 0x0100     // set-enable, 1 bit each
        .equ GICD_IPRIORITYR, 0x0400    // priority, 1 byte each
        .equ GICD_ITARGETSR, 0x0800     // GICv2: which CPU interfaces an SPI goes to, 1 byte each
        .equ GICD_ICFGR, 0x0c00         // level or edge, 2 bits each
        .equ GICD_IROUTER, 0x6000       // GICv3: which CPU an SPI goes to, 8 bytes each
        .equ GICR_WAKER, 0x0014         // GICv3 redistributor: awake or asleep
        .equ GICR_SGI_BASE, 0x10000     // the redistributor's second frame: its SGIs and PPIs
        .equ GICC_CTLR, 0x0000          // GICv2 CPU interface: control
        .equ GICC_PMR, 0x0004           // GICv2 CPU interface: priority mask
        .equ GICC_IAR, 0x000c           // GICv2 CPU interface: acknowledge
        .equ GICC_EOIR, 0x0010          // GICv2 CPU interface: end of interrupt

        .equ PRIORITY, 0xa0             // our interrupts' priority: lower is more urgent
        .equ PRIORITY_MASK, 0xf0        // PMR: only priorities below this are signalled
        .equ SPURIOUS, 1023             // the INTID an acknowledge returns when nothing is pending
        .equ TIMER_ENABLE, 1            // CNTV_CTL_EL0.ENABLE
        .equ TIMER_IMASK, 2             // CNTV_CTL_EL0.IMASK: the timer's output is masked
        .equ TICKS, 3                   // how many times the timer wakes us
        .equ TICKS_PER_SECOND, 4        // a tick every 250 ms: the only number that changes

// Sets up SPI `intid` in the distributor (x20) of a GIC of version `gic`:
// its group (GICv3), where it goes (vCPU 0), its priority, edge-triggered,
// enabled. Uses w1.
.macro setup_spi intid, gic
  .if \gic == 3
        ldr     w1, [x20, #GICD_IGROUPR + 4 * (\intid / 32)]    // group 1, the group the CPU interface
        orr     w1, w1, #1 << (\intid % 32)                     //   enables below (one bit among 32:
        str     w1, [x20, #GICD_IGROUPR + 4 * (\intid / 32)]    //   read, set ours, write back)
        str     xzr, [x20, #GICD_IROUTER + 8 * \intid]          // to the CPU whose affinity is 0.0.0.0: vCPU 0
  .else
        mov     w1, #1                                          // to CPU interface 0 (one bit per
        strb    w1, [x20, #GICD_ITARGETSR + \intid]             //   interface): vCPU 0. Group 0: the default
  .endif
        mov     w1, #PRIORITY
        strb    w1, [x20, #GICD_IPRIORITYR + \intid]            // its priority: one byte per interrupt
        ldr     w1, [x20, #GICD_ICFGR + 4 * (\intid / 16)]
        orr     w1, w1, #2 << (2 * (\intid % 16))               // edge-triggered: a pulse is one interrupt
        str     w1, [x20, #GICD_ICFGR + 4 * (\intid / 16)]      //   (0 in its 2 bits would be level)
        mov     w1, #1 << (\intid % 32)
        str     w1, [x20, #GICD_ISENABLER + 4 * (\intid / 32)]  // enabled: it may be signalled now
.endm

        .text
        .global _start
_start:
        mov     x19, x0                     // x19: the GIC version the host put in x0

// Hello first: one exit to the host before we touch the GIC (Linux 6.1 may
// register the vGIC's distributor only after the first KVM_RUN has begun).
        ldr     x1, =KVM_HELLO_MMIO_OUT     // x1: the OUT register
        adr     x2, message                 // x2: the next byte of the message
next_byte:
        ldrb    w0, [x2]                    // from guest RAM: no exit
        cbz     w0, install_vectors         // the 0 that ends the string
        strb    w0, [x1]                    // MMIO write, 1 byte: one exit to the host
        add     x2, x2, #1
        b       next_byte

install_vectors:
        adr     x1, vectors
        msr     vbar_el1, x1                // exceptions now go to our vector table
        isb                                 // before anything can be taken through it

// The distributor: shared by every vCPU; it holds the SPIs.
        ldr     x20, =KVM_HELLO_GIC_DIST    // x20: the distributor (GICD)
        cmp     x19, #3
        b.ne    gicv2

gicv3:
        mov     w1, #(1 << 4) | (1 << 1)    // ARE (affinity routing; KVM has it always on) | EnableGrp1
        str     w1, [x20, #GICD_CTLR]       // the distributor forwards group 1 interrupts
        setup_spi KVM_HELLO_SPI_LINE, 3     // the SPI the host raises with KVM_IRQ_LINE
        setup_spi KVM_HELLO_SPI_IRQFD, 3    // the SPI the host's irqfd raises

// The redistributor: one per vCPU, vCPU 0's first. It holds the vCPU's own
// interrupts, the PPIs (the timer's) and SGIs.
        ldr     x21, =KVM_HELLO_GIC_REDIST  // x21: vCPU 0's redistributor (GICR)
        ldr     w1, [x21, #GICR_WAKER]
        bic     w1, w1, #(1 << 1)           // ProcessorSleep = 0: wake it (KVM's always is: reads 0,
        str     w1, [x21, #GICR_WAKER]      //   ignores writes; hardware needs it)
        add     x21, x21, #GICR_SGI_BASE    // x21: its SGI and PPI frame
        ldr     w1, [x21, #GICD_IGROUPR]    // (the same offsets as the distributor's)
        orr     w1, w1, #1 << KVM_HELLO_TIMER_INTID
        str     w1, [x21, #GICD_IGROUPR]    // the timer's PPI in group 1
        mov     w1, #PRIORITY
        strb    w1, [x21, #GICD_IPRIORITYR + KVM_HELLO_TIMER_INTID]  // its priority
        mov     w1, #1 << KVM_HELLO_TIMER_INTID
        str     w1, [x21, #GICD_ISENABLER]  // enabled (a PPI is level-triggered: no edge to set)

// The CPU interface: system registers on a GICv3.
        mrs     x1, icc_sre_el1
        orr     x1, x1, #1                  // SRE: use the system registers (KVM reads 1 here always)
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
        str     w1, [x20, #GICD_CTLR]       // EnableGrp0: the distributor forwards group 0 interrupts
        setup_spi KVM_HELLO_SPI_LINE, 2     // the SPI the host raises with KVM_IRQ_LINE
        setup_spi KVM_HELLO_SPI_IRQFD, 2    // the SPI the host's irqfd raises
        mov     w1, #PRIORITY               // a GICv2 has no redistributor: the timer's PPI is in the
        strb    w1, [x20, #GICD_IPRIORITYR + KVM_HELLO_TIMER_INTID]  // distributor, banked per CPU
        mov     w1, #1 << KVM_HELLO_TIMER_INTID
        str     w1, [x20, #GICD_ISENABLER]  // enabled

// The CPU interface: a memory-mapped frame on a GICv2.
        ldr     x21, =KVM_HELLO_GIC_CPU     // x21: the CPU interface (GICC)
        mov     w1, #PRIORITY_MASK
        str     w1, [x21, #GICC_PMR]        // KVM starts it at 0: nothing would be signalled
        mov     w1, #1
        str     w1, [x21, #GICC_CTLR]       // EnableGrp0, signalled as IRQ (FIQEn is 0)

// Three ticks of the virtual timer, each slept through in WFI.
interrupts_ready:
        mov     w22, #0                     // w22: interrupts waited for so far
        mov     w23, #TICKS                 // w23: ticks still to come
tick:
        bl      arm_timer                   // 250 ms from now
        add     w22, w22, #1
        bl      wait_for_interrupt          // sleeps in WFI; the IRQ handler reports INTID 27
        subs    w23, w23, #1
        b.ne    tick

// Two interrupts from the host: we ring the doorbell, the host injects.
        ldr     x1, =KVM_HELLO_MMIO_DOORBELL
        mov     w2, #KVM_HELLO_RING_LINE
        str     w2, [x1]                    // MMIO exit: the host raises SPI 40 (KVM_IRQ_LINE)
        add     w22, w22, #1
        bl      wait_for_interrupt          // the handler reports INTID 40
        ldr     x1, =KVM_HELLO_MMIO_DOORBELL  // again: wait_for_interrupt used x1
        mov     w2, #KVM_HELLO_RING_IRQFD
        str     w2, [x1]                    // MMIO exit: the host signals its irqfd: SPI 41
        add     w22, w22, #1
        bl      wait_for_interrupt          // the handler reports INTID 41

power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF // PSCI: function id in x0, then a hypervisor call
        hvc     #0                          // KVM exits with KVM_EXIT_SYSTEM_EVENT (SHUTDOWN)
        b       power_off                   // reached only if the host resumes the stopped vCPU

// Arms the virtual timer to fire 250 ms from now: CNTFRQ_EL0 counts per
// second, whatever the CPU (62.5 MHz on QEMU's Cortex-A57, 1 GHz on some).
// Uses x1 and x2.
arm_timer:
        mrs     x1, cntfrq_el0              // counter ticks per second
        mov     x2, #TICKS_PER_SECOND
        udiv    x1, x1, x2                  // counter ticks per 250 ms
        isb                                 // read the counter now, not earlier
        mrs     x2, cntvct_el0              // the virtual counter: now
        add     x1, x1, x2
        msr     cntv_cval_el0, x1           // fire when the counter reaches now + 250 ms
        mov     x1, #TIMER_ENABLE
        msr     cntv_ctl_el0, x1            // ENABLE, IMASK clear: its output goes to PPI 27
        isb
        ret

// Sleeps until the IRQ handler has counted w22 interrupts, without losing a
// wake-up: the count is checked with IRQs masked, so an interrupt arriving
// between the check and the WFI stays pending, and WFI returns at once for a
// pending interrupt even while IRQs are masked. Only then are they unmasked,
// and the interrupt is taken. Uses x1 and x2.
wait_for_interrupt:
        msr     daifset, #2                 // mask IRQs
        adr     x1, taken
        ldr     w2, [x1]                    // the handler's count, from guest RAM
        cmp     w2, w22
        b.hs    1f                          // it came: done
        wfi                                 // sleep: KVM puts the vCPU thread to sleep until an interrupt
        msr     daifclr, #2                 // unmask IRQs: the pending one is taken here
        isb                                 //   (before the loop masks them again)
        b       wait_for_interrupt
1:      ret

// The IRQ handler: acknowledge, (for the timer) mask its output, end the
// interrupt, report its INTID to the host, count it.
irq:
        stp     x0, x1, [sp, #-32]!         // save what we use, on the stack (SP_EL1, in RAM)
        stp     x2, x3, [sp, #16]
        cmp     x19, #3
        b.ne    1f
        mrs     x0, icc_iar1_el1            // GICv3: acknowledge; pending becomes active
        and     w1, w0, #0xffffff           // the INTID: the low 24 bits
        b       2f
1:      ldr     x2, =KVM_HELLO_GIC_CPU
        ldr     w0, [x2, #GICC_IAR]         // GICv2: acknowledge; pending becomes active
        and     w1, w0, #0x3ff              // the INTID: the low 10 bits
2:      cmp     w1, #SPURIOUS
        b.eq    irq_return                  // nothing was pending after all: no EOI for it
        cmp     w1, #KVM_HELLO_TIMER_INTID
        b.ne    3f
        mov     x2, #TIMER_IMASK | TIMER_ENABLE
        msr     cntv_ctl_el0, x2            // mask the timer's output BEFORE the EOI: it is level-
        isb                                 //   triggered and stays high, so it would fire again at once
3:      cmp     x19, #3
        b.ne    4f
        msr     icc_eoir1_el1, x0           // GICv3: end of interrupt (priority drop and deactivate)
        b       5f
4:      ldr     x2, =KVM_HELLO_GIC_CPU
        str     w0, [x2, #GICC_EOIR]        // GICv2: end of interrupt
5:      ldr     x2, =KVM_HELLO_MMIO_IRQ
        str     w1, [x2]                    // MMIO write, 4 bytes: one exit, the host sees the INTID
        adr     x2, taken
        ldr     w3, [x2]
        add     w3, w3, #1
        str     w3, [x2]                    // one more taken: wait_for_interrupt sees it
irq_return:
        ldp     x2, x3, [sp, #16]
        ldp     x0, x1, [sp], #32           // back as they were
        eret                                // to where the IRQ came: after the msr daifclr

// Anything else is a mistake: stay here, and kvm-hello's watchdog stops us;
// its register dump reads ESR_EL1 and ELR_EL1 to say what happened.
unexpected:
        b       unexpected

message:
        .asciz  "hello\n"

        .balign 4
taken:  .word   0                           // interrupts the handler has taken

        .balign 8
        .ltorg                              // the constants the `ldr xN, =...` above load

// The vector table: 16 entries of 128 bytes, 2 KiB aligned (VBAR_EL1's low
// 11 bits are 0). Four groups of four (synchronous, IRQ, FIQ, SError): taken
// from EL1 with SP_EL0, from EL1 with SP_ELx (ours: EL1h), from EL0 in
// AArch64, from EL0 in AArch32. We expect only an IRQ, at +0x280.
.macro vector to
        .balign 0x80
        b       \to
.endm
        .balign 0x800
vectors:
        vector unexpected                   // +0x000 EL1t: synchronous
        vector unexpected                   // +0x080 EL1t: IRQ
        vector unexpected                   // +0x100 EL1t: FIQ
        vector unexpected                   // +0x180 EL1t: SError
        vector unexpected                   // +0x200 EL1h: synchronous (a fault of ours)
        vector irq                          // +0x280 EL1h: IRQ, the one we use
        vector unexpected                   // +0x300 EL1h: FIQ
        vector unexpected                   // +0x380 EL1h: SError
        vector unexpected                   // +0x400 EL0, AArch64: synchronous
        vector unexpected                   // +0x480 EL0, AArch64: IRQ
        vector unexpected                   // +0x500 EL0, AArch64: FIQ
        vector unexpected                   // +0x580 EL0, AArch64: SError
        vector unexpected                   // +0x600 EL0, AArch32: synchronous
        vector unexpected                   // +0x680 EL0, AArch32: IRQ
        vector unexpected                   // +0x700 EL0, AArch32: FIQ
        vector unexpected                   // +0x780 EL0, AArch32: SError

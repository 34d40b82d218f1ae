// SPDX-License-Identifier: MIT
// Lesson 3, exercise 1, an answer: a third vCPU. Run with --vcpus 3: the
// program creates vCPUs 0, 1 and 2, the last two powered off. This is
// lesson3/guest.S with vCPU 0 starting both (two CPU_ONs, MPIDR 1 and 2,
// the same entry), and everything that was vCPU 1's made per CPU: each
// secondary finds its number in its MPIDR_EL1 (Aff0: KVM makes vCPU n's n),
// and from it its stack (vCPU 2's is 8 KiB below the top of RAM), its
// redistributor (KVM_HELLO_GIC_REDIST + 2 * 0x20000) and its words in guest
// RAM. One SGI reaches both: a GICv3's TargetList has a bit per Aff0 (bits 1
// and 2), a GICv2's CPUTargetList a bit per CPU interface. vCPU 0 then asks
// AFFINITY_INFO for each, until each is OFF.
// The secondaries speak one after the other (the word `go` holds whose turn
// it is), so that their hellos come in the same order every run.
// args: --lesson 3 --vcpus 3
// expect-status: 0
// expect-stdout: guest output, vCPU 2: hello 2
// expect-stdout: interrupts vCPU 1 took: 27 1
// expect-stdout: interrupts vCPU 2 took: 27 1
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map, the SGI, the stacks
#include <linux/psci.h>   // PSCI_0_2_FN*: the function ids KVM knows

// The GIC's registers we use: offsets in their frame (the Arm GIC
// architecture specification; Linux names them in include/linux/irqchip/).
        .equ GICD_CTLR, 0x0000          // distributor control
        .equ GICD_IGROUPR, 0x0080       // group of each interrupt, 1 bit each
        .equ GICD_ISENABLER, 0x0100     // set-enable, 1 bit each
        .equ GICD_IPRIORITYR, 0x0400    // priority, 1 byte each
        .equ GICD_SGIR, 0x0f00          // GICv2: send an SGI
        .equ GICR_WAKER, 0x0014         // GICv3 redistributor: awake or asleep
        .equ GICR_SGI_BASE, 0x10000     // the redistributor's second frame: its SGIs and PPIs
        .equ GICR_STRIDE_SHIFT, 17      // vCPU n's redistributor is 2 frames (0x20000) after vCPU n-1's
        .equ GICC_CTLR, 0x0000          // GICv2 CPU interface: control
        .equ GICC_PMR, 0x0004           // GICv2 CPU interface: priority mask
        .equ GICC_IAR, 0x000c           // GICv2 CPU interface: acknowledge
        .equ GICC_EOIR, 0x0010          // GICv2 CPU interface: end of interrupt

        .equ PRIORITY, 0xa0             // our interrupts' priority: lower is more urgent
        .equ PRIORITY_MASK, 0xf0        // PMR: only priorities below this are signalled
        .equ SPURIOUS, 1023             // the INTID an acknowledge returns when nothing is pending
        .equ TIMER_ENABLE, 1            // CNTV_CTL_EL0.ENABLE
        .equ TIMER_IMASK, 2             // CNTV_CTL_EL0.IMASK: the timer's output is masked
        .equ TICKS_PER_SECOND, 100      // a tick 10 ms after it is armed

        .equ SECONDARY, 1               // the CPU vCPU 0 starts: its MPIDR (KVM makes vCPU n's Aff0 n)
        .equ THIRD, 2                   // the exercise: and this one
        .equ OUR_INTERRUPTS, (1 << KVM_HELLO_TIMER_INTID) | (1 << KVM_HELLO_SGI_INTID)
// The SGI for CPU SECONDARY, as each GIC wants it written:
//   GICv3, ICC_SGI1R_EL1: INTID in bits 27-24; the targets' Aff3.Aff2.Aff1
//   (0.0.0 here) in bits 55-48, 39-32, 23-16; a bit per Aff0 in the
//   TargetList, bits 15-0.
//   GICv2, GICD_SGIR: a bit per CPU interface in CPUTargetList, bits 23-16;
//   the INTID in bits 3-0.
        .equ SGI_V3, (KVM_HELLO_SGI_INTID << 24) | (1 << SECONDARY) | (1 << THIRD)
        .equ SGI_V2, (1 << (16 + SECONDARY)) | (1 << (16 + THIRD)) | KVM_HELLO_SGI_INTID

// Gives the timer's PPI and the SGI priority PRIORITY, in the frame at
// `frame`: a GICv3's SGI frame, or a GICv2's distributor. Uses w2.
.macro set_priorities frame
        mov     w2, #PRIORITY
        strb    w2, [\frame, #GICD_IPRIORITYR + KVM_HELLO_TIMER_INTID]  // one byte per interrupt
        strb    w2, [\frame, #GICD_IPRIORITYR + KVM_HELLO_SGI_INTID]
.endm

        .text
        .global _start
_start:                                     // vCPU 0, as the host set it up: x0 = the GIC version
        mov     x19, x0                     // x19: the GIC version
        mov     x21, #0                     // x21: this CPU's number
// Hello first: one exit to the host before we touch the GIC (Linux 6.1 may
// register the vGIC's distributor only after the first KVM_RUN has begun).
        bl      say_hello
        bl      install_vectors
        ldr     x20, =KVM_HELLO_GIC_DIST    // x20: the distributor (GICD)
        bl      enable_distributor          // shared by every CPU: the boot CPU enables it, once
        bl      setup_this_cpu              // this CPU's own part of the GIC

// Start vCPU 1: PSCI CPU_ON, answered inside KVM (kvm_psci_vcpu_on). KVM
// finds the vCPU whose MPIDR is x1, records x2 and x3 for its reset, makes it
// runnable and wakes its thread; then returns here with x0 = 0 (SUCCESS), or
// a PSCI error code.
        mov     x1, #SECONDARY
        bl      start_cpu                   // CPU_ON for vCPU 1, reported
        mov     x1, #THIRD
        bl      start_cpu                   // the exercise: and for vCPU 2

        adr     x1, go
        mov     w2, #SECONDARY
        stlr    w2, [x1]                    // vCPU 1 may speak now; it hands the turn to vCPU 2

        adr     x1, ready + 4 * SECONDARY   // wait until both can take the SGI: loops in the
        adr     x3, ready + 4 * THIRD       //   guest, no exit; one word per CPU
1:      ldar    w2, [x1]                    // (ldar takes no index: one address per word)
        cbnz    w2, 2f
        yield
        b       1b
2:      add     x1, x1, #4
        cmp     x1, x3
        b.ls    1b

// The SGI: an interrupt from one CPU to another, through the GIC (KVM's
// vGIC delivers it to vCPU 1, and wakes it from WFI, inside the kernel).
        cmp     x19, #3
        b.ne    1f
        ldr     x1, =SGI_V3
        msr     icc_sgi1r_el1, x1           // GICv3: a system register (KVM traps it: vgic_v3_dispatch_sgi)
        isb
        b       wait_for_secondary_off
1:      ldr     w1, =SGI_V2
        str     w1, [x20, #GICD_SGIR]       // GICv2: the distributor's GICD_SGIR

// PSCI AFFINITY_INFO, again and again, until vCPU 1 is off: 0 is ON, 1 OFF
// (KVM answers from the target's mp_state: kvm_psci_vcpu_affinity_info).
wait_for_secondary_off:
        mov     x1, #SECONDARY
        bl      wait_until_off
        mov     x1, #THIRD                  // the exercise: and vCPU 2
        bl      wait_until_off

power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF // every vCPU stops; only this one's KVM_RUN returns
        hvc     #0                          // KVM exits with KVM_EXIT_SYSTEM_EVENT (SHUTDOWN)
        b       power_off                   // reached only if the host resumes the stopped vCPU

// vCPU 1 starts here, from a reset, with x0 = vCPU 0's context id.
secondary_entry:
        mov     x19, x0                     // x19: the GIC version, from the context id
        mrs     x21, mpidr_el1
        and     x21, x21, #0xff             // x21: this CPU's number, Aff0 of its MPIDR
// A stack of its own: vCPU n's is the STACK_SIZE bytes below RAM's top
// minus n * STACK_SIZE (vCPU 0's is at the very top, where the host put it).
// Sharing vCPU 0's would let each overwrite what the other saved there.
        ldr     x1, =KVM_HELLO_RAM_BASE + KVM_HELLO_RAM_SIZE
        mov     x2, #KVM_HELLO_STACK_SIZE
        msub    x1, x21, x2, x1             // x1 = top - n * STACK_SIZE
        mov     sp, x1                      // SP_EL1: we run at EL1h
        bl      install_vectors             // its own VBAR_EL1: a reset leaves it unset
        ldr     x20, =KVM_HELLO_GIC_DIST    // x20: the distributor, shared (vCPU 0 enabled it)
        bl      setup_this_cpu              // its own redistributor and CPU interface

        adr     x1, go                      // wait for this CPU's turn to speak
1:      yield
        ldar    w2, [x1]
        cmp     w2, w21
        b.ne    1b
        bl      say_hello
        adr     x1, go
        add     w2, w21, #1
        stlr    w2, [x1]                    // the next CPU's turn
        mov     w22, #0                     // w22: interrupts waited for so far
        bl      arm_timer                   // its own timer: each vCPU has one (INTID 27, its PPI)
        add     w22, w22, #1
        bl      wait_for_interrupt          // sleeps in WFI; the IRQ handler reports INTID 27

        adr     x1, ready
        add     x1, x1, x21, lsl #2         // this CPU's word
        mov     w2, #1
        stlr    w2, [x1]                    // vCPU 0 may send the SGI now, as far as we are concerned
        add     w22, w22, #1
        bl      wait_for_interrupt          // sleeps in WFI; the handler reports the SGI's INTID

        ldr     x0, =PSCI_0_2_FN_CPU_OFF    // this CPU stops: KVM makes it STOPPED (kvm_psci_vcpu_off)
        hvc     #0                          //   and its KVM_RUN sleeps, with no exit to the host
        ldr     w1, =PSCI_0_2_FN_CPU_OFF    // reached only if CPU_OFF failed: report what it said
        bl      report_psci
        b       unexpected

// ---- vCPU 0's part, per CPU it starts (the exercise) ------------------------

// PSCI CPU_ON for the CPU whose MPIDR is x1, at secondary_entry, with the
// GIC version as the context id; reports the call and its x0. Uses x0 to x3;
// keeps the link register in x23 (report_psci is a call too).
start_cpu:
        mov     x23, x30
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        adr     x2, secondary_entry         // where it starts: the same entry for both
        mov     x3, x19                     // the context id, its x0 there: the GIC version
        hvc     #0
        ldr     w1, =PSCI_0_2_FN64_CPU_ON
        bl      report_psci
        ret     x23

// Asks PSCI AFFINITY_INFO for the CPU whose MPIDR is x1 until it is OFF;
// reports the last answer. Uses x0 to x2, x24; x23 for the link register.
wait_until_off:
        mov     x23, x30
        mov     x24, x1
1:      ldr     x0, =PSCI_0_2_FN64_AFFINITY_INFO
        mov     x1, x24
        mov     x2, #0                      // affinity level 0: that one CPU
        hvc     #0
        cmp     x0, #PSCI_0_2_AFFINITY_LEVEL_ON
        b.eq    1b                          // still on: ask again (no exit to the host)
        ldr     w1, =PSCI_0_2_FN64_AFFINITY_INFO
        bl      report_psci
        ret     x23

// ---- What every CPU calls ------------------------------------------------------

// Writes "hello N\n" to OUT, N this CPU's number (x21): one exit per byte.
// Uses x1 to x3.
say_hello:
        ldr     x1, =KVM_HELLO_MMIO_OUT     // x1: the OUT register
        adr     x2, message                 // x2: the next byte of the message
1:      ldrb    w3, [x2], #1                // from guest RAM: no exit
        cbz     w3, 2f                      // the 0 that ends the string
        strb    w3, [x1]                    // MMIO write, 1 byte: one exit to the host
        b       1b
2:      add     w3, w21, #'0'               // this CPU's number, as a digit
        strb    w3, [x1]
        mov     w3, #'\n'
        strb    w3, [x1]
        ret

// Tells the host the PSCI call just made: function id w1 to PSCI_CALL (4
// bytes), then what it returned, x0, to PSCI_RESULT (8 bytes). Uses x2.
report_psci:
        ldr     x2, =KVM_HELLO_MMIO_PSCI_CALL
        str     w1, [x2]
        ldr     x2, =KVM_HELLO_MMIO_PSCI_RESULT
        str     x0, [x2]
        ret

// VBAR_EL1: this CPU's exceptions go to our vector table. Uses x1.
install_vectors:
        adr     x1, vectors
        msr     vbar_el1, x1
        isb                                 // before anything can be taken through it
        ret

// The distributor forwards the interrupts of the group this GIC signals as
// IRQ: group 1 (GICv3), group 0 (GICv2). Uses w1 and w2.
enable_distributor:
        cmp     x19, #3
        mov     w1, #(1 << 4) | (1 << 1)    // GICv3: ARE (affinity routing; KVM has it always on) | EnableGrp1
        mov     w2, #1                      // GICv2: EnableGrp0
        csel    w1, w1, w2, eq
        str     w1, [x20, #GICD_CTLR]
        ret

// This CPU's own part of the GIC: its timer's PPI and the SGI, each in the
// group it signals, at PRIORITY, enabled; its CPU interface, letting
// PRIORITY through. A GICv3 keeps a CPU's SGIs and PPIs in its redistributor
// (vCPU n's at GICR + n * 0x20000); a GICv2 in the distributor, banked: the
// same addresses reach each CPU's own copy. Uses x1 to x3.
setup_this_cpu:
        cmp     x19, #3
        b.ne    2f
        ldr     x1, =KVM_HELLO_GIC_REDIST
        add     x1, x1, x21, lsl #GICR_STRIDE_SHIFT  // x1: this CPU's redistributor (RD_base)
        ldr     w2, [x1, #GICR_WAKER]
        bic     w2, w2, #(1 << 1)           // ProcessorSleep = 0: wake it (KVM's always is: reads 0,
        str     w2, [x1, #GICR_WAKER]       //   ignores writes; hardware needs it)
        add     x1, x1, #GICR_SGI_BASE      // x1: its SGI and PPI frame (the distributor's offsets)
        ldr     w3, =OUR_INTERRUPTS
        ldr     w2, [x1, #GICD_IGROUPR]
        orr     w2, w2, w3
        str     w2, [x1, #GICD_IGROUPR]     // group 1
        set_priorities x1
        str     w3, [x1, #GICD_ISENABLER]   // enabled
        mrs     x1, icc_sre_el1
        orr     x1, x1, #1                  // SRE: use the system registers (KVM reads 1 here always)
        msr     icc_sre_el1, x1
        isb
        mov     x1, #PRIORITY_MASK
        msr     icc_pmr_el1, x1             // KVM starts it at 0: nothing would be signalled
        mov     x1, #1
        msr     icc_igrpen1_el1, x1         // group 1 interrupts reach this CPU
        isb
        ret
2:      set_priorities x20                  // GICv2: this CPU's banked copy, group 0 (the default)
        ldr     w3, =OUR_INTERRUPTS
        str     w3, [x20, #GICD_ISENABLER]  // enabled
        ldr     x1, =KVM_HELLO_GIC_CPU      // the CPU interface: one address, each CPU its own
        mov     w2, #PRIORITY_MASK
        str     w2, [x1, #GICC_PMR]         // KVM starts it at 0: nothing would be signalled
        mov     w2, #1
        str     w2, [x1, #GICC_CTLR]        // EnableGrp0, signalled as IRQ (FIQEn is 0)
        ret

// Arms this CPU's virtual timer to fire 10 ms from now (CNTFRQ_EL0 counts
// per second). Uses x1 and x2.
arm_timer:
        mrs     x1, cntfrq_el0              // counter ticks per second
        mov     x2, #TICKS_PER_SECOND
        udiv    x1, x1, x2                  // counter ticks per 10 ms
        isb                                 // read the counter now, not earlier
        mrs     x2, cntvct_el0              // the virtual counter: now
        add     x1, x1, x2
        msr     cntv_cval_el0, x1           // fire when the counter reaches now + 10 ms
        mov     x1, #TIMER_ENABLE
        msr     cntv_ctl_el0, x1            // ENABLE, IMASK clear: its output goes to PPI 27
        isb
        ret

// Sleeps until this CPU's IRQ handler has counted w22 interrupts, without
// losing a wake-up (lesson 2's wait: the count is checked with IRQs masked;
// WFI returns at once for one pending, even masked). Uses x1 and x2.
wait_for_interrupt:
        msr     daifset, #2                 // mask IRQs
        adr     x1, taken
        ldr     w2, [x1, x21, lsl #2]       // this CPU's count, from guest RAM
        cmp     w2, w22
        b.hs    1f                          // it came: done
        wfi                                 // sleep: KVM puts this vCPU's thread to sleep until an interrupt
        msr     daifclr, #2                 // unmask IRQs: the pending one is taken here
        isb                                 //   (before the loop masks them again)
        b       wait_for_interrupt
1:      ret

// The IRQ handler, on whichever CPU took the interrupt: acknowledge, (for
// the timer) mask its output, end the interrupt, report its INTID to the
// host, count it in this CPU's count.
irq:
        stp     x0, x1, [sp, #-32]!         // save what we use, on this CPU's stack
        stp     x2, x3, [sp, #16]
        cmp     x19, #3
        b.ne    1f
        mrs     x0, icc_iar1_el1            // GICv3: acknowledge; pending becomes active
        and     w1, w0, #0xffffff           // the INTID: the low 24 bits
        b       2f
1:      ldr     x2, =KVM_HELLO_GIC_CPU
        ldr     w0, [x2, #GICC_IAR]         // GICv2: acknowledge (an SGI's also names its sender,
        and     w1, w0, #0x3ff              //   bits 12-10); the INTID: the low 10 bits
2:      cmp     w1, #SPURIOUS
        b.eq    irq_return                  // nothing was pending after all: no EOI for it
        cmp     w1, #KVM_HELLO_TIMER_INTID
        b.ne    3f
        mov     x2, #TIMER_IMASK | TIMER_ENABLE
        msr     cntv_ctl_el0, x2            // mask the timer's output BEFORE the EOI (a level: it
        isb                                 //   stays high, and would fire again at once)
3:      cmp     x19, #3
        b.ne    4f
        msr     icc_eoir1_el1, x0           // GICv3: end of interrupt (priority drop and deactivate)
        b       5f
4:      ldr     x2, =KVM_HELLO_GIC_CPU
        str     w0, [x2, #GICC_EOIR]        // GICv2: end of interrupt (the whole IAR value)
5:      ldr     x2, =KVM_HELLO_MMIO_IRQ
        str     w1, [x2]                    // MMIO write, 4 bytes: one exit, the host sees the INTID
        adr     x2, taken
        add     x2, x2, x21, lsl #2         // this CPU's count
        ldr     w3, [x2]
        add     w3, w3, #1
        str     w3, [x2]                    // one more taken: wait_for_interrupt sees it
irq_return:
        ldp     x2, x3, [sp, #16]
        ldp     x0, x1, [sp], #32           // back as they were
        eret                                // to where the IRQ came: after the msr daifclr

// Anything else is a mistake: stay here, and kvm-hello's watchdog stops us;
// its register dump of each vCPU reads ESR_EL1 and ELR_EL1.
unexpected:
        b       unexpected

message:
        .asciz  "hello "

        .balign 4
go:     .word   0                           // whose turn to say hello: vCPU 0 sets 1, vCPU n then n + 1
ready:  .word   0, 0, 0                     // vCPU n -> vCPU 0: my CPU interface is on, send the SGI
taken:  .word   0, 0, 0                     // interrupts each CPU's handler has taken, by CPU number

        .balign 8
        .ltorg                              // the constants the `ldr xN, =...` above load

// The vector table, shared: each CPU's VBAR_EL1 points here. 16 entries of
// 128 bytes, 2 KiB aligned; we expect only an IRQ taken at EL1h, +0x280.
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

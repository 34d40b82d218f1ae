// Exercise 4, an answer: fault on purpose, and catch it. The guest puts its
// own exception vector table in guest RAM (VBAR_EL1, 2 KiB aligned), then
// executes an undefined instruction. The CPU jumps to VBAR_EL1 + 0x200 (a
// synchronous exception from the current EL, on SP_EL1), where the handler
// reports the exception class (ESR_EL1 bits [31:26]) and powers off. Compare
// with test/guests/undefined.S, whose vectors are not in RAM.
// expect-status: 0
// expect-stdout: guest output: caught EC 0x00\n
// The dump after it: the exception was taken, and its handler went on.
// expect-stdout: esr_el1 0x2000000 (EC 0x0: unknown reason, e.g. an undefined instruction)
// expect-stdout: elr_el1 0x1000c (the instruction it happened at)  far_el1 not written (no abort)  vbar_el1 0x10800 (PC is outside them: a handler went on)
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        adr     x0, vectors
        msr     vbar_el1, x0
        isb
        udf     #0                          // undefined: to VBAR_EL1 + 0x200

        .balign 0x800                       // the vector table: 16 entries of 0x80 bytes
vectors:
        .skip   0x200                       // the four entries for the current EL on SP_EL0: unused
        b       handler                     // 0x200: current EL on SP_ELx, synchronous
        .skip   0x800 - 0x200 - 4           // the other entries: unused

handler:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        adr     x2, caught
print:  ldrb    w0, [x2]
        cbz     w0, class
        strb    w0, [x1]
        add     x2, x2, #1
        b       print
class:  mrs     x3, esr_el1
        lsr     x3, x3, #26                 // EC: the exception class
        and     x3, x3, #0x3f
        lsr     x4, x3, #4                  // as two hex digits (0-3, 0-f)
        add     w4, w4, #'0'
        strb    w4, [x1]
        and     x4, x3, #0xf
        cmp     x4, #10
        add     x5, x4, #'0'
        add     x6, x4, #('a' - 10)
        csel    x4, x5, x6, lo
        strb    w4, [x1]
        mov     w0, #'\n'
        strb    w0, [x1]
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
caught: .asciz  "caught EC 0x"
        .balign 8
        .ltorg

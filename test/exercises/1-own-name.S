// Exercise 1, an answer: make the guest print its own name.
// The message is data in guest RAM; only the stores to OUT leave the guest.
// expect-status: 0
// expect-stdout: guest output: I am kvm-hello's guest\n
// expect-stdout: after 24 exits
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        adr     x2, name
next:   ldrb    w0, [x2]
        cbz     w0, done
        strb    w0, [x1]
        add     x2, x2, #1
        b       next
done:   ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
name:   .asciz  "I am kvm-hello's guest\n"
        .balign 8
        .ltorg

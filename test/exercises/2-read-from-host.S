// Exercise 2, an answer: read a value from the host and show it. The host
// answers reads of ANSWER with 0x2a, which is the character '*'; the guest
// writes it to OUT, then 0x2a + 1, '+'.
// expect-status: 0
// expect-stdout: KVM_EXIT_MMIO address=0x1108 is_write=0 len=4 data=0x2a
// expect-stdout: guest output: *+
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        ldr     x3, =KVM_HELLO_MMIO_ANSWER
        ldr     w0, [x3]                    // MMIO read: the host puts 0x2a in w0
        strb    w0, [x1]                    // '*'
        add     w0, w0, #1
        strb    w0, [x1]                    // '+'
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .ltorg

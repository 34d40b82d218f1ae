// flood.S: a guest that floods OUT with 5000 bytes, escape characters among
// them. The run goes on; the host keeps 4096 bytes, shows 100 exits one by
// one, and never sends the guest's control characters to the terminal raw.
// args: --timeout 60
// expect-status: 0
// expect-stdout: (more exits than 100: not shown one by one; -v shows them all)
// expect-stdout: guest output: \x1b[X\x1b[X
// expect-stdout: (and 904 more bytes, not kept)
// expect-stdout: after 5001 exits
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     x2, #1666                   // 1666 times 3 bytes, then 2 more: 5000
again:
        mov     w0, #0x1b                   // ESC: would start a terminal escape sequence
        strb    w0, [x1]
        mov     w0, #'['
        strb    w0, [x1]
        mov     w0, #'X'
        strb    w0, [x1]
        subs    x2, x2, #1
        b.ne    again
        mov     w0, #'!'
        strb    w0, [x1]
        strb    w0, [x1]
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .ltorg

// writeback_mmio.S: a store to MMIO that also moves its base register
// (post-index): the hardware does not describe it to KVM, so ENOSYS.
// expect-status: 20
// expect-stderr: a load or store with writeback (pre- or post-index)
#include "kvm_hello.hpp"
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w0, #'x'
        strb    w0, [x1], #1
        b       _start
        .ltorg

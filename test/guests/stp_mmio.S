// stp_mmio.S: a guest that stores a register pair to MMIO. A load/store pair
// gives KVM no description of the access (no valid syndrome), so KVM_RUN
// fails with ENOSYS instead of exiting with KVM_EXIT_MMIO.
// expect-status: 20
// expect-stderr: the instruction at PC 0x10004 (stp_mmio.S:12: stp     x2, x3, [x1]) is a9000c22, a load/store pair (LDP/STP)
// expect-stderr: KVM_RUN failed with ENOSYS
#include "kvm_hello.hpp"
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        stp     x2, x3, [x1]
        b       _start
        .ltorg

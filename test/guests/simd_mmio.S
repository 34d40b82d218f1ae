// simd_mmio.S: a store of a SIMD register to MMIO. First it lets EL1 use
// SIMD/FP at all (CPACR_EL1.FPEN = 0b11; otherwise the store would trap as
// an FP access); then the store reaches MMIO without a syndrome: ENOSYS.
// expect-status: 20
// expect-stderr: a SIMD/FP load or store
#include "kvm_hello.hpp"
        .text
        .global _start
_start:
        mov     x0, #(3 << 20)
        msr     cpacr_el1, x0
        isb
        ldr     x1, =KVM_HELLO_MMIO_OUT
        str     q0, [x1]
        b       _start
        .ltorg

// jump_outside_ram.S: a branch to an address where there is no memory. An
// instruction fetch cannot be MMIO: KVM injects an abort into the guest, whose
// vectors are not in RAM either.
// args: --timeout 1
// expect-status: 24
// expect-stderr: instruction abort
        .text
        .global _start
_start:
        ldr     x0, =0x40000
        br      x0
        .ltorg

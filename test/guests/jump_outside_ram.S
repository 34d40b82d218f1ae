// jump_outside_ram.S: a branch to an address where there is no memory. An
// instruction fetch cannot be MMIO: KVM injects an abort into the guest, whose
// vectors are not in RAM either.
// args: --timeout 1
// expect-status: 24
// expect-stderr: instruction abort
// expect-stderr: it took its first exception at instruction 3:
// expect-stderr: the fetch from 0x40000, where 0x10004 (jump_outside_ram.S:14: br      x0) jumped: no memory is there (guest RAM is 0x10000..0x1ffff), so KVM injects an instruction abort (EC 0x21; kvm_handle_guest_abort in arch/arm64/kvm/mmu.c).
// expect-stderr: it faults again and again, so more time (--timeout) would not help
        .text
        .global _start
_start:
        ldr     x0, =0x40000
        br      x0
        .ltorg

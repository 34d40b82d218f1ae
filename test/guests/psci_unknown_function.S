// psci_unknown_function.S: calls PSCI with a function id PSCI does not have:
// 0xc4000008 is SYSTEM_OFF's number with the 64-bit bit set, but SYSTEM_OFF
// has only a 32-bit form (0x84000008). KVM's PSCI code answers x0 = -1
// (NOT_SUPPORTED) on every kernel (kvm_psci_0_2_call in
// arch/arm64/kvm/psci.c), and the guest, still running, spins on the branch
// after it. x0 now holds the -1: kvm-hello runs the guest again, one
// instruction at a time, to find the function id it asked for.
// args: --timeout 1
// expect-status: 24
// expect-stderr: the guest called hvc #0 at 0x10004 with function id 0xc4000008 and got x0 = -1 (NOT_SUPPORTED): 0xc4000008 is in PSCI's range, but no PSCI function KVM implements: kvm_psci_0_2_call (arch/arm64/kvm/psci.c) answers PSCI_RET_NOT_SUPPORTED; PSCI SYSTEM_OFF is 0x84000008, and has no 64-bit form.
// expect-stderr: a guest that runs longer needs --timeout
        .text
        .global _start
_start:
        ldr     x0, =0xc4000008             // not a PSCI function
        hvc     #0                          // x0 = -1: NOT_SUPPORTED
        b       .                           // reached: the call returned
        .balign 8
        .ltorg

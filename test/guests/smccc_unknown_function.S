// smccc_unknown_function.S: calls a function KVM does not offer (0x84000080:
// a standard-service id past PSCI's 0x00-0x1f) and, as if it were SYSTEM_OFF,
// expects no return. KVM's SMCCC handler refuses it before PSCI sees it
// (kvm_smccc_call_handler in arch/arm64/kvm/hypercalls.c; Linux 6.1:
// kvm_hvc_call_handler), with x0 = -1, and the guest runs on past its code
// into zeros, undefined instructions: the same endless fault as
// off_the_end.S. kvm-hello runs it again one instruction at a time, and
// names both.
// args: --timeout 1
// expect-status: 24
// expect-stderr: it took its first exception at instruction 4:
// expect-stderr: 0x1000c, past the end of the guest's code (its 12 bytes end at 0x1000b; reached from 0x10008 (smccc_unknown_function.S:23: hvc     #0
// expect-stderr: encoding 00000000: UDF #0 is permanently undefined
// expect-stderr: Before that, the guest called hvc #0 at 0x10008 with function id 0x84000080 and got x0 = -1 (NOT_SUPPORTED): 0x84000080 is no function KVM offers
// linux >= 6.4: expect-stderr: kvm_smccc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it
// linux < 6.4: expect-stderr: kvm_hvc_call_handler (arch/arm64/kvm/hypercalls.c) refuses it
// expect-stderr: it faults again and again, so more time (--timeout) would not help
        .text
        .global _start
_start:
        mov     x0, #0x0080                 // x0 = 0x84000080, built without a literal
        movk    x0, #0x8400, lsl #16
        hvc     #0                          // x0 = -1: NOT_SUPPORTED

// el2_register.S: reads HCR_EL2, the hypervisor's configuration register, as
// if the guest were the hypervisor. The guest runs at EL1, and EL1 may not
// use a register of EL2: the instruction is undefined there (exception class
// 0), taken by the CPU itself, with no exit to KVM. The vectors at VBAR_EL1
// = 0 are not in RAM, so the guest then faults forever, as undefined.S does;
// kvm-hello runs it again one instruction at a time and names the mrs.
// args: --timeout 1
// expect-status: 24
// expect-stderr: it took its first exception at instruction 1:
// expect-stderr: 0x10000 (el2_register.S:16: mrs     x0, hcr_el2
// expect-stderr: encoding d53c1100: MRS reads a system register of EL2 (op1 = 4), which the guest at EL1 may not use: an undefined-instruction exception (EC 0x0).
// expect-stderr: it faults again and again, so more time (--timeout) would not help
        .text
        .global _start
_start:
        mrs     x0, hcr_el2                 // undefined at EL1

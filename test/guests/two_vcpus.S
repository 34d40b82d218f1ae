// two_vcpus.S: vCPU 0 starts vCPU 1 with PSCI CPU_ON and waits until vCPU 1
// has run. vCPU 1 starts at `secondary` with x0 = the context id vCPU 0 gave
// (kvm_psci_vcpu_on in arch/arm64/kvm/psci.c keeps it for the reset, Linux
// 6.1, 6.12 and 7.2), says "1", stores its x0 for vCPU 0 and calls CPU_OFF;
// vCPU 0 then says "0" and calls SYSTEM_OFF. x19 keeps CPU_ON's answer, x20
// the context vCPU 1 stored: test/e2e_tests.cpp's lesson 3 tests run it on
// two vCPUs and read both.
// With one vCPU, as kvm-hello's lesson 1 gives it, there is no MPIDR 1:
// CPU_ON answers INVALID_PARAMETERS (-2) and the guest says so, and powers off.
// expect-status: 0
// expect-stdout: guest output: no vCPU 1\n
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        mov     x1, #1                      // the target's MPIDR: vCPU 1's
        adr     x2, secondary               // where it starts
        ldr     x3, =0x5ec0d                // the context id: its x0 there
        hvc     #0                          // answered inside KVM
        mov     x19, x0                     // the answer: 0 SUCCESS, -2 INVALID_PARAMETERS
        cbnz    x0, alone
        adr     x1, context
wait:   ldr     x20, [x1]                   // vCPU 1 stores its x0 here: until then, 0
        cbz     x20, wait
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w2, #'0'
        strb    w2, [x1]
        mov     w2, #'\n'
        strb    w2, [x1]
        b       off
alone:  adr     x3, no_vcpu_1
        ldr     x1, =KVM_HELLO_MMIO_OUT
say:    ldrb    w2, [x3], #1
        cbz     w2, off
        strb    w2, [x1]
        b       say
off:    ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        b       off                         // not reached: the machine is off

secondary:                                  // vCPU 1, from reset: MMU off, no stack, x0 = the context
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w2, #'1'
        strb    w2, [x1]
        mov     w2, #'\n'
        strb    w2, [x1]
        adr     x1, context
        str     x0, [x1]                    // vCPU 0 waits for it
        ldr     x0, =PSCI_0_2_FN_CPU_OFF
        hvc     #0                          // STOPPED: KVM_RUN sleeps in KVM from here
        b       .                           // not reached

no_vcpu_1:
        .asciz  "no vCPU 1\n"
        .balign 8
context:
        .quad   0
        .ltorg

// psci_version.S: asks for the PSCI version (PSCI_VERSION, an hvc that KVM
// answers inside the kernel: no exit), prints it ("1.1") and powers off.
// KVM answers 1.1 before Linux 6.13 and 1.3 from it (KVM_ARM_PSCI_LATEST in
// include/kvm/arm_psci.h); step 7 of kvm-hello reads the same number from the
// firmware register KVM_REG_ARM_PSCI_VERSION.
// expect-status: 0
// linux < 6.13: expect-stdout: guest output: 1.1\n
// linux >= 6.13: expect-stdout: guest output: 1.3\n
// expect-stdout: 5 exits (KVM_EXIT_MMIO 4, KVM_EXIT_SYSTEM_EVENT 1)
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN_PSCI_VERSION
        hvc     #0                          // answered inside KVM: x0 = major << 16 | minor
        mov     x5, x0
        ldr     x1, =KVM_HELLO_MMIO_OUT
        lsr     x3, x5, #16                 // the major version: one digit
        add     w3, w3, #'0'
        strb    w3, [x1]
        mov     w3, #'.'
        strb    w3, [x1]
        and     x3, x5, #0xffff             // the minor version: one digit
        add     w3, w3, #'0'
        strb    w3, [x1]
        mov     w3, #'\n'
        strb    w3, [x1]
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .balign 8
        .ltorg

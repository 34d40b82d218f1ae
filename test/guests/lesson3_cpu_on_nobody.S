// SPDX-License-Identifier: MIT
// lesson3_cpu_on_nobody.S: a mistake of lesson 3: vCPU 0 starts "CPU 2"
// with PSCI CPU_ON, but the VM has vCPUs 0 and 1 only. KVM looks for the
// vCPU whose MPIDR is x1 (kvm_mpidr_to_vcpu, in kvm_psci_vcpu_on), finds
// none, and answers INVALID_PARAMETERS (-2) in x0. The guest reports what it
// got, and powers off; vCPU 1, never started, made no exit.
// args: --lesson 3
// expect-status: 0
// expect-stdout: vCPU 0       the guest called 0xc4000003 (PSCI CPU_ON, 64-bit) and got x0 = -2: INVALID_PARAMETERS: no vCPU of this VM has the MPIDR the guest named in x1
// expect-stdout: vCPU 1: asked to stop, kicked (SIGUSR1): its KVM_RUN returned EINTR; its thread joined. It made no exit: it never ran
#include "kvm_hello.hpp"  // KVM_HELLO_*: the memory map
#include <linux/psci.h>   // PSCI_0_2_FN*: the function ids KVM knows

        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN64_CPU_ON
        mov     x1, #2                      // the mistake: MPIDR 2, and there is no vCPU 2
        adr     x2, _start                  // where it would start (never used)
        mov     x3, #0                      // its context id
        hvc     #0
        ldr     x2, =KVM_HELLO_MMIO_PSCI_CALL
        ldr     w1, =PSCI_0_2_FN64_CPU_ON
        str     w1, [x2]                    // the call just made
        ldr     x2, =KVM_HELLO_MMIO_PSCI_RESULT
        str     x0, [x2]                    // and its x0
power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        b       power_off

        .balign 8
        .ltorg

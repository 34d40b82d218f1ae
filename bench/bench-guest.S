// SPDX-License-Identifier: MIT
// bench-guest.S: the guest of `kvm-hello --bench`. It measures three kinds of
// exit with its own virtual counter (cntvct_el0), as kvm-unit-tests' arm
// micro-bench does:
//   1. an MMIO write to SINK: KVM_RUN returns to the host, which re-enters;
//   2. an MMIO read of ANSWER: the same, and the host supplies the value;
//   3. hvc #0 with PSCI_VERSION: answered inside the kernel, never reaching
//      the host program.
// The host puts the iteration count in x0, the repeat count in x1 and which
// kinds to measure in x2 (bit 0: write, 1: read, 2: hvc) with KVM_SET_ONE_REG
// before the first KVM_RUN. The guest writes its counter frequency to RESULT,
// then for each kind chosen and each repeat the ticks that many iterations
// took, then powers off.
//
// Counter reads are fenced (dsb ish; isb) so that no earlier work is still in
// flight when the counter is read. Loop state lives in x19-x28: an hvc may
// change x0-x17 (SMC Calling Convention).
#include "kvm_hello.hpp"
#include <linux/psci.h>

        .macro  read_counter into
        dsb     ish
        isb
        mrs     \into, cntvct_el0
        .endm

        // Times `iterations` runs of the given instruction(s), `repeats` times,
        // and writes each time to RESULT.
        .macro  measure op:vararg
        mov     x28, x21                    // repeats left
1:      read_counter x23
        mov     x27, x20                    // iterations left
2:      \op
        subs    x27, x27, #1
        b.ne    2b
        read_counter x24
        sub     x24, x24, x23
        str     x24, [x19]                  // one measurement (ticks) to the host
        subs    x28, x28, #1
        b.ne    1b
        .endm

        // PSCI_VERSION: the function id in x0, then the hypervisor call.
        .macro  psci_version
        ldr     x0, =PSCI_0_2_FN_PSCI_VERSION
        hvc     #0
        .endm

        .text
        .global _start
_start:
        mov     x20, x0                     // iterations, from the host
        mov     x21, x1                     // repeats, from the host
        mov     x22, x2                     // which kinds, from the host
        ldr     x19, =KVM_HELLO_MMIO_RESULT
        ldr     x25, =KVM_HELLO_MMIO_SINK
        ldr     x26, =KVM_HELLO_MMIO_ANSWER
        mrs     x0, cntfrq_el0
        str     x0, [x19]                   // first: ticks per second

        tbz     x22, #0, 3f
        measure strb w0, [x25]              // 1. MMIO write, to userspace and back
3:      tbz     x22, #1, 4f
        measure ldr w0, [x26]               // 2. MMIO read, the host answers
4:      tbz     x22, #2, 5f
        measure psci_version                // 3. hvc, handled in the kernel
5:

        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .ltorg

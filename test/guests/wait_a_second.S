// wait_a_second.S: waits one second by the guest's own clock (the virtual
// counter CNTVCT_EL0, which ticks CNTFRQ_EL0 times a second), then powers
// off. Nothing exits meanwhile: kvm-hello sits in KVM_RUN all that second.
// The e2e tests stop and continue kvm-hello then (SIGSTOP, SIGCONT): the
// stop makes KVM_RUN return EINTR, and kvm-hello enters the guest again.
// expect-status: 0
// expect-stdout: shutdown: the guest powered off (PSCI SYSTEM_OFF) after 1 exit
// expect-stdout: summary: 1 KVM_RUN call
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        mrs     x1, cntfrq_el0              // ticks a second
        mrs     x2, cntvct_el0
        add     x2, x2, x1                  // x2: one second from now
wait:   mrs     x3, cntvct_el0
        cmp     x3, x2
        b.lo    wait
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .balign 8
        .ltorg

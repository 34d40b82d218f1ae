// timer.S: arms the guest's virtual timer in a VM with no interrupt controller
// in the kernel (kvm-hello creates no vGIC), then says "t" and powers off.
// Nothing goes wrong: the lesson is what KVM_RUN does meanwhile. With no
// in-kernel interrupt controller, KVM tells the program when the timer's
// output changes, so that the program could play the interrupt controller:
// KVM_RUN returns EINTR with exit_reason KVM_EXIT_INTR, and no signal was
// sent at all (kvm_vcpu_exit_request in arch/arm64/kvm/arm.c, Linux 6.1, 6.12
// and 7.2 alike). kvm-hello enters the guest again, as for any EINTR.
// args: -v
// expect-status: 0
// expect-stdout: ioctl(5, KVM_RUN) = -1 EINTR (Interrupted system call)
// expect-stdout: guest output: t\n
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        msr     cntv_tval_el0, xzr          // fire now: 0 ticks from now
        mov     x0, #1                      // CNTV_CTL_EL0.ENABLE, the interrupt not masked
        msr     cntv_ctl_el0, x0
        isb
fired:  mrs     x0, cntv_ctl_el0
        tbz     x0, #2, fired               // ISTATUS: the timer condition is met
        mrs     x2, cntfrq_el0              // (PSTATE.I masks it here: no exception)
        lsr     x2, x2, #7                  // about 8 ms of ticks: time for the host to
        mrs     x3, cntvct_el0              // take the timer's interrupt before the
        add     x2, x2, x3                  // guest's next exit, whose return to the
later:  mrs     x3, cntvct_el0              // program would report the new level anyway
        cmp     x3, x2
        b.lo    later
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w0, #'t'
        strb    w0, [x1]
        mov     w0, #'\n'
        strb    w0, [x1]
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .balign 8
        .ltorg

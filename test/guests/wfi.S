// wfi.S: a guest that waits for an interrupt. WFI sleeps until an interrupt
// is pending; kvm-hello's VM has no interrupt controller and the guest sets
// no timer, so none ever is. (Linux 6.12 and later trap the WFI and keep the
// vCPU asleep in KVM: kvm_vcpu_wfi in arch/arm64/kvm/arm.c; 6.1 lets a lone
// vCPU run WFI on the CPU itself, which the host's own interrupts wake, and
// the guest loops.) Only the watchdog ends it.
// args: --timeout 1
// expect-status: 24
// expect-stderr: a guest that runs longer needs --timeout
// expect-stderr: It waits in WFI at 0x10000 for an interrupt, and none will come
        .text
        .global _start
_start:
        wfi                                 // wait for an interrupt
        b       _start                      // woken: wait again

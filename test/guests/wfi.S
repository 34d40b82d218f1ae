// wfi.S: a guest that waits for an interrupt. WFI sleeps until an interrupt
// is pending; kvm-hello's VM has no interrupt controller and the guest sets
// no timer, so none ever is. KVM traps the WFI (HCR_EL2.TWI stays set, even
// for a vCPU alone on its CPU, unless a GICv4 delivers interrupts: Linux 6.1,
// 6.12 and 7.2 alike) and keeps the vCPU asleep in KVM (kvm_vcpu_wfi in
// arch/arm64/kvm/arm.c), having stepped PC past the WFI. Only the watchdog
// ends it.
// args: --timeout 1
// expect-status: 24
// expect-stderr: a guest that runs longer needs --timeout
// expect-stderr: It waits in WFI at 0x10000 for an interrupt, and none will come
        .text
        .global _start
_start:
        wfi                                 // wait for an interrupt
        b       _start                      // woken: wait again

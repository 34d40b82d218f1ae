// spin.S: a guest that never powers off. It loops on one instruction, never
// leaving the guest, so KVM_RUN would never return without the watchdog.
        .text
        .global _start
_start:
        b       _start

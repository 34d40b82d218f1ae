// spin.S: a guest that never powers off. It loops on one instruction without
// ever leaving the guest, so KVM_RUN would never return without the watchdog.
// args: --timeout 1
// expect-status: 24
// expect-stderr: a guest that runs longer needs --timeout
// expect-stderr: did not power off within 1000 ms, so the watchdog stopped it
// expect-stderr: PC 0x10000 (spin.S:12: b       _start): the guest is running there and never called PSCI SYSTEM_OFF
// expect-stderr: The instruction there is b 0x10000, a branch to itself
        .text
        .global _start
_start:
        b       _start

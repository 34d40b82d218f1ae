// smc_system_off.S: powers off with smc instead of hvc. From Linux 6.4 KVM
// takes an smc #0 from the guest as a PSCI call too (handle_smc in
// arch/arm64/kvm/handle_exit.c passes it to kvm_smccc_call_handler), and the
// guest powers off. Before 6.4, KVM answers every smc with x0 = -1
// (NOT_SUPPORTED) and goes on; the guest, still running, waits on the branch
// after it until the watchdog stops it.
// args: --timeout 1
// linux >= 6.4: expect-status: 0
// linux >= 6.4: expect-stdout: shutdown: the guest powered off (PSCI SYSTEM_OFF) after 1 exit
// linux < 6.4: expect-status: 24
// linux < 6.4: expect-stderr: the guest called smc #0 at 0x10004 with function id 0x84000008 (PSCI SYSTEM_OFF) and got x0 = -1 (NOT_SUPPORTED)
// linux < 6.4: expect-stderr: Linux before 6.4 does not take smc as a PSCI call
// linux < 6.4: expect-stderr: a guest that runs longer needs --timeout
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        smc     #0                          // PSCI through the secure monitor call
        b       .                           // reached only when the smc returned
        .balign 8
        .ltorg

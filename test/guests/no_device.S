// no_device.S: reads and writes an address where no register is. The host
// answers reads with a defined value (0), drops writes, and says so once.
// expect-status: 0
// expect-stdout: note: no register at 0x9000
// expect-stdout: KVM_EXIT_MMIO address=0x9000 is_write=0 len=4 data=0x0
// expect-stdout: KVM_EXIT_MMIO address=0x9008 is_write=1 len=4
// expect-stdout: guest output: ok\n
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x1, =0x9000
        ldr     w0, [x1]                    // no register here: reads as 0
        str     w0, [x1, #8]                // nor here: dropped
        ldr     x1, =KVM_HELLO_MMIO_OUT
        mov     w0, #'o'
        strb    w0, [x1]
        mov     w0, #'k'
        strb    w0, [x1]
        mov     w0, #'\n'
        strb    w0, [x1]
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .ltorg

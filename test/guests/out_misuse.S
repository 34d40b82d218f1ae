// out_misuse.S: uses OUT the wrong way twice. It stores "hi\n" with one
// 8-byte str: OUT takes one byte per write (its first, the lowest), so only
// 'h' is printed and the other 7 bytes are dropped. Then it reads OUT, which
// is write-only: there is nothing to read, and the host answers 0. kvm-hello
// says both.
// expect-status: 0
// expect-stdout: exit 1: KVM_EXIT_MMIO address=0x1100 is_write=1 len=8 data=0xa6968 bytes: 0x68 'h' 0x69 'i' 0x0a '\n'
// expect-stdout: note: OUT prints one byte per write: of this 8-byte write it printed the first, 0x68 'h', and dropped the other 7 (write one byte at a time, with strb); said once
// expect-stdout: exit 2: KVM_EXIT_MMIO address=0x1100 is_write=0 len=4 data=0x0 bytes: 0x00 '\x00' 0x00 '\x00' 0x00 '\x00' 0x00 '\x00'  (OUT is write-only: there is nothing to read, the host answers 0x0)
// expect-stdout: guest output: h
#include "kvm_hello.hpp"
#include <linux/psci.h>
        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT
        ldr     x0, ='h' | 'i' << 8 | '\n' << 16
        str     x0, [x1]                    // 8 bytes to OUT: only the first is printed
        ldr     w2, [x1]                    // OUT is write-only: reads as 0
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF
        hvc     #0
        .balign 8
        .ltorg

// SPDX-License-Identifier: MIT
// guest.S: the guest. It says "hello", reads a value the host answers, writes
// that value back, and powers the machine off.
//
// It runs at EL1 with the MMU off, so every address here is a guest-physical
// address. The host copies these bytes to guest RAM at KVM_HELLO_RAM_BASE and
// sets PC there (step 8 of kvm_hello.hpp). A load or store to an address
// outside guest RAM leaves the guest: KVM_RUN returns with KVM_EXIT_MMIO, the
// host handles it, and the next KVM_RUN completes the access.
//
// Only plain loads and stores may go to MMIO: for a load/store pair, a
// writeback form or a SIMD access the hardware does not describe the access
// to KVM, and KVM_RUN fails with ENOSYS instead of exiting. (Accesses to guest
// RAM may take any form.)

#include "kvm_hello.hpp"  // KVM_HELLO_MMIO_*: the memory map the host uses too
#include <linux/psci.h>   // PSCI_0_2_FN_SYSTEM_OFF: the function id KVM knows

        .text
        .global _start
_start:
        ldr     x1, =KVM_HELLO_MMIO_OUT     // x1: the OUT register
        adr     x2, message                 // x2: the next byte of the message

next_byte:
        ldrb    w0, [x2]                    // from guest RAM: no exit
        cbz     w0, ask_host                // the 0 that ends the string
        strb    w0, [x1]                    // MMIO write, 1 byte: one exit to the host
        add     x2, x2, #1
        b       next_byte

ask_host:
        ldr     x3, =KVM_HELLO_MMIO_ANSWER
        ldr     w4, [x3]                    // MMIO read, 4 bytes: the host supplies w4
        ldr     x3, =KVM_HELLO_MMIO_ECHO
        str     w4, [x3]                    // MMIO write, 4 bytes: show the host what arrived

power_off:
        ldr     x0, =PSCI_0_2_FN_SYSTEM_OFF // PSCI: function id in x0, then a hypervisor call
        hvc     #0                          // KVM exits with KVM_EXIT_SYSTEM_EVENT (SHUTDOWN)
        b       power_off                   // reached only if the host resumes the stopped vCPU

message:
        .asciz  "hello\n"

        .balign 8
        .ltorg                              // the constants the `ldr xN, =...` above load

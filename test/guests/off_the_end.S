// off_the_end.S: a guest that forgets to power off and runs on into the
// zeros after its code. 0x00000000 is an undefined instruction: the same
// endless exception as undefined.S.
// args: --timeout 1
// expect-status: 24
// expect-stderr: (EC 0x21: instruction abort
// expect-stderr: it took its first exception at instruction 2:
// expect-stderr: 0x10004, past the end of the guest's code (its 4 bytes end at 0x10003; reached from 0x10000 (off_the_end.S:13: nop)), encoding 00000000: UDF #0 is permanently undefined
// expect-stderr: it faults again and again, so more time (--timeout) would not help
        .text
        .global _start
_start:
        nop

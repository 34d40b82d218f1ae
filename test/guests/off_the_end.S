// off_the_end.S: a guest that forgets to power off and runs on into the
// zeros after its code. 0x00000000 is an undefined instruction: the same
// endless exception as undefined.S.
// args: --timeout 1
// expect-status: 24
// expect-stderr: (EC 0x21: instruction abort
        .text
        .global _start
_start:
        nop

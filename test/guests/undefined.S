// undefined.S: an undefined instruction. The guest takes an exception to
// VBAR_EL1 + 0x200, but VBAR_EL1 is 0, outside guest RAM: the fetch of the
// handler faults too, again and again, inside the kernel. Only the watchdog
// gets control back; the registers say what happened.
// args: --timeout 1
// expect-status: 24
// expect-stderr: PC 0x200 is in the exception vectors at VBAR_EL1 0x0, offset 0x200 (synchronous, from the current EL on SP_ELx)
// expect-stderr: ESR_EL1 says why
// expect-stderr: The vectors are outside guest RAM
        .text
        .global _start
_start:
        udf     #0

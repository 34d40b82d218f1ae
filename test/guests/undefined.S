// undefined.S: an undefined instruction. The guest takes an exception to
// VBAR_EL1 + 0x200, but VBAR_EL1 is 0, outside guest RAM: the fetch of the
// handler faults too, again and again, inside the kernel. Only the watchdog
// gets control back; the registers say where the guest is, and a re-run one
// instruction at a time finds the instruction that started it.
// (test/golden/stuck-guest*.txt hold the whole output.)
// args: --timeout 1
// expect-status: 24
// expect-stderr: PC 0x200 is in the exception vectors at VBAR_EL1 0x0, offset 0x200 (synchronous, from the current EL on SP_ELx)
// expect-stderr: The vectors are outside guest RAM
// expect-stderr: ESR_EL1 and ELR_EL1 describe an exception taken in the vectors themselves (EC 0x21 at 0x200), not the first one
// expect-stderr: it took its first exception at instruction 1:
// expect-stderr: 0x10000 (undefined.S:18: udf     #0), encoding 00000000: UDF #0 is permanently undefined: an undefined-instruction exception (EC 0x0).
// expect-stderr: it faults again and again, so more time (--timeout) would not help
        .text
        .global _start
_start:
        udf     #0

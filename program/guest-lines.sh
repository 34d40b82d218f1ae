#!/usr/bin/env bash
# guest-lines.sh READELF GUEST.elf GUEST.S
#
# Prints the line table of a guest for `kvm-hello --step-guest` and its
# register dump: a first line naming the source file, then one line per
# instruction, "ADDRESS LINE TEXT" (0x10000 21 ldr x1, =...). The addresses
# and line numbers come from the assembler's own debug line information (the
# .elf was assembled with -g), read with readelf (each row: the file's name,
# which may hold spaces, the line, the address); the text is that line of
# the source. kvm-hello reads it with parse_guest_source() (program/inspect.hpp):
# the built-in guest's is embedded, another's is given with --guest-lines.
set -euo pipefail
readelf=$1 elf=$2 source=$3

basename "$source"
# (awk reads the source once, its lines without their leading and trailing
# blanks; the source's name comes through the environment, taken as it is.)
"$readelf" --debug-dump=decodedline "$elf" |
  SOURCE=$source awk '
    BEGIN {
      while ((getline text < ENVIRON["SOURCE"]) > 0) {
        sub(/^[[:space:]]+/, "", text); sub(/[[:space:]]+$/, "", text); source_line[++lines] = text
      }
    }
    { for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/ && $(i + 1) ~ /^0x/) { print $(i + 1), $i, source_line[$i]; next } }'

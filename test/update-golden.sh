#!/usr/bin/env bash
# update-golden.sh DIR < LOG
#
# Writes each "=== golden NAME ===" ... "=== end ===" block of LOG (the e2e
# tests run with KVM_HELLO_PRINT_GOLDEN=1) to DIR/NAME, and lists them.
set -euo pipefail
dir=$1
awk -v dir="$dir" '
  /^=== golden .* ===$/ { file = dir "/" $3; printf "" > file; next }
  /^=== end ===$/        { close(file); print "updated " file; file = ""; next }
  file != ""             { print > file }
'

#!/usr/bin/env bash
# update-golden.sh DIR < LOG
#
# Writes each "=== golden NAME ===" ... "=== end ===" block of LOG (the e2e
# tests run with KVM_HELLO_PRINT_GOLDEN=1) to DIR/NAME, and lists them. Fails,
# showing LOG, when it holds no block at all (the tests did not run).
set -euo pipefail
dir=$1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tee "$log" | awk -v dir="$dir" '
  /^=== golden .* ===$/ { file = dir "/" $3; printf "" > file; next }
  /^=== end ===$/        { close(file); print "updated " file; file = ""; next }
  file != ""             { print > file }
'
if ! grep -q '^=== golden ' "$log"; then
  cat "$log" >&2
  echo "update-golden: no golden output above: nothing was rewritten" >&2
  exit 1
fi

#!/usr/bin/env bash
# run-suite.sh LOG_DIR NAME COMMAND [ARGS...]
#
# Runs one test suite, showing its output and keeping it in LOG_DIR/NAME.log
# with its exit status in LOG_DIR/NAME.status. Always succeeds: summarize.sh
# reads the logs and decides.
set -uo pipefail
log_dir=$1 name=$2
shift 2
mkdir -p "$log_dir"
echo "== $name: $*"
"$@" 2>&1 | tee "$log_dir/$name.log"
echo "${PIPESTATUS[0]}" > "$log_dir/$name.status"
exit 0

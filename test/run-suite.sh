#!/usr/bin/env bash
# run-suite.sh LOG_DIR NAME COMMAND [ARGS...]
#
# Runs one test suite: its output goes to LOG_DIR/NAME.log (`tail -f` it to
# watch), its exit status to LOG_DIR/NAME.status, its totals line to
# LOG_DIR/NAME.totals. make test runs suites side
# by side, so each says only one line when it starts and one when it ends,
# with its totals and time; a suite that failed shows its whole log then, in
# one piece (LOG_DIR/.screen is the lock that keeps it whole). Its input is
# /dev/null: no suite reads the terminal (the terminal suite has tmux's).
# Always succeeds: summarize.sh reads the logs and decides.
set -uo pipefail
log_dir=$1 name=$2
shift 2
mkdir -p "$log_dir"
log=$log_dir/$name.log
say() { flock "$log_dir/.screen" cat; }

echo "== $name: started: $* (output: $log)" | say
start=$SECONDS
"$@" </dev/null >"$log" 2>&1
status=$?
echo "$status" >"$log_dir/$name.status"
# Its totals, kept in LOG_DIR/NAME.totals for summarize.sh: doctest's
# "[doctest] test cases: 12 | 12 passed | 0 failed | 0 skipped", or a
# script's "12 passed, 0 failed" (none when it ended without them).
totals=$(grep -aE '^\[doctest\] test cases:|^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
echo "$totals" >"$log_dir/$name.totals"
if [ "$status" = 0 ]; then
  echo "== $name: ended in $((SECONDS - start)) s: ${totals:-no totals}" | say
else
  { echo "== $name: FAILED (exit status $status) in $((SECONDS - start)) s; its output ($log):"
    cat "$log"
    echo "== $name: end of its output"; } | say
fi
exit 0

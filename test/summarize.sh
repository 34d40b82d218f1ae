#!/usr/bin/env bash
# summarize.sh LOG_DIR...
#
# Adds up the summaries (doctest's, or a plain "N passed, M failed") of every
# suite that run-suite.sh logged in the LOG_DIRs, and prints the totals as the
# last line: "N passed, M failed" (also kept in the first LOG_DIR's totals). A suite that
# exited non-zero, or ended without its summary (a crash, a machine that did
# not boot), counts as one more failure, and the end of its log is shown.
# Exits 1 if anything failed.
set -uo pipefail
passed=0 failed=0
for status_file in $(for dir in "$@"; do ls "$dir"/*.status; done); do
  log_dir=$(dirname "$status_file")
  name=$(basename "$status_file" .status)
  status=$(cat "$status_file")
  # The suite's totals line, as run-suite.sh found it in its log.
  summary=$(cat "$log_dir/$name.totals" 2>/dev/null)
  if [ -z "$summary" ]; then
    echo "summary: $name ended without a test summary (exit status $status); its log ends:"
    # A crash's own report (doctest names the test case and the signal) is
    # at the end of the log: shown here, so that a run whose output is cut
    # in the middle still says what crashed.
    tail -n 15 "$log_dir/$name.log" | sed 's/^/summary:   | /'
    failed=$((failed + 1))
    continue
  fi
  p=$(sed -E 's/.*[|^] *([0-9]+) passed.*/\1/; s/^([0-9]+) passed.*/\1/' <<<"$summary")
  f=$(sed -E 's/.*[|,] *([0-9]+) failed.*/\1/' <<<"$summary")
  passed=$((passed + p)) failed=$((failed + f))
  # Suites against real KVM name the host they ran on (the line /init prints).
  host=$(grep -a -m 1 '^kvm-hello-vm: host: ' "$log_dir/$name.log" | sed 's/^kvm-hello-vm: host: / on /')
  echo "summary: $name$host: $p passed, $f failed (exit status $status)"
  if [ "$status" != 0 ] && [ "$f" = 0 ]; then
    echo "summary: $name exited with status $status although no test failed"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed" | tee "$1/totals"
[ "$failed" -eq 0 ]

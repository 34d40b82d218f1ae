#!/bin/sh
# timed-shell.sh -c COMMAND: the shell make runs each recipe line with, when
# tools/timings.sh measures a build (make SHELL=tools/timed-shell.sh). It runs
# COMMAND with /bin/sh, as make would, and appends one line to the file
# $KVM_HELLO_TIMINGS_LOG: start and end (seconds since the epoch, to the
# millisecond), exit status, and the command on one line. Its status is the
# command's.
start=$(date +%s.%3N)
/bin/sh "$@"
status=$?
end=$(date +%s.%3N)
if [ -n "${KVM_HELLO_TIMINGS_LOG:-}" ]; then
  # The command is make's last argument; newlines (a recipe's continued
  # lines) become spaces, so each record is one line.
  for command do :; done
  printf '%s\t%s\t%s\t%s\n' "$start" "$end" "$status" "$(printf '%s' "$command" | tr '\n\t' '  ')" \
    >>"$KVM_HELLO_TIMINGS_LOG"
fi
exit "$status"

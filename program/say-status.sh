#!/usr/bin/env bash
# say-status.sh WHO 'HELP COMMAND' COMMAND [ARGS...]
#
# Runs COMMAND (kvm-hello, here or in the emulated machine) and exits with its
# exit status. A status other than 0 is first said in words, on stderr:
#   make trace: kvm-hello exited with status 24: the watchdog stopped a guest that did not power off in time
# The words are kvm-hello's own: the line of the "exit status:" table that
# `HELP COMMAND --help` prints (the command that runs kvm-hello's binary on
# this machine), so they are written once, in program/messages.hpp.
#
# bash, not sh: after a Ctrl-C, bash waits for COMMAND to finish what it
# prints and then says its status, where sh would end at once and leave it
# running.
set -uo pipefail
who=$1
read -r -a help_command <<<"$2"
shift 2

"$@"
status=$?
[ "$status" = 0 ] && exit 0
meaning=$("${help_command[@]}" --help 2>/dev/null | sed -n "/^exit status:/,\$ s/^ *$status  //p")
if [ -n "$meaning" ]; then
  echo "$who: kvm-hello exited with status $status: $meaning" >&2
elif [ "$status" -gt 128 ] && signal=$(kill -l $((status - 128)) 2>/dev/null); then
  echo "$who: kvm-hello was killed by signal $((status - 128)) (SIG$signal): status $status" >&2
else
  echo "$who: status $status is not one of kvm-hello's (kvm-hello --help lists them): the lines above say what stopped it" >&2
fi
exit "$status"

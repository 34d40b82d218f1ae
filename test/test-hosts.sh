#!/usr/bin/env bash
# test-hosts.sh HOSTS_FILE
#
# Runs the suites against real KVM (`make test-e2e`: e2e and gdb) on each
# emulated host of HOSTS_FILE (lines of: suite flavour cpu CPUs GIC),
# fetching kernels as needed, then prints a table: the host asked for, the
# kernel, CPU, how many, page size and GIC its /init reported, passed, failed,
# time. Each host's log stays in build/test-hosts/. Exits 1 if any test
# failed; exits 2, before any test, on a line that is not a host.
set -uo pipefail
hosts=${1:?usage: test-hosts.sh HOSTS_FILE}
logs=build/test-hosts
# Every line is read and checked before any host runs: five words, CPUs a
# number, GIC 3 or 2.
hosts_of() {
  local suite flavour cpu cpus gic extra number=0
  while read -r suite flavour cpu cpus gic extra; do
    number=$((number + 1))
    [[ -z $suite || $suite == \#* ]] && continue
    if [[ -n $extra || -z $gic || ! $cpus =~ ^[1-9][0-9]*$ || ! $gic =~ ^[23]$ ]]; then
      echo "test-hosts: $hosts:$number is not a host: it must be five words, suite flavour cpu CPUs GIC" \
        "(CPUs a number, GIC 3 or 2)" >&2
      return 2
    fi
    echo "$suite $flavour $cpu $cpus $gic"
  done <"$hosts"
}
host_lines=$(hosts_of) || exit 2
[ -n "$host_lines" ] || { echo "test-hosts: $hosts names no host" >&2; exit 2; }
rm -rf "$logs" && mkdir -p "$logs"

rows=() all_passed=0 all_failed=0
while read -r suite flavour cpu cpus gic; do
  [ -n "$suite" ] || continue
  name="$suite-$flavour-$cpu-$cpus-gic$gic"
  echo "== test-hosts: $suite $flavour, -cpu $cpu, $cpus CPU(s), GICv$gic"
  start=$SECONDS
  make --no-print-directory test-e2e KVM_HELLO_SUITE="$suite" KVM_HELLO_FLAVOUR="$flavour" KVM_HELLO_CPU="$cpu" \
    KVM_HELLO_HOST_CPUS="$cpus" KVM_HELLO_GIC="$gic" TEST_LOGS="$logs/$name" </dev/null >"$logs/$name.log" 2>&1
  seconds=$((SECONDS - start))
  totals=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$logs/$name.log" | tail -n 1)
  passed=${totals%% passed*} failed=${totals#*passed, }
  failed=${failed%% failed}
  [ -n "$totals" ] || { passed=0 failed=1; }
  host=$(cat "$logs/$name"/*.log 2>/dev/null | sed -n 's/^kvm-hello-vm: host: //p' | head -n 1)
  echo "   ${totals:-no totals: see $logs/$name.log} in $seconds s; inside: ${host:-did not boot}"
  rows+=("$(printf '| %s %s, %s, %s, GICv%s | %s | %s | %s | %s s |' "$suite" "$flavour" "$cpu" "$cpus" "$gic" \
    "${host:-did not boot}" "$passed" "$failed" "$seconds")")
  all_passed=$((all_passed + passed)) all_failed=$((all_failed + failed))
done <<<"$host_lines"

echo
echo "| host (suite flavour, -cpu, CPUs, GIC) | as /init reported it | passed | failed | time |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "$all_passed passed, $all_failed failed"
[ "$all_failed" -eq 0 ]

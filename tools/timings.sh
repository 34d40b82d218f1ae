#!/usr/bin/env bash
# timings.sh [--runs N] [--keep] [SCENARIO...]   (make timings)
#
# Where the time of kvm-hello's commands goes, measured: each scenario runs
# in a fresh clone of this repository's HEAD (so uncommitted changes are not
# measured), N times (default 3), and prints, for each part of the run, the
# median, the fastest and the slowest of the N, in seconds. The parts are
# make's recipe lines, recorded by tools/timed-shell.sh (make's SHELL for the
# run): the package install, the kernel download, each compile, the guests,
# the initramfs, each test suite, the run itself.
#
# Scenarios (default: run test retest):
#   run      make run in a fresh clone (everything it builds), then make run
#            once built, for each lesson (LESSON=1, 2, 3)
#   test     make test in a fresh clone
#   retest   make test again after a one-line change to main.cpp (touched:
#            make rebuilds what depends on it, as after an edit)
#   hosts    make test-hosts in a fresh clone (long)
#   ci       .ci/run in a fresh clone (long)
# Packages already installed and kernels already downloaded are used as they
# are (the first lines say which): on a new machine, the first run's
# "install packages" and "download a kernel" are the real ones, and later
# runs find them done. --keep keeps the clones (their paths are printed).
#
# With several cores, parts overlap (make -j): a part's time is its own
# (from its start to its end), and the "wall clock" lines are what a user
# waits.
set -euo pipefail

runs=3 keep=
scenarios=()
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    run | test | retest | hosts | ci) scenarios+=("$1"); shift ;;
    *) echo "timings: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(run test retest)
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "timings: --runs needs a whole number from 1" >&2; exit 2; }

repository=$(cd "$(dirname "$0")/.." && pwd)
head=$(git -C "$repository" rev-parse --short HEAD)
work=$(mktemp -d /tmp/kvm-hello-timings.XXXXXX)
if [ -z "$keep" ]; then trap 'rm -rf "$work"' EXIT; fi
shell=$repository/tools/timed-shell.sh

now() { date +%s.%3N; }

# The part of the run a recipe line belongs to, from its command.
part_of() {
  awk -F'\t' '
    function output(command,    m) { return match(command, /-o [^ ]+/) ? substr(command, RSTART + 3, RLENGTH - 3) : "?" }
    {
      c = $4
      if (c ~ /ensure-packages\.sh/) p = "install packages"
      else if (c ~ /fetch-kernel\.sh/) p = "download a kernel"
      else if (c ~ /sanitizer-runtime\.sh/) p = "download the arm64 sanitizer runtime"
      else if (c ~ /check-prerequisites\.sh/) p = "check prerequisites"
      else if (match(c, /run-suite\.sh [^ ]+ [^ ]+/)) { split(substr(c, RSTART, RLENGTH), w, " "); p = "suite " w[3] }
      else if (c ~ /say-status\.sh/) p = "boot the emulated machine and run kvm-hello"
      else if (c ~ /test-hosts\.sh/) p = "test-hosts (every host)"
      else if (c ~ /summarize\.sh/) p = "summarize"
      else if (c ~ /clang-tidy/) p = "lint"
      else if (c ~ /__ASSEMBLY__|objcopy|readelf|xxd|guest-lines\.sh/) p = "guests: assemble, link, embed"
      else if (c ~ /cpio/) p = "initramfs"
      else if (c ~ /-dumpmachine/) p = "other"
      else if (c ~ /(g\+\+|gcc|clang\+\+)(-[0-9]+)? / && c ~ / -c /) p = "compile " output(c)
      else if (c ~ /(g\+\+|gcc|clang\+\+)(-[0-9]+)? /) p = "compile and link " output(c)
      else p = "other"
      printf "%s\t%s\t%s\n", p, $1, $2
    }'
}

# measure LABEL DIR COMMAND...: runs COMMAND in DIR with make's recipes
# timed; appends "LABEL<TAB>part<TAB>seconds" lines to $work/results.
measure() {
  local label=$1 dir=$2
  shift 2
  local log="$work/recipes.$$.$RANDOM"
  : >"$log"
  local start end status=0
  start=$(now)
  (cd "$dir" && KVM_HELLO_TIMINGS_LOG=$log "$@" SHELL="$shell" >"$log.out" 2>&1) || status=$?
  end=$(now)
  if [ "$status" != 0 ]; then
    echo "timings: '$*' failed (status $status) in $dir; its last lines:" >&2
    tail -n 15 "$log.out" >&2
    exit 1
  fi
  part_of <"$log" | awk -F'\t' -v label="$label" -v start="$start" -v end="$end" '
    { time[$1] += $3 - $2; if ($1 ~ /^suite |^boot |^test-hosts/ && (first == "" || $2 < first)) first = $2 }
    END {
      for (p in time) printf "%s\t%s\t%.1f\n", label, p, time[p]
      if (first != "") printf "%s\t%s\t%.1f\n", label, "wall clock until a test or run starts", first - start
      printf "%s\t%s\t%.1f\n", label, "wall clock, all", end - start
    }' >>"$work/results"
}

# make in DIR, or .ci/run there; SHELL= reaches make through the command line.
fresh_clone() {
  local dir=$work/clone-$1
  rm -rf "$dir"
  git clone -q "$repository" "$dir"
  echo "$dir"
}
# .ci/run takes no arguments: its makes are given SHELL through MAKEFLAGS.
ci_run() { MAKEFLAGS="SHELL=$shell" bash .ci/run; }
# Each make measured is a user's own, not a sub-make of ours (make timings).
unset MAKEFLAGS MFLAGS MAKELEVEL

echo "timings: $head, ${scenarios[*]}, $runs run(s) each, on $(nproc) cores (load now: $(cut -d' ' -f1-3 /proc/loadavg))"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kvm-hello/kernels
kernels=$(ls "$cache" 2>/dev/null | tr '\n' ' ' || true)
echo "timings: kernels already downloaded: ${kernels:-none (the first run downloads one)}"

for run in $(seq 1 "$runs"); do
  for scenario in "${scenarios[@]}"; do
    echo "timings: run $run of $runs: $scenario"
    case $scenario in
      run)
        dir=$(fresh_clone "run-$run")
        measure "make run, fresh clone" "$dir" make run
        for lesson in 1 2 3; do measure "make run LESSON=$lesson, once built" "$dir" make run LESSON=$lesson; done ;;
      test | retest)
        dir=$work/clone-test-$run
        if [ "$scenario" = test ] || [ ! -d "$dir" ]; then
          dir=$(fresh_clone "test-$run")
          measure "make test, fresh clone" "$dir" make test
        fi
        if [ "$scenario" = retest ]; then
          touch "$dir/main.cpp"
          measure "make test after a change to main.cpp" "$dir" make test
        fi ;;
      hosts)
        dir=$(fresh_clone "hosts-$run")
        measure "make test-hosts, fresh clone" "$dir" make test-hosts ;;
      ci)
        dir=$(fresh_clone "ci-$run")
        measure ".ci/run, fresh clone" "$dir" ci_run ;;
    esac
  done
done

# The table: for each scenario, each part's median, fastest and slowest
# (the slowest parts first), wall clock last.
awk -F'\t' -v runs="$runs" '
  function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    lo = v[1]; hi = v[n]
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  !(($1 SUBSEP $2) in seen) { seen[$1, $2] = 1; order[$1] = order[$1] "\t" $2; if (!($1 in known)) { known[$1] = 1; labels[++n] = $1 } }
  { values[$1, $2] = values[$1, $2] " " $3 }
  END {
    for (l = 1; l <= n; l++) {
      label = labels[l]
      printf "\n== %s (%d run%s; seconds)\n%-62s %7s %7s %7s\n", label, runs, (runs > 1 ? "s" : ""), "part", "median", "fastest", "slowest"
      count = split(substr(order[label], 2), parts, "\t")
      rows = ""
      for (i = 1; i <= count; i++) {
        m = median(values[label, parts[i]])
        line = sprintf("%-62s %7.1f %7.1f %7.1f", parts[i], m, lo, hi)
        if (parts[i] ~ /^wall clock/) walls = walls line "\n"; else rows = rows sprintf("%012.1f", m) "\t" line "\n"
      }
      nrows = split(rows, sorted, "\n") - 1
      for (i = 1; i <= nrows; i++) for (j = i + 1; j <= nrows; j++) if (sorted[j] > sorted[i]) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
      for (i = 1; i <= nrows; i++) { sub(/^[^\t]*\t/, "", sorted[i]); print sorted[i] }
      printf "%s", walls
      walls = ""
    }
  }' "$work/results"
if [ -n "$keep" ]; then echo "timings: the clones are kept in $work"; fi

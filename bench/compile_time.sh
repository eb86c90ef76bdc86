#!/usr/bin/env bash
# bench/compile_time.sh - what restartable_server.hpp costs at build time and in the binary,
# next to cpp-httplib's single header.
#
#   bench/compile_time.sh
#
# Compile times, each the median of RUNS (5) wall-clock times (bash's `time`), at -O2 and
# at -O0, with the CPU time (user + sys) beside it: on a shared machine the CPU time moves
# less with the load than the wall time does. The rounds interleave every case, so a burst
# of load from elsewhere hits both libraries alike.
#   hello        compile + link of a hello server: examples/hello.cpp (the README's quick
#                start) against bench/hello_httplib.cpp
#   bench hello  the same with bench/hello_restartable.cpp, which does line for line what
#                bench/hello_httplib.cpp does (port argument, "port N" printed)
#   declare      -c of a translation unit that includes the header and declares one function
#                taking the server class: the cost of merely including the header
#   declare, split   the same with -DRESTARTABLE_SERVER_SPLIT (ours only: a file of a
#                program that compiles the implementation once, in another file)
# Stripped sizes (`strip -o`) of both hello servers at -O2 and at -Os.
# Each row gives ours / cpp-httplib; the last lines hold the results against the goals
# (hello: <= 0.25x cpp-httplib's compile time, <= 0.4x its stripped size).
#
# cpp-httplib is built as bench/run.sh builds it (-DCPPHTTPLIB_TCP_NODELAY=true
# -DCPPHTTPLIB_USE_POLL, no OpenSSL), from the same header: $BENCH_CACHE/cpp-httplib/httplib.h,
# which bench/run.sh takes from Debian's source package. When it is missing this script runs
# `apt-get source cpp-httplib` the same way (that needs a deb-src entry: bench/run.sh adds
# one when run as root). Nothing else is downloaded.
#
# Environment: CXX (default g++), COMPILE_RUNS (default 5), BENCH_CACHE (default
# bench/.cache), COMPILE_TIME_DIR (the builds, default $BENCH_CACHE/compile_time; kept).
# Exit status: 0 when everything built and was measured (the goals are reported, not
# enforced); 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CACHE=${BENCH_CACHE:-$HERE/.cache}
OUT=${COMPILE_TIME_DIR:-$CACHE/compile_time}
CXX=${CXX:-g++}
RUNS=${COMPILE_RUNS:-5}
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "compile_time.sh: COMPILE_RUNS must be a positive number" >&2; exit 2; }

die() { printf 'compile_time.sh: %s\n' "$*" >&2; exit 1; }
log() { printf '== %s\n' "$*" >&2; }

# ------------------------------------------------------------ cpp-httplib --
HTTPLIB_DIR=$CACHE/cpp-httplib
if [ ! -s "$HTTPLIB_DIR/httplib.h" ]; then
  apt-get source --print-uris cpp-httplib >/dev/null 2>&1 ||
    die "no deb-src entry for apt-get source cpp-httplib: run bench/run.sh --quick once as root (it adds one)"
  log "apt-get source cpp-httplib"
  src=$(mktemp -d "${TMPDIR:-/tmp}/rs-httplib-src.XXXXXX")
  (cd "$src" && apt-get source -qq cpp-httplib >apt-get-source.log 2>&1) ||
    { cat "$src/apt-get-source.log" >&2; rm -rf "$src"; die "apt-get source cpp-httplib failed"; }
  hdr=$(find "$src" -maxdepth 2 -name httplib.h -path '*cpp-httplib-*' | head -n 1)
  [ -n "$hdr" ] || { rm -rf "$src"; die "httplib.h not found in the cpp-httplib source package"; }
  mkdir -p "$HTTPLIB_DIR" && cp "$hdr" "$HTTPLIB_DIR/httplib.h"
  rm -rf "$src"
fi
HTTPLIB_VERSION=$(sed -n 's/^#define CPPHTTPLIB_VERSION "\(.*\)"/\1/p' "$HTTPLIB_DIR/httplib.h" | head -n 1)
RS_VERSION=$(awk '/define RESTARTABLE_SERVER_VERSION_(MAJOR|MINOR|PATCH)/ {v = v (v == "" ? "" : ".") $3} END {print v}' "$ROOT/restartable_server.hpp")

# ------------------------------------------------------------------ cases --
# Only the times are removed: COMPILE_TIME_DIR may be a directory the user also keeps other things in.
rm -rf "$OUT/times" && mkdir -p "$OUT/times"
cat >"$OUT/declare_rs.cpp" <<'EOF'
#include "restartable_server.hpp"
void add_routes(restartable_server::server& srv);
EOF
cat >"$OUT/declare_httplib.cpp" <<'EOF'
#include "httplib.h"
void add_routes(httplib::Server& svr);
EOF

RS_FLAGS=(-std=c++17 -pthread -I"$ROOT")
HTTPLIB_FLAGS=(-std=c++17 -pthread -I"$HTTPLIB_DIR" -DCPPHTTPLIB_TCP_NODELAY=true -DCPPHTTPLIB_USE_POLL)
# CASE -> source; *_rs cases use RS_FLAGS, *_httplib ones HTTPLIB_FLAGS; declare* stop at -c;
# declaresplit_rs is declare_rs.cpp with RESTARTABLE_SERVER_SPLIT.
declare -A SOURCE=(
  [hello_rs]=$ROOT/examples/hello.cpp
  [benchhello_rs]=$HERE/hello_restartable.cpp
  [hello_httplib]=$HERE/hello_httplib.cpp
  [declare_rs]=$OUT/declare_rs.cpp
  [declare_httplib]=$OUT/declare_httplib.cpp
  [declaresplit_rs]=$OUT/declare_rs.cpp
)
CASES=(hello_rs benchhello_rs hello_httplib declare_rs declaresplit_rs declare_httplib)

# compile CASE OPT: builds $OUT/CASE-OPT, e.g. hello_rs-O2 (an executable, or an object
# for declare*), the compiler's output in $OUT/CASE-OPT.log; on failure shows it, returns 1
compile() {
  local case=$1 opt=$2 flags
  if [[ "$case" == *_rs ]]; then flags=("${RS_FLAGS[@]}"); else flags=("${HTTPLIB_FLAGS[@]}"); fi
  [[ "$case" == declare* ]] && flags+=(-c)
  [[ "$case" == declaresplit_* ]] && flags+=(-DRESTARTABLE_SERVER_SPLIT)
  "$CXX" "${flags[@]}" "$opt" -o "$OUT/$case$opt" "${SOURCE[$case]}" >"$OUT/$case$opt.log" 2>&1 ||
    { cat "$OUT/$case$opt.log" >&2; return 1; }
}

# timed CASE OPT: compiles once and appends "WALL CPU" (seconds) to $OUT/times/CASE-OPT
timed() {
  local case=$1 opt=$2 times
  local TIMEFORMAT='%3R %3U %3S'
  times=$({ time compile "$case" "$opt" 2>&3; } 3>&2 2>&1) || die "building $case at $opt failed"
  awk '{printf "%.3f %.3f\n", $1, $2 + $3}' <<<"$times" >>"$OUT/times/$case$opt"
}

load() { uptime | sed 's/.*load average: //'; }

# ---------------------------------------------------------------- measure --
LOAD_BEFORE=$(load)
log "compile times, $RUNS rounds (load average $LOAD_BEFORE)"
for ((round = 1; round <= RUNS; round++)); do
  for opt in -O2 -O0; do
    for case in "${CASES[@]}"; do timed "$case" "$opt"; done
  done
  log "round $round of $RUNS done (load average $(load))"
done
LOAD_AFTER=$(load)

# stripped sizes: the -O2 builds above, and -Os builds
for case in hello_rs benchhello_rs hello_httplib; do
  compile "$case" -Os || die "building $case at -Os failed"
  for opt in -O2 -Os; do strip -o "$OUT/$case$opt.stripped" "$OUT/$case$opt"; done
done

# ----------------------------------------------------------------- report --
# median FILE COLUMN: the median of that column (the lower middle one for an even count)
median() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
range() { awk -v c="$2" 'NR == 1 || $c < lo {lo = $c} NR == 1 || $c > hi {hi = $c} END {printf "%.2f-%.2f", lo, hi}' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
bytes() { stat -c %s "$OUT/$1.stripped"; }
# goal LABEL OURS THEIRS GOAL: "- LABEL: 0.xxx (goal <= GOALx): met" (or NOT met), exact
goal() {
  awk -v l="$1" -v a="$2" -v b="$3" -v g="$4" \
    'BEGIN {printf "- %s: %.3fx (goal <= %sx): %s\n", l, a / b, g, (a / b <= g ? "met" : "NOT met")}'
}

# time_row LABEL OURS THEIRS OPT: one table row from the times files
time_row() {
  local label=$1 ours=$OUT/times/$2$4 theirs=$OUT/times/$3$4
  printf '| %s | %s | %.2f (%s) | %.2f (%s) | **%s** | %s |\n' "$label" "$4" \
    "$(median "$ours" 1)" "$(range "$ours" 1)" "$(median "$theirs" 1)" "$(range "$theirs" 1)" \
    "$(ratio "$(median "$ours" 1)" "$(median "$theirs" 1)")" \
    "$(ratio "$(median "$ours" 2)" "$(median "$theirs" 2)")"
}

echo "### compile time and size: restartable_server $RS_VERSION vs cpp-httplib $HTTPLIB_VERSION"
echo
echo "- compiler: $("$CXX" --version | head -n 1); -std=c++17 -pthread; $(nproc) CPUs," \
     "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
echo "- load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER"
echo "- times: median of $RUNS wall-clock runs in seconds (min-max); ratios are ours / cpp-httplib," \
     "of the wall medians and of the CPU (user+sys) medians"
echo
echo "| compile | flags | restartable_server (s) | cpp-httplib (s) | wall ratio | CPU ratio |"
echo "|---|---|--:|--:|--:|--:|"
for opt in -O2 -O0; do
  time_row "hello, compile + link (examples/hello.cpp)" hello_rs hello_httplib "$opt"
  time_row "bench hello, compile + link (bench/hello_restartable.cpp)" benchhello_rs hello_httplib "$opt"
  time_row "include + declare only (-c)" declare_rs declare_httplib "$opt"
  time_row "include + declare only, -DRESTARTABLE_SERVER_SPLIT (-c)" declaresplit_rs declare_httplib "$opt"
done
echo
echo "| stripped binary | flags | restartable_server (bytes) | cpp-httplib (bytes) | ratio |"
echo "|---|---|--:|--:|--:|"
for opt in -O2 -Os; do
  for ours in hello_rs benchhello_rs; do
    printf '| %s | %s | %s | %s | **%s** |\n' \
      "$([ "$ours" = hello_rs ] && echo "hello (examples/hello.cpp)" || echo "bench hello")" "$opt" \
      "$(bytes "$ours$opt")" "$(bytes "hello_httplib$opt")" "$(ratio "$(bytes "$ours$opt")" "$(bytes "hello_httplib$opt")")"
  done
done
echo
echo "Goals for hello (examples/hello.cpp against bench/hello_httplib.cpp):"
for opt in -O2 -O0; do
  goal "compile time $opt (wall)" "$(median "$OUT/times/hello_rs$opt" 1)" "$(median "$OUT/times/hello_httplib$opt" 1)" 0.25
done
for opt in -O2 -Os; do
  goal "stripped size $opt" "$(bytes "hello_rs$opt")" "$(bytes "hello_httplib$opt")" 0.4
done

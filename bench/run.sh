#!/usr/bin/env bash
# bench/run.sh - restartable_server against cpp-httplib and nginx, side by side, one table.
#
#   bench/run.sh                 the full suite (a few minutes): medians of 3 runs; also
#                                draws the figures as bench/results.svg
#   bench/run.sh --quick         a smoke run (tiny durations, 1 run, 100 idle connections) that
#                                only checks that every figure produced a value; asserts no
#                                speed (its chart goes to bench/.cache/results.svg)
#   bench/run.sh --soak MINUTES  a leak check, nothing else: wrk -c16 on a restartable_server
#                                that restarts itself once a second (bench/soak_server.cpp)
#                                for MINUTES (2 or more); every 10 s its RSS, descriptors
#                                and threads; exit status 0 when descriptors and threads
#                                stay flat after the first minute and wrk saw no error
#
# Runs as-is on a fresh Debian 12 machine as root: installs wrk, nginx (and its echo
# module), g++ and dpkg-dev from Debian when missing, and takes cpp-httplib's original single header from Debian's
# source package (apt-get source cpp-httplib; a deb-src entry derived from the machine's
# Debian sources is added when there is none). Nothing else is downloaded. The header and
# the builds live in bench/.cache (or $BENCH_CACHE); the builds are redone on every run.
#
# Everything listens on 127.0.0.1 on free ports; nginx runs in the foreground as the
# current user with a generated config in a temporary directory (for figure 11 with its
# master process and Debian's echo module, libnginx-mod-http-echo, for POST /echo). Every
# process started here is killed on exit. Exit status: 0 when every figure produced a
# value, 1 otherwise.
#
# Figures 1-7 compare the three servers in RUNS rounds. Figure 8 is the headline comparison
# with nginx: restartable_server with default options, the same with worker_threads = 0,
# and nginx, all three running, wrk -t2 alternating between them at -c8, -c64, -c256
# keep-alive and -c16 with "Connection: close", for KA_ROUNDS rounds of KA_SECONDS per load
# (5 x 5 s; --quick 1 x 1 s): req/s, p50, p99, server CPU per request, and the per-round
# ratios to nginx, medians; then the same loads again with each server in a cgroup of its own
# capped at 50 % of one CPU (cgroup v2 cpu.max or v1 cpu.cfs_quota_us, 10 ms periods; left
# out where no cgroup can be made), so that the server, not wrk, sets the pace: req/s and
# CPU per request (latency there is the quota's period). Figure 14
# (bench/slow_neighbour.cpp): the req/s of 63 keep-alive connections alone and beside a 64th
# whose handler sleeps 100 ms, KA_ROUNDS rounds of KA_SECONDS each, default options. Figures 9 and 10: 64 clients that never read (4 KiB receive buffers)
# POST 4 MiB bodies to /echo, or GET a 4 MiB /big, or pipeline GET /hello without end, while
# 200 fresh GET /hello requests on new connections (--quick: 20) measure how long everyone
# else waits (each with a 2 s limit, --quick 1 s: a stuck server shows as unanswered
# requests, not as a hung bench), and the server's peak memory (VmHWM) under that attack.
# Figure 11, the restart storm (bench/restart_storm.cpp): 8 client threads send GET /hello
# and POST /echo on kept-alive and fresh connections for STORM_SECONDS (10 s; --quick 1 s)
# while the server restarts every STORM_INTERVAL_MS (100 ms): restartable_server with
# server::restart() in-process, nginx with a reload (SIGHUP to its master, as `nginx -s
# reload` sends); what each request came to: refused, unanswered, truncated, a wrong body, a
# kept-alive connection closed under a request. Figure 12 (bench/restart_cost.cpp): the time
# of one restart() call, median of COST_REPEATS (50; --quick 10), with 0 and with COST_IDLE
# (1,000; --quick 100) idle keep-alive connections, and how many of those are not served
# afterwards. Figure 13: restartable_server built with RESTARTABLE_SERVER_USE_POLL (the
# poll(2) backend of macOS and the BSDs, forced on Linux): keep-alive wrk -c64 as in figure
# 1, and idle capacity as in figure 3, to set beside the epoll rows of the same run.
# Figure 15, TLS: restartable_server built with RESTARTABLE_SERVER_OPENSSL (its TLS defaults)
# and nginx with `listen ... ssl`, both serving one certificate made here with `openssl req`
# (ECDSA P-256, self-signed, in the temporary directory) with the same settings: TLS 1.2 and
# 1.3, TLS 1.2 suites ECDHE+AESGCM:ECDHE+CHACHA20 (tls_options::tls12_ciphers' default;
# nginx: `ssl_ciphers`, as its own default is HIGH:!aNULL:!MD5), the server's cipher order, ALPN http/1.1, no server-side session cache
# and session tickets with OpenSSL's random per-process keys (nginx: `ssl_session_cache off`,
# `ssl_session_tickets on`, no ticket key file). Both up at once, wrk -t2 alternating between
# them as in figure 8 (KA_ROUNDS x KA_SECONDS per load): keep-alive -c64 over https, and -c16
# with "Connection: close" (a handshake per request: wrk 4.1 keeps each connection's SSL
# object and offers its last session again, so these handshakes resume by ticket - a 1 s
# wrk run against nginx, which logs $ssl_session_reused, counts them); then full handshakes,
# none resumed, from bench/idle_tls.cpp (2 threads, "Connection: close"). Last, RSS per idle
# TLS connection: bench/idle_tls.cpp opens TLS_IDLE_N (2,000; --quick 200) connections, each
# a full handshake and one keep-alive GET /hello, against a fresh server, and divides the
# growth of its VmRSS by N (nginx: master_process off, so the one process is the worker).
# Figures 16-20: WebSocket and the bodies that hold no thread, on bench/ws_server.cpp
# (restartable_server, default options but max_body_bytes 1 GiB). 16: a WebSocket echo of
# 32-byte text messages over 64 connections, one message in flight each, from
# bench/ws_load.cpp (one thread, epoll, masked frames, its own handshake), against Node's ws
# (npm, bench/peers/ws_echo_node.js) and Go's gorilla/websocket (Debian's package,
# bench/peers/ws_echo_go), all three up and pinned alike, ws_load alternating between them
# for KA_ROUNDS rounds of KA_SECONDS: messages/s, p50/p99, server CPU per message (its
# /proc/PID/stat over the timed window), per-round ratios. 17: WS_IDLE_N (IDLE_N) idle
# WebSockets against a fresh server, and as many idle keep-alive HTTP connections against
# another: (VmRSS after - before) / N and the server's threads, then a message (a request)
# on each. 18: WS_BCAST_N (1,000; --quick 200) WebSockets on /bcast; a thread of the server
# calls send_text() on each; from the first send until the last client has it,
# WS_BCAST_ROUNDS rounds (20; --quick 3), the median. 19: a multipart/form-data upload of 10
# and of 100 MiB (bench/upload.cpp) to a read_multipart() route, each to a fresh server:
# MB/s and the server's VmHWM. 20: 64 clients read GET /events (push streams) and 64 GET a
# 20 MiB static file (static_files: set_file) and never read; ATTACK_PROBES fresh GET /hello
# as in figure 9, against the same server idle just before; the server's threads.
#
# Environment: CXX (default g++), BENCH_CACHE, BENCH_RUNS (full mode, default 3),
# BENCH_WRK_SECONDS (full mode, default 4), BENCH_KA_ROUNDS and BENCH_KA_SECONDS (figure 8,
# full mode, default 5 and 5), BENCH_RS_DIR (the directory whose restartable_server.hpp is
# measured, default the repository root: point it at another checkout to compare engines),
# BENCH_ONLY=ws (figures 16-20 alone, in a few minutes: everything is still built, the
# other figures are not measured and the table has only these rows), BENCH_ONLY=ka (figures
# 8 and 14 alone, the same way: default options, worker_threads = 0 and nginx side by side,
# uncapped and capped, and the slow handler; about 12 minutes with the default rounds).
set -euo pipefail

QUICK=0 SOAK_MINUTES=""
usage() { echo "usage: $0 [--quick | --soak MINUTES]  (MINUTES: 2 or more; the first is the baseline)" >&2; exit 2; }
case "${1:-}" in
  --quick) [ $# = 1 ] || usage; QUICK=1 ;;
  --soak) [ $# = 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] && [ "$2" -ge 2 ] || usage; SOAK_MINUTES=$2 ;;
  "") ;;
  *) usage ;;
esac

case "${BENCH_ONLY:-}" in
  "") ONLY_WS=0 ONLY_KA=0 ;;
  ws) ONLY_WS=1 ONLY_KA=0 ;;
  ka) ONLY_WS=0 ONLY_KA=1 ;;
  *) echo "run.sh: BENCH_ONLY is ws, ka or unset" >&2; exit 2 ;;
esac
ONLY=$((ONLY_WS + ONLY_KA))  # 1 when only some figures are measured
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RS_DIR=$(cd "${BENCH_RS_DIR:-$ROOT}" && pwd)
[ -f "$RS_DIR/restartable_server.hpp" ] || { echo "run.sh: no restartable_server.hpp in $RS_DIR" >&2; exit 1; }
CACHE=${BENCH_CACHE:-$HERE/.cache}
BUILD=$CACHE/build
CXX=${CXX:-g++}

if [ "$QUICK" = 1 ]; then
  RUNS=1 WRK_SECONDS=1 WARMUP_SECONDS=0 COMPILE_RUNS=1
  IDLE_N=100 IDLE_OPEN_MS=1500 FRESH_TIMEOUT_MS=500 SECOND_BUDGET_MS=1500
  STOP_N=100 STOP_ANSWER_MS=500 RESTART_SECONDS=0.3 ECHO_COUNT=1
  KA_ROUNDS=1 KA_SECONDS=1
  ATTACK_PROBES=20 ATTACK_TIMEOUT_MS=1000 ATTACK_SETUP_MS=3000
  STORM_SECONDS=1 STORM_TIMEOUT_MS=2000 COST_IDLE=100 COST_REPEATS=10
  TLS_IDLE_N=200
  WS_BCAST_N=200 WS_BCAST_ROUNDS=3
else
  RUNS=${BENCH_RUNS:-3} WRK_SECONDS=${BENCH_WRK_SECONDS:-4} WARMUP_SECONDS=1 COMPILE_RUNS=3
  IDLE_N=10000 IDLE_OPEN_MS=8000 FRESH_TIMEOUT_MS=3000 SECOND_BUDGET_MS=25000
  STOP_N=1000 STOP_ANSWER_MS=2000 RESTART_SECONDS=2 ECHO_COUNT=8
  KA_ROUNDS=${BENCH_KA_ROUNDS:-5} KA_SECONDS=${BENCH_KA_SECONDS:-5}
  ATTACK_PROBES=200 ATTACK_TIMEOUT_MS=2000 ATTACK_SETUP_MS=5000
  STORM_SECONDS=10 STORM_TIMEOUT_MS=5000 COST_IDLE=1000 COST_REPEATS=50
  TLS_IDLE_N=2000
  WS_BCAST_N=1000 WS_BCAST_ROUNDS=20
fi
WS_CONNS=64 WS_MSG_BYTES=32 UPLOAD_MIBS=(10 100) WS_FILE_MIB=20
STORM_INTERVAL_MS=100 STORM_CLIENTS=8
ECHO_MIB=10
# Figures 9 and 10: ATTACKERS connections that never read (SO_RCVBUF 4 KiB), each POSTing
# ATTACK_MIB MiB to /echo, or GETting /big (4 MiB), or pipelining GET /hello; meanwhile
# ATTACK_PROBES fresh requests, one every ATTACK_INTERVAL_MS, each with ATTACK_TIMEOUT_MS.
ATTACKERS=64 ATTACK_MIB=4 ATTACK_INTERVAL_MS=10

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
kb_to_mb() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1024}'; }
# kv FILE KEY: the value of a "key value" line
kv() { sed -n "s/^$2 //p" "$1" | head -n 1; }

# ------------------------------------------------------------------- cleanup --
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rs-bench.XXXXXX")
PIDS=() CGROUPS=() CG_CPU_ENABLED=0
POLICY_RC_CREATED=0
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ "$POLICY_RC_CREATED" = 1 ] && rm -f /usr/sbin/policy-rc.d
  for p in "${CGROUPS[@]}"; do rmdir "$p" 2>/dev/null || true; done
  [ "$CG_CPU_ENABLED" = 1 ] && { echo -cpu >/sys/fs/cgroup/cgroup.subtree_control; } 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ------------------------------------------------------------------ packages --
need=()
for pkg in wrk nginx libnginx-mod-http-echo g++ build-essential dpkg-dev xz-utils openssl libssl-dev \
           golang-go golang-github-gorilla-websocket-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Figure 16's Node peer: node and npm (Debian's nodejs and npm, unless a node is there already).
{ command -v node >/dev/null && command -v npm >/dev/null; } || need+=(nodejs npm)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages (${need[*]}); run as root or install them"
  log "installing ${need[*]}"
  # Keep the nginx package from starting its system service: we run our own instance.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found"

# ------------------------------------------------------------------ machine --
# The server gets the first half of the CPUs, the load generator the rest.
NPROC=$(nproc)
SRV_PIN=() CLI_PIN=() CLI_CPUS=$NPROC STORM_PIN=() STORM_CLI_PIN=()
if [ "$NPROC" -ge 2 ] && command -v taskset >/dev/null; then
  half=$((NPROC / 2))
  SRV_PIN=(taskset -c "0-$((half - 1))")
  CLI_PIN=(taskset -c "$half-$((NPROC - 1))")
  CLI_CPUS=$((NPROC - half))
  # restart_storm runs server and clients in one process and pins its threads itself.
  STORM_CLI_PIN=(--client-cpus "$half-$((NPROC - 1))")
  STORM_PIN=(--server-cpus "0-$((half - 1))" "${STORM_CLI_PIN[@]}")
  PINNING="server on CPU 0-$((half - 1)), load generator on CPU $half-$((NPROC - 1)) (taskset)"
else
  PINNING="not pinned (1 CPU)"
fi
RS_VERSION=$(awk '/define RESTARTABLE_SERVER_VERSION_(MAJOR|MINOR|PATCH)/ {v = v (v == "" ? "" : ".") $3} END {print v}' "$RS_DIR/restartable_server.hpp")

# --------------------------------------------------------------------- soak --
# --soak MINUTES (see the top of this file); nothing else runs. Each sample is the lowest of
# five readings 50 ms apart: for a moment after each restart the old run's threads are
# still there beside the new run's, and a leak shows as a floor that rises, not as a peak.
# Flat: no sample after the first minute has more descriptors or threads than the most
# seen in the first minute.
SOAK_INTERVAL_S=10
# soak_sample PID: "RSS_KB FDS THREADS", the lowest of five readings 50 ms apart
soak_sample() {
  local pid=$1 i rss fds thr
  for ((i = 0; i < 5; i++)); do
    rss=$(status_kb "$pid" VmRSS) || return 1
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    thr=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%s %s %s\n' "$rss" "$fds" "$thr"
    sleep 0.05
  done | awk 'NR == 1 || $1 < r {r = $1} NR == 1 || $2 < f {f = $2} NR == 1 || $3 < t {t = $3}
              END {if (NR == 5) print r, f, t; else exit 1}'
}
# soak MINUTES: builds soak_server, runs it under wrk -c16 for MINUTES, prints the samples
# as a table and the verdict; status 0 when flat, with no wrk error and no failed restart.
# (Called as "soak ... || status=$?", so errexit is off inside: every failure is checked.)
soak() {
  local minutes=$1 out=$TMP/soak.out wrk_out=$TMP/soak-wrk.out samples=$TMP/soak.tsv
  local tool pid port wpid t0 t wait_s sample rss fds thr restarts i status=0
  mkdir -p "$BUILD"
  log "building soak_server and probe (restartable_server $RS_VERSION)"
  for tool in soak_server probe; do
    "$CXX" -std=c++17 -O2 -pthread -I"$RS_DIR" -o "$BUILD/$tool" "$HERE/$tool.cpp" >"$BUILD/$tool.log" 2>&1 ||
      { cat "$BUILD/$tool.log" >&2; die "building $tool failed"; }
  done
  "${SRV_PIN[@]}" "$BUILD/soak_server" 0 1000 >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 500; i++)); do
    port=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$out")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  [ -n "$port" ] && "$BUILD/probe" wait "$port" 5000 || { cat "$out" >&2; die "soak_server did not start"; }
  log "soak: wrk -t$CLI_CPUS -c16 for $minutes min against soak_server (pid $pid, port $port), which restarts once a second"
  # wrk goes on 3 s past the last sample, so that every sample sees the load.
  "${CLI_PIN[@]}" wrk -t"$CLI_CPUS" -c16 -d"$((minutes * 60 + 3))s" "http://127.0.0.1:$port/hello" >"$wrk_out" 2>&1 &
  wpid=$!
  PIDS+=("$wpid")
  t0=$(date +%s)
  echo "### soak: restartable_server $RS_VERSION restarting once a second under wrk -c16, $minutes min"
  echo
  echo "- machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $NPROC CPUs; pinning: $PINNING"
  echo "- each sample: the lowest of 5 readings 50 ms apart (a restart briefly holds two runs' threads)"
  echo
  echo "| t (s) | RSS (MiB) | descriptors | threads | restarts |"
  echo "|--:|--:|--:|--:|--:|"
  : >"$samples"
  for ((t = SOAK_INTERVAL_S; t <= minutes * 60; t += SOAK_INTERVAL_S)); do
    wait_s=$((t0 + t - $(date +%s)))
    [ "$wait_s" -le 0 ] || sleep "$wait_s"
    sample=$(soak_sample "$pid") || { status=1; log "soak: the server is gone"; break; }
    restarts=$(grep -c '^restarted ' "$out" || true)
    read -r rss fds thr <<<"$sample"
    printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$rss" "$fds" "$thr" "$restarts" >>"$samples"
    printf '| %s | %s | %s | %s | %s |\n' "$t" "$(kb_to_mb "$rss")" "$fds" "$thr" "$restarts"
  done
  wait "$wpid" || { status=1; log "soak: wrk failed"; }
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || { status=1; log "soak: soak_server exited with an error"; }
  local verdict wrk_errors requests failed
  # Flat: after the first minute, no more descriptors or threads than the first minute's most.
  verdict=$(awk -F'\t' '
    $1 <= 60 {if ($3 > fd0) fd0 = $3; if ($4 > th0) th0 = $4; rss0 = $2; next}
    {n++; if ($3 > fd1) fd1 = $3; if ($4 > th1) th1 = $4; rss1 = $2}
    END {
      if (n == 0) {print "no sample after the first minute"; exit}
      grew = ""
      if (fd1 > fd0) grew = grew sprintf(" descriptors %d -> %d", fd0, fd1)
      if (th1 > th0) grew = grew sprintf(" threads %d -> %d", th0, th1)
      printf "%s (RSS %.2f MiB at 1 min, %.2f MiB at the end)", grew == "" ? "flat" : "NOT flat:" grew, rss0 / 1024, rss1 / 1024
    }' "$samples")
  # wrk: "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx or 3xx responses: N"
  wrk_errors=$(awk '/Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10} /Non-2xx/ {e += $NF} END {print e + 0}' "$wrk_out")
  requests=$(awk '$2 == "requests" && $3 == "in" {print $1}' "$wrk_out")
  failed=$(grep -c '^restart failed' "$out" || true)
  echo
  echo "- restarts: $(grep -c '^restarted ' "$out" || true), failed: $failed; wrk: ${requests:-?} requests," \
       "$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$wrk_out") req/s, errors: $wrk_errors"
  echo "- verdict: $verdict"
  case "$verdict" in flat*) ;; *) status=1 ;; esac
  [ "$wrk_errors" = 0 ] && [ -n "$requests" ] || { status=1; cat "$wrk_out" >&2; }
  [ "$failed" = 0 ] || status=1
  return "$status"
}
if [ -n "$SOAK_MINUTES" ]; then
  mkdir -p "$CACHE"
  soak_status=0
  soak "$SOAK_MINUTES" > >(tee "$CACHE/last-soak.md") || soak_status=$?
  exit "$soak_status"
fi
# --------------------------------------------------- cpp-httplib from Debian --
# The binary package libcpp-httplib-dev is a split build linked against OpenSSL; the
# source package carries the original single header.
add_deb_src() {
  local out=/etc/apt/sources.list.d/restartable-bench-deb-src
  local f
  # deb822 (Debian 12's /etc/apt/sources.list.d/debian.sources)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    case "$f" in "$out".sources) continue ;; esac
    awk '
      function flush() {
        if (n > 0 && isdeb && isdebian && enabled) {
          for (i = 1; i <= n; i++)
            if (lines[i] ~ /^[Tt]ypes:/) print "Types: deb-src"; else print lines[i]
          print ""
        }
        n = 0; isdeb = 0; isdebian = 0; enabled = 1
      }
      BEGIN { n = 0; enabled = 1 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        lines[++n] = $0
        if ($0 ~ /^[Tt]ypes:/ && $0 ~ /[ \t:]deb([ \t]|$)/) isdeb = 1
        if ($0 ~ /^URIs:/ && $0 ~ /debian/) isdebian = 1
        if ($0 ~ /^Enabled:[ \t]*[Nn]o/) enabled = 0
      }
      END { flush() }' "$f"
  done >"$out.sources.tmp"
  # one-line format (/etc/apt/sources.list, *.list)
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    case "$f" in "$out".list) continue ;; esac
    sed -n -e '/debian/s/^[[:space:]]*deb\([[:space:]]\)/deb-src\1/p' "$f"
  done >"$out.list.tmp"
  local any=0
  if [ -s "$out.sources.tmp" ]; then mv "$out.sources.tmp" "$out.sources"; any=1; else rm -f "$out.sources.tmp"; fi
  if [ -s "$out.list.tmp" ]; then mv "$out.list.tmp" "$out.list"; any=1; else rm -f "$out.list.tmp"; fi
  [ "$any" = 1 ] || die "no Debian apt source found to derive a deb-src entry from"
  log "added deb-src entries in $out.*"
}

HTTPLIB_DIR=$CACHE/cpp-httplib
if [ ! -s "$HTTPLIB_DIR/httplib.h" ]; then
  if ! apt-get source --print-uris cpp-httplib >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "no deb-src entry for apt-get source; run as root once"
    add_deb_src
    apt-get update -qq
  fi
  log "apt-get source cpp-httplib"
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src" "$HTTPLIB_DIR"
  (cd "$CACHE/src" && apt-get source -qq cpp-httplib >"$CACHE/src/apt-get-source.log" 2>&1) ||
    { cat "$CACHE/src/apt-get-source.log" >&2; die "apt-get source cpp-httplib failed"; }
  hdr=$(find "$CACHE/src" -maxdepth 2 -name httplib.h -path '*cpp-httplib-*' | head -n 1)
  [ -n "$hdr" ] || die "httplib.h not found in the cpp-httplib source package"
  cp "$hdr" "$HTTPLIB_DIR/httplib.h"
  rm -rf "$CACHE/src"
fi
HTTPLIB_VERSION=$(sed -n 's/^#define CPPHTTPLIB_VERSION "\(.*\)"/\1/p' "$HTTPLIB_DIR/httplib.h" | head -n 1)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')

# -------------------------------------------------------------------- build --
# Both hello servers: -O2, header-only. cpp-httplib without OpenSSL, with TCP_NODELAY (else
# Nagle dominates its keep-alive latency) and with poll(2) instead of select(2) (0.11.4's
# default select answers 500 on descriptors >= 1024, which 10,000 idle connections reach;
# newer versions always poll).
RS_FLAGS=(-std=c++17 -O2 -pthread -I"$RS_DIR")
HTTPLIB_FLAGS=(-std=c++17 -O2 -pthread -I"$HTTPLIB_DIR" -DCPPHTTPLIB_TCP_NODELAY=true -DCPPHTTPLIB_USE_POLL)
rm -rf "$BUILD" && mkdir -p "$BUILD"
RESULTS=$TMP/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
now_ns() { date +%s%N; }

log "building (restartable_server $RS_VERSION, cpp-httplib $HTTPLIB_VERSION, nginx $NGINX_VERSION)"
# Figure 6: compile time of the hello servers, alternating, on an otherwise idle machine.
for ((i = 0; i < COMPILE_RUNS; i++)); do
  for s in rs httplib; do
    if [ "$s" = rs ]; then flags=("${RS_FLAGS[@]}") src=hello_restartable.cpp; else flags=("${HTTPLIB_FLAGS[@]}") src=hello_httplib.cpp; fi
    t0=$(now_ns)
    "$CXX" "${flags[@]}" -o "$BUILD/hello_$s" "$HERE/$src" 2>"$BUILD/hello_$s.log" ||
      { cat "$BUILD/hello_$s.log" >&2; die "building the $s hello server failed"; }
    t1=$(now_ns)
    record compile_s "$s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')"
  done
done
for s in rs httplib; do
  strip -o "$BUILD/hello_$s.stripped" "$BUILD/hello_$s"
  record binary_kb "$s" "$(awk -v b="$(stat -c %s "$BUILD/hello_$s.stripped")" 'BEGIN {printf "%.0f", b / 1024}')"
done
# Everything else, two compilers at a time (the slowest first).
build() {  # build NAME COMPILER-ARGS...: $BUILD/NAME, its log in $BUILD/NAME.log
  local name=$1
  shift
  "$CXX" "$@" -o "$BUILD/$name" >"$BUILD/$name.log" 2>&1
}
jobs_pids=() jobs_names=() jobs_waited=0 build_failed=0
wait_build() {  # waits for the oldest build still running
  local i=$jobs_waited
  jobs_waited=$((i + 1))
  if ! wait "${jobs_pids[$i]}"; then
    cat "$BUILD/${jobs_names[$i]}.log" >&2
    log "building ${jobs_names[$i]} failed"
    build_failed=1
  fi
}
bg_build() {
  [ $((${#jobs_pids[@]} - jobs_waited)) -lt 2 ] || wait_build
  build "$@" &
  jobs_pids+=($!) PIDS+=($!) jobs_names+=("$1")
}
bg_build echo_httplib "${HTTPLIB_FLAGS[@]}" -DBENCH_ECHO "$HERE/hello_httplib.cpp"
bg_build lifecycle_httplib "${HTTPLIB_FLAGS[@]}" -DBENCH_HTTPLIB "$HERE/lifecycle.cpp"
bg_build echo_rs "${RS_FLAGS[@]}" -DBENCH_ECHO "$HERE/hello_restartable.cpp"
bg_build lifecycle_rs "${RS_FLAGS[@]}" "$HERE/lifecycle.cpp"
bg_build hello_rspoll "${RS_FLAGS[@]}" -DRESTARTABLE_SERVER_USE_POLL "$HERE/hello_restartable.cpp"
bg_build slow_rs "${RS_FLAGS[@]}" -DBENCH_SLOW "$HERE/hello_restartable.cpp"
# Figures 11 and 12 need server::restart(); a checkout from before it (BENCH_RS_DIR) gets
# FAIL there and the rest of the table.
HAVE_RESTART=0
if grep -q 'void restart(std::error_code& ec) noexcept;' "$RS_DIR/restartable_server.hpp"; then
  HAVE_RESTART=1
  bg_build restart_storm "${RS_FLAGS[@]}" "$HERE/restart_storm.cpp"
  bg_build restart_cost "${RS_FLAGS[@]}" "$HERE/restart_cost.cpp"
else
  log "no server::restart() in $RS_DIR/restartable_server.hpp: figures 11 and 12 will fail"
fi
# Figure 15 needs tls_listener(); a checkout from before it gets FAIL there.
HAVE_TLS=0
if grep -q '^listener_factory tls_listener(listener_factory inner, tls_options options);' "$RS_DIR/restartable_server.hpp"; then
  HAVE_TLS=1
  bg_build tls_rs "${RS_FLAGS[@]}" -DBENCH_TLS -DRESTARTABLE_SERVER_OPENSSL "$HERE/hello_restartable.cpp" -lssl -lcrypto
else
  log "no tls_listener() in $RS_DIR/restartable_server.hpp: figure 15 will fail"
fi
# Figures 16-20 need server::websocket() (and push_stream, set_file); a checkout from
# before it gets FAIL there.
HAVE_WS=0
if grep -q '    server& websocket(std::string pattern, websocket_handlers handlers);' "$RS_DIR/restartable_server.hpp"; then
  HAVE_WS=1
  bg_build ws_server "${RS_FLAGS[@]}" "$HERE/ws_server.cpp"
else
  log "no server::websocket() in $RS_DIR/restartable_server.hpp: figures 16-20 will fail"
fi
bg_build idle_tls -std=c++17 -O2 -pthread "$HERE/idle_tls.cpp" -lssl -lcrypto
for tool in idle_clients post_echo probe report slow_readers slow_neighbour ws_load upload; do
  bg_build "$tool" -std=c++17 -O2 -pthread "$HERE/$tool.cpp"
done
while [ "$jobs_waited" -lt "${#jobs_pids[@]}" ]; do wait_build; done
PIDS=()  # all waited for
# Figure 16's peers. A peer that cannot be built or installed fails the run here, --quick
# too: its figure would otherwise have nothing to compare with.
# Go: gorilla/websocket from Debian's package, in GOPATH mode (no module download).
GO_ENV=(env GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE="$CACHE/go-build" GOTOOLCHAIN=local)
if ! (cd "$HERE/peers/ws_echo_go" && "${GO_ENV[@]}" go build -o "$BUILD/ws_echo_go" .) >"$BUILD/ws_echo_go.log" 2>&1; then
  cat "$BUILD/ws_echo_go.log" >&2
  log "building the Go peer (bench/peers/ws_echo_go, gorilla/websocket) failed"
  build_failed=1
fi
GO_VERSION=$(go version 2>/dev/null | awk '{print $3}' | sed 's/^go//')
GORILLA_VERSION=$(dpkg-query -W -f='${Version}' golang-github-gorilla-websocket-dev 2>/dev/null | sed 's/-[^-]*$//')
# Node: the npm package ws (8.x), installed once into the cache (the npm registry).
NODE_DIR=$CACHE/node
if [ ! -f "$NODE_DIR/node_modules/ws/package.json" ]; then
  log "npm install ws@8 (into $NODE_DIR)"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-save ws@8 >"$BUILD/npm.log" 2>&1 ||
    { cat "$BUILD/npm.log" >&2; log "npm install ws failed"; build_failed=1; }
fi
if ! NODE_PATH=$NODE_DIR/node_modules node -e 'require("ws")' >"$BUILD/node_ws.log" 2>&1; then
  cat "$BUILD/node_ws.log" >&2
  log "node cannot load ws from $NODE_DIR"
  build_failed=1
fi
NODE_VERSION=$(node --version 2>/dev/null | sed 's/^v//')
NODE_WS_VERSION=$(sed -n 's/^ *"version": "\(.*\)",$/\1/p' "$NODE_DIR/node_modules/ws/package.json" 2>/dev/null | head -n 1)
[ "$build_failed" = 0 ] || die "a build failed"
# Figure 15's certificate: as the README's HTTPS section makes one, valid for 127.0.0.1.
TLS_CERT=$TMP/tls/cert.pem TLS_KEY=$TMP/tls/key.pem
mkdir -p "$TMP/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -keyout "$TLS_KEY" -out "$TLS_CERT" \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$TMP/tls/openssl.log" 2>&1 ||
  { cat "$TMP/tls/openssl.log" >&2; die "openssl req failed"; }
export BENCH_TLS_CERT=$TLS_CERT BENCH_TLS_KEY=$TLS_KEY  # read by tls_rs

# ------------------------------------------------------------------- limits --
# File descriptors for 10,000 connections, on both ends.
want_fds=$((IDLE_N + 2048))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_fds" ]; then
  ulimit -Hn "$want_fds" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt "$want_fds" ]; then
  IDLE_N=$((nofile - 2048 > 100 ? nofile - 2048 : 100))
  log "RLIMIT_NOFILE is $nofile: idle capacity uses $IDLE_N connections"
fi
WS_IDLE_N=$IDLE_N  # figure 17 (the row titles name it, whichever figures ran)

# ------------------------------------------------------------------ servers --
SPID="" SPORT=""
# Figure 11's nginx echoes POST /echo with Debian's echo module (a chunked response).
NGINX_ECHO_MODULE=$(dpkg -L libnginx-mod-http-echo 2>/dev/null | grep '/ngx_http_echo_module\.so$' | head -n 1 || true)
# start_server KIND NAME: KIND is hello or echo, NAME rs, httplib or nginx; KIND storm is
# nginx for figure 11: with its master process (SPID: the master, which reloads on SIGHUP),
# POST /echo, and notices in $TMP/nginx/logs/error.log (one "reconfiguring" per reload).
# KIND tls is figure 15's: every connection TLS with $TLS_CERT (rs: the tls_rs build; nginx:
# the settings at the top of this file, and GET /reuse, which logs $ssl_session_reused to
# $TMP/nginx/logs/reuse.log). Sets SPID, SPORT.
start_server() {
  local kind=$1 name=$2 out=$TMP/server.out attempt
  SPID="" SPORT=""
  for attempt in 1 2 3; do
    : >"$out"
    if [ "$name" = nginx ]; then
      local dir=$TMP/nginx master=off log_level=warn load_echo="" echo_location="" ssl="" tls=""
      if [ "$kind" = storm ]; then
        [ -n "$NGINX_ECHO_MODULE" ] || { log "nginx's echo module (libnginx-mod-http-echo) is not installed"; return 1; }
        master=on log_level=notice load_echo="load_module $NGINX_ECHO_MODULE;"
        echo_location="location = /echo { client_body_buffer_size 64k; echo_read_request_body; echo_request_body; }"
      fi
      if [ "$kind" = tls ]; then
        ssl=" ssl"
        # Figure 15: the settings restartable_server's tls_listener() uses (see the top).
        tls="ssl_certificate $TLS_CERT;
    ssl_certificate_key $TLS_KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    ssl_prefer_server_ciphers on;
    ssl_session_cache off;
    ssl_session_tickets on;
    location = /reuse {
      access_log $dir/logs/reuse.log reuse;
      default_type text/plain;
      return 200 \"Hello, World!\";
    }"
      fi
      rm -rf "$dir" && mkdir -p "$dir/logs" "$dir/www"
      head -c $((4 << 20)) /dev/zero | tr '\0' x >"$dir/www/big"  # GET /big: 4 MiB, as the other servers
      SPORT=$("$BUILD/probe" freeport)
      cat >"$dir/nginx.conf" <<EOF
$load_echo
worker_processes 1;
daemon off;
master_process $master;
pid $dir/nginx.pid;
error_log $dir/logs/error.log $log_level;
events { worker_connections $((IDLE_N + 1024)); }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 75s;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  sendfile on;
  log_format reuse '\$ssl_session_reused \$ssl_protocol \$ssl_cipher';
  server {
    listen 127.0.0.1:$SPORT$ssl;
    $tls
    location = /hello {
      default_type text/plain;
      return 200 "Hello, World!";
    }
    location = /big {
      root $dir/www;
      default_type application/octet-stream;
    }
    $echo_location
  }
}
EOF
      "${SRV_PIN[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" >"$out" 2>&1 &
      SPID=$!
    elif [ "$kind" = ws ]; then  # figures 16-20: bench/ws_server.cpp, or figure 16's peers
      case $name in
        rs) "${SRV_PIN[@]}" "$BUILD/ws_server" 0 "$WS_FILES" >"$out" 2>&1 & ;;
        node) "${SRV_PIN[@]}" env NODE_PATH="$NODE_DIR/node_modules" node "$HERE/peers/ws_echo_node.js" 0 >"$out" 2>&1 & ;;
        go) "${SRV_PIN[@]}" "$BUILD/ws_echo_go" 0 >"$out" 2>&1 & ;;
      esac
      SPID=$!
      local i
      for ((i = 0; i < 500; i++)); do
        SPORT=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$out")
        [ -n "$SPORT" ] && break
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.01
      done
    else
      if [ "$name" = rs0 ]; then  # the rs build with worker_threads = 0
        "${SRV_PIN[@]}" "$BUILD/${kind}_rs" 0 0 >"$out" 2>&1 &
      else
        "${SRV_PIN[@]}" "$BUILD/${kind}_$name" 0 >"$out" 2>&1 &
      fi
      SPID=$!
      local i
      for ((i = 0; i < 500; i++)); do
        SPORT=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$out")
        [ -n "$SPORT" ] && break
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.01
      done
    fi
    PIDS+=("$SPID")
    if [ -n "$SPORT" ] && if [ "$kind" = tls ]; then "$BUILD/idle_tls" wait "$SPORT" 5000 "$TLS_CERT"
                          elif [ "$kind" = ws ]; then "$BUILD/ws_load" wait "$SPORT" 5000
                          else "$BUILD/probe" wait "$SPORT" 5000; fi; then
      return 0
    fi
    stop_server
    sleep 0.2
  done
  cat "$out" >&2
  return 1
}
stop_server() {
  [ -n "$SPID" ] || return 0
  kill -TERM "$SPID" 2>/dev/null || true
  local i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.01
  done
  kill -KILL "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$SPID" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  SPID=""
}

# toms: awk function turning wrk's "1.23ms" / "456.00us" / "1.20s" into milliseconds
toms='function ms(s) { if (s ~ /us$/) return s / 1000; if (s ~ /ms$/) return s + 0; if (s ~ /m$/) return s * 60000; if (s ~ /s$/) return s * 1000; return s }'
# run_wrk NAME CONNS KEY_PREFIX [wrk args]: records req/s, p50 and p99 (ms)
run_wrk() {
  local name=$1 conns=$2 key=$3
  shift 3
  local threads=$((CLI_CPUS < conns ? CLI_CPUS : conns)) out
  if ! out=$("${CLI_PIN[@]}" timeout $((WRK_SECONDS + 30)) wrk -t"$threads" -c"$conns" -d"${WRK_SECONDS}s" --latency \
        "$@" "http://127.0.0.1:$SPORT/hello" 2>&1); then
    printf '%s\n' "$out" >&2
    record "${key}_rps" "$name" fail; record "${key}_p50" "$name" fail; record "${key}_p99" "$name" fail
    return
  fi
  if printf '%s\n' "$out" | grep -q 'Non-2xx'; then
    log "$name: wrk -c$conns $*: non-2xx responses"
    printf '%s\n' "$out" >&2
  fi
  local rps p50 p99 errors
  rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
  p50=$(printf '%s\n' "$out" | awk "$toms"' $1 == "50%" {printf "%.3f", ms($2)}')
  p99=$(printf '%s\n' "$out" | awk "$toms"' $1 == "99%" {printf "%.3f", ms($2)}')
  errors=$(printf '%s\n' "$out" | sed -n 's/.*Socket errors: //p')
  [ -z "$errors" ] || log "$name: wrk -c$conns $*: socket errors: $errors"
  record "${key}_rps" "$name" "${rps:-fail}"
  record "${key}_p50" "$name" "${p50:-fail}"
  record "${key}_p99" "$name" "${p99:-fail}"
}

# Figure 8 helpers. cpu_ticks PID: user + system clock ticks of every thread of PID so far.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo fail; }
# cap_cpu NAME PID: moves process PID (all its threads) into a cgroup of its own whose CPU
# quota is CAP_PCT % of one CPU (CAP_PERIOD_US periods; cgroup v2's cpu.max, or v1's cpu
# controller where Debian and Docker mount it); removed on exit. Status 1 where no cgroup
# can be made (no root, a read-only /sys/fs/cgroup): the capped rounds are then skipped.
CAP_PCT=50 CAP_PERIOD_US=10000 HAVE_CAP=0
cap_cpu() {
  local name=$1 pid=$2 quota=$((CAP_PERIOD_US * CAP_PCT / 100)) dir
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    if ! grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
      echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || return 1
      CG_CPU_ENABLED=1  # undone on exit
    fi
    dir=/sys/fs/cgroup/rs-bench-$$-$name
    mkdir "$dir" 2>/dev/null || return 1
    CGROUPS+=("$dir")
    echo "$quota $CAP_PERIOD_US" >"$dir/cpu.max" 2>/dev/null || return 1
  else
    local v1
    for v1 in /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/cpu ""; do [ -f "$v1/cpu.cfs_quota_us" ] && break; done
    [ -n "$v1" ] || return 1
    dir=$v1/rs-bench-$$-$name
    mkdir "$dir" 2>/dev/null || return 1
    CGROUPS+=("$dir")
    { echo "$CAP_PERIOD_US" >"$dir/cpu.cfs_period_us" && echo "$quota" >"$dir/cpu.cfs_quota_us"; } 2>/dev/null || return 1
  fi
  echo "$pid" >"$dir/cgroup.procs" 2>/dev/null
}
# ka_round NAME PID PORT LOAD: one wrk run of KA_SECONDS against the server, LOAD one of
# KA_LOADS (8, 64, 256: keep-alive with that many connections; close16: 16 connections
# with "Connection: close"); records under kd<LOAD>_ its req/s, p50, p99, the server's CPU
# time per request (µs) and how busy the load generator was (% of its CPUs: near 100
# means wrk, not the server, set the pace). Sets KA_LAST (req/s p99 cpu_us). With a fifth
# argument https (figure 15) the same over TLS, recorded under ks<LOAD>_; a sixth names the
# key's prefix instead (kd, or kc: figure 8's capped rounds).
KA_LAST=""
ka_round() {
  local name=$1 pid=$2 port=$3 load=$4 scheme=${5:-http} key=kd$4 out c0 c1 rps p50 p99 reqs cpu_us wrk_cpu args
  [ "$scheme" = https ] && key=ks$4
  [ -n "${6:-}" ] && key=$6$4
  KA_LAST=""
  if [ "$load" = close16 ]; then args=(-c16 -H 'Connection: close'); else args=(-c"$load"); fi
  c0=$(cpu_ticks "$pid")
  if ! out=$( { time -p "${CLI_PIN[@]}" timeout $((KA_SECONDS + 30)) wrk -t2 "${args[@]}" -d"${KA_SECONDS}s" --latency \
                  "$scheme://127.0.0.1:$port/hello"; } 2>&1 ); then
    printf '%s\n' "$out" >&2
    for k in rps p50 p99 cpu_us wrk_cpu; do record "${key}_$k" "$name" fail; done
    return
  fi
  c1=$(cpu_ticks "$pid")
  if printf '%s\n' "$out" | grep -q 'Non-2xx\|Socket errors'; then
    log "$name: wrk ${args[*]} $scheme: errors"
    printf '%s\n' "$out" >&2
  fi
  rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
  p50=$(printf '%s\n' "$out" | awk "$toms"' $1 == "50%" {printf "%.3f", ms($2)}')
  p99=$(printf '%s\n' "$out" | awk "$toms"' $1 == "99%" {printf "%.3f", ms($2)}')
  reqs=$(printf '%s\n' "$out" | awk '$2 == "requests" && $3 == "in" {print $1}')
  cpu_us=$(awk -v a="$c0" -v b="$c1" -v n="${reqs:-0}" -v hz="$CLK_TCK" \
    'BEGIN {if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && n > 0) printf "%.2f", (b - a) * 1e6 / hz / n; else print "fail"}')
  wrk_cpu=$(printf '%s\n' "$out" | awk -v cpus="$CLI_CPUS" \
    '$1 == "real" {r = $2} $1 == "user" {u = $2} $1 == "sys" {s = $2} END {if (r > 0) printf "%.0f", (u + s) * 100 / r / cpus; else print "fail"}')
  KA_LAST="${rps:-fail} ${p99:-fail} $cpu_us"
  record "${key}_rps" "$name" "${rps:-fail}"
  record "${key}_p50" "$name" "${p50:-fail}"
  record "${key}_p99" "$name" "${p99:-fail}"
  record "${key}_cpu_us" "$name" "$cpu_us"
  record "${key}_wrk_cpu" "$name" "$wrk_cpu"
}
# fh_round NAME PID PORT: figure 15's full handshakes, KA_SECONDS of bench/idle_tls.cpp
# handshakes (2 threads on the load generator's CPUs, no session offered); records under
# fh_ the handshakes (each with one request) per second, the server's CPU time per handshake
# (µs) and how busy the load generator was. Sets KA_LAST (per_s - cpu_us).
fh_round() {
  local name=$1 pid=$2 port=$3 out c0 c1 n per_s cpu_us wrk_cpu
  KA_LAST=""
  c0=$(cpu_ticks "$pid")
  if ! out=$( { time -p "${CLI_PIN[@]}" timeout $((KA_SECONDS + 30)) "$BUILD/idle_tls" handshakes "$port" "$KA_SECONDS" 2; } 2>&1 ) ||
     [ "$(printf '%s\n' "$out" | sed -n 's/^resumed //p')" != 0 ]; then
    printf '%s\n' "$out" >&2
    for k in rps cpu_us wrk_cpu; do record "fh_$k" "$name" fail; done
    return
  fi
  c1=$(cpu_ticks "$pid")
  n=$(printf '%s\n' "$out" | sed -n 's/^handshakes //p')
  per_s=$(printf '%s\n' "$out" | sed -n 's/^per_s //p')
  cpu_us=$(awk -v a="$c0" -v b="$c1" -v n="${n:-0}" -v hz="$CLK_TCK" \
    'BEGIN {if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && n > 0) printf "%.2f", (b - a) * 1e6 / hz / n; else print "fail"}')
  wrk_cpu=$(printf '%s\n' "$out" | awk -v cpus="$CLI_CPUS" \
    '$1 == "real" {r = $2} $1 == "user" {u = $2} $1 == "sys" {s = $2} END {if (r > 0) printf "%.0f", (u + s) * 100 / r / cpus; else print "fail"}')
  KA_LAST="${per_s:-fail} - $cpu_us"
  record fh_rps "$name" "${per_s:-fail}"
  record fh_cpu_us "$name" "$cpu_us"
  record fh_wrk_cpu "$name" "$wrk_cpu"
}
# ratio A B: A / B with 3 decimals, or fail.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.3f", a / b; else print "fail"}'
}

# Figure 11. storm NAME: the restart storm against rs (in-process, restart()) or nginx (a
# master with one worker, reloaded with SIGHUP); records what the requests came to.
STORM_KEYS=(storm_requests storm_refused storm_unanswered storm_truncated storm_wrong storm_races storm_restarts)
storm() {
  local name=$1 out=$TMP/storm.out ok=0 restarts=""
  local limit=$((STORM_SECONDS + STORM_TIMEOUT_MS / 1000 + 60))
  local args=("$STORM_SECONDS" "$STORM_INTERVAL_MS" --timeout-ms "$STORM_TIMEOUT_MS" --clients "$STORM_CLIENTS")
  : >"$out"
  if [ "$HAVE_RESTART" = 0 ]; then
    :
  elif [ "$name" = rs ]; then
    timeout "$limit" "$BUILD/restart_storm" rs "${args[@]}" "${STORM_PIN[@]}" >"$out" && ok=1
    restarts=$(kv "$out" restarts)
  elif start_server storm nginx; then
    timeout "$limit" "$BUILD/restart_storm" nginx "${args[@]}" --port "$SPORT" --pid "$SPID" "${STORM_CLI_PIN[@]}" >"$out" && ok=1
    # SIGHUPs sent while one is pending merge into one: count the reloads nginx did.
    restarts=$(grep -c ': reconfiguring$' "$TMP/nginx/logs/error.log" || true)
    stop_server
  fi
  if [ "$ok" = 0 ] || [ -z "$restarts" ]; then
    cat "$out" >&2
    log "    $name: the restart storm failed"
    local k
    for k in "${STORM_KEYS[@]}"; do record "$k" "$name" fail; done
    return
  fi
  record storm_requests "$name" "$(kv "$out" requests)"
  record storm_refused "$name" "$(kv "$out" refused)"
  record storm_unanswered "$name" "$(awk -v a="$(kv "$out" unanswered)" -v b="$(kv "$out" timeouts)" \
    'BEGIN {if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) print a + b; else print "fail"}')"
  record storm_truncated "$name" "$(kv "$out" truncated)"
  record storm_wrong "$name" "$(kv "$out" wrong)"
  record storm_races "$name" "$(kv "$out" reuse_races)"
  record storm_restarts "$name" "$restarts"
  log "    $(kv "$out" requests) requests ($(kv "$out" req_per_s)/s; $(kv "$out" fresh) on fresh connections," \
      "$(kv "$out" reconnects) kept-alive reconnects): ok $(kv "$out" ok), refused $(kv "$out" refused)," \
      "unanswered $(kv "$out" unanswered), timeouts $(kv "$out" timeouts), truncated $(kv "$out" truncated)," \
      "wrong $(kv "$out" wrong), reuse races $(kv "$out" reuse_races); restarts $restarts" \
      "(sent $(kv "$out" restarts), failed $(kv "$out" restart_errors), call p50 $(kv "$out" restart_call_us_p50) µs," \
      "max $(kv "$out" restart_call_us_max) µs)"
}
# Figure 12. restart_cost_run IDLE KEY: the restart() call's median time with IDLE idle
# keep-alive connections open (in one process pinned to the server's CPUs: the clients are
# idle while it is timed), and with IDLE > 0 how many of them are not served afterwards.
restart_cost_run() {
  local idle=$1 key=$2 out=$TMP/cost.out
  : >"$out"
  if [ "$HAVE_RESTART" = 1 ] &&
     timeout 300 "${SRV_PIN[@]}" "$BUILD/restart_cost" "$idle" "$COST_REPEATS" >"$out"; then
    record "$key" rs "$(kv "$out" restart_us_p50)"
    [ "$idle" = 0 ] || record cost_not_served rs "$(kv "$out" idle_not_served)"
    log "    $idle idle: restart() p50 $(kv "$out" restart_us_p50) µs, max $(kv "$out" restart_us_max) µs;" \
        "fresh requests failed after a restart: $(kv "$out" fresh_failed); idle answered $(kv "$out" idle_answered)," \
        "lost $(kv "$out" idle_lost)"
  else
    cat "$out" >&2
    log "    $idle idle: restart cost failed"
    record "$key" rs fail
    [ "$idle" = 0 ] || record cost_not_served rs fail
  fi
}

# The order of the servers rotates from run to run; within a run every figure alternates.
ALL=(rs httplib nginx)
order() { local r=$1 i; for ((i = 0; i < 3; i++)); do printf '%s ' "${ALL[$(((i + r) % 3))]}"; done; }

LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)
T_START=$(date +%s)

if [ "$ONLY_WS" = 0 ]; then  # BENCH_ONLY=ws skips figures 8, 14 and 15 (not indented: the figures below are long)
# Figure 8: restartable_server with default options and with worker_threads = 0, and
# nginx, all three up at once, wrk alternating between them load by load and round by
# round (the order of the servers changes every round). Per-round ratios of the same load:
# the three servers saw the same machine within seconds.
KA_LOADS=(8 64 256 close16)
log "default options vs worker_threads = 0 vs nginx: $KA_ROUNDS x ${KA_SECONDS}s per load (${KA_LOADS[*]})"
declare -A KA_PID=() KA_PORT=()
RS_WORKERS=""
for s in rs rs0 nginx; do
  if start_server hello "$s"; then
    KA_PID[$s]=$SPID KA_PORT[$s]=$SPORT
    [ "$s" = rs ] && RS_WORKERS=$(sed -n 's/^worker_threads //p' "$TMP/server.out" | head -n 1)
    if [ "$WARMUP_SECONDS" != 0 ]; then
      "${CLI_PIN[@]}" timeout 30 wrk -t2 -c64 -d"${WARMUP_SECONDS}s" "http://127.0.0.1:$SPORT/hello" >/dev/null 2>&1 || true
    fi
  else
    log "  $s: the server did not start"
  fi
done
KA_ORDERS=("rs rs0 nginx" "nginx rs rs0" "rs0 nginx rs")
# ka_rounds PREFIX: KA_ROUNDS rounds of every load in KA_LOADS against the three servers,
# recorded under PREFIX<LOAD>_ (kd: as they run; kc: capped), with the per-round ratios to
# nginx (no p99 ratio capped: there latency is the quota's period, the same for all).
ka_rounds() {
  local prefix=$1 tag="" round load s k n_rps n_p99 n_cpu o_rps o_p99 o_cpu
  [ "$prefix" = kc ] && tag=" capped"
  for ((round = 0; round < KA_ROUNDS; round++)); do
    for load in "${KA_LOADS[@]}"; do
      local -A last=([rs]="" [rs0]="" [nginx]="")
      for s in ${KA_ORDERS[$((round % 3))]}; do
        if [ -n "${KA_PID[$s]:-}" ] && kill -0 "${KA_PID[$s]}" 2>/dev/null; then
          ka_round "$s" "${KA_PID[$s]}" "${KA_PORT[$s]}" "$load" http "$prefix"
          last[$s]=$KA_LAST
        else
          for k in rps p50 p99 cpu_us wrk_cpu; do record "$prefix${load}_$k" "$s" fail; done
        fi
      done
      read -r n_rps n_p99 n_cpu <<<"${last[nginx]:-fail fail fail}"
      for s in rs rs0; do
        read -r o_rps o_p99 o_cpu <<<"${last[$s]:-fail fail fail}"
        record "$prefix${load}_rps_ratio" "$s" "$(ratio "$o_rps" "$n_rps")"
        [ "$prefix" = kc ] || record "$prefix${load}_p99_ratio" "$s" "$(ratio "$o_p99" "$n_p99")"
        record "$prefix${load}_cpu_ratio" "$s" "$(ratio "$o_cpu" "$n_cpu")"
      done
      log "  round $((round + 1))/$KA_ROUNDS, $load$tag: req/s rs ${last[rs]%% *}, rs0 ${last[rs0]%% *}, nginx ${last[nginx]%% *}"
    done
  done
}
ka_rounds kd
# The same loads with each server capped at CAP_PCT % of its CPU: on a machine where wrk's
# CPU is as busy as the server's (the "load generator busy" rows near 100 %), req/s above
# measures wrk; capped, the server sets the pace and req/s is the server's throughput.
HAVE_CAP=1
for s in rs rs0 nginx; do
  [ -n "${KA_PID[$s]:-}" ] || continue
  cap_cpu "$s" "${KA_PID[$s]}" || { HAVE_CAP=0; break; }
done
if [ "$HAVE_CAP" = 0 ]; then
  log "capped rounds skipped: no cgroup with a CPU quota can be made here (needs root and a writable /sys/fs/cgroup)"
else
  log "the same, each server capped at $CAP_PCT % of a CPU (cgroup CPU quota, ${CAP_PERIOD_US} µs periods): $KA_ROUNDS x ${KA_SECONDS}s per load"
  ka_rounds kc
fi
for s in rs rs0 nginx; do
  [ -n "${KA_PID[$s]:-}" ] || continue
  SPID=${KA_PID[$s]}
  stop_server
done

# Figure 14: what a handler that blocks costs everyone else. 63 keep-alive connections send
# GET /hello in a closed loop, alone or beside a 64th that sends GET /slow (its handler
# sleeps 100 ms) over and over; alternating, KA_ROUNDS rounds of KA_SECONDS each.
log "a slow handler beside 63 fast connections: $KA_ROUNDS x 2 x ${KA_SECONDS}s"
if start_server slow rs; then
  for ((round = 0; round < KA_ROUNDS; round++)); do
    alone="" beside=""
    for slow in 0 1; do
      out=$TMP/slow.out
      if "${CLI_PIN[@]}" timeout $((KA_SECONDS + 30)) "$BUILD/slow_neighbour" "$SPORT" "$KA_SECONDS" "$slow" >"$out" &&
         [ "$(kv "$out" errors)" = 0 ]; then
        if [ "$slow" = 0 ]; then alone=$(kv "$out" fast_rps); else beside=$(kv "$out" fast_rps); fi
        [ "$slow" = 1 ] && record slow_done rs "$(kv "$out" slow_done)"
      else
        cat "$out" >&2
      fi
    done
    record slow_alone_rps rs "${alone:-fail}"
    record slow_beside_rps rs "${beside:-fail}"
    record slow_ratio rs "$(ratio "$beside" "$alone")"
    log "  round $((round + 1))/$KA_ROUNDS: the 63's req/s alone $alone, beside the slow one $beside"
  done
  stop_server
else
  for k in slow_alone_rps slow_beside_rps slow_ratio slow_done; do record "$k" rs fail; done
fi

if [ "$ONLY_KA" = 0 ]; then  # BENCH_ONLY=ka: figures 8 and 14 only
# Figure 15: TLS (see the top of this file). restartable_server (default options, the tls_rs
# build) and nginx, both up, wrk alternating load by load and round by round as in figure 8;
# then RSS per idle TLS connection, RUNS times, a fresh server each.
TLS_LOADS=(64 close16 full)
TLS_T0=$(date +%s)
log "TLS: $KA_ROUNDS x ${KA_SECONDS}s per load (keep-alive -c64, Connection: close -c16, full handshakes), then $TLS_IDLE_N idle TLS conns"
declare -A TLS_PID=() TLS_PORT=()
TLS_NEGOTIATED="" WRK_RESUMED=""
for s in rs nginx; do
  if { [ "$HAVE_TLS" = 1 ] || [ "$s" = nginx ]; } && start_server tls "$s"; then
    TLS_PID[$s]=$SPID TLS_PORT[$s]=$SPORT
    # Does a client's session resume by ticket (the comparable setting)? 1 or 0.
    out=$TMP/resume.out
    if timeout 10 "$BUILD/idle_tls" resume "$SPORT" "$TLS_CERT" >"$out" 2>&1; then
      record tls_resumes "$s" "$(kv "$out" resumed)"
      TLS_NEGOTIATED="$TLS_NEGOTIATED $s: $(kv "$out" protocol) $(kv "$out" cipher), ALPN $(kv "$out" alpn), session resumed $(kv "$out" resumed);"
    else
      cat "$out" >&2
      record tls_resumes "$s" fail
    fi
    if [ "$WARMUP_SECONDS" != 0 ]; then
      "${CLI_PIN[@]}" timeout 30 wrk -t2 -c64 -d"${WARMUP_SECONDS}s" "https://127.0.0.1:$SPORT/hello" >/dev/null 2>&1 || true
    fi
  else
    log "  $s: the TLS server did not start"
    record tls_resumes "$s" fail
  fi
done
# Does wrk resume its sessions with "Connection: close"? nginx logs $ssl_session_reused
# ("r" or ".") for GET /reuse: the share of wrk's handshakes that resumed, in %.
if [ -n "${TLS_PID[nginx]:-}" ]; then
  "${CLI_PIN[@]}" timeout 30 wrk -t1 -c4 -d1s -H 'Connection: close' "https://127.0.0.1:${TLS_PORT[nginx]}/reuse" >/dev/null 2>&1 || true
  WRK_RESUMED=$(awk '{n++; if ($1 == "r") r++} END {if (n > 0) printf "%.1f", r * 100 / n; else print "fail"}' "$TMP/nginx/logs/reuse.log" 2>/dev/null || echo fail)
  log "  wrk -H 'Connection: close' over https: $WRK_RESUMED % of its handshakes resumed a session (nginx's \$ssl_session_reused, $(wc -l <"$TMP/nginx/logs/reuse.log" 2>/dev/null || echo 0) handshakes)"
fi
record tls_wrk_resumed nginx "${WRK_RESUMED:-fail}"
for ((round = 0; round < KA_ROUNDS; round++)); do
  for load in "${TLS_LOADS[@]}"; do
    declare -A last=([rs]="" [nginx]="")
    if [ $((round % 2)) = 0 ]; then servers="rs nginx"; else servers="nginx rs"; fi
    for s in $servers; do
      if [ -n "${TLS_PID[$s]:-}" ] && kill -0 "${TLS_PID[$s]}" 2>/dev/null; then
        if [ "$load" = full ]; then
          fh_round "$s" "${TLS_PID[$s]}" "${TLS_PORT[$s]}"
        else
          ka_round "$s" "${TLS_PID[$s]}" "${TLS_PORT[$s]}" "$load" https
        fi
        last[$s]=$KA_LAST
      elif [ "$load" = full ]; then
        for k in rps cpu_us wrk_cpu; do record "fh_$k" "$s" fail; done
      else
        for k in rps p50 p99 cpu_us wrk_cpu; do record "ks${load}_$k" "$s" fail; done
      fi
    done
    key=ks$load; [ "$load" = full ] && key=fh
    read -r n_rps n_p99 n_cpu <<<"${last[nginx]:-fail fail fail}"
    read -r o_rps o_p99 o_cpu <<<"${last[rs]:-fail fail fail}"
    record "${key}_rps_ratio" rs "$(ratio "$o_rps" "$n_rps")"
    [ "$load" = full ] || record "${key}_p99_ratio" rs "$(ratio "$o_p99" "$n_p99")"
    record "${key}_cpu_ratio" rs "$(ratio "$o_cpu" "$n_cpu")"
    log "  round $((round + 1))/$KA_ROUNDS, $load: req/s rs ${last[rs]%% *}, nginx ${last[nginx]%% *}; CPU µs/request rs ${o_cpu}, nginx ${n_cpu}"
  done
done
for s in rs nginx; do
  [ -n "${TLS_PID[$s]:-}" ] || continue
  SPID=${TLS_PID[$s]}
  stop_server
done
# RSS per idle TLS connection: a fresh server each time, the two alternating.
for ((run = 0; run < RUNS; run++)); do
  if [ $((run % 2)) = 0 ]; then servers="rs nginx"; else servers="nginx rs"; fi
  for s in $servers; do
    out=$TMP/idle_tls.out
    : >"$out"
    if { [ "$HAVE_TLS" = 1 ] || [ "$s" = nginx ]; } && start_server tls "$s" &&
       "${CLI_PIN[@]}" timeout 120 "$BUILD/idle_tls" idle "$SPORT" "$TLS_IDLE_N" "$SPID" "$TLS_CERT" >"$out"; then
      record tls_idle_kib "$s" "$(kv "$out" kib_per_conn)"
      record tls_idle_rss_mb "$s" "$(kb_to_mb "$(kv "$out" rss_after_kb)")"
      log "  $s: $TLS_IDLE_N idle TLS conns: VmRSS $(kv "$out" rss_before_kb) -> $(kv "$out" rss_after_kb) KiB," \
          "$(kv "$out" kib_per_conn) KiB per connection (opened in $(kv "$out" open_ms) ms)"
    else
      cat "$out" >&2
      log "  $s: idle TLS connections failed"
      record tls_idle_kib "$s" fail
      record tls_idle_rss_mb "$s" fail
    fi
    stop_server
  done
done
log "  TLS took $(($(date +%s) - TLS_T0)) s"
fi  # BENCH_ONLY=ka
fi  # BENCH_ONLY=ws

if [ "$ONLY_KA" = 0 ]; then  # BENCH_ONLY=ka skips figures 16-20
# Figures 16-20: WebSocket, streams that hold no thread, a streamed upload (see the top of
# this file). bench/ws_server.cpp serves them; GET /files/* serves $WS_FILES.
WS_FILES=$TMP/wsfiles
mkdir -p "$WS_FILES"
head -c $((WS_FILE_MIB << 20)) /dev/zero >"$WS_FILES/big.bin"
WS_T0=$(date +%s)
# ws_round NAME PID PORT: one ws_load echo run of KA_SECONDS against a server; records under
# wse_ its messages/s, p50 and p99 (ms), the server's CPU per message (µs) and how busy
# ws_load was (% of one CPU). Sets KA_LAST (msgs/s p99 cpu_us).
ws_round() {
  local name=$1 pid=$2 port=$3 out=$TMP/ws_echo.out k
  KA_LAST=""
  if ! "${CLI_PIN[@]}" timeout $((KA_SECONDS + 60)) "$BUILD/ws_load" echo "$port" /echo "$WS_CONNS" "$KA_SECONDS" "$pid" \
         "$WS_MSG_BYTES" >"$out" 2>&1; then
    cat "$out" >&2
    log "    $name: ws_load echo failed"
    for k in rps p50 p99 cpu_us cli_cpu runq; do record "wse_$k" "$name" fail; done
    return
  fi
  local rps p50 p99 cpu
  rps=$(kv "$out" msgs_per_s)
  p50=$(awk -v u="$(kv "$out" p50_us)" 'BEGIN {printf "%.3f", u / 1000}')
  p99=$(awk -v u="$(kv "$out" p99_us)" 'BEGIN {printf "%.3f", u / 1000}')
  cpu=$(kv "$out" server_cpu_us)
  KA_LAST="${rps:-fail} $p99 ${cpu:-fail}"
  record wse_rps "$name" "${rps:-fail}"
  record wse_p50 "$name" "$p50"
  record wse_p99 "$name" "$p99"
  record wse_cpu_us "$name" "${cpu:-fail}"
  record wse_cli_cpu "$name" "$(kv "$out" client_cpu_pct)"
  record wse_runq "$name" "$(kv "$out" server_runq_wait_ms_per_s)"
}
log "WebSocket echo: $KA_ROUNDS x ${KA_SECONDS}s per server (restartable_server, Node ws $NODE_WS_VERSION, Go gorilla/websocket $GORILLA_VERSION), $WS_CONNS conns, $WS_MSG_BYTES B messages"
declare -A WS_PID=() WS_PORT=()
for s in rs node go; do
  if { [ "$HAVE_WS" = 1 ] || [ "$s" != rs ]; } && start_server ws "$s"; then
    WS_PID[$s]=$SPID WS_PORT[$s]=$SPORT
    if [ "$WARMUP_SECONDS" != 0 ]; then
      "${CLI_PIN[@]}" timeout 30 "$BUILD/ws_load" echo "$SPORT" /echo "$WS_CONNS" "$WARMUP_SECONDS" >/dev/null 2>&1 || true
    fi
  else
    log "  $s: the WebSocket server did not start"
  fi
done
WS_ORDERS=("rs node go" "go rs node" "node go rs")
for ((round = 0; round < KA_ROUNDS; round++)); do
  declare -A last=([rs]="" [node]="" [go]="")
  for s in ${WS_ORDERS[$((round % 3))]}; do
    if [ -n "${WS_PID[$s]:-}" ] && kill -0 "${WS_PID[$s]}" 2>/dev/null; then
      ws_round "$s" "${WS_PID[$s]}" "${WS_PORT[$s]}"
      last[$s]=$KA_LAST
    else
      for k in rps p50 p99 cpu_us cli_cpu runq; do record "wse_$k" "$s" fail; done
    fi
  done
  read -r o_rps o_p99 o_cpu <<<"${last[rs]:-fail fail fail}"
  for peer in node go; do
    read -r p_rps p_p99 p_cpu <<<"${last[$peer]:-fail fail fail}"
    record "wse_rps_ratio_$peer" rs "$(ratio "$o_rps" "$p_rps")"
    record "wse_p99_ratio_$peer" rs "$(ratio "$o_p99" "$p_p99")"
    record "wse_cpu_ratio_$peer" rs "$(ratio "$o_cpu" "$p_cpu")"
  done
  log "  round $((round + 1))/$KA_ROUNDS: msgs/s rs ${last[rs]%% *}, node ${last[node]%% *}, go ${last[go]%% *};" \
      "CPU µs/msg rs ${o_cpu}, node $(echo "${last[node]:-- - -}" | cut -d' ' -f3), go $(echo "${last[go]:-- - -}" | cut -d' ' -f3)"
done
for s in rs node go; do
  [ -n "${WS_PID[$s]:-}" ] || continue
  SPID=${WS_PID[$s]}
  stop_server
done

# Figures 17-20: a fresh bench/ws_server each time, RUNS times.
for ((run = 0; run < RUNS; run++)); do
  # 17: idle keep-alive HTTP connections, then (another server) idle WebSockets.
  declare -A idle_threads=()
  for k in http ws; do
    out=$TMP/ws_idle.out
    : >"$out"
    if [ "$HAVE_WS" = 1 ] && start_server ws rs &&
       "${CLI_PIN[@]}" timeout 180 "$BUILD/ws_load" idle "$k" "$SPORT" "$WS_IDLE_N" "$SPID" >"$out"; then
      record "wsi_${k}_kib" rs "$(kv "$out" kib_per_conn)"
      record "wsi_${k}_threads" rs "$(kv "$out" threads)"
      idle_threads[$k]=$(kv "$out" threads)
      record "wsi_${k}_again" rs "$(kv "$out" answered_again)"
      log "  $WS_IDLE_N idle $k: VmRSS $(kv "$out" rss_before_kb) -> $(kv "$out" rss_after_kb) KiB" \
          "($(kv "$out" kib_per_conn) KiB each, opened in $(kv "$out" open_ms) ms), threads $(kv "$out" threads_before) ->" \
          "$(kv "$out" threads); $(kv "$out" answered_again) answered again"
    else
      cat "$out" >&2
      log "  $WS_IDLE_N idle $k connections failed"
      for f in kib threads again; do record "wsi_${k}_$f" rs fail; done
    fi
    stop_server
  done
  record wsi_threads_extra rs "$(awk -v w="${idle_threads[ws]:-}" -v h="${idle_threads[http]:-}" \
    'BEGIN {if (w ~ /^[0-9]+$/ && h ~ /^[0-9]+$/) print w - h; else print "fail"}')"
  # 18: a broadcast to WS_BCAST_N WebSockets, each round a value.
  out=$TMP/ws_bcast.out
  : >"$out"
  if [ "$HAVE_WS" = 1 ] && start_server ws rs &&
     "${CLI_PIN[@]}" timeout 120 "$BUILD/ws_load" broadcast "$SPORT" "$WS_BCAST_N" "$WS_BCAST_ROUNDS" >"$out"; then
    while read -r _ _ _ _ _ first _ last_ms; do
      record wsb_last_ms rs "$last_ms"
      record wsb_first_ms rs "$first"
    done < <(grep '^round ' "$out")
    log "  broadcast to $WS_BCAST_N: last client after $(kv "$out" last_ms_p50) ms (median of $WS_BCAST_ROUNDS rounds," \
        "max $(kv "$out" last_ms_max)), first after $(kv "$out" first_ms_p50) ms; send_text loop:" \
        "$(awk '$1 == "sent" {printf "%s%s", s, $5; s = "/"}' "$TMP/server.out") µs"
  else
    cat "$out" >&2
    log "  broadcast failed"
    record wsb_last_ms rs fail
    record wsb_first_ms rs fail
  fi
  stop_server
  # 19: multipart uploads, a fresh server per size.
  declare -A upl_hwm=()
  for mib in "${UPLOAD_MIBS[@]}"; do
    out=$TMP/upload.out
    : >"$out"
    if [ "$HAVE_WS" = 1 ] && start_server ws rs && hwm0=$(status_kb "$SPID" VmHWM) &&
       "${CLI_PIN[@]}" timeout 300 "$BUILD/upload" "$SPORT" "$mib" "$SPID" >"$out"; then
      record "upl${mib}_mbps" rs "$(kv "$out" mb_per_s)"
      record "upl${mib}_hwm" rs "$(kb_to_mb "$(kv "$out" server_hwm_kb)")"
      upl_hwm[$mib]=$(kv "$out" server_hwm_kb)
      record "upl${mib}_hwm0" rs "$(kb_to_mb "$hwm0")"
      log "  upload $mib MiB: $(kv "$out" mb_per_s) MB/s; server VmHWM $(kb_to_mb "$hwm0") MiB at start," \
          "$(kb_to_mb "$(kv "$out" server_hwm_kb)") MiB after"
    else
      cat "$out" >&2
      log "  upload $mib MiB failed"
      for f in mbps hwm hwm0; do record "upl${mib}_$f" rs fail; done
    fi
    stop_server
  done
  # The peak's growth from the smallest upload to the largest (0 when it does not depend on size).
  record upl_hwm_growth rs "$(awk -v a="${upl_hwm[${UPLOAD_MIBS[0]}]:-}" -v b="${upl_hwm[${UPLOAD_MIBS[-1]}]:-}" \
    'BEGIN {if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) printf "%.2f", (b - a) / 1024; else print "fail"}')"
  # 20: fresh GET /hello on the server idle, then beside 64 /events readers and 64 clients
  # that never read a 20 MiB static file.
  ok=0
  if [ "$HAVE_WS" = 1 ] && start_server ws rs; then
    limit=$(((ATTACK_SETUP_MS + ATTACK_PROBES * ATTACK_INTERVAL_MS + ATTACK_TIMEOUT_MS) / 1000 + 60))
    base=$TMP/ssr_idle.out out=$TMP/ssr.out
    if "${CLI_PIN[@]}" timeout "$limit" "$BUILD/slow_readers" "$SPORT" download 0 "$ATTACK_PROBES" "$ATTACK_TIMEOUT_MS" \
         "$ATTACK_SETUP_MS" "$ATTACK_INTERVAL_MS" 4 "$SPID" /files/big.bin 0 >"$base" &&
       "${CLI_PIN[@]}" timeout "$limit" "$BUILD/slow_readers" "$SPORT" download "$ATTACKERS" "$ATTACK_PROBES" \
         "$ATTACK_TIMEOUT_MS" "$ATTACK_SETUP_MS" "$ATTACK_INTERVAL_MS" 4 "$SPID" /files/big.bin "$ATTACKERS" >"$out" &&
       [ "$(kv "$out" events_connected)" = "$ATTACKERS" ] && [ "$(kv "$out" attack_connected)" = "$ATTACKERS" ]; then
      ok=1
      record ssr_idle_p50 rs "$(kv "$base" p50_ms)"
      record ssr_idle_p99 rs "$(kv "$base" p99_ms)"
      record ssr_idle_threads rs "$(kv "$base" server_threads)"
      record ssr_p50 rs "$(kv "$out" p50_ms)"
      record ssr_p99 rs "$(kv "$out" p99_ms)"
      record ssr_unans rs "$(kv "$out" unanswered)"
      record ssr_threads rs "$(kv "$out" server_threads)"
      record ssr_hwm rs "$(kb_to_mb "$(status_kb "$SPID" VmHWM)")"
      record ssr_events rs "$(kv "$out" events_received)"
      log "  $ATTACKERS /events readers + $ATTACKERS never-reading ${WS_FILE_MIB} MiB downloads: fresh GET p50 $(kv "$out" p50_ms) ms," \
          "p99 $(kv "$out" p99_ms) ms ($(kv "$out" unanswered) of $ATTACK_PROBES unanswered; idle: p50 $(kv "$base" p50_ms)," \
          "p99 $(kv "$base" p99_ms)); threads $(kv "$base" server_threads) idle, $(kv "$out" server_threads) under it;" \
          "$(kv "$out" events_received) events read; VmHWM $(kb_to_mb "$(status_kb "$SPID" VmHWM)") MiB"
    else
      cat "$base" "$out" >&2 2>/dev/null || true
    fi
  fi
  if [ "$ok" = 0 ]; then
    log "  slow readers of streams failed"
    for k in ssr_idle_p50 ssr_idle_p99 ssr_idle_threads ssr_p50 ssr_p99 ssr_unans ssr_threads ssr_hwm ssr_events; do
      record "$k" rs fail
    done
  fi
  stop_server
done
log "  WebSocket and streams took $(($(date +%s) - WS_T0)) s"
fi  # BENCH_ONLY=ka

if [ "$ONLY" = 0 ]; then  # BENCH_ONLY=ws and =ka skip figures 1-7 and 9-13
for ((run = 0; run < RUNS; run++)); do
  log "run $((run + 1))/$RUNS"
  # Figures 1, 2 and 6 (idle RSS): one hello server process per server.
  for s in $(order "$run"); do
    log "  $s: wrk"
    if ! start_server hello "$s"; then
      for k in idle_rss_mb ka8_rps ka8_p50 ka8_p99 ka64_rps ka64_p50 ka64_p99 ka256_rps ka256_p50 ka256_p99 close_rps; do record "$k" "$s" fail; done
      continue
    fi
    sleep 0.3
    record idle_rss_mb "$s" "$(kb_to_mb "$(status_kb "$SPID" VmRSS)")"
    if [ "$WARMUP_SECONDS" != 0 ]; then
      "${CLI_PIN[@]}" timeout 30 wrk -t"$CLI_CPUS" -c64 -d"${WARMUP_SECONDS}s" "http://127.0.0.1:$SPORT/hello" >/dev/null 2>&1 || true
    fi
    run_wrk "$s" 8 ka8
    run_wrk "$s" 64 ka64
    run_wrk "$s" 256 ka256
    run_wrk "$s" 64 close -H 'Connection: close'
    stop_server
  done
  # Figure 3: idle capacity, a fresh server process each.
  for s in $(order "$run"); do
    log "  $s: $IDLE_N idle connections"
    out=$TMP/idle.out
    if start_server hello "$s" &&
       "${CLI_PIN[@]}" timeout 120 "$BUILD/idle_clients" "$SPORT" "$IDLE_N" "$SPID" "$IDLE_OPEN_MS" \
         "$FRESH_TIMEOUT_MS" "$SECOND_BUDGET_MS" >"$out"; then
      record idle_answered "$s" "$(kv "$out" answered)"
      record idle_fresh_ms "$s" "$(kv "$out" fresh_ms)"
      record idle_second_p99 "$s" "$(kv "$out" second_p99_ms)"
      record idle_second_answered "$s" "$(kv "$out" second_answered)"
      record idle_conn_rss_mb "$s" "$(kb_to_mb "$(kv "$out" rss_kb)")"
      record idle_threads "$s" "$(kv "$out" threads)"
      record idle_busy_rps "$s" "$(kv "$out" busy_rps)"
    else
      for k in idle_answered idle_fresh_ms idle_second_p99 idle_second_answered idle_conn_rss_mb idle_threads idle_busy_rps; do record "$k" "$s" fail; done
    fi
    stop_server
  done
  # Figure 13: the poll(2) backend, keep-alive throughput and idle capacity.
  log "  rs, poll(2) backend: wrk, then $IDLE_N idle connections"
  if start_server hello rspoll; then
    run_wrk rs 64 poll_ka64
    stop_server
  else
    for k in poll_ka64_rps poll_ka64_p50 poll_ka64_p99; do record "$k" rs fail; done
  fi
  out=$TMP/idle.out
  if start_server hello rspoll &&
     "${CLI_PIN[@]}" timeout 120 "$BUILD/idle_clients" "$SPORT" "$IDLE_N" "$SPID" "$IDLE_OPEN_MS" \
       "$FRESH_TIMEOUT_MS" "$SECOND_BUDGET_MS" >"$out"; then
    record poll_idle_answered rs "$(kv "$out" answered)"
    record poll_idle_fresh_ms rs "$(kv "$out" fresh_ms)"
    record poll_idle_busy_rps rs "$(kv "$out" busy_rps)"
    record poll_idle_second_answered rs "$(kv "$out" second_answered)"
  else
    for k in poll_idle_answered poll_idle_fresh_ms poll_idle_busy_rps poll_idle_second_answered; do record "$k" rs fail; done
  fi
  stop_server
  # Figure 7: 10 MiB POST echo (nginx does not echo).
  for s in $(order "$run"); do
    [ "$s" = nginx ] && continue
    log "  $s: ${ECHO_MIB} MiB POST echo"
    out=$TMP/echo.out
    if start_server echo "$s" &&
       "${CLI_PIN[@]}" timeout 120 "$BUILD/post_echo" "$SPORT" "$ECHO_MIB" "$ECHO_COUNT" 60000 >"$out"; then
      record echo_mbps "$s" "$(kv "$out" mb_per_s)"
      record echo_peak_mb "$s" "$(kb_to_mb "$(status_kb "$SPID" VmHWM)")"
    else
      record echo_mbps "$s" fail; record echo_peak_mb "$s" fail
    fi
    stop_server
  done
  # Figures 9 and 10: fresh requests and peak memory while clients refuse to read, a fresh
  # server process each (the echo builds: /hello, POST /echo and GET /big; nginx has no echo).
  for attack in echo download pipeline; do
    for s in $(order "$run"); do
      [ "$attack" = echo ] && [ "$s" = nginx ] && continue
      key=sr_$attack
      log "  $s: $ATTACKERS clients that never read ($attack), $ATTACK_PROBES fresh requests"
      out=$TMP/attack.out
      : >"$out"
      limit=$(((ATTACK_SETUP_MS + ATTACK_PROBES * ATTACK_INTERVAL_MS + ATTACK_TIMEOUT_MS) / 1000 + 60))
      if start_server echo "$s" &&
         "${CLI_PIN[@]}" timeout "$limit" "$BUILD/slow_readers" "$SPORT" "$attack" "$ATTACKERS" "$ATTACK_PROBES" \
           "$ATTACK_TIMEOUT_MS" "$ATTACK_SETUP_MS" "$ATTACK_INTERVAL_MS" "$ATTACK_MIB" "$SPID" >"$out" &&
         hwm=$(status_kb "$SPID" VmHWM 2>/dev/null) && [ -n "$hwm" ]; then
        record "${key}_p50" "$s" "$(kv "$out" p50_ms)"
        record "${key}_p99" "$s" "$(kv "$out" p99_ms)"
        record "${key}_unans" "$s" "$(kv "$out" unanswered)"
        record "${key}_hwm" "$s" "$(kb_to_mb "$hwm")"
        log "    answered $(kv "$out" answered)/$(kv "$out" probes) (timeouts $(kv "$out" timeouts)," \
            "errors $(kv "$out" errors)), p50 $(kv "$out" p50_ms) ms, p99 $(kv "$out" p99_ms) ms;" \
            "attack: $(kv "$out" attack_connected) connected, held after $(kv "$out" attack_ready_ms) ms" \
            "($([ "$(kv "$out" attack_stalled)" = 1 ] && echo stalled || echo time limit)), $(kv "$out" attack_sent_mib) MiB sent," \
            "$(kv "$out" attack_closed) closed by the server; server: $(kv "$out" server_threads) threads, VmHWM $(kb_to_mb "$hwm") MiB"
      else
        cat "$out" >&2
        log "    $s: $attack attack failed (or the server died)"
        for k in p50 p99 unans hwm; do record "${key}_$k" "$s" fail; done
      fi
      stop_server
    done
  done
  # Figures 4 and 5: in-process, through each library's API (nginx has none).
  for s in $(order "$run"); do
    [ "$s" = nginx ] && continue
    log "  $s: stop latency and restart rate"
    tool=$BUILD/lifecycle_$s out=$TMP/lifecycle.out
    if timeout 150 "$tool" stop 0 >"$out"; then record stop0_ms "$s" "$(kv "$out" stop_ms)"; else record stop0_ms "$s" fail; fi
    if timeout 150 "$tool" stop "$STOP_N" "$STOP_ANSWER_MS" >"$out"; then record stopN_ms "$s" "$(kv "$out" stop_ms)"; else record stopN_ms "$s" fail; fi
    if timeout 150 "$tool" restart plain "$RESTART_SECONDS" >"$out"; then record restart_plain "$s" "$(kv "$out" cycles_per_s)"; else record restart_plain "$s" fail; fi
    if timeout 150 "$tool" restart held "$RESTART_SECONDS" >"$out"; then record restart_held "$s" "$(kv "$out" cycles_per_s)"; else record restart_held "$s" fail; fi
  done
  # Figures 11 and 12: restarts under load (cpp-httplib has no restart that keeps its
  # listener), and the cost of one restart() call.
  for s in $(order "$run"); do
    [ "$s" = httplib ] && continue
    log "  $s: restart storm, ${STORM_SECONDS}s, a restart every ${STORM_INTERVAL_MS} ms, $STORM_CLIENTS clients"
    storm "$s"
  done
  log "  rs: restart() cost, median of $COST_REPEATS"
  restart_cost_run 0 cost0_us
  restart_cost_run "$COST_IDLE" costN_us
done
fi  # BENCH_ONLY
T_END=$(date +%s)

# -------------------------------------------------------------------- table --
ROWS=$TMP/rows.tsv
tab=$'\t'
cat >"$ROWS" <<EOF
ka8_rps${tab}1. keep-alive req/s, wrk -c8${tab}hi${tab}0${tab}rhn
ka8_p50${tab}1. keep-alive p50 latency (ms), -c8${tab}lo${tab}3${tab}rhn
ka8_p99${tab}1. keep-alive p99 latency (ms), -c8${tab}lo${tab}3${tab}rhn
ka64_rps${tab}1. keep-alive req/s, wrk -c64${tab}hi${tab}0${tab}rhn
ka64_p50${tab}1. keep-alive p50 latency (ms), -c64${tab}lo${tab}3${tab}rhn
ka64_p99${tab}1. keep-alive p99 latency (ms), -c64${tab}lo${tab}3${tab}rhn
ka256_rps${tab}1. keep-alive req/s, wrk -c256${tab}hi${tab}0${tab}rhn
ka256_p50${tab}1. keep-alive p50 latency (ms), -c256${tab}lo${tab}3${tab}rhn
ka256_p99${tab}1. keep-alive p99 latency (ms), -c256${tab}lo${tab}3${tab}rhn
close_rps${tab}2. \`Connection: close\` req/s, wrk -c64${tab}hi${tab}0${tab}rhn
idle_answered${tab}3. idle conns answered (of $IDLE_N)${tab}hi${tab}0${tab}rhn
idle_fresh_ms${tab}3. fresh request with $IDLE_N idle conns (ms)${tab}lo${tab}3${tab}rhn
idle_second_p99${tab}3. 2nd request on every idle conn, p99 (ms)${tab}lo${tab}3${tab}rhn
idle_second_answered${tab}3. idle conns answering a 2nd request (of $IDLE_N)${tab}hi${tab}0${tab}rhn
idle_conn_rss_mb${tab}3. server RSS with $IDLE_N idle conns (MiB)${tab}lo${tab}1${tab}rhn
idle_threads${tab}3. server threads with $IDLE_N idle conns${tab}info${tab}0${tab}rhn
idle_busy_rps${tab}3. one keep-alive client's req/s with $IDLE_N idle conns${tab}hi${tab}0${tab}rhn
stop0_ms${tab}4. stop() latency, 0 idle conns (ms)${tab}lo${tab}3${tab}rh
stopN_ms${tab}4. stop() latency, $STOP_N idle conns (ms)${tab}lo${tab}3${tab}rh
restart_plain${tab}5. restart cycles/s, plain client${tab}hi${tab}0${tab}rh
restart_held${tab}5. restart cycles/s, client holds its connection${tab}hi${tab}1${tab}rh
compile_s${tab}6. compile time, hello, -O2 (s)${tab}lo${tab}2${tab}rh
binary_kb${tab}6. stripped hello binary (KiB)${tab}lo${tab}0${tab}rh
idle_rss_mb${tab}6. idle resident memory, hello (MiB)${tab}lo${tab}2${tab}rhn
echo_mbps${tab}7. ${ECHO_MIB} MiB POST echo (MB/s)${tab}hi${tab}0${tab}rh
echo_peak_mb${tab}7. peak server memory (VmHWM) echoing ${ECHO_MIB} MiB (MiB)${tab}lo${tab}1${tab}rh
EOF
# Figure 8's rows: for each load, default options (server rs) and worker_threads = 0 (rs0,
# shown in the restartable_server column of its own rows), each beside nginx; kd as they
# ran, kc capped (no latency there: it is the quota's period; the kc rows are left out
# below where no cgroup could be made).
for prefix in kd kc; do
  for load in 8 64 256 close16; do
    if [ "$load" = close16 ]; then what="\`Connection: close\`, wrk -t2 -c16"; else what="keep-alive, wrk -t2 -c$load"; fi
    [ "$prefix" = kc ] && what="$what, each server capped at $CAP_PCT % of a CPU"
    rps_goal=">=1.05"; [ "$load" = close16 ] && rps_goal=">=1.0"
    p99_goal=""; { [ "$load" = 8 ] || [ "$load" = 64 ]; } && p99_goal="${tab}v<=1.2"
    for s in rs rs0; do
      if [ "$s" = rs ]; then opt="default options"; else opt="worker_threads = 0"; fi
      goal="" cpu_goal=""
      if [ "$s" = rs ]; then goal="${tab}v$rps_goal" cpu_goal="${tab}v<=1.0"; else p99_goal=""; fi
      [ "$prefix" = kd ] || cpu_goal=""
      k="$prefix${load}" l="8. $what, $opt:"
      {
        printf '%s\n' "${k}_rps@$s${tab}$l req/s${tab}hi${tab}0${tab}rn"
        [ "$prefix" = kc ] || printf '%s\n' "${k}_p50@$s${tab}$l p50 latency (ms)${tab}lo${tab}3${tab}rn" \
                                            "${k}_p99@$s${tab}$l p99 latency (ms)${tab}lo${tab}3${tab}rn"
        printf '%s\n' "${k}_cpu_us@$s${tab}$l server CPU per request (µs)${tab}lo${tab}2${tab}rn" \
                      "${k}_rps_ratio@$s${tab}$l req/s ours ÷ nginx, median of per-round ratios${tab}hi${tab}2${tab}r$goal"
        [ "$prefix" = kc ] ||
          printf '%s\n' "${k}_p99_ratio@$s${tab}$l p99 ours ÷ nginx, median of per-round ratios${tab}lo${tab}2${tab}r$p99_goal"
        printf '%s\n' "${k}_cpu_ratio@$s${tab}$l CPU per request ours ÷ nginx, median of per-round ratios${tab}lo${tab}2${tab}r$cpu_goal"
      } >>"$ROWS"
    done
    printf '%s\n' "$prefix${load}_wrk_cpu@rs${tab}8. $what: load generator busy (% of its CPU), default options' runs${tab}info${tab}0${tab}rn" >>"$ROWS"
  done
done
cat >>"$ROWS" <<EOF
sr_echo_p50${tab}9. fresh GET p50 (ms), ${ATTACKERS} clients POST ${ATTACK_MIB} MiB to /echo, never read${tab}lo${tab}3${tab}rh
sr_echo_p99${tab}9. fresh GET p99 (ms), /echo attack${tab}lo${tab}3${tab}rh
sr_echo_unans${tab}9. fresh GETs unanswered within $((ATTACK_TIMEOUT_MS / 1000)) s (of $ATTACK_PROBES), /echo attack${tab}lo${tab}0${tab}rh${tab}v<=0
sr_echo_hwm${tab}10. peak server memory (VmHWM), /echo attack (MiB)${tab}lo${tab}1${tab}rh
sr_download_p50${tab}9. fresh GET p50 (ms), ${ATTACKERS} clients GET a 4 MiB /big, never read${tab}lo${tab}3${tab}rhn
sr_download_p99${tab}9. fresh GET p99 (ms), /big attack${tab}lo${tab}3${tab}rhn
sr_download_unans${tab}9. fresh GETs unanswered within $((ATTACK_TIMEOUT_MS / 1000)) s (of $ATTACK_PROBES), /big attack${tab}lo${tab}0${tab}rhn${tab}v<=0
sr_download_hwm${tab}10. peak server memory (VmHWM), /big attack (MiB)${tab}lo${tab}1${tab}rhn
sr_pipeline_p50${tab}9. fresh GET p50 (ms), ${ATTACKERS} clients pipeline GET /hello nonstop, never read${tab}lo${tab}3${tab}rhn
sr_pipeline_p99${tab}9. fresh GET p99 (ms), pipeline flood${tab}lo${tab}3${tab}rhn
sr_pipeline_unans${tab}9. fresh GETs unanswered within $((ATTACK_TIMEOUT_MS / 1000)) s (of $ATTACK_PROBES), pipeline flood${tab}lo${tab}0${tab}rhn${tab}v<=0
sr_pipeline_hwm${tab}10. peak server memory (VmHWM), pipeline flood (MiB)${tab}lo${tab}1${tab}rhn
storm_requests${tab}11. restart storm: requests sent in ${STORM_SECONDS} s, ${STORM_CLIENTS} clients, a restart every ${STORM_INTERVAL_MS} ms${tab}info${tab}0${tab}rn
storm_refused${tab}11. restart storm: connects refused${tab}lo${tab}0${tab}rn${tab}v<=0
storm_unanswered${tab}11. restart storm: requests written, never answered${tab}lo${tab}0${tab}rn${tab}v<=0
storm_truncated${tab}11. restart storm: truncated responses${tab}lo${tab}0${tab}rn${tab}v<=0
storm_wrong${tab}11. restart storm: wrong status or body${tab}lo${tab}0${tab}rn${tab}v<=0
storm_races${tab}11. restart storm: kept-alive conns closed under a request (reuse races)${tab}lo${tab}0${tab}rn${tab}v<=0
storm_restarts${tab}11. restart storm: restarts done (nginx: reloads)${tab}info${tab}0${tab}rn
cost0_us${tab}12. restart() call, 0 idle conns (µs, median of ${COST_REPEATS})${tab}lo${tab}0${tab}r
costN_us${tab}12. restart() call, ${COST_IDLE} idle conns (µs, median of ${COST_REPEATS})${tab}lo${tab}0${tab}r
cost_not_served${tab}12. idle conns not served after ${COST_REPEATS} restarts (of ${COST_IDLE})${tab}lo${tab}0${tab}r${tab}v<=0
poll_ka64_rps${tab}13. poll(2) backend: keep-alive req/s, wrk -c64 (epoll: figure 1)${tab}hi${tab}0${tab}r
poll_ka64_p99${tab}13. poll(2) backend: keep-alive p99 latency (ms), -c64${tab}lo${tab}3${tab}r
poll_idle_answered${tab}13. poll(2) backend: idle conns answered (of $IDLE_N)${tab}hi${tab}0${tab}r
poll_idle_fresh_ms${tab}13. poll(2) backend: fresh request with $IDLE_N idle conns (ms; epoll: figure 3)${tab}lo${tab}3${tab}r
poll_idle_busy_rps${tab}13. poll(2) backend: one keep-alive client's req/s with $IDLE_N idle conns${tab}hi${tab}0${tab}r
poll_idle_second_answered${tab}13. poll(2) backend: idle conns answering a 2nd request within $((SECOND_BUDGET_MS / 1000)) s (of $IDLE_N)${tab}hi${tab}0${tab}r
slow_alone_rps${tab}14. 63 keep-alive conns' req/s, alone${tab}hi${tab}0${tab}r
slow_beside_rps${tab}14. the same 63 beside a 64th whose handler sleeps 100 ms${tab}hi${tab}0${tab}r
slow_ratio${tab}14. their req/s beside the slow one ÷ alone, median of per-round ratios${tab}hi${tab}2${tab}r${tab}v>=0.9
slow_done${tab}14. slow requests answered per round${tab}info${tab}0${tab}r
EOF
# Figure 15's rows: TLS, restartable_server with default options beside nginx.
for load in 64 close16 full; do
  case $load in
    64) key=ks64 what="TLS keep-alive, wrk -t2 -c64" goal="${tab}v>=1.0" per=request ;;
    close16) key=ksclose16 what="TLS \`Connection: close\`, wrk -t2 -c16 (a resumed handshake per request)" goal="${tab}v>=0.9" per=request ;;
    full) key=fh what="TLS full handshakes, none resumed (idle_tls, 2 threads, a request each)" goal="" per=handshake ;;
  esac
  cat >>"$ROWS" <<EOR
${key}_rps${tab}15. $what: req/s${tab}hi${tab}0${tab}rn
EOR
  [ "$load" = full ] || cat >>"$ROWS" <<EOR
${key}_p50${tab}15. $what: p50 latency (ms)${tab}lo${tab}3${tab}rn
${key}_p99${tab}15. $what: p99 latency (ms)${tab}lo${tab}3${tab}rn
EOR
  cat >>"$ROWS" <<EOR
${key}_cpu_us${tab}15. $what: server CPU per $per (µs)${tab}lo${tab}2${tab}rn
${key}_rps_ratio${tab}15. $what: req/s ours ÷ nginx, median of per-round ratios${tab}hi${tab}2${tab}r$goal
EOR
  [ "$load" = full ] || cat >>"$ROWS" <<EOR
${key}_p99_ratio${tab}15. $what: p99 ours ÷ nginx, median of per-round ratios${tab}lo${tab}2${tab}r
EOR
  cat >>"$ROWS" <<EOR
${key}_cpu_ratio${tab}15. $what: CPU per $per ours ÷ nginx, median of per-round ratios${tab}lo${tab}2${tab}r
${key}_wrk_cpu${tab}15. $what: load generator busy (% of its CPU)${tab}info${tab}0${tab}rn
EOR
done
cat >>"$ROWS" <<EOF
tls_idle_kib${tab}15. RSS per idle TLS conn (KiB), (VmRSS after − before) ÷ $TLS_IDLE_N${tab}lo${tab}2${tab}rn${tab}n<=1.0
tls_idle_rss_mb${tab}15. server RSS with $TLS_IDLE_N idle TLS conns (MiB)${tab}lo${tab}1${tab}rn
tls_resumes${tab}15. a client's TLS session resumes by ticket (1 = yes)${tab}info${tab}0${tab}rn
tls_wrk_resumed${tab}15. wrk's \`Connection: close\` handshakes that resumed (%, nginx's \$ssl_session_reused)${tab}info${tab}1${tab}n
EOF
# Figures 16-20's rows. Figure 16's peers (Node's ws, Go's gorilla/websocket) are shown in
# the restartable_server column of their own rows (key@node, key@go), as figure 8 shows rs0.
WSE="WebSocket echo, $WS_CONNS conns × 1 message of $WS_MSG_BYTES B in flight"
cat >>"$ROWS" <<EOF2
wse_rps${tab}16. $WSE: messages/s${tab}hi${tab}0${tab}r
wse_rps@node${tab}16. the same, Node ${NODE_VERSION:-?} + ws ${NODE_WS_VERSION:-?} (this column): messages/s${tab}hi${tab}0${tab}r
wse_rps@go${tab}16. the same, Go ${GO_VERSION:-?} + gorilla/websocket ${GORILLA_VERSION:-?} (this column): messages/s${tab}hi${tab}0${tab}r
wse_p50${tab}16. $WSE: p50 latency (ms)${tab}lo${tab}3${tab}r
wse_p50@node${tab}16. the same, Node ws (this column): p50 latency (ms)${tab}lo${tab}3${tab}r
wse_p50@go${tab}16. the same, Go gorilla (this column): p50 latency (ms)${tab}lo${tab}3${tab}r
wse_p99${tab}16. $WSE: p99 latency (ms)${tab}lo${tab}3${tab}r
wse_p99@node${tab}16. the same, Node ws (this column): p99 latency (ms)${tab}lo${tab}3${tab}r
wse_p99@go${tab}16. the same, Go gorilla (this column): p99 latency (ms)${tab}lo${tab}3${tab}r
wse_cpu_us${tab}16. $WSE: server CPU per message (µs)${tab}lo${tab}2${tab}r
wse_cpu_us@node${tab}16. the same, Node ws (this column): server CPU per message (µs)${tab}lo${tab}2${tab}r
wse_cpu_us@go${tab}16. the same, Go gorilla (this column): server CPU per message (µs)${tab}lo${tab}2${tab}r
wse_rps_ratio_node@rs${tab}16. WebSocket echo: messages/s ours ÷ Node ws, median of per-round ratios${tab}hi${tab}2${tab}r${tab}v>=1.0
wse_rps_ratio_go@rs${tab}16. WebSocket echo: messages/s ours ÷ Go gorilla, median of per-round ratios${tab}hi${tab}2${tab}r${tab}v>=1.0
wse_p99_ratio_node@rs${tab}16. WebSocket echo: p99 ours ÷ Node ws, median of per-round ratios${tab}lo${tab}2${tab}r
wse_p99_ratio_go@rs${tab}16. WebSocket echo: p99 ours ÷ Go gorilla, median of per-round ratios${tab}lo${tab}2${tab}r
wse_cpu_ratio_node@rs${tab}16. WebSocket echo: CPU per message ours ÷ Node ws, median of per-round ratios${tab}lo${tab}2${tab}r
wse_cpu_ratio_go@rs${tab}16. WebSocket echo: CPU per message ours ÷ Go gorilla, median of per-round ratios${tab}lo${tab}2${tab}r
wse_cli_cpu${tab}16. WebSocket echo: load generator (ws_load) busy, % of its CPU, our runs${tab}info${tab}0${tab}r
wse_runq${tab}16. WebSocket echo: our server's threads runnable but waiting for a CPU (ms per s; ~0 on a quiet machine)${tab}info${tab}0${tab}r
wse_runq@node${tab}16. the same, Node ws (this column)${tab}info${tab}0${tab}r
wse_runq@go${tab}16. the same, Go gorilla (this column)${tab}info${tab}0${tab}r
wsi_ws_kib${tab}17. RSS per idle WebSocket (KiB), (VmRSS after − before) ÷ $WS_IDLE_N${tab}lo${tab}3${tab}r${tab}v<=4.0
wsi_http_kib${tab}17. RSS per idle keep-alive HTTP conn, same server binary (KiB), ÷ $WS_IDLE_N${tab}lo${tab}3${tab}r
wsi_ws_threads${tab}17. server threads with $WS_IDLE_N idle WebSockets${tab}info${tab}0${tab}r
wsi_http_threads${tab}17. server threads with $WS_IDLE_N idle HTTP conns${tab}info${tab}0${tab}r
wsi_threads_extra${tab}17. server threads with idle WebSockets − with idle HTTP conns${tab}lo${tab}0${tab}r${tab}v<=0
wsi_ws_again${tab}17. idle WebSockets that echo a message afterwards (of $WS_IDLE_N)${tab}hi${tab}0${tab}r${tab}v>=$WS_IDLE_N
wsb_last_ms${tab}18. broadcast to $WS_BCAST_N WebSockets (send_text on each, one thread): first send → last client has it (ms), median of $WS_BCAST_ROUNDS rounds${tab}lo${tab}3${tab}r
wsb_first_ms${tab}18. the same: first send → first client has it (ms)${tab}lo${tab}3${tab}r
upl10_mbps${tab}19. multipart/form-data upload, 10 MiB, read_multipart (MB/s)${tab}hi${tab}0${tab}r
upl100_mbps${tab}19. multipart/form-data upload, 100 MiB (MB/s)${tab}hi${tab}0${tab}r
upl10_hwm0${tab}19. server VmHWM before an upload (MiB)${tab}lo${tab}1${tab}r
upl10_hwm${tab}19. server VmHWM after the 10 MiB upload (MiB)${tab}lo${tab}1${tab}r
upl100_hwm${tab}19. server VmHWM after the 100 MiB upload (MiB)${tab}lo${tab}1${tab}r
upl_hwm_growth${tab}19. VmHWM after 100 MiB − after 10 MiB (MiB): what the size costs${tab}lo${tab}2${tab}r${tab}v<=1.0
ssr_idle_p50${tab}20. fresh GET /hello p50 (ms), server idle${tab}lo${tab}3${tab}r
ssr_idle_p99${tab}20. fresh GET /hello p99 (ms), server idle${tab}lo${tab}3${tab}r
ssr_p50${tab}20. fresh GET p50 (ms), ${ATTACKERS} /events readers + ${ATTACKERS} clients that never read a ${WS_FILE_MIB} MiB static file${tab}lo${tab}3${tab}r
ssr_p99${tab}20. fresh GET p99 (ms), the same${tab}lo${tab}3${tab}r
ssr_unans${tab}20. fresh GETs unanswered within $((ATTACK_TIMEOUT_MS / 1000)) s (of $ATTACK_PROBES), the same${tab}lo${tab}0${tab}r${tab}v<=0
ssr_idle_threads${tab}20. server threads, idle${tab}info${tab}0${tab}r
ssr_threads${tab}20. server threads with the ${ATTACKERS} + ${ATTACKERS} streams${tab}info${tab}0${tab}r
ssr_hwm${tab}20. server VmHWM after it (MiB)${tab}lo${tab}1${tab}r
ssr_events${tab}20. events the ${ATTACKERS} /events readers read meanwhile${tab}info${tab}0${tab}r
EOF2

# BENCH_ONLY=ws: the rows of figures 16-20 alone.
if [ "$ONLY_WS" = 1 ]; then
  awk -F'\t' '$2 ~ /^(1[6-9]|20)\. /' "$ROWS" >"$ROWS.ws" && mv "$ROWS.ws" "$ROWS"
fi
# Figure 8's capped rows only where the servers could be capped.
if [ "$HAVE_CAP" = 0 ]; then
  awk -F'\t' '$2 !~ / capped at /' "$ROWS" >"$ROWS.cap" && mv "$ROWS.cap" "$ROWS"
fi
# BENCH_ONLY=ka: the rows of figures 8 and 14 alone.
if [ "$ONLY_KA" = 1 ]; then
  awk -F'\t' '$2 ~ /^(8|14)\. /' "$ROWS" >"$ROWS.ka" && mv "$ROWS.ka" "$ROWS"
fi
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_GIB=$(awk '/^MemTotal:/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
OS=$(. /etc/os-release && echo "${PRETTY_NAME:-Linux}")
CXX_VERSION=$("$CXX" --version | head -n 1)
MODE=$([ "$QUICK" = 1 ] && echo "smoke run: 1 run, ${WRK_SECONDS}s per wrk figure, $IDLE_N idle conns, $ATTACK_PROBES fresh requests under attack; not a measurement" || echo "median of $RUNS runs; figure 8: median of $KA_ROUNDS rounds")
TABLE=$TMP/table.md
# The chart: bench/results.svg from a full run; a smoke run's stays in the cache.
# (BENCH_ONLY: a partial chart, also to the cache.)
if [ "$QUICK" = 1 ] || [ "$ONLY" = 1 ]; then SVG=$CACHE/results.svg; else SVG=$HERE/results.svg; fi
CMD="bench/run.sh${1:+ $1}"
[ "$ONLY_WS" = 0 ] || CMD="BENCH_ONLY=ws $CMD"
[ "$ONLY_KA" = 0 ] || CMD="BENCH_ONLY=ka $CMD"
set +e
"$BUILD/report" "$ROWS" "$RESULTS" --svg "$SVG" \
  --title "restartable_server $RS_VERSION vs cpp-httplib $HTTPLIB_VERSION vs nginx $NGINX_VERSION" \
  --subtitle "$CMD ($MODE), $(date -u +%Y-%m-%d)" \
  --subtitle "$CPU_MODEL, $NPROC CPUs, $OS, kernel $(uname -r); $PINNING; load average before: $LOAD_BEFORE" \
  --subtitle "bench/RESULTS.md says how each figure is measured" >"$TABLE"
report_status=$?
set -e
{
  echo "### restartable_server $RS_VERSION vs cpp-httplib $HTTPLIB_VERSION vs nginx $NGINX_VERSION"
  echo
  echo "- command: \`$CMD\` ($MODE; took $((T_END - T_START)) s after the builds)"
  echo "- machine: $CPU_MODEL, $NPROC CPUs, $MEM_GIB GiB, $OS, kernel $(uname -r); $CXX_VERSION"
  echo "- load average before the run: $LOAD_BEFORE (anything else running on the machine skews the figures)"
  echo "- pinning: $PINNING; wrk $(wrk -v 2>&1 | sed -n 's/^wrk \([^ ]*\).*/\1/p' | head -n 1) -t$CLI_CPUS, ${WRK_SECONDS}s per figure"
  if [ "$ONLY_WS" = 0 ]; then  # (BENCH_ONLY=ws: these figures were not measured)
  echo "- servers: restartable_server with default options (worker_threads ${RS_WORKERS:-?}); cpp-httplib built with" \
       "-DCPPHTTPLIB_TCP_NODELAY=true -DCPPHTTPLIB_USE_POLL, default options; nginx: 1 worker, master_process off," \
       "access_log off, \`return 200\`; all on 127.0.0.1"
  echo "- ratios are restartable_server ÷ peer; ↑ higher is better, ↓ lower is better; figures 4 and 5 run" \
       "in-process (cpp-httplib: listen_after_bind in a thread, stop() + join)"
  echo "- figure 8: restartable_server with default options (as many serving workers as usable CPUs: 1" \
       "here, pinned), the same binary with worker_threads = 0, and nginx, all up, pinned as above; nginx with 1" \
       "worker, the one CPU it may use (1.22's \`worker_processes auto\` counts online CPUs, not the affinity" \
       "mask, and would start 2 on it); wrk -t2 (both wrk threads on the load generator's CPU) alternates" \
       "between them load by load, $KA_ROUNDS round(s) of ${KA_SECONDS}s per load and server; ratios are taken" \
       "per round, then the median; the server's CPU time per request does not depend on how fast wrk is"
  echo "- figure 14: restartable_server with default options and a GET /slow route whose handler sleeps" \
       "100 ms; 63 keep-alive connections send GET /hello in a closed loop from one client thread, for" \
       "${KA_SECONDS}s alone, then ${KA_SECONDS}s beside a 64th connection sending GET /slow over and over;" \
       "$KA_ROUNDS round(s)"
  echo "- figures 9 and 10: a fresh server process each; $ATTACKERS connections with SO_RCVBUF 4 KiB that never read" \
       "(no reconnects) each POST ${ATTACK_MIB} MiB to /echo, or GET /big (4 MiB: a string in memory; nginx: a" \
       "static file, sendfile on), or pipeline GET /hello nonstop (a flood: the server gets as much work as it" \
       "reads); once the attack holds (all connected, no progress for 300 ms; at most ${ATTACK_SETUP_MS} ms)," \
       "$ATTACK_PROBES fresh GET /hello on new connections, one every ${ATTACK_INTERVAL_MS} ms, each given" \
       "${ATTACK_TIMEOUT_MS} ms; an unanswered one counts as slower than any in p50/p99 (\"timeout\");" \
       "VmHWM read after the probes"
  echo "- figure 11: $STORM_CLIENTS client threads (on the load generator's CPU) send GET /hello and POST /echo" \
       "(16 B to 32 KiB, checked) as fast as they are answered, each over 4 keep-alive connections in turn and" \
       "every fifth request on a fresh one, for ${STORM_SECONDS}s, while the server restarts every" \
       "${STORM_INTERVAL_MS} ms: restartable_server (default options, in the clients' process, its threads on the" \
       "server's CPU) calls restart(); nginx (master + 1 worker, echo module) gets SIGHUP, a reload, as from" \
       "\`nginx -s reload\`; unanswered: EOF, reset or ${STORM_TIMEOUT_MS} ms without a whole response after the" \
       "request was written, on a fresh connection; reuse race: EOF or reset before any response byte on a" \
       "kept-alive connection that had answered before"
  echo "- figure 12: one restartable_server and its clients in one process on the server's CPU;" \
       "$COST_REPEATS restart() calls, each followed by a fresh GET /hello; then a GET /hello on each idle connection"
  echo "- figure 15: restartable_server (default options, built with RESTARTABLE_SERVER_OPENSSL, tls_listener()" \
       "with its defaults) and nginx (1 worker, master_process off, \`listen ... ssl\`), one self-signed ECDSA P-256" \
       "certificate made by \`openssl req\`; nginx set as restartable_server is: ssl_protocols TLSv1.2 TLSv1.3," \
       "ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20 (tls12_ciphers' default), ssl_prefer_server_ciphers on, ssl_session_cache off," \
       "ssl_session_tickets on (OpenSSL's random per-process ticket keys), ALPN http/1.1; negotiated:${TLS_NEGOTIATED:- ?}" \
       "wrk alternates between the two as in figure 8 ($KA_ROUNDS round(s) of ${KA_SECONDS}s per load); wrk" \
       "reuses its session on reconnect (${WRK_RESUMED:-?} % of its \`Connection: close\` handshakes resumed," \
       "nginx's \$ssl_session_reused), so that row is resumed handshakes; full handshakes come from" \
       "bench/idle_tls.cpp, which offers no session; idle: $TLS_IDLE_N connections, each a full handshake and one" \
       "keep-alive GET, against a fresh server, (VmRSS after − before) ÷ $TLS_IDLE_N, nginx's one process" \
       "(master_process off); median of $RUNS"
  fi
  echo "- figures 16-20: bench/ws_server.cpp (restartable_server, default options but max_body_bytes 1 GiB;" \
       "pinned as the others); 16: bench/ws_load.cpp echo (one thread on the load generator's CPU, epoll, masked" \
       "frames) with $WS_CONNS WebSockets, each one $WS_MSG_BYTES-byte text message in flight, against Node" \
       "${NODE_VERSION:-?} with ws ${NODE_WS_VERSION:-?} (npm, bench/peers/ws_echo_node.js) and Go ${GO_VERSION:-?}" \
       "with gorilla/websocket ${GORILLA_VERSION:-?} (Debian, bench/peers/ws_echo_go), all three up and on the" \
       "server's CPU, alternating $KA_ROUNDS round(s) of ${KA_SECONDS}s; server CPU per message from /proc/PID/stat" \
       "over the timed window; ratios per round, then the median; 17: $WS_IDLE_N idle WebSockets (or keep-alive" \
       "HTTP connections) against a fresh server, (VmRSS after − before) ÷ $WS_IDLE_N, then a message on each;" \
       "18: $WS_BCAST_N WebSockets, a server thread calls send_text() on each, the time from just before the" \
       "first call (put in the message) to the last arrival, $WS_BCAST_ROUNDS rounds; 19: one" \
       "multipart/form-data POST (bench/upload.cpp) per fresh server, the file part summed and discarded by" \
       "read_multipart(); 20: $ATTACKERS clients reading GET /events (a tick every 50 ms each) and $ATTACKERS" \
       "that never read GET a ${WS_FILE_MIB} MiB static file (set_file), then $ATTACK_PROBES fresh GET /hello as" \
       "in figure 9; the same probes on the same server idle just before; median of $RUNS"
  echo "- chart: ${SVG#"$ROOT"/}"
  echo
  cat "$TABLE"
} | tee "$CACHE/last-table.md"
cp "$RESULTS" "$CACHE/last-results.tsv"
[ "$report_status" = 0 ] || die "some figures have no value (see FAIL / missing above)"

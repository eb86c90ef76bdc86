#!/usr/bin/env bash
# rolling_restart.sh - three echo_servers behind nginx, restarted one at a time under load.
#
#   rolling_restart.sh [--mode restart|upgrade] [--duration SECONDS] [--restarts N]
#                      [--echo-server PATH] [--port PORT] [--connections N] [--keep]
#
# Starts three examples/echo_server backends on free ports (--port 0: each tells its port),
# nginx in the foreground from nginx.conf.in with every file under a temporary prefix (no
# root needed), and wrk against nginx for --duration seconds. Meanwhile it restarts the
# backends in turn, --restarts times in all, spread over the run:
#   restart  SIGHUP: a hand-over restart inside the same process, same listening socket;
#   upgrade  SIGUSR2: a new process of the binary takes the listening socket over, the old
#            one drains and exits; the script follows the new pid.
# After each restart the backend must answer GET /pid with the pid it should have.
#
# Prints wrk's report, nginx's access log counted by status, and one summary line:
#   summary: mode=M restarts=N requests=N non2xx=N socket_errors=N log_requests=N
#            log_2xx=N log_499=N log_other=N upstream_retries=N
# (one line). Exits 0 only if every restart happened under load and no request failed:
# no non-2xx response and no socket error in wrk's report, and no status but 2xx in
# nginx's log besides 499 (wrk closing connections with a request in flight at its end).
# upstream_retries counts requests nginx moved to another backend after a failed
# attempt; wrk never sees those. A hand-over restart gives nginx nothing to retry, and an
# upgrade hands the idle kept-alive connections to the new process, so they must be 0 in
# both modes (README.md).
# Exit status: 0 passed, 1 failed, 2 bad usage or a missing tool.
#
# Needs bash, nginx and wrk. The backend: --echo-server, else $ECHO_SERVER, else
# build/echo_server in the repository.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=restart
duration=10
restarts=6
echo_server=${ECHO_SERVER:-$here/../../build/echo_server}
listen_port=
connections=16
keep=0
drain_ms=5000

usage() {
    echo "usage: rolling_restart.sh [--mode restart|upgrade] [--duration SECONDS] [--restarts N]" >&2
    echo "                          [--echo-server PATH] [--port PORT] [--connections N] [--keep]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    option=$1
    if [ "$option" = --keep ]; then keep=1; shift; continue; fi
    [ $# -ge 2 ] || usage  # every other option takes a value
    value=$2
    shift 2
    case $option in
        --mode) mode=$value ;;
        --duration) duration=$value ;;
        --restarts) restarts=$value ;;
        --echo-server) echo_server=$value ;;
        --port) listen_port=$value ;;
        --connections) connections=$value ;;
        *) usage ;;
    esac
done
[[ $mode == restart || $mode == upgrade ]] || usage
[[ $duration =~ ^[0-9]+$ && $duration -ge 2 ]] || usage
[[ $restarts =~ ^[0-9]+$ && $restarts -ge 1 ]] || usage
[[ $connections =~ ^[0-9]+$ && $connections -ge 1 ]] || usage
[[ -z $listen_port || $listen_port =~ ^[0-9]+$ ]] || usage
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "rolling_restart: $tool is not installed" >&2; exit 2; }
done
[ -x "$echo_server" ] || { echo "rolling_restart: no echo_server at $echo_server (--echo-server)" >&2; exit 2; }

work=$(mktemp -d /tmp/rs_cluster.XXXXXX)
chmod 755 "$work"  # nginx's workers may run as another user (root starts them as nobody)

log() { printf 'rolling_restart: %s\n' "$*"; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- processes --

declare -a backend_pid backend_port backend_restarts backend_is_child
nginx_pid=
wrk_pid=

# gone PID: true when the process has exited: no such process, or a zombie nobody has
# reaped yet (an upgraded backend is not our child; its parent may not be reaping).
gone() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [[ ${stat%% *} == Z ]]
}

# wait_gone PID SECONDS: waits until PID is gone; false after SECONDS.
wait_gone() {
    local deadline=$(( $(now_ms) + $2 * 1000 ))
    until gone "$1"; do
        (( $(now_ms) < deadline )) || return 1
        sleep 0.05
    done
}

# stop_process PID SIGNAL SECONDS: sends SIGNAL, waits; SIGKILL if it is still there.
stop_process() {
    [ -n "$1" ] || return 0
    kill "-$2" "$1" 2>/dev/null || return 0
    wait_gone "$1" "$3" || { log "pid $1 ignored SIG$2 for $3 s: killed"; kill -KILL "$1" 2>/dev/null || true; }
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -n "$wrk_pid" ] && kill -KILL "$wrk_pid" 2>/dev/null
    for pid in "${backend_pid[@]}"; do stop_process "$pid" TERM 10; done
    stop_process "$nginx_pid" QUIT 10
    wait 2>/dev/null  # reap our own children
    if [ "$keep" = 1 ]; then log "files kept in $work"; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# wait_for_line FILE FROM REGEX SECONDS: prints the first line of FILE after line FROM
# that matches REGEX (extended); false if none comes within SECONDS.
wait_for_line() {
    local deadline=$(( $(now_ms) + $4 * 1000 )) line
    for (( ;; )); do
        line=$(tail -n "+$(( $2 + 1 ))" "$1" | grep -E -m1 "$3" || true)
        [ -n "$line" ] && { printf '%s\n' "$line"; return 0; }
        (( $(now_ms) < deadline )) || return 1
        sleep 0.05
    done
}

line_count() { wc -l <"$1"; }

# http_get PORT PATH: the body of GET PATH from 127.0.0.1:PORT (bash's /dev/tcp, no curl).
http_get() {
    local fd response
    exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&"$fd"
    response=$(timeout 5 cat <&"$fd") || true
    exec {fd}>&-
    printf '%s' "${response#*$'\r\n\r\n'}"
}

# ----------------------------------------------------------------- backends --

# start_backend I: echo_server number I on a port of its choosing.
start_backend() {
    local i=$1 out="$work/backend$1.out" line
    : >"$out"
    "$echo_server" --host 127.0.0.1 --port 0 --workers 4 --drain-ms "$drain_ms" \
        >>"$out" 2>>"$work/backend$i.err" &
    backend_pid[i]=$!
    backend_is_child[i]=1  # an upgrade replaces it with a process that is not
    backend_restarts[i]=0
    line=$(wait_for_line "$out" 0 '^listening on http://127\.0\.0\.1:[0-9]+$' 10) || {
        log "backend $i did not start:"; cat "$out" "$work/backend$i.err" >&2; return 1; }
    backend_port[i]=${line##*:}
    log "backend $i: pid ${backend_pid[i]}, port ${backend_port[i]}"
}

# restart_backend I: one restart of backend I in the chosen mode; false on any failure.
restart_backend() {
    local i=$1 out="$work/backend$1.out" old=${backend_pid[$1]} from line new t0 status=0
    from=$(line_count "$out")
    t0=$(now_ms)
    if [ "$mode" = restart ]; then
        kill -HUP "$old"
        backend_restarts[i]=$(( backend_restarts[i] + 1 ))
        line=$(wait_for_line "$out" "$from" "^restarted ${backend_restarts[i]}\$" 10) || {
            log "backend $i: no 'restarted ${backend_restarts[i]}' after SIGHUP"; return 1; }
        new=$old
    else
        kill -USR2 "$old"
        line=$(wait_for_line "$out" "$from" '^upgraded to pid [0-9]+$' 10) || {
            log "backend $i: no 'upgraded to pid N' after SIGUSR2 ($(gone "$old" && echo exited || echo running))"
            return 1; }
        new=${line##* }
        backend_pid[i]=$new  # from now on cleanup() stops the new one
        wait_gone "$old" $(( drain_ms / 1000 + 10 )) || { log "backend $i: pid $old did not exit"; return 1; }
        # Only the first generation is our child: its exit status is ours to see.
        if [ "${backend_is_child[i]}" = 1 ]; then
            backend_is_child[i]=0
            wait "$old" || status=$?
            [ "$status" = 0 ] || { log "backend $i: pid $old exited with status $status"; return 1; }
        fi
    fi
    local serving
    serving=$(http_get "${backend_port[i]}" /pid) || serving="(no answer)"
    [ "$serving" = "$new" ] || { log "backend $i: GET /pid says '$serving', expected $new"; return 1; }
    log "backend $i: $line; pid $new serves port ${backend_port[i]} ($(( $(now_ms) - t0 )) ms)"
}

# -------------------------------------------------------------------- nginx --

# start_nginx: renders the config and starts nginx; on a port taken meanwhile, tries
# another (unless --port was given).
start_nginx() {
    local prefix="$work/nginx" port
    mkdir -p "$prefix/tmp"
    for _ in 1 2 3 4 5; do
        port=${listen_port:-$(( 20000 + RANDOM % 40000 ))}
        if [ -z "$listen_port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue  # someone listens there
        fi
        sed -e "s|@PREFIX@|$prefix|g" -e "s|@LISTEN_PORT@|$port|g" \
            -e "s|@BACKEND_PORT_1@|${backend_port[1]}|g" -e "s|@BACKEND_PORT_2@|${backend_port[2]}|g" \
            -e "s|@BACKEND_PORT_3@|${backend_port[3]}|g" "$here/nginx.conf.in" >"$prefix/nginx.conf"
        rm -f "$prefix/nginx.pid"
        nginx -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log" 2>>"$prefix/stderr" &
        nginx_pid=$!
        # nginx writes its pid file once its listening socket is bound.
        local deadline=$(( $(now_ms) + 10000 ))
        until [ "$(cat "$prefix/nginx.pid" 2>/dev/null)" = "$nginx_pid" ] || gone "$nginx_pid" ||
              (( $(now_ms) > deadline )); do
            sleep 0.05
        done
        if ! gone "$nginx_pid" && [ -s "$prefix/nginx.pid" ]; then
            nginx_port=$port
            log "nginx: pid $nginx_pid, port $nginx_port, prefix $prefix"
            return 0
        fi
        stop_process "$nginx_pid" KILL 5
        wait "$nginx_pid" 2>/dev/null || true
        nginx_pid=
        if [ -n "$listen_port" ] || ! grep -q 'Address already in use' "$prefix/error.log" "$prefix/stderr"; then
            break
        fi
    done
    log "nginx did not start:"
    cat "$prefix/error.log" "$prefix/stderr" >&2
    return 1
}

# ---------------------------------------------------------------------- run --

for i in 1 2 3; do start_backend "$i"; done
start_nginx
[ "$(http_get "$nginx_port" /hello)" = "Hello, World!" ] || { log "nginx does not answer GET /hello"; exit 1; }

log "mode $mode: wrk for ${duration} s with $connections connections, $restarts restarts"
wrk -t2 -c"$connections" -d"${duration}s" --timeout 5s "http://127.0.0.1:$nginx_port/hello" >"$work/wrk.out" 2>&1 &
wrk_pid=$!

# Restart k is due at start + k * step, so the restarts are spread over the run and the
# last one is over well before wrk ends.
start=$(now_ms)
step=$(( duration * 1000 / (restarts + 1) ))
under_load=0
failed_restarts=0
for (( k = 1; k <= restarts; k++ )); do
    while (( $(now_ms) < start + k * step )); do sleep 0.05; done
    i=$(( (k - 1) % 3 + 1 ))
    if ! restart_backend "$i"; then
        failed_restarts=$(( failed_restarts + 1 ))
        break  # the report says what went wrong; no use in going on
    fi
    if ! gone "$wrk_pid"; then under_load=$(( under_load + 1 )); fi
done

wrk_status=0
wait "$wrk_pid" || wrk_status=$?
wrk_pid=
stop_process "$nginx_pid" QUIT 10  # graceful: flushes the access log
wait "$nginx_pid" 2>/dev/null || true
nginx_pid=

# ------------------------------------------------------------------- report --

echo
echo "wrk (exit status $wrk_status):"
cat "$work/wrk.out"

requests=$(grep -Eo '^ *[0-9]+ requests in' "$work/wrk.out" | grep -Eo '[0-9]+' || echo 0)
non2xx=$(grep -Eo 'Non-2xx or 3xx responses: [0-9]+' "$work/wrk.out" | grep -Eo '[0-9]+$' || echo 0)
# "Socket errors: connect A, read B, write C, timeout D", printed only when one is not 0.
socket_errors=$(awk '/Socket errors:/ { gsub(/[^0-9]+/, " "); for (f = 1; f <= NF; f++) n += $f }
                     END { print n + 0 }' "$work/wrk.out")

# Access log lines are "status|upstream statuses|upstream addresses".
read -r log_requests log_2xx log_499 log_other retries < <(awk -F'|' '
    $2 ~ /,/ { retried++ }
    $1 ~ /^2/ { ok++ }
    $1 == 499 { gone++ }
    END { printf "%d %d %d %d %d\n", NR, ok, gone, NR - ok - gone, retried }' "$work/nginx/access.log")
echo
echo "nginx access log, by status:"
cut -d'|' -f1 "$work/nginx/access.log" | sort | uniq -c
for i in 1 2 3; do  # echo_server writes to stderr only when something went wrong
    if [ -s "$work/backend$i.err" ]; then
        echo
        echo "backend $i, stderr:"
        cat "$work/backend$i.err"
    fi
done
echo

verdict=PASS
reasons=()
(( wrk_status == 0 )) || reasons+=("wrk exited with $wrk_status")
(( requests > 0 )) || reasons+=("no request completed")
(( non2xx == 0 )) || reasons+=("$non2xx non-2xx responses")
(( socket_errors == 0 )) || reasons+=("$socket_errors socket errors")
(( log_other == 0 )) || reasons+=("$log_other requests in nginx's log neither 2xx nor 499")
if (( failed_restarts > 0 )); then
    reasons+=("a restart failed")
elif (( under_load < restarts )); then
    reasons+=("only $under_load of $restarts restarts under load: raise --duration")
fi
# A hand-over restart keeps the listening socket and the idle connections, and an upgrade
# hands both to the new process: nginx never has a reason to try another backend.
if (( retries > 0 )); then
    reasons+=("nginx retried $retries requests on another backend")
fi
[ ${#reasons[@]} -eq 0 ] || verdict=FAIL

echo "summary: mode=$mode restarts=$restarts requests=$requests non2xx=$non2xx socket_errors=$socket_errors" \
     "log_requests=$log_requests log_2xx=$log_2xx log_499=$log_499 log_other=$log_other upstream_retries=$retries"
if [ "$verdict" = PASS ]; then
    echo "result: PASS"
    exit 0
fi
echo "result: FAIL ($(IFS=';'; echo "${reasons[*]}"))"
exit 1

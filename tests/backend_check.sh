#!/usr/bin/env bash
# The event backend compiled in is the one asked for: the calls a built program's object
# files leave to libc say so (nm --undefined-only; object files, because a sanitizer
# runtime linked into the program defines these calls itself). Then the header compiled as
# for a system that is not Linux (-U__linux__, on this machine's headers) must pick poll(2)
# by itself, build cleanly and call none of epoll, accept4, pipe2 or syscall.
#
#   backend_check.sh CXX SOURCE_DIR OBJECT_DIR poll|epoll WORK_DIR
#
# OBJECT_DIR: where CMake put the object files of one program (echo_server).
#
# Exit: 0 pass, 1 fail, 77 skipped (no nm).
set -uo pipefail
cxx=$1 src=$2 objects=$3 expected=$4 work=$5
command -v nm >/dev/null || { echo "SKIPPED: nm not found" >&2; exit 77; }
mkdir -p "$work"
fail=0

imports() { nm --undefined-only "$@" | awk 'NF { sub(/@.*/, "", $NF); print $NF }' | sort -u; }
has() { grep -qx "$1" <<<"$2"; }

linux_only='epoll_create1 epoll_ctl epoll_wait accept4 pipe2'
mapfile -t files < <(find "$objects" -name '*.o')
[ "${#files[@]}" -gt 0 ] || { echo "FAIL: no object files under $objects" >&2; exit 1; }
program=$(basename "$objects" .dir)
got=$(imports "${files[@]}") || { echo "FAIL: nm ${files[*]}" >&2; exit 1; }
case $expected in
  epoll)
    for f in epoll_create1 epoll_ctl epoll_wait accept4 pipe2; do
      has "$f" "$got" || { echo "FAIL: $program does not import $f (epoll backend expected)" >&2; fail=1; }
    done ;;
  poll)
    has poll "$got" || { echo "FAIL: $program does not import poll" >&2; fail=1; }
    for f in $linux_only; do
      has "$f" "$got" && { echo "FAIL: $program imports $f (poll backend expected)" >&2; fail=1; }
    done ;;
  *) echo "usage: backend_check.sh CXX SOURCE_DIR PROGRAM poll|epoll WORK_DIR" >&2; exit 1 ;;
esac
[ "$fail" = 0 ] && echo "ok: $program uses the $expected backend"

# As if not on Linux: the poll(2) backend is chosen without being asked.
out=$work/hello_not_linux.o
if ! "$cxx" -std=c++17 -U__linux__ -Wall -Wextra -Wpedantic -Wshadow -Werror -I"$src" \
     -c "$src/examples/hello.cpp" -o "$out"; then
  echo "FAIL: examples/hello.cpp does not build with __linux__ undefined" >&2
  exit 1
fi
got=$(imports "$out")
has poll "$got" || { echo "FAIL: hello without __linux__ does not import poll" >&2; fail=1; }
for f in $linux_only syscall; do
  has "$f" "$got" && { echo "FAIL: hello without __linux__ imports $f" >&2; fail=1; }
done
[ "$fail" = 0 ] && echo "ok: without __linux__ the header picks poll(2) and imports no Linux-only call"
exit "$fail"

#!/usr/bin/env bash
# The CTest test package_consumers: restartable_server as users take it in. Installs the
# checkout to a temporary prefix (its own configure, no tests or examples), then builds
# and runs tests/consumer/consumer.cpp three ways:
#   find_package   find_package(restartable_server CONFIG REQUIRED) from the prefix
#   pkg-config     a plain compiler command line from `pkg-config --cflags --libs`
#   fetch_content  FetchContent with SOURCE_DIR = the checkout (no network)
# Each consumer must exit 0 (it got "Hello, World!" from its own server).
#
#   run.sh SOURCE_DIR WORK_DIR CMAKE CXX GENERATOR [OPENSSL]
#
# OPENSSL ON: the package is configured with RESTARTABLE_SERVER_OPENSSL, so each consumer
# gets the macro and OpenSSL from it (CMake target, pkg-config's Requires, the subproject)
# and also serves TLS with a certificate made here.
# Exit status: 0 when all three passed; 77 (CTest: skipped) when none failed but one could
# not run (no pkg-config); 1 when any failed. WORK_DIR is emptied first and kept after.
set -euo pipefail
[ "$#" -eq 5 ] || [ "$#" -eq 6 ] || { echo "usage: $0 SOURCE_DIR WORK_DIR CMAKE CXX GENERATOR [OPENSSL]" >&2; exit 2; }
src=$1 work=$2 cmake=$3 cxx=$4 generator=$5 openssl=${6:-OFF}
consumers=$src/tests/consumer
prefix=$work/prefix
rm -rf "$work"
mkdir -p "$work"

failed=()
skipped=()

# quiet LOG COMMAND...: runs COMMAND with its output in LOG, shown only when it fails.
quiet() {
  local log=$1
  shift
  if "$@" >"$log" 2>&1; then return 0; fi
  echo "FAILED: $*" >&2
  cat "$log" >&2
  return 1
}

# run_consumer NAME BINARY: runs a built consumer with a time limit.
run_consumer() {
  if timeout 30 "$2"; then
    echo "=== $1: passed"
  else
    echo "=== $1: FAILED: the consumer exited $?" >&2
    return 1
  fi
}

if [ "$openssl" = ON ]; then
  quiet "$work/certificate.log" openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost
  export RS_TLS_CERT=$work/cert.pem RS_TLS_KEY=$work/key.pem
fi

# The version the header declares: the package must be found when asking for it.
version=$(sed -n 's/^#define RESTARTABLE_SERVER_VERSION_\(MAJOR\|MINOR\|PATCH\) \+\([0-9]\+\) *$/\2/p' \
  "$src/restartable_server.hpp" | paste -sd.)
echo "=== version $version; installing to $prefix"

# Configured for the default prefix and installed with --prefix: nothing may depend on
# the configure-time prefix.
quiet "$work/install.configure.log" "$cmake" -S "$src" -B "$work/project" -G "$generator" \
  -DCMAKE_CXX_COMPILER="$cxx" -DRESTARTABLE_SERVER_BUILD_TESTS=OFF \
  -DRESTARTABLE_SERVER_BUILD_EXAMPLES=OFF -DRESTARTABLE_SERVER_INSTALL=ON -DRESTARTABLE_SERVER_OPENSSL="$openssl"
quiet "$work/install.log" "$cmake" --install "$work/project" --prefix "$prefix"

# 1. find_package
echo "=== find_package"
if quiet "$work/find_package.configure.log" "$cmake" -S "$consumers/find_package" -B "$work/find_package" \
     -G "$generator" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" \
     -DRS_VERSION="$version" -DRS_VERSION_MAJOR="${version%%.*}" &&
   quiet "$work/find_package.build.log" "$cmake" --build "$work/find_package"; then
  grep -F "found restartable_server" "$work/find_package.configure.log" || true
  run_consumer find_package "$work/find_package/consumer" || failed+=(find_package)
else
  failed+=(find_package)
fi

# 2. pkg-config
echo "=== pkg-config"
if ! command -v pkg-config >/dev/null 2>&1; then
  echo "SKIPPED: pkg-config is not installed"
  skipped+=(pkg-config)
else
  export PKG_CONFIG_PATH=$prefix/share/pkgconfig
  if flags=$(pkg-config --cflags --libs restartable_server) &&
     pc_version=$(pkg-config --modversion restartable_server); then
    echo "pkg-config: version $pc_version, flags: $flags"
    if [ "$pc_version" != "$version" ]; then
      echo "=== pkg-config: FAILED: version $pc_version, the header says $version" >&2
      failed+=(pkg-config)
    # $flags unquoted on purpose: one word per flag, as a makefile would use it.
    elif quiet "$work/pkg_config.log" "$cxx" -std=c++17 "$consumers/consumer.cpp" $flags \
           -o "$work/pkg_config_consumer"; then
      run_consumer pkg-config "$work/pkg_config_consumer" || failed+=(pkg-config)
    else
      failed+=(pkg-config)
    fi
  else
    echo "=== pkg-config: FAILED: pkg-config does not know restartable_server" >&2
    failed+=(pkg-config)
  fi
fi

# 3. FetchContent
echo "=== fetch_content"
if quiet "$work/fetch_content.configure.log" "$cmake" -S "$consumers/fetch_content" -B "$work/fetch_content" \
     -G "$generator" -DCMAKE_CXX_COMPILER="$cxx" -DRS_SOURCE_DIR="$src" \
     -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DRESTARTABLE_SERVER_OPENSSL="$openssl" &&
   quiet "$work/fetch_content.build.log" "$cmake" --build "$work/fetch_content"; then
  run_consumer fetch_content "$work/fetch_content/consumer" || failed+=(fetch_content)
else
  failed+=(fetch_content)
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "package consumers FAILED: ${failed[*]}" >&2
  exit 1
fi
if [ "${#skipped[@]}" -gt 0 ]; then
  echo "package consumers passed, SKIPPED: ${skipped[*]}"
  exit 77
fi
echo "package consumers passed: find_package pkg-config fetch_content"

# Shared helpers for the project's scripts (sourced, not run).

step() { printf '\n==> %s\n' "$*"; }

# Functions to run when the calling shell exits (services the tests needed).
CLEANUPS=()
add_cleanup() {
    CLEANUPS+=("$1")
    trap run_cleanups EXIT
}
run_cleanups() {
    local f
    for f in "${CLEANUPS[@]}"; do "$f" || true; done
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "error: '$*' needs root; run as root or install sudo" >&2; exit 1
    fi
}

require_rust() {
    if ! command -v cargo >/dev/null; then
        echo "error: cargo not found. Archway needs Rust >= 1.95: install it with rustup" >&2
        echo "       (curl https://sh.rustup.rs -sSf | sh), then open a new shell." >&2
        exit 1
    fi
}

# Installs Debian packages that are missing (one `apt-get update` at most).
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# qemu-user for foreign-architecture RUN steps: Debian's qemu-user-static registers its
# handlers with the F (fix-binary) flag, so they work inside containers. binfmt_misc must be
# mounted (containers and minimal VMs often lack it) and the handlers enabled.
ensure_binfmt() {
    ensure_packages qemu-user-static binfmt-support
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        step "mounting binfmt_misc"
        as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    # The architectures the tests and the seed pipelines emulate: arm64 and arm on an amd64
    # host, amd64 and arm on an arm64 one (many arm64 CPUs have no AArch32 mode).
    local foreign="aarch64 arm"
    [ "$(uname -m)" = aarch64 ] && foreign="x86_64 arm"
    for arch in $foreign; do
        if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$arch" ]; then
            step "enabling qemu-$arch in binfmt_misc"
            as_root update-binfmts --enable "qemu-$arch"
        fi
    done
}

# Rootless builds with subordinate ids: give USER a range in /etc/subuid and /etc/subgid
# (as `useradd` does for new users) unless it has one; newuidmap/newgidmap come with uidmap.
ensure_subids() {
    local user=$1 start=${2:-200000} count=${3:-65536}
    ensure_packages uidmap
    for f in /etc/subuid /etc/subgid; do
        if ! grep -q "^$user:" "$f" 2>/dev/null; then
            step "giving $user the subordinate ids $start-$((start + count - 1)) in $f"
            echo "$user:$start:$count" | as_root tee -a "$f" >/dev/null
        fi
    done
}

# A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory as an
# unprivileged user (the `postgres` user when we are root), listening on a free loopback port,
# fsync off. Exports ARCHWAY_TEST_POSTGRES (a URL the tests create their databases through)
# and stops the cluster when the calling shell exits.
start_test_postgres() {
    ensure_packages postgresql
    local bin user port
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    PG_TMP=$(mktemp -d /tmp/archway-pg.XXXXXX)
    user=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then
        user=postgres
        chown postgres "$PG_TMP"
    fi
    pg_as() { if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }
    pg_as "$bin/initdb" -D "$PG_TMP/data" -A trust -U archway -E UTF8 --no-sync >/dev/null
    port=55432
    while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    pg_as "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w -o \
        "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" \
        start >/dev/null
    PG_BIN=$bin PG_USER=$user
    export ARCHWAY_TEST_POSTGRES="postgres://archway@127.0.0.1:$port/postgres"
    add_cleanup stop_test_postgres
    echo "PostgreSQL for the tests at $ARCHWAY_TEST_POSTGRES (data in $PG_TMP)"
}

stop_test_postgres() {
    if [ -n "${PG_TMP:-}" ] && [ -d "$PG_TMP/data" ]; then
        if [ "$(id -un)" = "$PG_USER" ]; then "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
        else runuser -u "$PG_USER" -- "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 || true; fi
        rm -rf "$PG_TMP"
    fi
}

# An S3 server for the tests: moto's server mode (PyPI `moto[server]`, installed into a
# virtualenv under ~/.cache/archway) on a free loopback port, with one bucket. Exports
# ARCHWAY_TEST_S3 (that bucket), AWS_ENDPOINT_URL and credentials for it, and
# ARCHWAY_TEST_MOTO (the server program, for tests that start one of their own); stops the
# server when the calling shell exits. moto implements what the registry relies on:
# multipart uploads, conditional PUTs and DELETEs (If-None-Match / If-Match), presigned URLs.
MOTO_VERSION=5.2.1
start_test_s3() {
    ensure_packages python3 python3-venv
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/archway/moto-$MOTO_VERSION"
    if [ ! -x "$venv/bin/moto_server" ]; then
        step "installing moto[server] $MOTO_VERSION (the tests' S3 server) into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
    local port=45123
    while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    S3_LOG=$(mktemp /tmp/archway-s3.XXXXXX)
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$S3_LOG" 2>&1 &
    S3_PID=$!
    add_cleanup stop_test_s3
    local i
    for i in $(seq 1 100); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    "$venv/bin/python" -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/archway-test', method='PUT'))"
    export ARCHWAY_TEST_S3=s3://archway-test
    export ARCHWAY_TEST_MOTO="$venv/bin/moto_server"
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_ACCESS_KEY_ID=archway-test AWS_SECRET_ACCESS_KEY=archway-test AWS_REGION=us-east-1
    echo "S3 (moto) for the tests at $AWS_ENDPOINT_URL, bucket $ARCHWAY_TEST_S3 (log $S3_LOG)"
}

stop_test_s3() {
    if [ -n "${S3_PID:-}" ]; then
        kill "$S3_PID" 2>/dev/null || true
        wait "$S3_PID" 2>/dev/null || true
        rm -f "$S3_LOG"
        S3_PID=
    fi
}

# Installs a cargo subcommand from crates.io when it is missing (compiles it: minutes).
ensure_cargo_tool() {
    if ! command -v "$1" >/dev/null; then
        step "installing $1 from crates.io"
        cargo install --locked --quiet "$1"
    fi
}

# Prints the tests that skipped themselves (one "test: reason" line each in $1). In CI
# (CI=true), where this script installed every tool the tests need, any skip is a failure.
report_skips() {
    if [ -s "$1" ]; then
        step "skipped tests"
        sort -u "$1"
        if [ "${CI:-}" = "true" ]; then
            echo "error: tests were skipped in CI, where nothing should be missing" >&2
            exit 1
        fi
    fi
}

# Cross-compiling for aarch64-unknown-linux-musl: Debian has no aarch64 musl compiler, so C
# dependencies (SQLite, aws-lc) are compiled by the aarch64 GNU compiler against musl's own
# arm64 headers (musl-dev:arm64, multiarch) — against glibc's they would call glibc-only
# symbols such as stat64 that musl lacks — and linked by Rust's self-contained musl.
# Exports the variables cargo and the cc crate read.
setup_aarch64_musl() {
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        as_root dpkg --add-architecture arm64
        as_root apt-get update -qq
    fi
    ensure_packages gcc-aarch64-linux-gnu musl-dev:arm64
    if command -v rustup >/dev/null; then
        rustup target add aarch64-unknown-linux-musl >/dev/null
    fi
    export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
    export CFLAGS_aarch64_unknown_linux_musl="-nostdinc -isystem /usr/include/aarch64-linux-musl -isystem $(aarch64-linux-gnu-gcc -print-file-name=include)"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
}

#!/usr/bin/env bash
# What local-run-bench (`archway pipeline run` vs gitlab-ci-local) needs on this machine,
# installed and started; idempotent, safe to run again:
#
#   - rsync, skopeo, git and Debian's docker engine (docker.io), with apt-get;
#   - qemu-user binfmt handlers, for Archway's emulated arm64 runner (the feature row);
#   - Node >= 20 and gitlab-ci-local 4.70.x from npm (4.70 runs on Node 20; later releases
#     need Node 22). Debian 12's own nodejs is 18: with it, install Node 20 first;
#   - dockerd on its own socket and data root (no iptables, no bridge: the jobs need no
#     network), left running in the background;
#   - busybox:1.35 (amd64) loaded into that engine from the repository's OCI fixture: nothing
#     is pulled from Docker Hub.
#
# Then: cargo build --release -p archway-cli -p archway-bench && target/release/local-run-bench
#
# Environment: DOCKER_HOST (default unix:///tmp/bench-docker.sock), BENCH_DOCKER_ROOT (the
# engine's data root, default /tmp/bench-docker), GCL_VERSION (default 4.70.1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export DOCKER_HOST=${DOCKER_HOST:-unix:///tmp/bench-docker.sock}
sock=${DOCKER_HOST#unix://}
root=${BENCH_DOCKER_ROOT:-/tmp/bench-docker}
gcl_version=${GCL_VERSION:-4.70.1}

ensure_packages rsync skopeo git docker.io
ensure_binfmt

if ! command -v node >/dev/null; then
    ensure_packages nodejs
fi
if ! command -v npm >/dev/null; then
    ensure_packages npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "error: node $(node --version) is too old: gitlab-ci-local $gcl_version needs Node 20" >&2
    echo "       (Debian 12 ships 18; install Node 20, e.g. from NodeSource, and run this again)" >&2
    exit 1
fi
if [ "$(gitlab-ci-local --version 2>/dev/null || true)" != "$gcl_version" ]; then
    step "installing gitlab-ci-local@$gcl_version with npm (on node $(node --version))"
    as_root npm install -g --no-fund --no-audit --loglevel=error "gitlab-ci-local@$gcl_version"
fi
echo "gitlab-ci-local $(gitlab-ci-local --version) on node $(node --version)"

if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    step "starting dockerd on $DOCKER_HOST (data in $root, log in $root.log)"
    as_root mkdir -p "$root"
    as_root setsid nohup dockerd --iptables=false --bridge=none --data-root "$root" \
        --exec-root "$root-exec" --pidfile "$root.pid" --host "$DOCKER_HOST" \
        >"$root.log" 2>&1 </dev/null &
    for _ in $(seq 150); do
        docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
        sleep 0.2
    done
    if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        echo "error: dockerd did not answer on $DOCKER_HOST; its log:" >&2
        tail -20 "$root.log" >&2
        exit 1
    fi
fi
echo "docker engine $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"

if ! docker image inspect busybox:1.35 >/dev/null 2>&1; then
    step "loading busybox:1.35 (amd64) into the engine from testdata/busybox-oci"
    skopeo copy --quiet --override-arch amd64 --dest-daemon-host "$DOCKER_HOST" \
        oci:testdata/busybox-oci:1.35 docker-daemon:busybox:1.35
fi
docker image inspect --format 'busybox:1.35 {{.Architecture}} {{.Id}}' busybox:1.35

echo
echo "ready. Run: DOCKER_HOST=$DOCKER_HOST target/release/local-run-bench"

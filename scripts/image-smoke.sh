#!/usr/bin/env bash
# Archway's own image, built by Archway: takes a directory laid out like dist/
# (linux/amd64/archway and linux/arm64/archway, static binaries), builds Dockerfile.release
# for both platforms in one `archway build`, pushes it as one index to a throwaway registry
# on loopback, and runs `archway version` from each platform's image (arm64 through qemu).
#
#   scripts/image-smoke.sh HOST-ARCHWAY DIST-DIR
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:?usage: scripts/image-smoke.sh HOST-ARCHWAY DIST-DIR}
dist=${2:?usage: scripts/image-smoke.sh HOST-ARCHWAY DIST-DIR}
scratch=$(mktemp -d)
reg_pid=""
trap '[ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$scratch"' EXIT
"$host" registry serve --listen 127.0.0.1:0 --root "$scratch/reg" --allow-unauthenticated >"$scratch/log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 300); do grep -q 'listening on' "$scratch/log" && break; sleep 0.1; done
addr=$(grep -o 'listening on http://[0-9.:]*' "$scratch/log" | head -1 | sed 's,.*http://,,')
[ -n "$addr" ] || { cat "$scratch/log"; echo "error: the registry did not start" >&2; exit 1; }
image="$addr/archway:smoke"
"$host" build --quiet --platform linux/amd64,linux/arm64 -f Dockerfile.release -t "$image" --push \
    --cache-dir "$scratch/store" "$dist"
platforms=$("$host" image inspect --format json "$image" | python3 -c 'import json,sys; print(" ".join(sorted(m["platform"] for m in json.load(sys.stdin)["manifests"])))')
[ "$platforms" = "linux/amd64 linux/arm64" ] || { echo "error: the index has '$platforms'" >&2; exit 1; }
for p in linux/amd64 linux/arm64; do
    out=$("$host" run --cache-dir "$scratch/store" --platform "$p" "$image" version)
    echo "$p: $out"
    [[ "$out" == *"($p, static, musl)"* ]] || { echo "error: the $p image printed '$out'" >&2; exit 1; }
done
echo "ok: Archway's image ($image) has linux/amd64 and linux/arm64, and each runs"

#!/usr/bin/env bash
# A smoke test of an `archway` binary, usually a foreign one run through qemu-user (binfmt):
# its version, then its own registry on loopback, an image it imports and pushes there, and
# the image pulled back into an OCI layout.
#
#   scripts/smoke.sh dist/linux/arm64/archway [EXPECTED-PLATFORM]
set -euo pipefail
bin=${1:?usage: scripts/smoke.sh ARCHWAY-BINARY [EXPECTED-PLATFORM, e.g. linux/arm64]}
want=${2:-}
version=$("$bin" version)
echo "$version"
if [ -n "$want" ] && [[ "$version" != *"($want,"* ]]; then
    echo "error: $bin says '$version', expected platform $want" >&2
    exit 1
fi
scratch=$(mktemp -d)
reg_pid=""
trap '[ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$scratch"' EXIT
"$bin" registry serve --listen 127.0.0.1:0 --root "$scratch/reg" --allow-unauthenticated >"$scratch/log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 600); do grep -q 'listening on' "$scratch/log" && break; sleep 0.1; done
addr=$(grep -o 'listening on http://[0-9.:]*' "$scratch/log" | head -1 | sed 's,.*http://,,')
[ -n "$addr" ] || { cat "$scratch/log"; echo "error: $bin's registry did not start" >&2; exit 1; }
mkdir -p "$scratch/rootfs/etc"
echo "made by $version" > "$scratch/rootfs/etc/motd"
"$bin" image import "$scratch/rootfs" --platform "${want:-linux/arm64}" -t "$addr/smoke/motd:1" >/dev/null
"$bin" image copy --quiet "$addr/smoke/motd:1" "oci:$scratch/layout:1"
"$bin" image inspect "oci:$scratch/layout:1" >/dev/null
echo "ok: $bin served a registry at $addr, pushed an image to it and pulled it back"

#!/usr/bin/env bash
# The main job on the embedded default, as far as it exists today: start Archway's registry on
# loopback (local files, no other service), push a two-platform image (linux/amd64 +
# linux/arm64) into it with skopeo, read it back, and check that every digest survived.
#
# Needs: Debian 12, Rust >= 1.95 (rustup), root or sudo to install skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_packages skopeo

step "building archway (release)"
cargo build --release --locked --quiet -p archway-cli
archway=target/release/archway

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

step "starting the registry: archway registry serve --listen 127.0.0.1:0 --root $work/registry"
"$archway" registry serve --listen 127.0.0.1:0 --root "$work/registry" --quiet 2>"$work/registry.log" &
pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$work/registry.log" 2>/dev/null && break
    sleep 0.05
done
addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$work/registry.log")
[ -n "$addr" ] || { cat "$work/registry.log"; exit 1; }
echo "registry at http://$addr"

src="oci:testdata/busybox-oci:1.35"
dst="docker://$addr/library/busybox:1.35"
step "pushing a two-platform image: skopeo copy --all $src $dst"
skopeo --insecure-policy copy --all --quiet --dest-tls-verify=false "$src" "$dst"

step "the index the registry serves"
skopeo inspect --raw --tls-verify=false "$dst" | python3 -m json.tool

step "pulling it back into an OCI layout"
skopeo --insecure-policy copy --all --quiet --src-tls-verify=false "$dst" "oci:$work/pulled:1.35"
want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' testdata/busybox-oci/index.json)
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/pulled/index.json")
echo "pushed $want"
echo "pulled $got"
[ "$want" = "$got" ] || { echo "error: digests differ" >&2; exit 1; }
for arch in amd64 arm64; do
    echo "linux/$arch image: $(skopeo inspect --tls-verify=false --override-arch "$arch" --format '{{.Architecture}}, layer {{index .Layers 0}}' "$dst")"
done

step "what garbage collection would remove (nothing: everything is tagged)"
"$archway" registry gc --root "$work/registry" --dry-run

step "done: a two-platform image went through Archway's registry and came back byte for byte"

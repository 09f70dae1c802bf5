#!/usr/bin/env bash
# The main job on the embedded default, as far as it exists today: make a two-platform
# (linux/amd64 + linux/arm64) base image from Debian's packages, build an application on it
# from a Dockerfile for both platforms in one call (arm64 RUN steps through qemu), publish both
# through Archway's own registry (local files, no other service), run the arm64 image, and
# check everything with a peer.
#
#   1. start `archway registry serve` on loopback
#   2. `archway image import` Debian's busybox-static for amd64 and for arm64 (reproducibly)
#   3. `archway manifest create` + `push`: one multi-platform base tag
#   4. `archway build` examples/hello-multiarch for both platforms, `--push`
#   5. `archway run --platform linux/arm64` the result
#   6. `archway pipeline run` the application's .gitlab-ci.yml with no server: its jobs run
#      inside the image on each architecture (arm64 on an emulated runner); read it back with
#      skopeo
#
# Needs: Debian 12, Rust >= 1.95 (rustup), root or sudo (to install skopeo, runc and
# qemu-user-static, mount binfmt_misc, and enable arm64 packages for `apt-get download`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_rust
ensure_packages skopeo runc util-linux git
ensure_binfmt
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    step "enabling arm64 packages (to download busybox-static:arm64)"
    as_root dpkg --add-architecture arm64
    as_root apt-get update -qq
fi

step "building archway (release)"
cargo build --release --locked --quiet -p archway-cli
archway="$PWD/target/release/archway"

work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
export HOME="$work/home" DOCKER_CONFIG="$work/home/.docker"   # keep the demo's state private

step "starting the registry: archway registry serve --listen 127.0.0.1:0 --root $work/registry"
"$archway" registry serve --listen 127.0.0.1:0 --root "$work/registry" --quiet 2>"$work/registry.log" &
pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$work/registry.log" 2>/dev/null && break
    sleep 0.05
done
reg=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$work/registry.log")
[ -n "$reg" ] || { cat "$work/registry.log"; exit 1; }
echo "registry at http://$reg"

step "downloading Debian's busybox-static for amd64 and arm64"
mkdir -p "$work/debs"
(cd "$work/debs" && apt-get download -qq busybox-static:amd64 busybox-static:arm64 2>/dev/null)
ls "$work/debs"

for arch in amd64 arm64; do
    step "archway image import (linux/$arch)"
    dpkg-deb -x "$work"/debs/busybox-static_*_"$arch".deb "$work/rootfs-$arch"
    "$archway" image import "$work/rootfs-$arch" --platform "linux/$arch" --cmd '["/bin/busybox","sh"]' \
        -t "$reg/demo/busybox:1.35-$arch"
done

step "the same input imports to the same digest (reproducible)"
"$archway" image import "$work/rootfs-arm64" --platform linux/arm64 --cmd '["/bin/busybox","sh"]' \
    -t "oci:$work/again:arm64" --format json | grep '"digest"'

step "archway manifest create + push: one tag for both platforms"
"$archway" manifest create "$reg/demo/busybox:1.35" "$reg/demo/busybox:1.35-amd64" "$reg/demo/busybox:1.35-arm64"
"$archway" manifest push --quiet "$reg/demo/busybox:1.35"

step "archway image inspect $reg/demo/busybox:1.35"
"$archway" image inspect "$reg/demo/busybox:1.35"

step "a peer reads it: skopeo inspect --override-arch arm64"
skopeo inspect --tls-verify=false --override-arch arm64 --format '{{.Architecture}} {{.Os}} {{.Digest}}' \
    "docker://$reg/demo/busybox:1.35"

step "copied into an OCI layout, digests intact"
"$archway" image copy --all --quiet "$reg/demo/busybox:1.35" "oci:$work/layout:1.35"
want=$("$archway" image inspect --format json "$reg/demo/busybox:1.35" | sed -n 's/^  "digest": "\(.*\)",$/\1/p')
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/layout/index.json")
echo "registry: $want"
echo "layout:   $got"
[ "$want" = "$got" ] || { echo "error: digests differ" >&2; exit 1; }

step "archway doctor: what this host can run"
"$archway" doctor || true

step "archway build examples/hello-multiarch for linux/amd64,linux/arm64 (RUN on arm64 via qemu)"
"$archway" build examples/hello-multiarch --platform linux/amd64,linux/arm64 \
    --build-arg "BASE=$reg/demo/busybox:1.35" -t "$reg/demo/hello:1.0" --push \
    --cache-dir "$work/build-cache"

step "run it: archway run --platform linux/arm64 (then amd64)"
for arch in arm64 amd64; do
    "$archway" run --platform "linux/$arch" --cache-dir "$work/build-cache" "$reg/demo/hello:1.0" whoami
    "$archway" run --platform "linux/$arch" --cache-dir "$work/build-cache" "$reg/demo/hello:1.0" cat /srv/www/build.txt
done

step "the application's own pipeline, on this machine: archway pipeline run (no server)"
# examples/hello-multiarch/.gitlab-ci.yml tests the image inside itself on each architecture
# (the arm64 job on a qemu-emulated arm64 runner), then serves its page. As a user would, from
# a git checkout of the application; the coordinator and registry state go to .archway/.
cp -r examples/hello-multiarch "$work/app"
git -C "$work/app" init -q -b main
git -C "$work/app" add -A
git -C "$work/app" -c user.email=demo@example.com -c user.name=demo commit -qm "hello-multiarch"
(cd "$work/app" && "$archway" pipeline run --project demo/hello --var "APP_IMAGE=$reg/demo/hello:1.0")

step "a peer reads the application image: skopeo inspect --raw (an OCI index of two images)"
skopeo inspect --tls-verify=false --raw "docker://$reg/demo/hello:1.0"; echo

step "the same build on an empty cache gives the same digest (reproducible)"
first=$("$archway" build examples/hello-multiarch --platform linux/amd64,linux/arm64 -q \
    --build-arg "BASE=$reg/demo/busybox:1.35" --cache-dir "$work/build-cache")
second=$("$archway" build examples/hello-multiarch --platform linux/amd64,linux/arm64 -q \
    --build-arg "BASE=$reg/demo/busybox:1.35" --cache-dir "$work/clean-cache")
echo "cached: $first"
echo "clean:  $second"
[ "$first" = "$second" ] || { echo "error: digests differ" >&2; exit 1; }

step "what garbage collection would remove (nothing: everything is reachable)"
"$archway" registry gc --root "$work/registry" --dry-run

step "done: a two-platform base imported, an application built on it for both platforms, published, run and read back with Archway alone"

#!/usr/bin/env bash
# Builds Archway's release: static `archway` binaries for linux/amd64 and linux/arm64 (musl),
# their SHA-256 checksums, and optionally Archway's own two-platform image.
#
#   scripts/release.sh                  binaries and SHA256SUMS in dist/
#   scripts/release.sh --image REF      ...then `archway build` the image for both platforms
#                                       from Dockerfile.release and push it to REF as one index
#   scripts/release.sh --check          ...then run the arm64 binary through qemu-user
#                                       (version, a registry round trip)
#
# Reproducible: the same source gives the same bytes. Builds use `--locked`, a dedicated
# `dist` profile (no debug info, symbols stripped), paths remapped to fixed prefixes
# (/archway for the source, /cargo for the registry, /target for the build directory) so
# where the checkout lives does not reach the binary, and SOURCE_DATE_EPOCH from the last
# commit. Check it by running this twice from two clones and comparing dist/SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

image=""
check=false
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image="${2:?--image needs a reference, e.g. localhost:5000/archway:0.1.0}"; shift 2 ;;
        --check) check=true; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument '$1' (see scripts/release.sh --help)" >&2; exit 2 ;;
    esac
done

require_rust
# musl-gcc for the amd64 C dependencies (SQLite, aws-lc), the aarch64 cross compiler and
# linker for arm64; rustup provides the Rust standard library for both musl targets.
ensure_packages musl-tools gcc-aarch64-linux-gnu
if command -v rustup >/dev/null; then
    rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl >/dev/null
fi

root=$(pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export RUSTFLAGS="--remap-path-prefix=$root=/archway --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_dir=/target -C target-feature=+crt-static"
export CC_x86_64_unknown_linux_musl=musl-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc

version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="archway-cli"))')
mkdir -p dist
rm -f dist/SHA256SUMS
for pair in amd64:x86_64-unknown-linux-musl arm64:aarch64-unknown-linux-musl; do
    arch=${pair%%:*}; triple=${pair#*:}
    step "building archway $version for linux/$arch ($triple)"
    cargo build --locked --profile dist --target "$triple" -p archway-cli --bin archway
    out="dist/archway-$version-linux-$arch"
    cp "$target_dir/$triple/dist/archway" "$out"
    mkdir -p "dist/linux/$arch"
    cp "$out" "dist/linux/$arch/archway"
done
(cd dist && sha256sum "archway-$version-linux-amd64" "archway-$version-linux-arm64" > SHA256SUMS)
step "dist/SHA256SUMS"
cat dist/SHA256SUMS

if $check; then
    ensure_binfmt
    arm=dist/linux/arm64/archway
    step "the arm64 binary under qemu-user: version"
    "$arm" --version
    step "the arm64 binary under qemu-user: a registry round trip"
    scratch=$(mktemp -d)
    trap 'kill "$reg_pid" 2>/dev/null || true; rm -rf "$scratch"' EXIT
    "$arm" registry serve --addr 127.0.0.1:0 --root "$scratch/reg" >"$scratch/log" 2>&1 &
    reg_pid=$!
    for _ in $(seq 1 200); do grep -q 'listening on' "$scratch/log" && break; sleep 0.1; done
    addr=$(grep -o 'listening on [^ ]*' "$scratch/log" | head -1 | awk '{print $3}' | sed 's,^http://,,')
    [ -n "$addr" ] || { cat "$scratch/log"; echo "error: the arm64 registry did not start" >&2; exit 1; }
    "$arm" image copy --all "oci:shared-fixture:1.35" "$addr/smoke/busybox:1.35" 2>/dev/null \
        || "$arm" image copy --all "oci:$root/../shared/fixtures/busybox-oci:1.35" "$addr/smoke/busybox:1.35"
    "$arm" manifest inspect "$addr/smoke/busybox:1.35" >/dev/null
    echo "ok: pushed and read back through the arm64 registry at $addr"
fi

if [ -n "$image" ]; then
    step "building Archway's image for linux/amd64 and linux/arm64 with archway build"
    host_archway="dist/linux/amd64/archway"
    "$host_archway" build --platform linux/amd64,linux/arm64 -f Dockerfile.release -t "$image" --push dist
fi

#!/usr/bin/env bash
# Builds Archway's release: static `archway` binaries for linux/amd64 and linux/arm64 (musl),
# their SHA-256 checksums, and optionally Archway's own two-platform image.
#
#   scripts/release.sh                  binaries and SHA256SUMS in dist/
#   scripts/release.sh --image REF      ...then `archway build` the image for both platforms
#                                       from Dockerfile.release and push it to REF as one index
#   scripts/release.sh --check          ...then run the arm64 binary through qemu-user
#                                       (version, a registry round trip) and build and run
#                                       the image from them (scripts/image-smoke.sh)
#
# Meant to be reproducible: the same source gives the same bytes. Builds use `--locked`, a dedicated
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
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1' (see scripts/release.sh --help)" >&2; exit 2 ;;
    esac
done

require_rust
# musl-gcc for the amd64 C dependencies (SQLite, aws-lc); for arm64 see setup_aarch64_musl
# in scripts/lib.sh. rustup provides the Rust standard library for both musl targets.
ensure_packages musl-tools
if command -v rustup >/dev/null; then
    rustup target add x86_64-unknown-linux-musl >/dev/null
fi
setup_aarch64_musl

root=$(pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export RUSTFLAGS="--remap-path-prefix=$root=/archway --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_dir=/target -C target-feature=+crt-static"
export CC_x86_64_unknown_linux_musl=musl-gcc

version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="archway-cli"))')
mkdir -p dist
rm -f dist/SHA256SUMS
for pair in amd64:x86_64-unknown-linux-musl arm64:aarch64-unknown-linux-musl; do
    arch=${pair%%:*}; triple=${pair#*:}
    step "building archway $version for linux/$arch ($triple)"
    cargo build --locked --profile dist --target "$triple" -p archway-cli --bin archway
    out="dist/archway-$version-linux-$arch"
    mkdir -p "dist/linux/$arch"
    # Replaced by rename, not overwritten: a running copy (a registry started from dist/)
    # keeps its file.
    for f in "$out" "dist/linux/$arch/archway"; do
        cp "$target_dir/$triple/dist/archway" "$f.tmp"
        mv -f "$f.tmp" "$f"
    done
done
(cd dist && sha256sum "archway-$version-linux-amd64" "archway-$version-linux-arm64" > SHA256SUMS)
step "dist/SHA256SUMS"
cat dist/SHA256SUMS

if $check; then
    ensure_binfmt
    step "the arm64 binary under qemu-user: version and a registry round trip"
    scripts/smoke.sh dist/linux/arm64/archway linux/arm64
    step "Archway's image from these binaries: both platforms in one index, each run"
    scripts/image-smoke.sh dist/linux/amd64/archway dist
fi

if [ -n "$image" ]; then
    step "building Archway's image for linux/amd64 and linux/arm64 with archway build"
    host_archway="dist/linux/amd64/archway"
    "$host_archway" build --platform linux/amd64,linux/arm64 -f Dockerfile.release -t "$image" --push dist
fi

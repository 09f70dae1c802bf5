#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs formatting, lints and
# every test (unit, integration against real processes on loopback, interop with real clients).
#
# Needs: Debian 12 as root (or with sudo) for the interop clients, and Rust >= 1.95 (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

require_rust
# Interop peers the integration tests drive: skopeo, podman, buildah, umoci, docker CLI +
# engine (dockerd), CNCF distribution (docker-registry) for benchmarks. The build sandbox needs
# an OCI runtime (runc; crun where cgroups are unified) and util-linux's unshare/setpriv. The
# garbage-collection test on S3 sets its S3 server's clock back with libfaketime.
ensure_packages skopeo podman buildah umoci docker.io docker-registry crun runc uidmap apache2-utils util-linux git libfaketime
# arm64 RUN steps and `archway run --platform linux/arm64` go through qemu-user.
ensure_binfmt
# The rootless build test runs as `nobody` with a range of subordinate ids.
ensure_subids nobody
# The coordinator's tests run on SQLite and on PostgreSQL: a throwaway cluster for them.
start_test_postgres
# The registry's tests run on the filesystem and on S3: a throwaway S3 server for them.
start_test_s3

# Dependency checks: licences, banned duplicates and sources (deny.toml), unused dependencies.
ensure_cargo_tool cargo-deny
ensure_cargo_tool cargo-machete

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo deny (licences, bans, sources; advisories need the RustSec database, see deny.toml)"
cargo deny --locked check licenses bans sources
step "cargo machete (unused dependencies)"
cargo machete
step "cargo test (unit, integration, interop)"
# Tests that cannot run here say so in this file (see tests/it/support.rs `skip`); a skip is
# reported below, and fails the run in CI, where scripts/test.sh installed everything.
ARCHWAY_SKIP_LOG="$(mktemp)"
export ARCHWAY_SKIP_LOG
cargo test --workspace --locked
report_skips "$ARCHWAY_SKIP_LOG"

# Archway on arm64: the same code cross-built for aarch64 (static, musl, as the release is),
# its unit tests and a smoke test of the binary, run here through qemu-user (binfmt).
step "arm64: cross-built unit tests and a smoke test of the arm64 binary under qemu-user"
setup_aarch64_musl
export RUSTFLAGS="-C target-feature=+crt-static"
cargo test --locked --target aarch64-unknown-linux-musl \
    -p archway-oci -p archway-pipeline -p archway-attest -p archway-devfile --lib
cargo build --locked --target aarch64-unknown-linux-musl -p archway-cli --bin archway
scripts/smoke.sh target/aarch64-unknown-linux-musl/debug/archway linux/arm64
# Archway's own image, built by Archway from the two static binaries (Dockerfile.release).
step "Archway's image for linux/amd64 and linux/arm64, built by archway build, each platform run"
ensure_packages musl-tools
if command -v rustup >/dev/null; then
    rustup target add x86_64-unknown-linux-musl >/dev/null
fi
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --target x86_64-unknown-linux-musl -p archway-cli --bin archway
image_dist=$(mktemp -d)
mkdir -p "$image_dist/linux/amd64" "$image_dist/linux/arm64"
cp target/x86_64-unknown-linux-musl/debug/archway "$image_dist/linux/amd64/"
cp target/aarch64-unknown-linux-musl/debug/archway "$image_dist/linux/arm64/"
scripts/image-smoke.sh target/debug/archway "$image_dist"
rm -rf "$image_dist"
step "all checks passed"

# Shared helpers for the project's scripts (sourced, not run).

step() { printf '\n==> %s\n' "$*"; }

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

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

# Helpers the deploy/check-* scripts share; sourced from the repository's root.

say() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Debian packages, without their recommendations. Another install may hold dpkg's lock for a
# few minutes: wait for it, and try again.
apt_install() {
    local attempt
    for attempt in 1 2 3; do
        if as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                --no-install-recommends "$@" >/dev/null; then
            return 0
        fi
        echo "apt-get install $* failed (attempt $attempt); retrying" >&2
        sleep 20
    done
    return 1
}

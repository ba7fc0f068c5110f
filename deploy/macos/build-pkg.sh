#!/bin/bash
# Builds Atlas-Agent-<version>.pkg for MDM distribution (macOS only: needs pkgbuild).
#
#   deploy/macos/build-pkg.sh [--version X] [--out DIR] [--sign "Developer ID Installer: ..."]
#
# The payload installs into /Library/Atlas/installer/: install.sh, uninstall.sh, the LaunchDaemon plist
# and wheels/ (atlas-contract and atlas-agent, built with `pip wheel --no-deps`). The postinstall script
# reads the fleet server and keys from the MDM configuration profile (domain com.atlas.agent, i.e.
# "/Library/Managed Preferences/com.atlas.agent.plist") and runs install.sh --wheels; the agent's
# dependencies (httpx, pydantic, cryptography, psutil, speedtest-cli) come from the package index at
# install time. See README.md.
#
# Environment: PYTHON (python >= 3.11 used to build the wheels; default python3).

set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
IDENTIFIER=com.atlas.agent

say() { printf 'atlas build-pkg: %s\n' "$*"; }
die() {
    printf 'atlas build-pkg: error: %s\n' "$*" >&2
    exit 1
}

version=""
out="$PWD"
sign=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) [[ $# -ge 2 ]] || die "--version needs a value"; version="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; out="$2"; shift 2 ;;
        --sign) [[ $# -ge 2 ]] || die "--sign needs a value"; sign="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

command -v pkgbuild >/dev/null 2>&1 ||
    die "pkgbuild not found: building the .pkg needs macOS with the Xcode command line tools (xcode-select --install)"

if [[ -z "$version" ]]; then
    version="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$REPO/agent/pyproject.toml")" || die "could not read the version from agent/pyproject.toml (use --version X)"
fi
[[ "$version" =~ ^[0-9A-Za-z.+-]+$ ]] || die "--version $version: use digits, letters, dots, + and -"

work="$(mktemp -d "${TMPDIR:-/tmp}/atlas-pkg.XXXXXX")"
trap 'rm -rf "$work"' EXIT
payload="$work/root/Library/Atlas/installer"
mkdir -p "$payload/wheels" "$work/scripts"

# Build from copies: setuptools writes build/ and *.egg-info next to the sources otherwise.
for pkg in contract agent; do
    mkdir -p "$work/src/$pkg"
    (cd "$REPO/$pkg" && tar --exclude build --exclude '*.egg-info' --exclude __pycache__ -cf - .) |
        (cd "$work/src/$pkg" && tar -xf -)
done
say "building wheels of contract and agent with $PYTHON"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$payload/wheels" \
    "$work/src/contract" "$work/src/agent" || die "pip wheel failed"

cp "$HERE/install.sh" "$HERE/uninstall.sh" "$HERE/com.atlas.agent.plist" "$payload/"
chmod 0755 "$payload/install.sh" "$payload/uninstall.sh"
chmod 0644 "$payload/com.atlas.agent.plist" "$payload/wheels/"*.whl

cat >"$work/scripts/postinstall" <<'POSTINSTALL'
#!/bin/bash
# Atlas agent pkg postinstall: configuration from the MDM profile (domain com.atlas.agent), then install.sh.
# Output goes to /var/log/install.log. Keys are handed over in the environment, not on a command line.
set -euo pipefail
target="${3:-/}"
[[ "$target" == / ]] || { echo "atlas postinstall: install on the boot volume only (target $target)" >&2; exit 1; }
installer_dir=/Library/Atlas/installer
managed="/Library/Managed Preferences/com.atlas.agent"

read_pref() { defaults read "$managed" "$1" 2>/dev/null || true; }

args=(--wheels "$installer_dir/wheels")
if [[ -f "$managed.plist" ]]; then
    echo "atlas postinstall: configuration from $managed.plist (MDM profile)"
    fleet_server="$(read_pref FleetServer)"
    ATLAS_API_KEY="$(read_pref APIKey)"
    ATLAS_ENCRYPTION_KEY="$(read_pref EncryptionKey)"
    export ATLAS_API_KEY ATLAS_ENCRYPTION_KEY
    machine_id="$(read_pref MachineID)"
    ca_bundle="$(read_pref CABundle)"
    [[ -n "$fleet_server" ]] && args+=(--fleet-server "$fleet_server")
    [[ -n "$machine_id" ]] && args+=(--machine-id "$machine_id")
    [[ -n "$ca_bundle" ]] && args+=(--ca-bundle "$ca_bundle")
    [[ "$(read_pref AllowPlaintext)" == 1 ]] && args+=(--allow-plaintext)
    # The profile is the source of truth: rewrite agent.yaml on every install and upgrade.
    args+=(--force)
elif [[ -f "/Library/Application Support/Atlas/agent.yaml" ]]; then
    echo "atlas postinstall: no MDM profile; keeping the existing agent.yaml (upgrade)"
else
    echo "atlas postinstall: no configuration: deploy the com.atlas.agent configuration profile" \
        "(FleetServer, APIKey, EncryptionKey) before this package" >&2
    exit 1
fi
PYTHON="${PYTHON:-/usr/bin/python3}"
for candidate in /Library/Frameworks/Python.framework/Versions/Current/bin/python3 /usr/local/bin/python3 \
    /opt/homebrew/bin/python3; do
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && [[ -x "$candidate" ]]; then
        PYTHON="$candidate"
    fi
done
export PYTHON
exec "$installer_dir/install.sh" "${args[@]}"
POSTINSTALL
chmod 0755 "$work/scripts/postinstall"

mkdir -p "$out"
pkg="$out/Atlas-Agent-$version.pkg"
sign_args=()
[[ -n "$sign" ]] && sign_args=(--sign "$sign")
say "pkgbuild $pkg"
pkgbuild --root "$work/root" --scripts "$work/scripts" --identifier "$IDENTIFIER" --version "$version" \
    --install-location / --ownership recommended ${sign_args[@]+"${sign_args[@]}"} "$pkg" ||
    die "pkgbuild failed"
say "built $pkg ($(ls "$work/root/Library/Atlas/installer/wheels" | tr '\n' ' '))"

#!/bin/bash
# Builds the Atlas agent packages for MDM distribution (macOS only: needs pkgbuild and productbuild).
#
#   deploy/macos/build-pkg.sh [--version X] [--out DIR] [--sign IDENTITY]
#   deploy/macos/build-pkg.sh --lock-runtime      # pin the runtime's SHA-256 in runtime.lock (any OS)
#
# Makes, in --out (default: the current folder):
#   Atlas-Agent-<version>.pkg            distribution pkg for Apple silicon and Intel Macs (macOS 12+)
#   Atlas-Agent-Uninstall-<version>.pkg  removes the agent, its keys, data and logs (no payload)
#
# The pkg carries everything and installs offline: a Python runtime per architecture (python-build-standalone,
# pinned with its SHA-256 in runtime.lock) and the agent's wheels per architecture, fetched here with
# `pip download --only-binary=:all: --platform macosx_12_0_<arch>` and pinned by constraints.txt
# (wheelset.py; wheel-overrides.txt for an architecture a pinned version has no wheel for). The payload is
# /Library/Atlas/installer/; its postinstall runs install.sh --runtime ... --wheels ... with --no-index.
#
# Environment:
#   PYTHON          Python >= 3.11 with pip, to build and download the wheels (default python3)
#   SIGN_IDENTITY   "Developer ID Installer: Name (TEAMID)": productsign both pkgs (--sign sets it too)
#   NOTARY_PROFILE  notarytool keychain profile (xcrun notarytool store-credentials NAME ...): notarize
#                   and staple both pkgs; needs SIGN_IDENTITY
#   RUNTIME_CACHE   folder that keeps the downloaded runtimes between builds
#                   (default ~/Library/Caches/atlas-pkg)
#   RUNTIME_LOCK    another runtime.lock (tests)

set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
IDENTIFIER=com.atlas.agent
LOCK="${RUNTIME_LOCK:-$HERE/runtime.lock}"
RELEASES=https://github.com/astral-sh/python-build-standalone/releases/download
MACOS_MIN=12_0
SIGN_IDENTITY="${SIGN_IDENTITY:-}"
NOTARY_PROFILE="${NOTARY_PROFILE:-}"

say() { printf 'atlas build-pkg: %s\n' "$*"; }
die() {
    printf 'atlas build-pkg: error: %s\n' "$*" >&2
    exit 1
}

version=""
out="$PWD"
lock_runtime=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) [[ $# -ge 2 ]] || die "--version needs a value"; version="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; out="$2"; shift 2 ;;
        --sign) [[ $# -ge 2 ]] || die "--sign needs a value"; SIGN_IDENTITY="$2"; shift 2 ;;
        --lock-runtime) lock_runtime=true; shift ;;
        -h | --help) sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

if ! $lock_runtime; then
    for tool in pkgbuild productbuild; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "$tool not found: building the .pkg needs macOS with the Xcode command line tools (xcode-select --install)"
    done
fi

# runtime.lock: RELEASE, VERSION, then "ARCH TRIPLE SHA256" lines.
lock_value() { awk -v key="$1" '$1 == key { print $2 }' "$LOCK"; }
release="$(lock_value RELEASE)"
runtime_version="$(lock_value VERSION)"
[[ "$release" =~ ^[0-9]{8}$ && "$runtime_version" =~ ^3\.[0-9]+\.[0-9]+$ ]] ||
    die "$LOCK: RELEASE (yyyymmdd) and VERSION (3.x.y) are required"
asset() { printf 'cpython-%s+%s-%s-install_only_stripped.tar.gz' "$runtime_version" "$release" "$1"; }
triple() { awk -v arch="$1" '$1 == arch { print $2 }' "$LOCK"; }
locked_sha() { awk -v arch="$1" '$1 == arch { print $3 }' "$LOCK"; }
ARCHES=(arm64 x86_64)

if $lock_runtime; then
    command -v curl >/dev/null 2>&1 || die "curl not found"
    sums="$(curl -fsSL --retry 3 "$RELEASES/$release/SHA256SUMS")" ||
        die "could not download $RELEASES/$release/SHA256SUMS"
    tmp="$(mktemp "$LOCK.XXXXXX")"
    cp "$LOCK" "$tmp"
    for arch in "${ARCHES[@]}"; do
        name="$(asset "$(triple "$arch")")"
        sha="$(awk -v name="$name" '$2 == name { print $1 }' <<<"$sums")"
        [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || { rm -f "$tmp"; die "$name is not in release $release"; }
        awk -v arch="$arch" -v sha="$sha" 'BEGIN { OFS = "   " } $1 == arch { $3 = sha } { print }' "$tmp" >"$tmp.new"
        mv "$tmp.new" "$tmp"
        say "$arch: $name $sha"
    done
    mv "$tmp" "$LOCK"
    say "wrote $LOCK: review the diff and commit it"
    exit 0
fi

command -v curl >/dev/null 2>&1 || die "curl not found"
command -v shasum >/dev/null 2>&1 || die "shasum not found"
if [[ -n "$SIGN_IDENTITY" ]]; then
    command -v productsign >/dev/null 2>&1 || die "SIGN_IDENTITY is set but productsign is not found"
fi
if [[ -n "$NOTARY_PROFILE" ]]; then
    [[ -n "$SIGN_IDENTITY" ]] || die "NOTARY_PROFILE needs SIGN_IDENTITY: Apple notarizes signed packages only"
    command -v xcrun >/dev/null 2>&1 || die "NOTARY_PROFILE is set but xcrun is not found"
fi
for arch in "${ARCHES[@]}"; do
    [[ -n "$(triple "$arch")" ]] || die "$LOCK has no line for $arch"
    [[ "$(locked_sha "$arch")" =~ ^[0-9a-f]{64}$ ]] ||
        die "$LOCK: no SHA-256 for $arch: run $0 --lock-runtime on a machine that reaches GitHub, review, commit"
done
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "PYTHON=$PYTHON must be Python 3.11+ with pip (it reads pyproject.toml and downloads the wheels)"

if [[ -z "$version" ]]; then
    version="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$REPO/agent/pyproject.toml")" || die "could not read the version from agent/pyproject.toml (use --version X)"
fi
[[ "$version" =~ ^[0-9A-Za-z.+-]+$ ]] || die "--version $version: use digits, letters, dots, + and -"

work="$(mktemp -d "${TMPDIR:-/tmp}/atlas-pkg.XXXXXX")"
trap 'rm -rf "$work"' EXIT
payload="$work/root/Library/Atlas/installer"
mkdir -p "$payload/runtime" "$work/own" "$work/scripts" "$work/uninstall-scripts" "$work/products"

# --- the agent's own wheels ------------------------------------------------------------------------
# Built from copies: setuptools writes build/ and *.egg-info next to the sources otherwise.
for pkg in contract agent; do
    mkdir -p "$work/src/$pkg"
    (cd "$REPO/$pkg" && tar --exclude build --exclude '*.egg-info' --exclude __pycache__ -cf - .) |
        (cd "$work/src/$pkg" && tar -xf -)
done
say "building the atlas-fleet-contract and atlas-fleet-agent wheels with $PYTHON"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/own" \
    "$work/src/contract" "$work/src/agent" || die "pip wheel failed"

# --- per architecture: the runtime and the pinned dependency wheels ----------------------------------
cache="${RUNTIME_CACHE:-$HOME/Library/Caches/atlas-pkg}"
mkdir -p "$cache"
"$PYTHON" "$HERE/wheelset.py" requirements >"$work/requirements.txt"
python_minor="${runtime_version%.*}"
for arch in "${ARCHES[@]}"; do
    name="$(asset "$(triple "$arch")")"
    sha="$(locked_sha "$arch")"
    if [[ ! -f "$cache/$name" ]] || [[ "$(shasum -a 256 "$cache/$name" | awk '{ print $1 }')" != "$sha" ]]; then
        say "downloading $name"
        curl -fsSL --retry 3 -o "$cache/$name.part" "$RELEASES/$release/$name" || die "could not download $name"
        mv "$cache/$name.part" "$cache/$name"
    fi
    got="$(shasum -a 256 "$cache/$name" | awk '{ print $1 }')"
    [[ "$got" == "$sha" ]] || die "$name: SHA-256 $got, but $LOCK pins $sha"
    cp "$cache/$name" "$payload/runtime/python-$arch.tar.gz"

    wheels="$payload/wheels/$arch"
    mkdir -p "$wheels"
    "$PYTHON" "$HERE/wheelset.py" constraints "$arch" >"$work/constraints-$arch.txt"
    say "$arch: downloading the pinned wheels for CPython $python_minor, macOS ${MACOS_MIN/_/.}+"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --platform "macosx_${MACOS_MIN}_$arch" --python-version "$python_minor" --implementation cp \
        --dest "$wheels" -r "$work/requirements.txt" -c "$work/constraints-$arch.txt" ||
        die "pip download for $arch failed: a pinned version without a wheel for $arch? see wheel-overrides.txt"
    cp "$work/own/"*.whl "$wheels/"
    "$PYTHON" "$HERE/wheelset.py" check "$arch" "$wheels" || die "$arch: the wheels do not match the pins"
done

cp "$HERE/install.sh" "$HERE/uninstall.sh" "$HERE/$IDENTIFIER.plist" "$HERE/$IDENTIFIER.newsyslog.conf" "$payload/"
chmod 0755 "$payload/install.sh" "$payload/uninstall.sh"
find "$payload" -type f ! -name '*.sh' -exec chmod 0644 {} +
cp "$HERE/postinstall" "$work/scripts/postinstall"
cp "$HERE/uninstall-postinstall" "$work/uninstall-scripts/postinstall"
cp "$HERE/uninstall.sh" "$work/uninstall-scripts/uninstall.sh"
chmod 0755 "$work/scripts/postinstall" "$work/uninstall-scripts/"*

# --- the packages ------------------------------------------------------------------------------------
say "pkgbuild $IDENTIFIER $version"
pkgbuild --quiet --root "$work/root" --scripts "$work/scripts" --identifier "$IDENTIFIER" --version "$version" \
    --install-location / --ownership recommended "$work/products/$IDENTIFIER.pkg" || die "pkgbuild failed"
sed -e "s/@VERSION@/$version/g" -e "s/@IDENTIFIER@/$IDENTIFIER/g" -e "s/@COMPONENT@/$IDENTIFIER.pkg/g" \
    "$HERE/distribution.xml" >"$work/distribution.xml"
productbuild --quiet --distribution "$work/distribution.xml" --package-path "$work/products" \
    "$work/Atlas-Agent-$version.pkg" || die "productbuild failed"

pkgbuild --quiet --nopayload --scripts "$work/uninstall-scripts" --identifier "$IDENTIFIER.uninstall" \
    --version "$version" "$work/products/$IDENTIFIER.uninstall.pkg" || die "pkgbuild (uninstall) failed"
productbuild --quiet --package "$work/products/$IDENTIFIER.uninstall.pkg" \
    "$work/Atlas-Agent-Uninstall-$version.pkg" || die "productbuild (uninstall) failed"

mkdir -p "$out"
for name in "Atlas-Agent-$version.pkg" "Atlas-Agent-Uninstall-$version.pkg"; do
    if [[ -n "$SIGN_IDENTITY" ]]; then
        say "productsign $name"
        productsign --sign "$SIGN_IDENTITY" --timestamp "$work/$name" "$out/$name" || die "productsign failed"
    else
        cp "$work/$name" "$out/$name"
        say "$name is not signed (set SIGN_IDENTITY): MDM can deploy it, a double-click shows a warning"
    fi
    if [[ -n "$NOTARY_PROFILE" ]]; then
        say "notarizing $name (profile $NOTARY_PROFILE; waits for Apple)"
        xcrun notarytool submit "$out/$name" --keychain-profile "$NOTARY_PROFILE" --wait \
            --output-format json >"$work/notary.json" || die "notarytool submit failed: $(cat "$work/notary.json")"
        status="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("status"))' \
            "$work/notary.json")"
        [[ "$status" == Accepted ]] ||
            die "notarization of $name: $status; details: xcrun notarytool log <id> --keychain-profile $NOTARY_PROFILE" \
                "($(cat "$work/notary.json"))"
        xcrun stapler staple "$out/$name" || die "stapler staple $name failed"
    fi
    say "built $out/$name"
done

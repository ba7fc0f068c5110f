#!/bin/bash
# Installs (or upgrades) the Atlas agent as a launchd daemon on a Mac. Run as root:
#
#   sudo deploy/macos/install.sh --fleet-server https://fleet.example.com \
#        --api-key KEY --encryption-key KEY [--machine-id ID] [--ca-bundle FILE] [--allow-plaintext]
#
# Options:
#   --fleet-server URL     fleet server base URL (https://...)
#   --api-key KEY          API key (or environment variable ATLAS_API_KEY)
#   --encryption-key KEY   AES-256 payload key, base64 (or environment variable ATLAS_ENCRYPTION_KEY)
#   --machine-id ID        override the machine id (default: the Mac's serial number)
#   --ca-bundle FILE       PEM bundle to trust for the fleet server (private CA)
#   --allow-plaintext      allow running without an encryption key (server must accept plaintext)
#   --force                replace an existing agent.yaml (default: keep it)
#   --wheels DIR           install the atlas-fleet-contract and atlas-fleet-agent wheels in DIR and their dependencies
#                          from DIR only, offline (the pkg), instead of the contract/ and agent/ folders of
#                          this repository with dependencies from the package index
#   --runtime FILE         install this Python runtime (a python-build-standalone install_only .tar.gz, as
#                          the pkg ships) into /Library/Atlas/python and build the venv from it
#   --skip-venv            keep the installed virtual environment as is (only config, plist, restart)
#   -h, --help             this help
#
# Environment: PYTHON (python >= 3.11 to build the venv from, without --runtime; default /usr/bin/python3).
# As root, an interpreter that anyone but root (or the admin group) can change is refused: it would run
# their code as root. Homebrew's Python belongs to the user who installed Homebrew.
# ATLAS_ROOT (tests only, default empty) prefixes every path; then root is not required and launchctl
# is given the prefixed plist path.
#
# Keys are never printed. Prefer the ATLAS_API_KEY / ATLAS_ENCRYPTION_KEY environment variables to the
# options on shared machines: command-line arguments are visible to other users in `ps` while this runs.

set -euo pipefail

LABEL=com.atlas.agent
ROOT="${ATLAS_ROOT:-}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"

PREFIX="$ROOT/Library/Atlas"
VENV="$PREFIX/venv"
RUNTIME="$PREFIX/python"
CONFIG_DIR="$ROOT/Library/Application Support/Atlas"
CONFIG="$CONFIG_DIR/agent.yaml"
LOG_DIR="$ROOT/Library/Logs/Atlas"
DAEMON="$ROOT/Library/LaunchDaemons/$LABEL.plist"
NEWSYSLOG="$ROOT/etc/newsyslog.d/$LABEL.conf"

say() { printf 'atlas install: %s\n' "$*"; }
warn() { printf 'atlas install: warning: %s\n' "$*" >&2; }
die() {
    printf 'atlas install: error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$0"; }

fleet_server=""
api_key="${ATLAS_API_KEY:-}"
encryption_key="${ATLAS_ENCRYPTION_KEY:-}"
machine_id=""
ca_bundle=""
allow_plaintext=false
force=false
wheels=""
runtime=""
skip_venv=false

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --fleet-server) need_value "$@"; fleet_server="$2"; shift 2 ;;
        --api-key) need_value "$@"; api_key="$2"; shift 2 ;;
        --encryption-key) need_value "$@"; encryption_key="$2"; shift 2 ;;
        --machine-id) need_value "$@"; machine_id="$2"; shift 2 ;;
        --ca-bundle) need_value "$@"; ca_bundle="$2"; shift 2 ;;
        --allow-plaintext) allow_plaintext=true; shift ;;
        --force) force=true; shift ;;
        --wheels) need_value "$@"; wheels="$2"; shift 2 ;;
        --runtime) need_value "$@"; runtime="$2"; shift 2 ;;
        --skip-venv) skip_venv=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

# --- preconditions: everything is checked before anything is changed ---------------------------

is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true
if [[ -z "$ROOT" ]]; then
    $is_root || die "must run as root (sudo $0 ...)"
    [[ "$(uname -s)" == Darwin ]] || die "this installs a launchd daemon and needs macOS (ATLAS_ROOT is for tests)"
fi

write_config=true
if [[ -e "$CONFIG" ]] && ! $force; then
    write_config=false
else
    [[ -n "$fleet_server" ]] || die "--fleet-server URL is required (no existing $CONFIG to keep)"
    [[ "$fleet_server" =~ ^https?://[^[:space:]]+$ ]] || die "--fleet-server must be an http(s):// URL"
    [[ "$fleet_server" == https://* ]] || $allow_plaintext ||
        warn "--fleet-server is not https: the API key travels in clear text"
    [[ -n "$api_key" ]] || die "--api-key KEY (or ATLAS_API_KEY) is required"
    if [[ -z "$encryption_key" ]] && ! $allow_plaintext; then
        die "--encryption-key KEY (or ATLAS_ENCRYPTION_KEY) is required: refusing to install an agent that" \
            "would send widget logs unencrypted (pass --allow-plaintext only for a server that accepts plaintext)"
    fi
    if [[ -n "$ca_bundle" ]]; then
        [[ -f "$ca_bundle" ]] || die "--ca-bundle $ca_bundle: no such file"
        ca_bundle="$(cd "$(dirname "$ca_bundle")" && pwd)/$(basename "$ca_bundle")"
    fi
fi

if $skip_venv; then
    [[ -x "$VENV/bin/python" ]] || die "--skip-venv: there is no virtual environment at $VENV yet"
    packages=()
elif [[ -n "$wheels" ]]; then
    [[ -d "$wheels" ]] || die "--wheels $wheels: no such folder"
    shopt -s nullglob
    contract_whl=("$wheels"/atlas_fleet_contract-*.whl)
    agent_whl=("$wheels"/atlas_fleet_agent-*.whl)
    shopt -u nullglob
    [[ ${#contract_whl[@]} -eq 1 && ${#agent_whl[@]} -eq 1 ]] ||
        die "--wheels $wheels must hold exactly one atlas_fleet_contract-*.whl and one atlas_fleet_agent-*.whl"
    packages=("${contract_whl[0]}" "${agent_whl[0]}")
else
    contract_src="$(cd "$HERE/../.." && pwd)/contract"
    agent_src="$(cd "$HERE/../.." && pwd)/agent"
    [[ -f "$contract_src/pyproject.toml" && -f "$agent_src/pyproject.toml" ]] ||
        die "no contract/ and agent/ folders next to $HERE/../.. (use --wheels DIR outside the repository)"
    packages=("$contract_src" "$agent_src")
fi

# stat as "uid gid mode" (mode in octal, with the sticky bit), on macOS and on Linux (tests).
if stat -c %u / >/dev/null 2>&1; then
    owner_mode() { stat -L -c '%u %g %a' "$1"; }
else
    owner_mode() { stat -L -f '%u %g %Mp%Lp' "$1"; }
fi

# The path with every symbolic link resolved, without running anything (realpath is not on every macOS).
resolve() {
    local path="$1" link hops=0
    while [[ -L "$path" ]]; do
        link="$(readlink "$path")"
        [[ "$link" == /* ]] || link="$(dirname "$path")/$link"
        path="$link"
        hops=$((hops + 1))
        [[ $hops -lt 40 ]] || return 1
    done
    printf '%s/%s\n' "$(cd -P "$(dirname "$path")" && pwd)" "$(basename "$path")"
}

# Root may only change it: owned by root, writable by nobody else than root and the wheel or admin group
# (whose members are administrators anyway); world-writable folders only with the sticky bit, above it.
root_only() {
    local path="$1" uid gid mode
    read -r uid gid mode < <(owner_mode "$path") || return 1
    mode=$((8#$mode))
    [[ $uid -eq 0 ]] || return 1
    if ((mode & 8#020)) && [[ $gid -ne 0 && $gid -ne 80 ]]; then return 1; fi
    if ((mode & 8#002)) && ! [[ -d "$path" && $((mode & 8#1000)) -ne 0 && "$path" != "$2" ]]; then return 1; fi
    return 0
}

# Refuses (as root) an interpreter that another user could replace: the file, every folder above it and,
# outside the system folders, its whole installation (the standard library runs as root too).
trusted_python() {
    local exe dir prefix bad
    exe="$(resolve "$1")" || die "PYTHON=$1: too many symbolic links"
    dir="$exe"
    while :; do
        root_only "$dir" "$exe" ||
            die "PYTHON=$1 ($exe): $dir can be changed by a user other than root; refusing to run it as root" \
                "(Homebrew's Python belongs to the user who installed Homebrew). Use the pkg, which ships its own" \
                "runtime, or a root-owned Python such as python.org's"
        [[ "$dir" != / ]] || break
        dir="$(dirname "$dir")"
    done
    prefix="$(dirname "$(dirname "$exe")")"
    case "$prefix" in
        /usr | /System/* | /Library/Developer/CommandLineTools/* | /Applications/Xcode*) return 0 ;;
    esac
    bad="$(find "$prefix" \( ! -user 0 -o -perm -0002 -o \( -perm -0020 ! -group 0 ! -group 80 \) \) \
        ! -type l -print -quit 2>/dev/null)"
    [[ -z "$bad" ]] || die "PYTHON=$1: $bad (in its installation $prefix) can be changed by a user other than" \
        "root; refusing to run it as root"
}

if [[ -n "$runtime" ]]; then
    $skip_venv && die "--runtime and --skip-venv do not go together"
    [[ -f "$runtime" ]] || die "--runtime $runtime: no such file"
elif ! $skip_venv; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found; install Python 3.11+ and pass PYTHON=/path/to/python3"
    # From here on the resolved file: a symbolic link that a user can re-point is never run.
    PYTHON="$(resolve "$(command -v "$PYTHON")")" || die "PYTHON=$PYTHON: too many symbolic links"
    if $is_root; then trusted_python "$PYTHON"; fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unusable);" \
            "the agent needs Python 3.11+: use the pkg (it ships its own), or PYTHON=/path/to/python3.11 $0 ..."
fi

# Owner root, group wheel (gid 0 on macOS). In test mode without root, ownership is left alone.
# own -R PATH: the whole tree.
own() {
    local recursive=()
    if [[ "$1" == -R ]]; then recursive=(-R); shift; fi
    if $is_root; then
        if ! chown ${recursive[@]+"${recursive[@]}"} 0:0 "$@"; then
            [[ -n "$ROOT" ]] || die "could not chown $* to root:wheel"
            warn "could not chown $* to root:wheel (test mode)"
        fi
    else
        warn "not root (test mode): $* left owned by $(id -un)"
    fi
}

# YAML double-quoted scalar; control characters (newlines included) are refused.
yaml_str() {
    local v="$1"
    [[ "$v" != *[[:cntrl:]]* ]] || die "a configuration value contains a control character"
    v="${v//\\/\\\\}"
    v="${v//\"/\\\"}"
    printf '"%s"' "$v"
}

# --- 1. runtime and virtual environment -------------------------------------------------------------

# Unpacks the runtime next to the current one, checks it, then swaps the two folders.
install_runtime() {
    local new="$RUNTIME.new" old="$RUNTIME.old"
    rm -rf "$new" "$old"
    mkdir -p "$new"
    tar -xzf "$runtime" -C "$new" --strip-components 1 || die "--runtime $runtime: not a readable .tar.gz"
    [[ -x "$new/bin/python3" ]] || die "--runtime $runtime: no python/bin/python3 inside"
    chmod -R go-w "$new"
    own -R "$new"
    "$new/bin/python3" -c 'import sys, ssl, sqlite3, venv; sys.exit(sys.version_info < (3, 11))' ||
        die "--runtime $runtime: the Python inside does not run, lacks ssl/sqlite3/venv or is older than 3.11"
    if [[ -e "$RUNTIME" ]]; then mv "$RUNTIME" "$old"; fi
    mv "$new" "$RUNTIME"
    rm -rf "$old"
    say "runtime: Python $("$RUNTIME/bin/python3" -c 'import platform; print(platform.python_version())') in $RUNTIME"
}

# The venv's base interpreter and version, to rebuild the venv when either changes.
base_of() { "$1" -c 'import sys; print(sys.base_prefix, *sys.version_info[:2])' 2>/dev/null; }

if $skip_venv; then
    say "virtual environment: kept as is at $VENV (--skip-venv)"
else
    mkdir -p "$PREFIX"
    chmod 0755 "$PREFIX"
    own "$PREFIX"
    if [[ -n "$runtime" ]]; then
        install_runtime
        PYTHON="$RUNTIME/bin/python3"
        if $is_root; then trusted_python "$PYTHON"; fi
    fi
    if [[ -x "$VENV/bin/python" ]] && [[ "$(base_of "$VENV/bin/python")" == "$(base_of "$PYTHON")" ]]; then
        say "virtual environment: upgrading $VENV"
        # Earlier versions installed the agent as the distributions atlas-agent and atlas-contract; atlas-agent
        # is an unrelated project's name on PyPI (`pip install -U atlas-agent` would fetch theirs): both go first.
        for old in atlas-agent atlas-contract; do
            if "$VENV/bin/python" -m pip show --quiet --disable-pip-version-check "$old" >/dev/null 2>&1; then
                say "virtual environment: removing the old distribution $old"
                "$VENV/bin/python" -m pip uninstall --quiet --disable-pip-version-check --yes "$old" ||
                    die "pip could not remove the old distribution $old from $VENV"
            fi
        done
        if [[ -n "$wheels" ]]; then
            # pip skips a wheel whose version is already installed (builds share version numbers): force ours,
            # the install below then brings in any missing dependency. Folders are always reinstalled.
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --force-reinstall \
                --no-deps "${packages[@]}" || die "pip could not reinstall the agent wheels into $VENV"
        fi
    else
        rm -rf "$VENV"
        say "virtual environment: creating $VENV with $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
        "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed"
    fi
    if [[ -n "$wheels" ]]; then
        say "installing atlas-fleet-contract and atlas-fleet-agent from $wheels (offline: dependencies from $wheels only)"
        find_links=(--no-index --find-links "$wheels")
    else
        say "installing atlas-fleet-contract and atlas-fleet-agent from ${packages[0]%/contract} (dependencies from the package index)"
        find_links=()
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${find_links[@]+"${find_links[@]}"} \
        "${packages[@]}" || die "pip install into $VENV failed (${wheels:+a wheel missing from $wheels?}${wheels:-network or package index reachable?})"
    "$VENV/bin/python" -c 'import atlas.agent, atlas.contract' ||
        die "the agent does not import in $VENV after installing"
    say "virtual environment: atlas.agent $("$VENV/bin/python" -c 'import atlas.agent; print(atlas.agent.__version__)') ready"
    [[ -x "$VENV/bin/atlas-agent" ]] || warn "$VENV/bin/atlas-agent is missing: this agent version has no console script"
fi

# --- 2. configuration -------------------------------------------------------------------------------

mkdir -p "$CONFIG_DIR"
chmod 0700 "$CONFIG_DIR"
own "$CONFIG_DIR"
if $write_config; then
    [[ -e "$CONFIG" ]] && say "configuration: replacing $CONFIG (--force)"
    tmp="$(umask 077 && mktemp "$CONFIG_DIR/.agent.yaml.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    {
        printf '# Atlas agent configuration, written by install.sh on %s. Contains secrets: mode 0600.\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'fleet_server: %s\n' "$(yaml_str "$fleet_server")"
        printf 'api_key: %s\n' "$(yaml_str "$api_key")"
        if [[ -n "$encryption_key" ]]; then printf 'encryption_key: %s\n' "$(yaml_str "$encryption_key")"; fi
        printf 'allow_plaintext: %s\n' "$allow_plaintext"
        if [[ -n "$machine_id" ]]; then printf 'machine_id: %s\n' "$(yaml_str "$machine_id")"; fi
        if [[ -n "$ca_bundle" ]]; then printf 'ca_bundle: %s\n' "$(yaml_str "$ca_bundle")"; fi
    } >"$tmp"
    chmod 0600 "$tmp"
    own "$tmp"
    mv -f "$tmp" "$CONFIG"
    trap - EXIT
    say "configuration: wrote $CONFIG (mode 0600; fleet server $fleet_server; keys not shown)"
    if [[ -z "$encryption_key" ]]; then warn "no encryption key: widget logs will be sent in plaintext"; fi
else
    chmod 0600 "$CONFIG"
    say "configuration: kept existing $CONFIG (pass --force to replace it)"
    if [[ -n "$fleet_server$api_key$encryption_key$machine_id$ca_bundle" ]]; then
        warn "configuration options ignored because the existing configuration was kept"
    fi
fi

# --- 3. logs ----------------------------------------------------------------------------------------

mkdir -p "$LOG_DIR"
chmod 0755 "$LOG_DIR"
own "$LOG_DIR"
mkdir -p "$(dirname "$NEWSYSLOG")"
cp "$HERE/$LABEL.newsyslog.conf" "$NEWSYSLOG.tmp"
chmod 0644 "$NEWSYSLOG.tmp"
own "$NEWSYSLOG.tmp"
mv -f "$NEWSYSLOG.tmp" "$NEWSYSLOG"
say "logs: $LOG_DIR (agent.log, agent.err.log), rotated by newsyslog ($NEWSYSLOG)"

# --- 4. launchd -------------------------------------------------------------------------------------

mkdir -p "$(dirname "$DAEMON")"
cp "$HERE/$LABEL.plist" "$DAEMON.tmp"
chmod 0644 "$DAEMON.tmp"
own "$DAEMON.tmp"
mv -f "$DAEMON.tmp" "$DAEMON"
if command -v plutil >/dev/null 2>&1; then
    plutil -lint -s "$DAEMON" || die "$DAEMON does not parse (plutil -lint)"
fi
say "launchd: installed $DAEMON (mode 0644)"

# Outside tests launchctl gets the real path; under ATLAS_ROOT the prefixed one.
if [[ -z "$ROOT" ]]; then launchd_plist="/Library/LaunchDaemons/$LABEL.plist"; else launchd_plist="$DAEMON"; fi

if out="$(launchctl bootout "system/$LABEL" 2>&1)"; then
    say "launchd: stopped the running agent (bootout system/$LABEL)"
else
    say "launchd: system/$LABEL was not loaded${out:+ ($out)}"
fi
# enable first: bootstrap of a disabled service fails ("Bootstrap failed: 119: Service is disabled"), and a
# service someone disabled once (launchctl disable) would stop the installer. enable only clears that flag.
launchctl enable "system/$LABEL" || die "launchctl enable system/$LABEL failed"
say "launchd: enabled system/$LABEL (starts at boot; KeepAlive restarts it)"
# Right after a bootout launchd can still be tearing the job down ("Bootstrap failed: 5: Input/output
# error"): retry for a few seconds.
for attempt in 1 2 3 4 5; do
    if out="$(launchctl bootstrap system "$launchd_plist" 2>&1)"; then
        break
    fi
    [[ $attempt -lt 5 ]] || die "launchctl bootstrap system $launchd_plist failed: $out"
    sleep 1
done
say "launchd: loaded (bootstrap system $launchd_plist)"

say "done. Status: sudo launchctl print system/$LABEL | head; logs: tail -f $LOG_DIR/agent.log"

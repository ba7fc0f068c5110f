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
#   --wheels DIR           install the atlas-contract and atlas-agent wheels in DIR (the pkg) instead of
#                          the contract/ and agent/ folders of this repository
#   --skip-venv            keep the installed virtual environment as is (only config, plist, restart)
#   -h, --help             this help
#
# Environment: PYTHON (python >= 3.11 to build the venv from; default /usr/bin/python3).
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
CONFIG_DIR="$ROOT/Library/Application Support/Atlas"
CONFIG="$CONFIG_DIR/agent.yaml"
LOG_DIR="$ROOT/Library/Logs/Atlas"
DAEMON="$ROOT/Library/LaunchDaemons/$LABEL.plist"

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
    contract_whl=("$wheels"/atlas_contract-*.whl)
    agent_whl=("$wheels"/atlas_agent-*.whl)
    shopt -u nullglob
    [[ ${#contract_whl[@]} -eq 1 && ${#agent_whl[@]} -eq 1 ]] ||
        die "--wheels $wheels must hold exactly one atlas_contract-*.whl and one atlas_agent-*.whl"
    packages=("${contract_whl[0]}" "${agent_whl[0]}")
else
    contract_src="$(cd "$HERE/../.." && pwd)/contract"
    agent_src="$(cd "$HERE/../.." && pwd)/agent"
    [[ -f "$contract_src/pyproject.toml" && -f "$agent_src/pyproject.toml" ]] ||
        die "no contract/ and agent/ folders next to $HERE/../.. (use --wheels DIR outside the repository)"
    packages=("$contract_src" "$agent_src")
fi

if ! $skip_venv; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found; install Python 3.11+ and pass PYTHON=/path/to/python3"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unusable);" \
            "the agent needs Python 3.11+ (e.g. from python.org): PYTHON=/usr/local/bin/python3.12 $0 ..."
fi

# Owner root, group wheel (gid 0 on macOS). In test mode without root, ownership is left alone.
own() {
    if $is_root; then
        if ! chown 0:0 "$@"; then
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

# --- 1. virtual environment -----------------------------------------------------------------------

if $skip_venv; then
    say "virtual environment: kept as is at $VENV (--skip-venv)"
else
    mkdir -p "$PREFIX"
    chmod 0755 "$PREFIX"
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "virtual environment: upgrading $VENV"
        if [[ -n "$wheels" ]]; then
            # pip skips a wheel whose version is already installed (builds share version numbers): force ours,
            # the install below then brings in any missing dependency. Folders are always reinstalled.
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
                "${packages[@]}" || die "pip could not reinstall the agent wheels into $VENV"
        fi
    else
        rm -rf "$VENV"
        say "virtual environment: creating $VENV with $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
        "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed"
    fi
    if [[ -n "$wheels" ]]; then
        say "installing atlas-contract and atlas-agent from $wheels (dependencies from $wheels or the package index)"
        find_links=(--find-links "$wheels")
    else
        say "installing atlas-contract and atlas-agent from ${packages[0]%/contract} (dependencies from the package index)"
        find_links=()
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ${find_links[@]+"${find_links[@]}"} \
        "${packages[@]}" || die "pip install into $VENV failed (network or package index reachable?)"
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
say "logs: $LOG_DIR (agent.log, agent.err.log)"

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
launchctl enable "system/$LABEL" || die "launchctl enable system/$LABEL failed"
say "launchd: enabled system/$LABEL (starts at boot; KeepAlive restarts it)"

say "done. Status: sudo launchctl print system/$LABEL | head; logs: tail -f $LOG_DIR/agent.log"

#!/bin/bash
# Removes the Atlas agent daemon from a Mac. Run as root:
#
#   sudo deploy/macos/uninstall.sh [--purge]
#
# Stops the daemon (launchctl bootout), removes /Library/LaunchDaemons/com.atlas.agent.plist, the newsyslog
# rule /etc/newsyslog.d/com.atlas.agent.conf, the virtual environment /Library/Atlas/venv, the pkg's Python
# runtime /Library/Atlas/python and the pkg's receipt (pkgutil --forget com.atlas.agent). The configuration and the local store in
# "/Library/Application Support/Atlas" and the logs in /Library/Logs/Atlas are kept (a reinstall picks
# them up) unless --purge is given, which deletes them too; unsent widget logs are then lost.
#
# ATLAS_ROOT (tests only, default empty) prefixes every path; then root is not required.

set -euo pipefail

LABEL=com.atlas.agent
ROOT="${ATLAS_ROOT:-}"
PREFIX="$ROOT/Library/Atlas"
VENV="$PREFIX/venv"
RUNTIME="$PREFIX/python"
DATA_DIR="$ROOT/Library/Application Support/Atlas"
LOG_DIR="$ROOT/Library/Logs/Atlas"
DAEMON="$ROOT/Library/LaunchDaemons/$LABEL.plist"
NEWSYSLOG="$ROOT/etc/newsyslog.d/$LABEL.conf"
PID_FILE="$ROOT/var/run/$LABEL.pid"

say() { printf 'atlas uninstall: %s\n' "$*"; }
die() {
    printf 'atlas uninstall: error: %s\n' "$*" >&2
    exit 1
}

purge=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --purge) purge=true; shift ;;
        -h | --help) sed -n '2,/^$/{s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

if [[ -z "$ROOT" ]]; then
    [[ $(id -u) -eq 0 ]] || die "must run as root (sudo $0 ...)"
fi

if out="$(launchctl bootout "system/$LABEL" 2>&1)"; then
    say "launchd: stopped and unloaded system/$LABEL"
else
    say "launchd: system/$LABEL was not loaded${out:+ ($out)}"
fi

for file in "$DAEMON" "$NEWSYSLOG"; do
    if [[ -e "$file" ]]; then
        rm -f "$file"
        say "removed $file"
    else
        say "no $file to remove"
    fi
done
rm -f "$PID_FILE"

if [[ -e "$VENV" ]]; then
    rm -rf "$VENV"
    say "removed the virtual environment $VENV"
else
    say "no virtual environment at $VENV"
fi
if [[ -e "$RUNTIME" ]]; then
    rm -rf "$RUNTIME" "$RUNTIME.new" "$RUNTIME.old"
    say "removed the Python runtime $RUNTIME"
fi
# install.sh puts nothing else in /Library/Atlas; the pkg adds installer/.
rm -rf "$PREFIX/installer"
rmdir "$PREFIX" 2>/dev/null || true
if [[ -z "$ROOT" ]] && command -v pkgutil >/dev/null 2>&1 && pkgutil --pkg-info "$LABEL" >/dev/null 2>&1; then
    pkgutil --forget "$LABEL" >/dev/null && say "forgot the package receipt $LABEL"
fi

if $purge; then
    rm -rf "$DATA_DIR" "$LOG_DIR"
    say "purged configuration and data ($DATA_DIR) and logs ($LOG_DIR)"
else
    say "kept configuration and data ($DATA_DIR) and logs ($LOG_DIR); --purge deletes them"
fi
say "done"

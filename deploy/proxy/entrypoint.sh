#!/bin/sh
# The TLS proxy's entrypoint: make sure a certificate exists, then run nginx.
#
# If $ATLAS_TLS_DIR (default /etc/atlas/tls) holds tls.crt and tls.key, they are used as they are.
# Otherwise a self-signed certificate for $ATLAS_PUBLIC_HOST (default localhost) is generated there,
# once: it lives in a volume and survives restarts. Agents trust it with `ca_bundle:` in agent.yaml.
#
#   entrypoint.sh                  ensure the certificate, then exec nginx (or the given command)
#   entrypoint.sh --generate-only  ensure the certificate and exit
set -eu

TLS_DIR="${ATLAS_TLS_DIR:-/etc/atlas/tls}"
HOST="${ATLAS_PUBLIC_HOST:-localhost}"
DAYS="${ATLAS_TLS_DAYS:-825}"
CERT="$TLS_DIR/tls.crt"
KEY="$TLS_DIR/tls.key"

say() { echo "atlas-proxy: $*" >&2; }

subject_alt_names() {
    case "$1" in
        *[!0-9.]*) case "$1" in *:*) san="IP:$1" ;; *) san="DNS:$1" ;; esac ;;
        *) san="IP:$1" ;;
    esac
    [ "$1" = localhost ] || san="$san,DNS:localhost"
    echo "$san,IP:127.0.0.1"
}

generate() {
    mkdir -p "$TLS_DIR"
    config=$(mktemp)
    trap 'rm -f "$config"' EXIT
    cat >"$config" <<CONF
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = $HOST
O = Atlas (self-signed)
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $(subject_alt_names "$HOST")
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CONF
    umask 077
    openssl req -x509 -config "$config" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days "$DAYS" -keyout "$KEY.new" -out "$CERT.new"
    rm -f "$config"
    trap - EXIT
    chmod 644 "$CERT.new"
    mv "$KEY.new" "$KEY"
    mv "$CERT.new" "$CERT"
    say "generated a self-signed certificate for $HOST in $CERT (valid $DAYS days)"
    say "agents: copy it to each Mac and point ca_bundle at it; browsers will warn until it is trusted"
}

if [ -s "$CERT" ] && [ -s "$KEY" ]; then
    say "using the certificate in $CERT"
elif [ -e "$CERT" ] || [ -e "$KEY" ]; then
    say "only one of $CERT and $KEY exists: provide both, or remove both to generate a self-signed pair"
    exit 1
else
    generate
fi

if [ "${1:-}" = "--generate-only" ]; then
    exit 0
fi
if [ "$#" -eq 0 ]; then
    set -- nginx -g "daemon off;"
fi
exec "$@"

#!/bin/sh
# The TLS proxy's entrypoint: make sure a current certificate exists, then run nginx.
#
# If $ATLAS_TLS_DIR (default /etc/atlas/tls) holds tls.crt and tls.key that you put there, they are used as
# they are (a warning when they expire within $ATLAS_TLS_RENEW_DAYS). Otherwise this generates, once, a
# local certificate authority (ca.crt, ca.key; 10 years) and a server certificate signed by it for
# $ATLAS_PUBLIC_HOST (tls.crt, tls.key; $ATLAS_TLS_DAYS, at most 366 days, as Apple's TLS rules want), and
# renews that server certificate from the same authority when it expires within $ATLAS_TLS_RENEW_DAYS
# (default 30): at each start, and every $ATLAS_TLS_CHECK_SECONDS (a day) while nginx runs, which then
# reloads. Agents trust ca.crt (`ca_bundle:` in agent.yaml), so a renewal needs nothing on the Macs.
#
#   entrypoint.sh                  ensure the certificate, then exec nginx (or the given command)
#   entrypoint.sh --generate-only  ensure the certificate and exit
set -eu

TLS_DIR="${ATLAS_TLS_DIR:-/etc/atlas/tls}"
HOST="${ATLAS_PUBLIC_HOST:-}"
DAYS="${ATLAS_TLS_DAYS:-366}"
CA_DAYS="${ATLAS_TLS_CA_DAYS:-3650}"
RENEW_DAYS="${ATLAS_TLS_RENEW_DAYS:-30}"
CHECK_SECONDS="${ATLAS_TLS_CHECK_SECONDS:-86400}"
CERT="$TLS_DIR/tls.crt"
KEY="$TLS_DIR/tls.key"
CA_CERT="$TLS_DIR/ca.crt"
CA_KEY="$TLS_DIR/ca.key"

say() { echo "atlas-proxy: $*" >&2; }

subject_alt_names() {
    case "$1" in
        *[!0-9.]*) case "$1" in *:*) san="IP:$1" ;; *) san="DNS:$1" ;; esac ;;
        *) san="IP:$1" ;;
    esac
    [ "$1" = localhost ] || san="$san,DNS:localhost"
    echo "$san,IP:127.0.0.1"
}

# The name the certificate is for: ATLAS_PUBLIC_HOST, or the one in the certificate being renewed.
certificate_host() {
    if [ -n "$HOST" ]; then
        echo "$HOST"
    elif [ -s "$CERT" ]; then
        openssl x509 -in "$CERT" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p'
    fi
}

make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$CA_DAYS" \
        -subj "/O=Atlas (self-signed)/CN=Atlas local certificate authority" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$CA_KEY.new" -out "$CA_CERT.new" 2>/dev/null
    chmod 644 "$CA_CERT.new"
    mv "$CA_KEY.new" "$CA_KEY"
    mv "$CA_CERT.new" "$CA_CERT"
    say "generated a local certificate authority in $CA_CERT (valid $CA_DAYS days): agents trust this one"
}

# A server certificate for $1 signed by the local authority, replacing tls.crt and tls.key together.
issue() {
    host="$1"
    ext=$(mktemp)
    cat >"$ext" <<CONF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $(subject_alt_names "$host")
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CONF
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/O=Atlas (self-signed)/CN=$host" -keyout "$KEY.new" -out "$CERT.csr" 2>/dev/null
    openssl x509 -req -in "$CERT.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" -set_serial "0x$(openssl rand -hex 16)" \
        -days "$DAYS" -extfile "$ext" -out "$CERT.new" 2>/dev/null
    rm -f "$ext" "$CERT.csr"
    chmod 644 "$CERT.new"
    mv "$KEY.new" "$KEY"
    mv "$CERT.new" "$CERT"
    say "issued a certificate for $host in $CERT (valid $DAYS days, renewed $RENEW_DAYS days before it ends)"
}

# Whether tls.crt ends within RENEW_DAYS.
expiring() {
    ! openssl x509 -in "$CERT" -noout -checkend $((RENEW_DAYS * 86400)) >/dev/null
}

# Whether tls.crt is one this entrypoint issued (signed by the local authority it keeps), not yours.
ours() {
    [ -s "$CA_KEY" ] && [ -s "$CA_CERT" ] && openssl verify -CAfile "$CA_CERT" "$CERT" >/dev/null 2>&1
}

# Renew tls.crt if it is ours and ends soon; true if it was renewed.
renew_if_due() {
    if expiring && ours; then
        issue "$(certificate_host)"
        return 0
    fi
    return 1
}

case "$DAYS" in '' | *[!0-9]*) say "ATLAS_TLS_DAYS must be a number of days"; exit 1 ;; esac
if [ "$DAYS" -gt 366 ] || [ "$DAYS" -lt 1 ]; then
    say "ATLAS_TLS_DAYS=$DAYS: a server certificate may live 1 to 366 days (Apple refuses longer ones)"
    exit 1
fi
umask 077
mkdir -p "$TLS_DIR"

if [ -s "$CERT" ] && [ -s "$KEY" ]; then
    if renew_if_due; then
        :
    elif expiring; then
        say "the certificate in $CERT ends within $RENEW_DAYS days and is yours: replace it (deploy/README.md)"
    else
        say "using the certificate in $CERT"
    fi
elif [ -e "$CERT" ] || [ -e "$KEY" ]; then
    say "only one of $CERT and $KEY exists: provide both, or remove both to generate a pair"
    exit 1
else
    if [ -z "$HOST" ]; then
        say "ATLAS_PUBLIC_HOST is not set: give the name (or address) the Macs and browsers use, e.g. atlas.example.com"
        exit 1
    fi
    case "$HOST" in
        localhost | 127.*) say "warning: a certificate for $HOST is accepted on this host only, by no other Mac" ;;
    esac
    [ -s "$CA_KEY" ] && [ -s "$CA_CERT" ] || make_ca
    issue "$HOST"
    say "agents: copy $CA_CERT to each Mac and point ca_bundle at it; browsers warn until it is trusted"
fi

if [ "${1:-}" = "--generate-only" ]; then
    exit 0
fi
if [ "$#" -eq 0 ]; then
    set -- nginx -g "daemon off;"
fi
if [ "$1" = nginx ]; then
    # Renew while nginx runs, and have it load the new pair.
    (while sleep "$CHECK_SECONDS"; do
        if renew_if_due; then nginx -s reload || say "could not reload nginx after renewing"; fi
    done) &
fi
exec "$@"

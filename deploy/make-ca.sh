#!/bin/sh
# Creates the TLS material for a flotilla deployment with openssl:
#   a CA (ca.key, ca.crt), the server's key and certificate signed by it
#   (server.key, server.crt, with the given DNS names / IP addresses), and,
#   with --client NAME (repeatable), client certificates for mutual TLS.
#
# usage: deploy/make-ca.sh --out DIR --server-name NAME [--server-ip IP]...
#                          [--client NAME]... [--days N]
# Keys are ECDSA P-256, written with mode 0600. An existing CA in DIR is
# reused, so the script can add client certificates later.
set -eu

out=""
names=""
ips=""
clients=""
days=825
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --server-name) names="$names $2"; shift 2 ;;
        --server-ip) ips="$ips $2"; shift 2 ;;
        --client) clients="$clients $2"; shift 2 ;;
        --days) days=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "make-ca.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$out" ] || [ -z "$names$ips" ]; then
    echo "usage: make-ca.sh --out DIR --server-name NAME [--server-ip IP]... [--client NAME]..." >&2
    exit 2
fi
mkdir -p "$out"
umask 077
cd "$out"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.key ]; then
    newkey ca.key
    openssl req -new -x509 -key ca.key -sha256 -days "$days" -subj "/CN=flotilla CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
fi

san=""
for n in $names; do san="${san:+$san,}DNS:$n"; done
for i in $ips; do san="${san:+$san,}IP:$i"; done
first=$(echo $names $ips | awk '{print $1}')

sign() { # name kind san
    newkey "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s' \
        "$2" "${3:+subjectAltName=$3}" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

sign server serverAuth "$san"
for c in $clients; do
    sign "client-$c" clientAuth ""
done
chmod 0644 ca.crt server.crt
echo "make-ca.sh: CA, server certificate for $first$( [ -n "$clients" ] && echo " and client certificates for$clients") in $out"

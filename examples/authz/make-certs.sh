#!/usr/bin/env bash
# Makes the example PKI in certs/: a CA and SVID-style certificates with URI SAN
# spiffe://cluster.local/ns/shop/sa/<name>. The keys are EXAMPLE ONLY (public, committed so that
# `envoy --mode validate` and a first run work from a clean clone); tests and the demo make their
# own short-lived certificates at start.
#   examples/authz/make-certs.sh
set -euo pipefail
cd "$(dirname "$0")/certs"
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.example-key.pem -out ca.pem \
  -days "$days" -subj "/CN=meshwasm example CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() { # name, subjectAltName
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$2" > "$1.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.example-key.pem" -out "$1.csr" \
    -subj "/O=shop/CN=$1" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.example-key.pem -CAcreateserial -out "$1.pem" \
    -days "$days" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf orders "DNS:localhost,URI:spiffe://cluster.local/ns/shop/sa/orders"
leaf frontend "URI:spiffe://cluster.local/ns/shop/sa/frontend"
leaf rogue "URI:spiffe://cluster.local/ns/shop/sa/rogue"
# The CA key is not kept: rerun this script for new certificates.
rm -f ca.srl ca.example-key.pem
ls

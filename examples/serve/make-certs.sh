#!/bin/sh
# Makes a CA and short-lived SPIFFE workload certificates (sa `orders` and `frontend` in namespace `shop`)
# for mtls.yaml, with Debian's openssl. Everything, keys included, goes under target/ (never committed).
set -eu
out=${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/serve-certs}
mkdir -p "$out"
cd "$out"
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "$@" 2>/dev/null; }
ec -x509 -days 1 -keyout ca-key.pem -out ca.pem -subj "/CN=meshwasm example CA"
for sa in orders frontend; do
  ec -keyout "$sa-key.pem" -out "$sa.csr" -subj "/O=shop/CN=$sa"
  printf 'subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/%s,DNS:%s.shop.svc\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
    "$sa" "$sa" > "$sa.ext"
  openssl x509 -req -in "$sa.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
    -extfile "$sa.ext" -out "$sa.pem" 2>/dev/null
  rm -f "$sa.csr" "$sa.ext"
done
echo "certificates in $out"

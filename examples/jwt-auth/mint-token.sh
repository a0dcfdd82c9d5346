#!/usr/bin/env bash
# Mints an RS256 access token with the example key (demo only; the key is public).
#   examples/jwt-auth/mint-token.sh [scope] [lifetime_s]
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)"
scope="${1:-read}"
life="${2:-3600}"
now=$(date +%s)
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"example-1"}' | b64url)
payload=$(printf '{"iss":"https://idp.example.com","aud":"api","sub":"alice","scope":"%s","groups":["dev","ops"],"iat":%d,"exp":%d}' \
  "$scope" "$now" "$((now + life))" | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$dir/example-key.pem" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"

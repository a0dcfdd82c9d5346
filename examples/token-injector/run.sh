#!/usr/bin/env bash
# Builds the token-injector filter, starts the test OpenID Provider (npm oidc-provider, port 9400), an
# echo backend (port 9402) and Envoy with examples/token-injector/envoy.yaml (port 10001), sends a
# request for api.internal and shows the Authorization header the backend received and the token's
# claims, then stops everything. Usage: examples/token-injector/run.sh [--keep]  (--keep: leave them running)
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY="${MESHWASM_ENVOY:-$PWD/.venv/bin/envoy-binary}"
[ -x "$ENVOY" ] || make setup-envoy
make -s setup-node
cargo build -q --profile wasm --target wasm32-wasip1 -p meshwasm-token-injector
log=$(mktemp -d /tmp/meshwasm-token-injector-example.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

(cd tests/oidc && exec node provider.mjs 9400) >"$log/idp.log" 2>&1 & pids+=($!)
python3 - >"$log/echo.log" 2>&1 <<'PY' & pids+=($!)
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "authorization": self.headers.get("authorization")}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 9402), Echo).serve_forever()
PY
"$ENVOY" -c examples/token-injector/envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info \
  >"$log/envoy.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9400/.well-known/openid-configuration >/dev/null 2>&1 \
    && curl -sf http://127.0.0.1:9902/ready >/dev/null 2>&1 && break
  sleep 0.1
done

echo "GET http://127.0.0.1:10001/orders  (Host: api.internal) → the backend received:"
resp=$(curl -s -H 'host: api.internal' http://127.0.0.1:10001/orders)
echo "  $resp"
token=$(python3 -c 'import json,sys; print((json.loads(sys.argv[1])["authorization"] or "").removeprefix("Bearer "))' "$resp")
echo "token claims (verify them against http://127.0.0.1:9400/jwks):"
python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print("  "+json.dumps(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))))' "$token"
echo "GET with Host: other.internal (not matched) → the backend received:"
echo "  $(curl -s -H 'host: other.internal' http://127.0.0.1:10001/)"
echo "token-injector metrics (admin):"
curl -s http://127.0.0.1:9902/stats | grep meshwasm_token_injector || true
echo "filter log ($log/envoy.log):"
grep -h "meshwasm token-injector" "$log/envoy.log" | tail -5 || true
if [ "${1:-}" = "--keep" ]; then
  trap - EXIT
  echo "running: IdP 127.0.0.1:9400, echo 127.0.0.1:9402, Envoy 127.0.0.1:10001 (pids ${pids[*]})"
fi

#!/usr/bin/env bash
# Builds meshwasm.wasm, starts three tiny backends (127.0.0.1:8081-8083, each answering with its name) and
# Envoy with examples/combined/envoy.yaml: jwt-auth → authz → discovery → balancer, all from one module under
# one vm_id. Shows a valid token steered round robin, the 401 and 403 refusals, and Envoy's VM count.
# Usage: examples/combined/run.sh [--keep]  (--keep: leave everything running)
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY="${MESHWASM_ENVOY:-$PWD/.venv/bin/envoy-binary}"
[ -x "$ENVOY" ] || make setup-envoy
cargo build -q --profile wasm --target wasm32-wasip1 -p meshwasm
cargo build -q -p meshwasm-exports --bin meshwasm-exports
target/debug/meshwasm-exports target/wasm32-wasip1/wasm/meshwasm.wasm --keep filters/meshwasm/callbacks
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
backend() { # name port
  python3 -c '
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()' "$1" "$2" &
  pids+=($!)
}
backend A 8081; backend B 8082; backend C 8083
log=$(mktemp /tmp/meshwasm-combined-example.XXXXXX.log)
"$ENVOY" -c examples/combined/envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info >"$log" 2>&1 &
pids+=($!)
token=$(examples/jwt-auth/mint-token.sh)                 # alice, groups ["dev","ops"]: authz allows "dev"
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" http://127.0.0.1:10000/)" = 200 ] && break
  sleep 0.1
done
echo "valid token, round robin: $(for i in $(seq 6); do curl -s -H "authorization: Bearer $token" http://127.0.0.1:10000/; done | tr '\n' ' ')"
echo "no token:                 $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10000/)"
echo "bad signature:            $(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer ${token%?}x" http://127.0.0.1:10000/)"
echo "V8 VMs (2 workers, 4 filters): $(curl -s http://127.0.0.1:9901/stats | grep 'wasm.envoy.wasm.runtime.v8.active')"
echo "filter log ($log):"; grep -h "meshwasm" "$log" | tail -5 | sed 's/^/  /'
if [ "${1:-}" = "--keep" ]; then trap - EXIT; echo "left running: pids ${pids[*]}"; fi

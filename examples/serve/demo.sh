#!/usr/bin/env bash
# One command: build the noop filter and meshwasm-host, start a backend and `serve`, send two requests,
# print the responses and the access log, stop everything.   Usage: examples/serve/demo.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --profile wasm --target wasm32-wasip1 -p meshwasm-noop
cargo build -q -p meshwasm-host --bin meshwasm-host
log=$(mktemp)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "$log"; }
trap cleanup EXIT
python3 -m http.server 8081 --bind 127.0.0.1 --directory examples/serve >/dev/null 2>&1 & pids+=($!)
target/debug/meshwasm-host serve examples/serve/serve.yaml 2>"$log" & pids+=($!)
for _ in $(seq 100); do grep -q 'on http://' "$log" && break; sleep 0.1; done
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8081/ && break; sleep 0.1; done
curl -s -i http://127.0.0.1:10000/serve.yaml | head -5
echo ...
curl -s -o /dev/null -w 'GET /nope -> %{http_code}\n' http://127.0.0.1:10000/nope
sleep 0.2
echo "--- meshwasm-host stderr"
cat "$log"

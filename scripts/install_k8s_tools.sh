#!/usr/bin/env bash
# Tools and schemas tests/test_k8s.py needs, into .local/ (git-ignored):
#   .local/bin/kustomize                 kustomize v5, built with the Go toolchain from the Go module proxy
#   .local/schemas/crds/*.yaml           the Prometheus Operator's PodMonitor and PrometheusRule CRDs, from
#                                        the prometheus-operator Go module (verified by Go's checksum database)
#   .local/node/node_modules/...         Strimzi's KafkaTopic schema, compiled, from the npm package
#                                        @kubernetes-models/strimzi-kafka-operator (run by Node)
# Kubernetes' own resource schemas come from the kubernetes-validate package (dev extra).
# Usage: bash scripts/install_k8s_tools.sh   (`make test` runs it; does nothing when all is there)
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION="v5.5.0"
PROMETHEUS_OPERATOR_VERSION="v0.76.0"
STRIMZI_MODELS_VERSION="1.0.1"
BIN=".local/bin"
CRDS=".local/schemas/crds"
mkdir -p "$BIN" "$CRDS"

command -v go >/dev/null || { echo "install_k8s_tools: Go is needed (apt-get install golang-go, 1.22+)" >&2; exit 1; }

# A `go install` build reports its version as "(devel)": the marker file says which one is there.
if [ ! -x "$BIN/kustomize" ] || [ "$(cat "$BIN/kustomize.version" 2>/dev/null)" != "$KUSTOMIZE_VERSION" ]; then
  echo "install_k8s_tools: building kustomize $KUSTOMIZE_VERSION"
  GOBIN="$PWD/$BIN" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  echo "$KUSTOMIZE_VERSION" > "$BIN/kustomize.version"
fi

if [ ! -s "$CRDS/monitoring.coreos.com_podmonitors.yaml" ] || [ ! -s "$CRDS/monitoring.coreos.com_prometheusrules.yaml" ]; then
  echo "install_k8s_tools: fetching the Prometheus Operator CRDs ($PROMETHEUS_OPERATOR_VERSION)"
  modcache="$PWD/.local/gomod"
  dir=$(GOMODCACHE="$modcache" GOFLAGS=-mod=mod go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for crd in podmonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$CRDS/"
  done
  chmod -R u+w "$modcache" && rm -rf "$modcache"   # Go makes its cache read-only
fi
if [ ! -f ".local/node/node_modules/@kubernetes-models/strimzi-kafka-operator/_schemas/KafkaStrimziIoV1beta2KafkaTopic.js" ]; then
  command -v npm >/dev/null || { echo "install_k8s_tools: npm is needed (apt-get install npm)" >&2; exit 1; }
  echo "install_k8s_tools: fetching Strimzi's resource schemas (npm, @kubernetes-models/strimzi-kafka-operator)"
  npm install --prefix .local/node "@kubernetes-models/strimzi-kafka-operator@$STRIMZI_MODELS_VERSION" \
    --no-audit --no-fund --silent
fi
echo "install_k8s_tools: kustomize $KUSTOMIZE_VERSION in $BIN, CRDs in $CRDS"

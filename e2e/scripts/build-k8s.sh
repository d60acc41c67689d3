#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 offline from Debian bookworm's
# `kubernetes` source package (the full upstream tree with vendor/) with Debian's Go 1.19, and
# caches them outside the clone. A cache hit skips the build; a cold build takes about 5 minutes on
# 2 cores and needs about 2.5 GB of scratch space.
#
# Output: $CAIRN_K8S_BIN (default ${XDG_CACHE_HOME:-~/.cache}/cairn/k8s-1.20.2/bin)/{kube-apiserver,kube-controller-manager}
set -euo pipefail

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cairn/k8s-1.20.2
BIN=${CAIRN_K8S_BIN:-$CACHE/bin}
SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz

say() { echo "build-k8s: $*" >&2; }

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then
  say "using cached binaries in $BIN"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in golang-1.19-go golang-github-modern-go-reflect2-dev rsync make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-k8s-build.XXXXXX")
chmod 755 "$WORK" # apt downloads as the _apt user
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE/src" "$BIN"

if [ ! -f "$CACHE/src/$TARBALL" ]; then
  say "downloading the kubernetes $SOURCE_VERSION source package"
  # A private deb-src list made from the system's Debian sources; the system's apt setup is untouched.
  mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/sources.list.d"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$WORK/apt/sources.list.d/src.sources"
  apt_private=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$WORK/apt/sources.list.d"
    -o Dir::State::Lists="$WORK/apt/lists")
  apt-get "${apt_private[@]}" update -qq
  (cd "$WORK" && apt-get "${apt_private[@]}" source --download-only "kubernetes=$SOURCE_VERSION" >/dev/null)
  mv "$WORK/$TARBALL" "$CACHE/src/$TARBALL.partial"
  mv "$CACHE/src/$TARBALL.partial" "$CACHE/src/$TARBALL"
fi

say "unpacking"
tar xzf "$CACHE/src/$TARBALL" -C "$WORK"
cd "$WORK/kubernetes-1.20.2"

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 (SIGSEGV in mapiterinit on the first
# ConfigMap write); Debian's 1.0.2 sources are a drop-in replacement.
rm -rf vendor/github.com/modern-go/reflect2
mkdir vendor/github.com/modern-go/reflect2
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
  vendor/github.com/modern-go/reflect2/

export PATH=/usr/lib/go-1.19/bin:$PATH GOPROXY=off CGO_ENABLED=0 HOME="$WORK/home"
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
mkdir -p "$HOME"
say "compiling kube-apiserver and kube-controller-manager (about 5 minutes)"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" GOLDFLAGS="-s -w" >"$WORK/make.log" 2>&1 || {
  tail -40 "$WORK/make.log" >&2
  say "compilation failed"
  exit 1
}
for binary in kube-apiserver kube-controller-manager; do
  cp "_output/bin/$binary" "$BIN/$binary.partial"
  mv "$BIN/$binary.partial" "$BIN/$binary"
done
say "built $("$BIN/kube-apiserver" --version) into $BIN"

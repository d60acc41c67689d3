#!/usr/bin/env bash
# Installs the Debian packages that building Cairn and running its tests and sandbox need, unless
# they are present: protoc (the etcd API), etcdctl and etcd (compatibility tests, benchmarks and
# the sandbox's own store), curl, nftables and iproute2 (the sandbox's network faults).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v etcdctl >/dev/null || need+=(etcd-client)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v curl >/dev/null || need+=(curl)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-packages: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

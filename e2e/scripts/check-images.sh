#!/usr/bin/env bash
# Builds both images of the Dockerfile with the first container engine found (docker, then
# podman) and checks each: it starts as a non-root user, prints its version, and the server
# image serves a single-member store that answers /health. Without an engine it says so and
# exits 0: the Kubernetes tests run the same binaries through the sandbox instead.
set -euo pipefail
cd "$(dirname "$0")/../.."

engine=""
for candidate in docker podman; do
  if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
done
if [ -z "$engine" ]; then
  echo "check-images: no working docker or podman here; nothing checked" >&2
  exit 0
fi

tag=cairn-check-$$
say() { echo "check-images: $*" >&2; }
cleanup() {
  "$engine" rm -f "$tag-server" >/dev/null 2>&1 || true
  "$engine" rmi -f "$tag/cairn" "$tag/cairn-operator" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for target in cairn cairn-operator; do
  say "building --target $target with $engine"
  "$engine" build --quiet --target "$target" -t "$tag/$target" . >/dev/null
  user=$("$engine" image inspect --format '{{.Config.User}}' "$tag/$target")
  case "$user" in
    ""|0|root|0:*|root:*) say "$target runs as root ($user)"; exit 1 ;;
  esac
  "$engine" run --rm "$tag/$target" --version
done

say "starting the server image"
"$engine" run -d --name "$tag-server" "$tag/cairn" \
  --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://127.0.0.1:2379 >/dev/null
for _ in $(seq 1 50); do
  if "$engine" exec "$tag-server" /usr/local/bin/cairnctl endpoint health >/dev/null 2>&1; then
    say "both images build, run as non-root, and the server answers"
    exit 0
  fi
  sleep 0.2
done
"$engine" logs "$tag-server" >&2
say "the server image did not become healthy"
exit 1

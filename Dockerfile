# syntax=docker/dockerfile:1
# Two images from one build, both running as a non-root user on a minimal base:
#   docker build --target cairn          -t ghcr.io/cairn-dev/cairn:0.1.0 .
#   docker build --target cairn-operator -t ghcr.io/cairn-dev/cairn-operator:0.1.0 .
# (podman build takes the same arguments.) e2e/scripts/check-images.sh builds and tries both
# where a container engine exists.

ARG RUST_VERSION=1.90

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn -p cairn-operator \
 && mkdir -p /out/data \
 && cp target/release/cairn target/release/cairnctl target/release/cairn-operator /out/

# The server: data in /var/lib/cairn (mount a volume there), clients on 2379, peers on 2380.
FROM gcr.io/distroless/cc-debian12:nonroot AS cairn
COPY --from=build /out/cairn /out/cairnctl /usr/local/bin/
# The default data directory (<name>.cairn) is relative to here, so it must be the user's.
COPY --from=build --chown=65532:65532 /out/data /var/lib/cairn
USER 65532:65532
WORKDIR /var/lib/cairn
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/cairn"]

# The operator: /metrics and /healthz on 8080.
FROM gcr.io/distroless/cc-debian12:nonroot AS cairn-operator
COPY --from=build /out/cairn-operator /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cairn-operator"]

# Warren's container image: one static (musl) binary on an empty base,
# running as an unprivileged user, data in the /data volume.
#
# Base images are build arguments, so the image can be built where no
# registry is reachable (README, "Docker and Swarm"):
#   RUST_IMAGE     base of the build stage: a Rust toolchain on musl
#   RUNTIME_IMAGE  base of the final image (default: the empty image)
#   BINARY_FROM    "build": compile in the build stage; "prebuilt": take
#                  target/x86_64-unknown-linux-musl/release/warren from the
#                  build context (cargo build --release --target x86_64-unknown-linux-musl)
# With BuildKit only the stages the final image needs are built.
ARG RUST_IMAGE=rust:1.95-alpine
ARG RUNTIME_IMAGE=scratch
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
RUN apk add --no-cache "musl-dev=~1.2"
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY config config
COPY static static
COPY benches benches
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
    && mkdir -p /out/data \
    && cp target/x86_64-unknown-linux-musl/release/warren /out/warren

FROM scratch AS prebuilt
WORKDIR /out/data
COPY target/x86_64-unknown-linux-musl/release/warren /out/warren

# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

# hadolint ignore=DL3006
FROM ${RUNTIME_IMAGE}
COPY --from=binary /out/warren /usr/local/bin/warren
COPY --from=binary --chown=10001:10001 /out/data /data
USER 10001:10001
ENV WARREN_STORAGE_DATA_DIR=/data
VOLUME ["/data"]
# AMQP, management (HTTP API and web UI), Prometheus.
# AMQP, AMQPS (when [tls] is configured), management (HTTP or HTTPS), metrics.
EXPOSE 5672 5671 15672 15692
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/warren", "healthcheck"]
# Warren is PID 1: it handles SIGTERM itself (close clients with 320,
# sync the log, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/warren"]

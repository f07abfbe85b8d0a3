# syntax=docker/dockerfile:1
# Herald's container image: one binary (its SQLite and PostgreSQL migrations are compiled
# in), run as distroless's non-root user (65532) on a base that carries only glibc, libgcc and CA
# certificates. `crates/herald/tests/deploy.rs` checks this file with hadolint and checks
# that the release binary needs no shared library beyond those.
#
#   docker build -t herald .
#   docker run -p 8080:8080 herald --dev

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target folders are cache mounts: a rebuild compiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald \
 && cp target/release/herald /herald \
 && mkdir /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /herald /usr/local/bin/herald
# The SQLite file of a single node lives here, owned by nonroot (mount a volume to keep it).
COPY --from=build --chown=65532:65532 /data /var/lib/herald
WORKDIR /var/lib/herald
ENV HOST=0.0.0.0 PORT=8080 HERALD_SQLITE_PATH=/var/lib/herald/herald.db HERALD_ENV=production
EXPOSE 8080
# distroless's nonroot user, by number so that the runtime need not resolve the name.
USER 65532:65532
# `herald health` asks GET /health on PORT and exits 0 only for 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/herald", "health"]
ENTRYPOINT ["/usr/local/bin/herald"]

# syntax=docker/dockerfile:1
# Hakikisha: release build in the official Rust image, run on Debian slim as a non-root user.
#
#   docker build -t hakikisha .
#   docker run --rm -p 8080:8080 -e JWT_SECRET=... -e HAKIKISHA_ENV=production hakikisha

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so that editing the
# application's code does not recompile (or re-download) the dependency graph. The layer is
# rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Application layer. The stubs' build outputs are removed so cargo cannot mistake them for
# the real crate (COPY keeps the files' original mtimes, which may be older than the stubs).
COPY . .
RUN rm -rf target/release/.fingerprint/hakikisha-* \
           target/release/deps/hakikisha-* \
           target/release/deps/libhakikisha-* \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/hakikisha /out/hakikisha

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to PostgreSQL, Redis and the AI provider. curl: container healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 hakikisha \
    && useradd --system --uid 10001 --gid hakikisha --home-dir /var/lib/hakikisha \
       --shell /usr/sbin/nologin hakikisha \
    && install -d -o hakikisha -g hakikisha -m 0750 /var/lib/hakikisha

COPY --from=builder /out/hakikisha /usr/local/bin/hakikisha

# The working directory holds data/hakikisha.db when no DATABASE_URL is given (SQLite).
WORKDIR /var/lib/hakikisha
USER hakikisha:hakikisha

# In a container the loopback defaults are unreachable from outside; listen on all
# interfaces. The metrics port is not meant to be published: scrape it on the container
# network, and set METRICS_TOKEN where that network is shared.
ENV BIND_ADDR=0.0.0.0:8080 \
    METRICS_ADDR=0.0.0.0:9464

EXPOSE 8080 9464

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/readyz || exit 1

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hakikisha"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# mana-ai: multi-stage build. Dependencies are compiled in their own layer,
# so a source change rebuilds only the crate itself.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Every workspace member's manifest: cargo resolves the whole workspace even
# when it builds only the service (which links none of them).
COPY crates/pgtemp/Cargo.toml crates/pgtemp/
COPY crates/testkit/Cargo.toml crates/testkit/
COPY crates/demo/Cargo.toml crates/demo/
COPY crates/bench/Cargo.toml crates/bench/
# A dummy crate with the real manifests caches the dependency build.
RUN mkdir -p src benches crates/pgtemp/src crates/testkit/src crates/demo/src \
    && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/reactor.rs \
    && echo '' > crates/pgtemp/src/lib.rs && echo '' > crates/testkit/src/lib.rs \
    && echo 'fn main() {}' > crates/demo/src/main.rs \
    && cargo build --release --locked --bin mana-ai \
    && rm -rf src benches crates
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin mana-ai

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mana-ai
COPY --from=build /src/target/release/mana-ai /usr/local/bin/mana-ai
COPY triggers /opt/mana-ai/triggers
USER mana-ai
ENV PORT=3067
EXPOSE 3067
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/mana-ai"]
CMD ["serve"]

# Multi-stage build of godata-bridge: a Rust builder, then a small Debian
# runtime with a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY sql ./sql
COPY examples ./examples
RUN cargo build --release --locked --bin godata-bridge

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin bridge
COPY --from=build /src/target/release/godata-bridge /usr/local/bin/godata-bridge
USER bridge
ENTRYPOINT ["godata-bridge"]

# HAP server image: build in the full Rust image, ship only the binary on a
# slim Debian of the same release (bookworm on both sides, so the binary's
# glibc matches).

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace: all crates are needed, and the migrations are embedded
# into the binary at compile time. .dockerignore keeps target/ out.
COPY . .
# --locked: build exactly the committed Cargo.lock.
RUN cargo build --release --locked --bin hap

FROM debian:bookworm-slim
# ca-certificates for TLS connections to managed PostgreSQL/RabbitMQ.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The server needs no privileges; do not run it as root.
RUN useradd --system --no-create-home --shell /usr/sbin/nologin hap
COPY --from=builder /src/target/release/hap /usr/local/bin/hap
USER hap
# Listen on all interfaces: loopback inside a container is unreachable.
ENV HAP_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["hap"]
CMD ["serve"]

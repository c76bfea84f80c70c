# smarthost: docker build -t smarthost .
# Build on the official Rust image, run on Debian slim as a non-root user.

FROM rust:1.95-bookworm AS build
# No debug info, symbols stripped: ~50 MB of binary becomes ~9.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
# setcap, to give the binary CAP_NET_BIND_SERVICE (port 25 without root).
RUN apt-get update -q && apt-get install -y -q --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, against empty sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not at every source change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/accept_latency.rs \
    && cargo build --release --locked \
    && rm -rf src benches target/release/.fingerprint/smarthost-* \
       target/release/deps/smarthost-* target/release/deps/libsmarthost-*
COPY src src
COPY benches benches
RUN cargo build --release --locked

FROM debian:bookworm-slim
# /var/spool/sink: where `smarthost sink` writes in docker-compose.yml.
RUN useradd --system --uid 10025 --user-group --home-dir /var/lib/smarthost \
        --create-home --shell /usr/sbin/nologin smarthost \
    && mkdir -p /etc/smarthost/certs /var/spool/smarthost /var/spool/sink \
    && chown smarthost:smarthost /var/spool/smarthost /var/spool/sink
COPY --from=build /src/target/release/smarthost /usr/local/bin/smarthost
# COPY does not carry file capabilities, so the capability is set here, with
# the build stage's setcap (libcap2 is in the slim base: apt needs it).
COPY --from=build /usr/sbin/setcap /usr/local/sbin/setcap
RUN setcap cap_net_bind_service=+ep /usr/local/bin/smarthost && rm /usr/local/sbin/setcap
COPY deploy/docker/smarthost.toml /etc/smarthost/smarthost.toml
USER smarthost
WORKDIR /var/lib/smarthost
VOLUME /var/spool/smarthost
# 25 and 587 SMTP with STARTTLS, 465 implicit TLS, 8025 the admin endpoint.
EXPOSE 25 465 587 8025
# The admin /healthz when [admin] is set, else the SMTP banner. `docker stop`
# sends SIGTERM to the binary (PID 1): it drains and exits 0 within
# limits.shutdown_grace (8s in the default config: docker stop waits 10s).
HEALTHCHECK --interval=5s --timeout=10s --start-period=5s --retries=3 \
    CMD ["smarthost", "health", "--config", "/etc/smarthost/smarthost.toml"]
ENTRYPOINT ["smarthost"]
CMD ["serve", "--config", "/etc/smarthost/smarthost.toml"]

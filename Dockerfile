# tracegate: build in a full Rust image, run from a small Debian base as a non-root user.
#   docker build -t tracegate .
#   docker run -p 8787:8787 -p 127.0.0.1:8788:8788 -v tracegate-data:/var/lib/tracegate tracegate
#   (own config: -v $PWD/my.toml:/etc/tracegate/tracegate.toml:ro)

FROM rust:1-bookworm AS build
WORKDIR /src
# The manifest names the bench and test targets too, so their files come along.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# Cargo.toml patches sled from here (see vendor/sled/TRACEGATE-PATCH.md).
COPY vendor ./vendor
RUN cargo build --release --locked --bin tracegate && strip target/release/tracegate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tracegate --shell /usr/sbin/nologin tracegate \
    && mkdir -p /var/lib/tracegate /etc/tracegate \
    && chown tracegate:tracegate /var/lib/tracegate
COPY --from=build /src/target/release/tracegate /usr/local/bin/tracegate
COPY config/docker.toml /etc/tracegate/tracegate.toml
ENV TRACEGATE_CONFIG=/etc/tracegate/tracegate.toml
USER 10001:10001
VOLUME ["/var/lib/tracegate"]
EXPOSE 8787 8788
HEALTHCHECK --interval=30s --timeout=3s CMD ["tracegate", "traces", "--limit", "1", "--admin", "http://127.0.0.1:8788"]
ENTRYPOINT ["tracegate"]
CMD ["serve"]

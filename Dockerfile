# netmux-server image: netmux/netmux-server:0.1.0
#
# `cargo xtask dist` builds this image without any registry (no base image:
# it assembles the root filesystem itself) into
# target/dist/netmux-server-0.1.0-image.tar; load it with
#   docker load -i target/dist/netmux-server-0.1.0-image.tar
#
# This Dockerfile builds the same layout where registries are reachable:
#   docker build -t netmux/netmux-server:0.1.0 .
#   kind load docker-image netmux/netmux-server:0.1.0      # or push it
# Both: a static (musl) binary at /usr/local/bin/netmux-server, Debian's CA
# bundle, passwd/group with nonroot (65532), nothing else (no shell).

# kube 5 needs Rust 1.89 or newer.
FROM rust:1.89-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo needs every member's manifest.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p netmux-server \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/netmux-server \
      /rootfs/usr/local/bin/netmux-server \
 && strip /rootfs/usr/local/bin/netmux-server \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
      /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' \
      > /rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="netmux-server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# QUIC (UDP), QUIC over TCP streams, health and metrics.
EXPOSE 7443/udp 7443/tcp 7080/tcp
ENTRYPOINT ["/usr/local/bin/netmux-server"]
CMD ["--config", "/etc/netmux/server.toml"]

# netmux-server image: multi-stage, static-ish binary on distroless, non-root.
#
#   docker build -t netmux/netmux-server:0.1.0 .
#   kind load docker-image netmux/netmux-server:0.1.0      # or push it
#
# Only netmux-server is built: the daemon's eBPF build (bpf-linker) is not
# needed and not a default member.

# kube 5 needs Rust 1.89 or newer.
FROM rust:1.89-bookworm AS build
WORKDIR /src
# The whole workspace: cargo needs every member's manifest.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p netmux-server \
 && install -D -m 0755 target/release/netmux-server /out/netmux-server

# glibc, CA certificates, /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/netmux-server /usr/local/bin/netmux-server
USER 65532:65532
# QUIC (UDP), QUIC over TCP (reserved: port-forward transport), health and metrics.
EXPOSE 7443/udp 7443/tcp 7080/tcp
ENTRYPOINT ["/usr/local/bin/netmux-server"]
CMD ["--config", "/etc/netmux/server.toml"]

# Sluice's images for users with Docker. `cargo xtask images` writes the same
# images without a container engine (OCI archives in target/images/); both
# take their file trees from `sluice-images`, so the layout is the same: the
# program in /usr/local/bin, the shared libraries it loads, /etc/passwd with
# Sluice's users, CA certificates.
#
#   docker build --target operator -t sluice/sluice-operator:0.1.0 .
#   docker build --target proxy    -t sluice/sluice-proxy:0.1.0 .
#   docker build --target demo-app -t sluice/demo-app:0.1.0 .     # COLOR=... at run time
#   docker build --target curl     -t sluice/curl:0.1.0 .
#   docker build --target pause    -t sluice/pause:0.1.0 .
FROM rust:1.92-bookworm AS build
# What the proxy (iptables) and curl images carry besides Sluice's binaries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables curl busybox-static ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
      -p sluice-operator -p sluice-proxy -p demo-app -p sluice-images \
 && target/release/sluice-images --bins target/release --rootfs /rootfs

FROM scratch AS operator
COPY --from=build /rootfs/sluice_sluice-operator/ /
USER 65532:65532
EXPOSE 15010 15014 15017 20001
ENTRYPOINT ["/usr/local/bin/sluice-operator"]

FROM scratch AS proxy
COPY --from=build /rootfs/sluice_sluice-proxy/ /
# The injector runs the sidecar as 1337 and the interception step as root
# with only NET_ADMIN and NET_RAW.
USER 1337:1337
EXPOSE 15001 15006 15021
ENTRYPOINT ["/usr/local/bin/sluice-proxy"]

FROM scratch AS demo-app
COPY --from=build /rootfs/sluice_demo-app/ /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/demo-app"]

FROM scratch AS curl
COPY --from=build /rootfs/sluice_curl/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice-pause"]

FROM scratch AS pause
COPY --from=build /rootfs/sluice_pause/ /
USER 65535:65535
ENTRYPOINT ["/usr/local/bin/sluice-pause"]

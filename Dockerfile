# The images of Sluice: one static binary (musl) on an empty base, running
# as non-root. Build from the workspace root, once per binary:
#   docker build --build-arg BIN=sluice-operator -t sluice/sluice-operator:0.1.0 .
#   docker build --build-arg BIN=sluice-proxy    -t sluice/sluice-proxy:0.1.0 .
FROM rust:1.92-bookworm AS build
ARG BIN
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin "$BIN" \
 && cp "target/x86_64-unknown-linux-musl/release/$BIN" /app

FROM scratch
COPY --from=build /app /app
USER 65532:65532
ENTRYPOINT ["/app"]

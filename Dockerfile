# The llamaduo operator (`llamaduo operator`; also `validate`, `crd`, `run`). No candle: small
# and fast to build. Build from the repository root:
#   docker build -t llamaduo:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p llamaduo --bin llamaduo \
 && install -D target/release/llamaduo /out/llamaduo

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/llamaduo /usr/local/bin/llamaduo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/llamaduo"]
CMD ["operator"]

# pxesrv container image: a Rust build stage and a small runtime stage.
#
#   podman build --format docker -t pxesrv .
#   podman run --rm -p 4567:4567 -v "$PWD/public:/srv/pxesrv" pxesrv
#
# --format docker keeps the HEALTHCHECK (the OCI format has no such field).
# The server runs as uid 65532 (distroless "nonroot"); it writes only
# /srv/pxesrv/once/ (consumed once links go to once/.consumed/), so that
# directory of a mounted tree must be writable by the container user; see
# README.md, Install. Logs go to stderr (PXESRV_LOG unset).
#
# This file needs base images from a registry. Where none can be pulled, build
# the same runtime image from a local release build: Containerfile.local.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The whole checkout less .dockerignore: Cargo.toml names targets (benches/)
# whose files must exist even for `--bin pxesrv`.
COPY . .
RUN cargo build --release --locked --bin pxesrv \
    && install -D -m 0755 target/release/pxesrv /out/rootfs/usr/bin/pxesrv
# The same layout as var/container/stage.sh makes for Containerfile.local.
COPY public/ /out/tree/
RUN mkdir -p /out/tree/once && mv /out/tree/once /out/once

# distroless/cc: glibc and libgcc_s of Debian 12, the build stage's own
# distribution, and nothing else (no shell).
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/rootfs/ /
COPY --from=builder /out/tree/ /srv/pxesrv/
# once/ is the server's only write (consumed once links): owned by its user.
COPY --from=builder --chown=65532:65532 /out/once/ /srv/pxesrv/once/
ENV PXESRV_ROOT=/srv/pxesrv
USER 65532:65532
EXPOSE 4567/tcp
VOLUME ["/srv/pxesrv"]
STOPSIGNAL SIGTERM
# Asks the running server for HEAD /redirect (no once entry consumed, no hook run),
# through the binary itself: the image has no shell and no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/bin/pxesrv", "healthcheck"]
ENTRYPOINT ["/usr/bin/pxesrv"]

#!/usr/bin/env bash
# Container check, as far as this kind of machine allows: no registry (so the
# Dockerfile's rust and distroless stages cannot be pulled), no RUN during a
# build and no `podman run`. So it builds the runtime image from the local
# release build (Containerfile.local), checks the image's configuration,
# exports its filesystem, and runs the binary from that filesystem with chroot
# as the image's user, the way the container would: GET /redirect, the
# HEALTHCHECK command, SIGTERM -> exit 0.
#
# Expects: root, podman and curl (in .ci/packages.deps), `cargo build --release
# --locked` done. .ci/packages.sh calls it; it also runs alone.
# Usage: bash .ci/container.sh     (PASS/FAIL lines, non-zero exit on a failure)

set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
FAILED=0
TAG=localhost/pxesrv-ci:$$
TMP=
CID=
SERVER_PID=

# shellcheck source=.ci/lib.sh
. .ci/lib.sh

cleanup() {
    local rc=$?
    set +e
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null
    fi
    [ -n "$CID" ] && podman rm -f "$CID" >/dev/null 2>&1
    podman image exists "$TAG" && podman rmi -f "$TAG" >/dev/null 2>&1
    [ -n "$TMP" ] && rm -rf "$TMP"
    echo "container.sh: $(($(date +%s) - T0)) s"
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        echo "FAIL: container.sh"
        exit 1
    fi
    echo "PASS: container.sh"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || die "must run as root (chroot)"
TMP=$(mktemp -d /tmp/pxesrv-container.XXXXXX)

# Dockerfile's runtime stage cannot be built here; its configuration must be
# the one checked below, i.e. the same lines as Containerfile.local.
runtime_config() { # file -> ENV/USER/EXPOSE/VOLUME/STOPSIGNAL/HEALTHCHECK/ENTRYPOINT after the last FROM
    awk '/^FROM /{ n = NR } { l[NR] = $0 } END { for (i = n; i <= NR; i++) print l[i] }' "$1" |
        sed -e ':a' -e '/\\$/N; s/\\\n//; ta' |
        grep -E '^(ENV|USER|EXPOSE|VOLUME|STOPSIGNAL|HEALTHCHECK|ENTRYPOINT|CMD) '
}
if diff <(runtime_config Dockerfile) <(runtime_config Containerfile.local) >"$TMP/runtime.diff"; then
    pass "Dockerfile's runtime stage has the configuration of Containerfile.local"
else
    sed 's/^/  /' "$TMP/runtime.diff"
    fail "Dockerfile's runtime stage differs from Containerfile.local"
fi

var/container/stage.sh "$TMP/context" >/dev/null || die "var/container/stage.sh"
pass "staged the build context from target/release"
if podman build --format docker -f Containerfile.local -t "$TAG" "$TMP/context" \
    >"$TMP/build.log" 2>&1; then
    pass "podman build -f Containerfile.local (FROM scratch)"
else
    cat "$TMP/build.log"
    die "podman build -f Containerfile.local"
fi

# The runtime configuration, the same lines as Dockerfile's runtime stage.
cfg() { podman image inspect "$TAG" --format "$1"; }
check "image user is 65532:65532 (non-root)" test "$(cfg '{{.Config.User}}')" = 65532:65532
check "image exposes 4567/tcp" sh -c "podman image inspect '$TAG' --format '{{json .Config.ExposedPorts}}' | grep -q '\"4567/tcp\"'"
check "image has the volume /srv/pxesrv" sh -c "podman image inspect '$TAG' --format '{{json .Config.Volumes}}' | grep -q '\"/srv/pxesrv\"'"
health=$(cfg '{{json .HealthCheck.Test}}')
check "image HEALTHCHECK is $health" test "$health" = '["CMD","/usr/bin/pxesrv","healthcheck"]'
check "image entrypoint is /usr/bin/pxesrv" test "$(cfg '{{json .Config.Entrypoint}}')" = '["/usr/bin/pxesrv"]'
size=$(cfg '{{.Size}}')
check "image is small: $((size / 1024)) KiB (< 20 MiB)" test "$size" -lt $((20 * 1024 * 1024))

# podman create/export need no running container.
CID=$(podman create "$TAG" 2>/dev/null) || die "podman create"
ROOTFS=$TMP/rootfs
mkdir -p "$ROOTFS"
podman export "$CID" | tar --numeric-owner -x -C "$ROOTFS" || die "podman export"
pass "exported the image filesystem"
check "once/ in the image belongs to the image user" test "$(stat -c %u:%g "$ROOTFS/srv/pxesrv/once")" = 65532:65532
check "the image's tree is the example tree" diff -r public "$ROOTFS/srv/pxesrv"

listening() {
    local hex
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { f = 1 } END { exit !f }'
}
PORT=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! listening "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || die "no free loopback port found"

# The container's environment: the image's Env, its User, its Entrypoint.
mapfile -t image_env < <(cfg '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
# in_image [VAR=value...] -- command...: runs command in the exported filesystem.
in_image() {
    local extra=()
    while [ "$1" != -- ]; do extra+=("$1"); shift; done
    shift
    env -i "${image_env[@]}" "${extra[@]}" chroot --userspec=65532:65532 "$ROOTFS" "$@"
}
if in_image -- /usr/bin/pxesrv check >/dev/null; then
    pass "pxesrv check passes on the image's boot tree"
else
    fail "pxesrv check passes on the image's boot tree"
fi
# Not through in_image: $! must be the server itself (env and chroot exec it).
env -i "${image_env[@]}" PXESRV_LISTEN="127.0.0.1:$PORT" \
    chroot --userspec=65532:65532 "$ROOTFS" /usr/bin/pxesrv >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
up=no
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=yes; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ $up = yes ]; then
    pass "server from the image answers on 127.0.0.1:$PORT"
else
    sed 's/^/  server: /' "$TMP/server.log"
    die "server from the image did not come up"
fi
if in_image PXESRV_LISTEN="127.0.0.1:$PORT" -- /usr/bin/pxesrv healthcheck >/dev/null; then
    pass "HEALTHCHECK command (pxesrv healthcheck) passes against the running server"
else
    fail "HEALTHCHECK command (pxesrv healthcheck) passes against the running server"
fi
if curl -fsS "http://127.0.0.1:$PORT/redirect" -o "$TMP/redirect.out"; then
    check "GET /redirect answers the image's default script" cmp -s "$TMP/redirect.out" public/default
else
    fail "GET /redirect"
fi
if stop_server "$SERVER_PID"; then
    if in_image PXESRV_LISTEN="127.0.0.1:$PORT" -- /usr/bin/pxesrv healthcheck >/dev/null 2>&1; then
        fail "HEALTHCHECK reports a stopped server as healthy"
    else
        pass "HEALTHCHECK fails once the server is stopped"
    fi
fi
if [ $FAILED -ne 0 ]; then sed 's/^/  server: /' "$TMP/server.log"; fi
[ $FAILED -eq 0 ]

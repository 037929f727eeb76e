#!/bin/sh
# Prepares the build context of Containerfile.local from locally built inputs,
# for hosts that cannot pull a base image:
#   target/container/rootfs/  the release binary, the shared libraries ldd
#                             lists for it, and /etc/passwd, /etc/group
#   target/container/tree/    the example boot tree (public/) without once/
#   target/container/once/    its once/, copied apart to be owned by the
#                             container user (the server's only write)
# Usage: var/container/stage.sh [CONTEXT_DIR]      (after cargo build --release)
set -eu
cd "$(dirname "$0")/../.."
bin=${CARGO_TARGET_DIR:-target}/release/pxesrv
ctx=${1:-target/container}
[ -x "$bin" ] || { echo "stage.sh: no $bin: run cargo build --release --locked first" >&2; exit 1; }

rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc" "$ctx/rootfs/srv"
cp "$bin" "$ctx/rootfs/usr/bin/pxesrv"
# The dynamic loader and every library it resolves, at the same paths.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"
    done
# The same unprivileged user as the distroless image of Dockerfile (65532).
printf 'root:x:0:0:root:/root:/sbin/nologin\npxesrv:x:65532:65532:pxesrv:/nonexistent:/sbin/nologin\n' \
    >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\npxesrv:x:65532:\n' >"$ctx/rootfs/etc/group"
cp -a public "$ctx/tree"
mkdir -p "$ctx/tree/once"
mv "$ctx/tree/once" "$ctx/once"
echo "stage.sh: context ready in $ctx"

#!/bin/sh
# mkman.sh BINARY VERSION SUMMARY OUTPUT
# Writes the man page of BINARY: its --help text (help2man) plus the
# hand-written sections in man/NAME.h2m. Used by debian/rules and pxesrv.spec.
set -eu
bin=$1
version=$2
summary=$3
out=$4
prog=$(basename "$bin")
include=$(dirname "$0")/$prog.h2m

if [ -n "$("$bin" --help 2>/dev/null || true)" ]; then
    exec help2man --no-info --version-string="$version" --include="$include" \
        --name="$summary" --output="$out" "$bin"
fi

# A binary without --help (a stub while it is being written) still gets the
# hand-written sections, and the build log says so.
echo "mkman.sh: WARNING: $bin prints no --help; $out has only $include" >&2
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
printf '#!/bin/sh\necho "Usage: %s [OPTIONS]"\necho\necho "This build of %s prints no --help."\n' \
    "$prog" "$prog" >"$shim/$prog"
chmod +x "$shim/$prog"
help2man --no-info --version-string="$version" --include="$include" \
    --name="$summary" --output="$out" "$shim/$prog"

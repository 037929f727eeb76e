# shellcheck shell=bash disable=SC2034  # FAILED is read by the sourcing script
# Shared by .ci/packages.sh and .ci/container.sh (sourced): PASS/FAIL lines, and the check
# that a server started in the background stops cleanly on SIGTERM. The caller sets FAILED=0
# and SERVER_PID.

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILED=1; }
# A failure after which nothing else makes sense: stop, the caller's trap cleans up.
die() { echo "FAIL: $*"; FAILED=1; exit 1; }
check() { # check "what" command...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# stop_server [PID]: SIGTERM to PID (default $SERVER_PID; a tracer's child, say), then up
# to 15 s for $SERVER_PID to exit, which must be with status 0. Returns 1 if it is still
# running; clears SERVER_PID once it has exited.
stop_server() {
    kill -TERM "${1:-$SERVER_PID}"
    local _ rc=0
    for _ in $(seq 150); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" || rc=$?
            SERVER_PID=
            check "SIGTERM: server exited with status $rc (want 0)" test "$rc" = 0
            return 0
        fi
        sleep 0.1
    done
    fail "SIGTERM: server still running after 15 s"
    return 1
}

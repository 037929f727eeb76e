#!/usr/bin/env bash
# Packaging check: builds the .deb and the .rpm from the release build, installs
# the .deb on this machine, runs the installed server the way pxesrv.service
# would, then removes and purges the package and checks what stays behind.
# Last, .ci/container.sh checks the container image built from the same binary.
#
# Expects: root on Debian 12, `cargo build --release --locked` already done
# (dpkg-buildpackage runs it again, which is then a no-op), and the packages
# in .ci/packages.deps installed. Leaves the machine as it found it: it
# refuses to run if pxesrv is installed or /srv/pxesrv exists, and its exit
# trap removes the package, the tree, the user and its temporary files.
#
# Usage: bash .ci/packages.sh      (prints PASS/FAIL lines, exits non-zero on a failure)

set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
T0=$(date +%s)
FAILED=0
TMP=
SERVER_PID=

# shellcheck source=.ci/lib.sh
. .ci/lib.sh

[ "$(id -u)" = 0 ] || die "must run as root (installs a package)"
if dpkg-query -W -f='${Status}' pxesrv 2>/dev/null | grep -qv 'not-installed'; then
    die "pxesrv is already installed here: refusing to touch an existing installation"
fi
if [ -e /srv/pxesrv ] || [ -L /srv/pxesrv ]; then
    die "/srv/pxesrv exists: refusing to touch an operator's boot tree"
fi
had_user=no
getent passwd pxesrv >/dev/null && had_user=yes
had_group=no
getent group pxesrv >/dev/null && had_group=yes
had_varlib=no
[ -e /var/lib/pxesrv ] && had_varlib=yes
had_varlog=no
[ -e /var/log/pxesrv ] && had_varlog=yes

cleanup() {
    local rc=$?
    set +e
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null
    fi
    if dpkg-query -W -f='${Status}' pxesrv 2>/dev/null | grep -qv 'not-installed'; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq pxesrv >/dev/null 2>&1 ||
            dpkg --purge pxesrv >/dev/null 2>&1
    fi
    rm -rf /srv/pxesrv /srv/pxesrv.dpkg-new
    [ $had_varlib = no ] && rm -rf /var/lib/pxesrv
    [ $had_varlog = no ] && rm -rf /var/log/pxesrv
    [ $had_user = no ] && getent passwd pxesrv >/dev/null && userdel pxesrv
    [ $had_group = no ] && getent group pxesrv >/dev/null && groupdel pxesrv
    (cd "$SRC" && debian/rules clean >/dev/null 2>&1)
    [ -n "$TMP" ] && rm -rf "$TMP"
    echo "packages.sh: $(($(date +%s) - T0)) s"
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        echo "FAIL: packages.sh"
        exit 1
    fi
    echo "PASS: packages.sh"
}
trap cleanup EXIT
TMP=$(mktemp -d /tmp/pxesrv-packages.XXXXXX)

# --- versions -------------------------------------------------------------------------------
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
deb_version=$(dpkg-parsechangelog -SVersion)
rpm_version=$(sed -n 's/^Version: *//p' pxesrv.spec)
check "versions agree: Cargo.toml $cargo_version, debian/changelog $deb_version, pxesrv.spec $rpm_version" \
    test "$cargo_version" = "$deb_version" -a "$cargo_version" = "$rpm_version"

# --- .deb -----------------------------------------------------------------------------------
if PXESRV_DEB_DESTDIR=$TMP dpkg-buildpackage -b -us -uc \
    --buildinfo-file="$TMP/pxesrv.buildinfo" --buildinfo-option=-u"$TMP" \
    --changes-file="$TMP/pxesrv.changes" --changes-option=-u"$TMP" \
    >"$TMP/deb-build.log" 2>&1; then
    pass "dpkg-buildpackage -b"
else
    tail -n 40 "$TMP/deb-build.log"
    die "dpkg-buildpackage -b (log above)"
fi
DEB=$(echo "$TMP"/pxesrv_*.deb)
[ -f "$DEB" ] || die "no .deb in $TMP"
dpkg-deb -c "$DEB" >"$TMP/deb-contents"
for f in ./usr/bin/pxesrv ./usr/bin/pxesrv-storage ./lib/systemd/system/pxesrv.service \
    ./lib/systemd/system/pxesrv-storage-restore.service ./etc/default/pxesrv \
    ./lib/systemd/system/pxesrv-storage-hook.socket ./lib/systemd/system/pxesrv-storage-hook@.service \
    ./usr/share/man/man1/pxesrv.1.gz ./usr/share/man/man1/pxesrv-storage.1.gz \
    ./usr/share/pxesrv/examples/public/default ./usr/share/doc/pxesrv/examples; do
    check "deb contains $f" grep -q " $f\( \|$\)" "$TMP/deb-contents"
done
check "deb marks /etc/default/pxesrv as a conffile" \
    sh -c "dpkg-deb --ctrl-tarfile '$DEB' | tar -xO ./conffiles | grep -qx /etc/default/pxesrv"
# No lintian error or warning: accepted tags are overridden, with the reason, in
# debian/pxesrv.lintian-overrides.
if lintian --fail-on error,warning "$TMP/pxesrv.changes" >"$TMP/lintian.log" 2>&1; then
    pass "lintian: no errors, no warnings"
else
    fail "lintian reported errors or warnings"
fi
grep -E '^[EWI]:' "$TMP/lintian.log" | sed 's/^/  lintian /' || true

# --- .rpm -----------------------------------------------------------------------------------
if rpmbuild -bb --define "_topdir $TMP/rpmbuild" pxesrv.spec >"$TMP/rpm-build.log" 2>&1; then
    pass "rpmbuild -bb pxesrv.spec"
else
    tail -n 40 "$TMP/rpm-build.log"
    die "rpmbuild -bb pxesrv.spec (log above)"
fi
RPM=$(echo "$TMP"/rpmbuild/RPMS/*/pxesrv-*.rpm)
rpm -qlp "$RPM" >"$TMP/rpm-contents"
for f in /usr/bin/pxesrv /usr/bin/pxesrv-storage /usr/lib/systemd/system/pxesrv.service \
    /usr/lib/systemd/system/pxesrv-storage-restore.service /etc/sysconfig/pxesrv \
    /usr/lib/systemd/system/pxesrv-storage-hook.socket /usr/lib/systemd/system/pxesrv-storage-hook@.service \
    /usr/lib/sysusers.d/pxesrv.conf /usr/share/man/man1/pxesrv.1 \
    /usr/share/pxesrv/examples/public/default /usr/share/doc/pxesrv/examples; do
    check "rpm -qlp lists $f" grep -qx "$f" "$TMP/rpm-contents"
done
check "rpm's unit reads /etc/sysconfig/pxesrv" sh -c \
    "rpm2archive - <'$RPM' | tar -xzO ./usr/lib/systemd/system/pxesrv.service | grep -qx 'EnvironmentFile=-/etc/sysconfig/pxesrv'"
for tag in PREIN POSTIN PREUN POSTUN; do
    check "rpm %$tag scriptlet parses (sh -n)" sh -c "rpm -qp --qf '%{$tag}' '$RPM' | sh -n"
done
check "rpm marks /etc/sysconfig/pxesrv as config" sh -c "rpm -qcp '$RPM' | grep -qx /etc/sysconfig/pxesrv"

# --- install --------------------------------------------------------------------------------
if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEB" \
    >"$TMP/install.log" 2>&1; then
    pass "apt-get install ./$(basename "$DEB")"
else
    cat "$TMP/install.log"
    die "apt-get install of the .deb (log above)"
fi
check "user pxesrv exists" sh -c "getent passwd pxesrv >/dev/null"
check "pxesrv --version says $cargo_version" sh -c "/usr/bin/pxesrv --version | grep -qF '$cargo_version'"
check "/srv/pxesrv was created from the example tree" \
    diff -r /usr/share/pxesrv/examples/public /srv/pxesrv
check "/srv/pxesrv/once belongs to pxesrv" test "$(stat -c %U /srv/pxesrv/once)" = pxesrv
check "/srv/pxesrv/default is not writable by pxesrv" \
    setpriv --reuid=pxesrv --regid=pxesrv --init-groups test ! -w /srv/pxesrv/default
check "/usr/share/doc/pxesrv/examples/public/default is readable" \
    test -r /usr/share/doc/pxesrv/examples/public/default

UNIT=/lib/systemd/system/pxesrv.service
# systemd-analyze verify runs `man` for Documentation=; skip that only if this
# system drops man pages (dpkg path-exclude, as minimal images do).
man_opt=--man=yes
[ -f /usr/share/man/man1/pxesrv.1.gz ] || man_opt=--man=no
check "systemd-analyze verify ($man_opt) on the installed units" \
    systemd-analyze verify "$man_opt" "$UNIT" /lib/systemd/system/pxesrv-storage-restore.service \
    /lib/systemd/system/pxesrv-storage-hook.socket
score=$(systemd-analyze security --offline=true "$UNIT" 2>/dev/null |
    sed -n 's/.*Overall exposure level for pxesrv.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security pxesrv.service: exposure $score (must be <= 2.0)" \
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'
check "pxesrv check passes on the installed tree (as user pxesrv)" \
    sh -c "setpriv --reuid=pxesrv --regid=pxesrv --init-groups /usr/bin/pxesrv check --root /srv/pxesrv >/dev/null"

# --- run as the unit would ------------------------------------------------------------------
# systemd is not PID 1 here (a container), so do what the unit does by hand:
# its User/Group, a clean environment with the EnvironmentFile, no new
# privileges, no capabilities, its ExecStart, and the file-system side of its
# sandbox as .ci/unit-sandbox.sh emulates it: everything read-only except the
# unit's ReadWritePaths= and LogsDirectory=, private /tmp and /dev, no /home,
# a /proc of processes only. Only the listen address and the log file (into
# the LogsDirectory, to check the server can write there) differ.
listening() { # port -> listening on TCP (v4 or v6)?
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

unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n1; }
exec_start=$(unit_value ExecStart)
unit_user=$(unit_value User)
unit_group=$(unit_value Group)
env_file=$(unit_value EnvironmentFile)
env_file=${env_file#-}
check "unit runs $exec_start as $unit_user:$unit_group with $env_file" \
    test "$unit_user" = pxesrv -a "$unit_group" = pxesrv -a "$env_file" = /etc/default/pxesrv

# The server's system calls are recorded (strace) to check them against the
# unit's SystemCallFilter below: the filter itself cannot run without systemd.
tracer=()
if strace -f -qq -o /dev/null true 2>/dev/null; then
    tracer=(strace -f -qq -o "$TMP/strace.out")
else
    echo "SKIP: syscall audit: strace is missing or cannot trace here (install strace)"
fi

# The writable paths of the unit, as systemd prepares them.
logs_dir=/var/log/$(unit_value LogsDirectory)
install -d -o "$unit_user" -g "$unit_group" -m 0750 "$logs_dir"
rw_paths=("$logs_dir")
# shellcheck disable=SC2013 # a ReadWritePaths= line is a word list
for p in $(sed -n 's/^ReadWritePaths=//p' "$UNIT"); do
    p=${p#-}
    [ -e "$p" ] && rw_paths+=("$p")
done
check "unit's writable paths: ${rw_paths[*]}" test ${#rw_paths[@]} -ge 2
# shellcheck disable=SC2086,SC2016 # split ExecStart like systemd; $1 is for the inner bash
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c 'set -a; . "$1"; set +a; shift; exec "$@"' _ "$env_file" \
    env PXESRV_LISTEN="127.0.0.1:$PORT" PXESRV_LOG="$logs_dir/pxesrv.log" \
    "${tracer[@]}" .ci/unit-sandbox.sh "${rw_paths[@]}" -- \
    setpriv --reuid="$unit_user" --regid="$unit_group" --init-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all $exec_start \
    >"$TMP/server.log" 2>&1 &
SERVER_PID=$!   # the server itself, or strace, which exits with the server's status

up=no
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=yes; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ $up = yes ]; then
    pass "installed server answers on 127.0.0.1:$PORT"
else
    sed 's/^/  server: /' "$TMP/server.log"
    die "installed server did not come up on 127.0.0.1:$PORT"
fi
# The process to signal: with strace, its child (setpriv exec'd the server).
TERM_PID=$SERVER_PID
if [ ${#tracer[@]} -gt 0 ]; then TERM_PID=$(ps -o pid= --ppid "$SERVER_PID" | tr -d ' '); fi

if curl -fsS "http://127.0.0.1:$PORT/redirect" -o "$TMP/redirect.out"; then
    pass "GET /redirect"
    if cmp -s "$TMP/redirect.out" /srv/pxesrv/default; then
        pass "GET /redirect answers the installed default script"
    else
        diff "$TMP/redirect.out" /srv/pxesrv/default | sed 's/^/  /'
        fail "GET /redirect is not the installed default script"
    fi
else
    fail "GET /redirect"
fi

# A once entry, set by the operator (root) the documented way: the server,
# as user pxesrv, must be able to consume it in the root-owned tree.
pxesrv --root /srv/pxesrv set once 127.0.0.1 menus/lab.ipxe >/dev/null ||
    fail "pxesrv set once 127.0.0.1 menus/lab.ipxe"
if curl -fsS -D "$TMP/once.headers" "http://127.0.0.1:$PORT/redirect" -o /dev/null &&
    grep -qi '^x-pxesrv-rule: once-ip' "$TMP/once.headers" &&
    grep -qi '^x-pxesrv-target: menus/lab.ipxe' "$TMP/once.headers"; then
    pass "GET /redirect answers the once entry (menus/lab.ipxe)"
else
    sed 's/^/  /' "$TMP/once.headers"
    fail "GET /redirect answers the once entry (menus/lab.ipxe)"
fi
once_consumed() {
    [ ! -e /srv/pxesrv/once/127.0.0.1 ] && [ ! -L /srv/pxesrv/once/127.0.0.1 ] &&
        find /srv/pxesrv/once/.consumed -name '*127.0.0.1' | grep -q .
}
check "the once entry was consumed by user pxesrv (moved to once/.consumed)" once_consumed

stop_server "$TERM_PID" || true
if [ $FAILED -ne 0 ]; then
    sed 's/^/  server: /' "$TMP/server.log"
    cat "$logs_dir"/pxesrv.log.* 2>/dev/null | sed 's/^/  log: /'
fi
logged() { find "$logs_dir" -name 'pxesrv.log.????-??-??' -exec grep -l 'once entry consumed' {} + | grep -q .; }
check "the server logged the once boot to $logs_dir/pxesrv.log.YYYY-MM-DD" logged

# Every system call the server made must pass the unit's SystemCallFilter=
# lines (allow lists, then ~deny lists), expanded by systemd-analyze.
expand_filter() { # names and @groups -> syscall names
    local x
    for x in "$@"; do
        case $x in
        @*) systemd-analyze syscall-filter "$x" | tail -n +2 |
            sed -n 's/^ *\([@a-z_0-9-]*\)$/\1/p' | while read -r y; do expand_filter "$y"; done ;;
        *) echo "$x" ;;
        esac
    done
}
if [ -s "$TMP/strace.out" ]; then
    used=$TMP/syscalls.used
    # From the exec of the server on: what setpriv did before is systemd's job.
    awk 'f && $2 ~ /^[a-z_0-9]+\(/ { sub(/\(.*/, "", $2); print $2 }
         $2 ~ /^execve\("\/usr\/bin\/pxesrv"/ { f = 1 }' "$TMP/strace.out" |
        sort -u >"$used"
    : >"$TMP/allowed"
    : >"$TMP/denied"
    while read -r line; do
        # shellcheck disable=SC2086 # a filter line is a word list
        case $line in
        "~"*) expand_filter ${line#\~} >>"$TMP/denied" ;;
        *) expand_filter $line >>"$TMP/allowed" ;;
        esac
    done < <(sed -n 's/^SystemCallFilter=//p' "$UNIT")
    sort -u -o "$TMP/allowed" "$TMP/allowed"
    sort -u -o "$TMP/denied" "$TMP/denied"
    blocked=$( (comm -23 "$used" "$TMP/allowed"; comm -12 "$used" "$TMP/denied") | sort -u | xargs)
    check "the server's $(wc -l <"$used") system calls all pass the unit's SystemCallFilter${blocked:+ (blocked: $blocked)}" \
        test -z "$blocked"
    # MemoryDenyWriteExecute=yes refuses W+X mappings and making memory executable.
    wx=$(awk 'f; $2 ~ /^execve\("\/usr\/bin\/pxesrv"/ { f = 1 }' "$TMP/strace.out" |
        grep -cE 'mprotect\([^)]*PROT_EXEC|mmap\([^)]*(PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE)' || true)
    check "MemoryDenyWriteExecute: the server made $wx writable-executable or mprotect(PROT_EXEC) mappings" \
        test "$wx" = 0
    families=$(grep -oE '(socket|socketpair)\(AF_[A-Z0-9]+' "$TMP/strace.out" | sed 's/.*(//' | sort -u | xargs)
    allowed_families=$(sed -n 's/^RestrictAddressFamilies=//p' "$UNIT")
    bad=$(for f in $families; do case " $allowed_families " in *" $f "*) ;; *) echo "$f" ;; esac; done | xargs)
    check "the server's socket families ($families) are in RestrictAddressFamilies${bad:+ (not: $bad)}" \
        test -z "$bad"
fi

# --- remove and purge -----------------------------------------------------------------------
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq pxesrv >"$TMP/remove.log" 2>&1 ||
    { cat "$TMP/remove.log"; die "apt-get remove pxesrv"; }
pass "apt-get remove pxesrv"
check "after remove: /usr/bin/pxesrv is gone" test ! -e /usr/bin/pxesrv
check "after remove: /srv/pxesrv is still there" test -f /srv/pxesrv/default
check "after remove: /etc/default/pxesrv is still there" test -f /etc/default/pxesrv

# An operator's change must survive even a purge.
echo "operator data" >/srv/pxesrv/static/ci-operator-note
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq pxesrv >"$TMP/purge.log" 2>&1 ||
    { cat "$TMP/purge.log"; die "apt-get purge pxesrv"; }
pass "apt-get purge pxesrv"
check "after purge: a changed /srv/pxesrv is kept" test -f /srv/pxesrv/static/ci-operator-note
check "after purge: /etc/default/pxesrv is gone" test ! -e /etc/default/pxesrv
rm -rf /srv/pxesrv

# An untouched example tree is what the package created: purge takes it away.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEB" \
    >"$TMP/install2.log" 2>&1 || { cat "$TMP/install2.log"; die "second apt-get install"; }
check "reinstall after purge: /srv/pxesrv created again" test -f /srv/pxesrv/default
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq pxesrv >"$TMP/purge2.log" 2>&1 ||
    { cat "$TMP/purge2.log"; die "second apt-get purge pxesrv"; }
check "purge of an untouched install: /srv/pxesrv removed" test ! -e /srv/pxesrv
check "purge: no pxesrv files left in /etc, /lib/systemd, /var/lib" sh -c \
    '! ls /etc/default/pxesrv /lib/systemd/system/pxesrv.service /var/lib/pxesrv /etc/systemd/system/multi-user.target.wants/pxesrv.service 2>/dev/null | grep -q .'

# --- container --------------------------------------------------------------------------------
# The image from the local release build: .ci/container.sh says what it can check here.
if bash .ci/container.sh; then pass "container (.ci/container.sh)"; else fail "container (.ci/container.sh)"; fi

# The trap prints the summary and cleans up.
[ $FAILED -eq 0 ]

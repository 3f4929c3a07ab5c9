#!/bin/sh
# Smoke test of the Debian package, by hand (not part of `make check`: it
# installs and removes a system package). As root on Debian 12, from the
# source tree:
#
#   tests/deploy/deb_smoke.sh [--no-build]
#
# 1. make deb (unless --no-build: build/deb/ must hold the package)
# 2. dpkg -i the package (apt-get install -f if dependencies are missing)
# 3. flotilla --version, man -w flotilla, the examples and the units are
#    where they belong, the units are not enabled, systemd-analyze verify
# 4. TLS material from the installed make-ca.sh, the signing key from
#    `flotilla keygen`, a server.ini made from the installed example with
#    those paths; the server started as the unit runs it (an unprivileged
#    user, the keys as credentials: docs/OPERATIONS.md), /healthz
#    and /metrics answered, a TLS 1.3 handshake verified against the CA, a
#    device enrolled (`flotilla client id`, `flotilla server enroll`,
#    SIGHUP); SIGTERM stops it with status 0
# 5. dpkg -r flotilla, then dpkg -P: nothing of the package is left
#
# Everything the test makes lives in a temporary directory, removed at the
# end; a failure removes the package too. Refuses to run if flotilla is
# already installed (as a package or as /usr/bin/flotilla).
set -eu

name=deb_smoke
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs a package)"
if dpkg-query -W -f='${Status}' flotilla 2>/dev/null | grep -q installed; then
    fail "the flotilla package is already installed; remove it first"
fi
[ ! -e /usr/bin/flotilla ] || fail "/usr/bin/flotilla exists; remove it first"

arch=$(dpkg --print-architecture)
deb=build/deb/flotilla_${version}_${arch}.deb

installed=0
cleanup_more() {
    if [ "$installed" = 1 ]; then
        dpkg -P flotilla >/dev/null 2>&1 || true
    fi
}

# ---- 1. build ---------------------------------------------------------------
if [ "$build" = 1 ]; then
    say "make deb"
    make --no-print-directory deb
fi
[ -f "$deb" ] || fail "$deb not found"
say "package: $deb"
dpkg-deb -f "$deb" Package Version Architecture Depends | sed 's/^/  /'

# ---- 2. install -------------------------------------------------------------
say "dpkg -i $deb"
installed=1
if ! dpkg -i "$deb"; then
    say "dependencies missing: apt-get install -f"
    DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq
fi
dpkg-query -W -f='${Status}\n' flotilla | grep -q 'install ok installed' \
    || fail "flotilla is not installed"

# ---- 3. what the package installed -----------------------------------------
v=$(flotilla --version)
say "flotilla --version: $v"
[ "$v" = "flotilla $version" ] || fail "expected 'flotilla $version'"
[ "$(command -v flotilla)" = /usr/bin/flotilla ] || fail "flotilla is not /usr/bin/flotilla"
m=$(man -w flotilla) || fail "man -w flotilla found no page"
say "man -w flotilla: $m"
ex=/usr/share/doc/flotilla/examples
for f in "$ex/server.example.ini" "$ex/client.example.ini" "$ex/make-ca.sh" \
         /lib/systemd/system/flotilla-server.service \
         /lib/systemd/system/flotilla-client.service; do
    [ -f "$f" ] || fail "$f not installed"
done
say "examples in $ex, units in /lib/systemd/system"
for u in flotilla-server flotilla-client; do
    if [ -e /etc/systemd/system/multi-user.target.wants/$u.service ]; then
        fail "$u.service was enabled on install"
    fi
done
say "units installed, not enabled"
# Anything secret would be a key file; the package ships none.
if dpkg -L flotilla | grep -E '\.(key|pem)$'; then fail "the package ships key files"; fi
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/flotilla-server.service \
        /lib/systemd/system/flotilla-client.service || fail "systemd-analyze verify"
    say "systemd-analyze verify: both units pass"
fi

# ---- 4. keys, configuration, a server start and stop -----------------------
etc=$tmp/etc
state=$tmp/state
sh "$ex/make-ca.sh" --out "$etc" --server-name localhost --server-ip 127.0.0.1 >/dev/null
flotilla keygen --out "$etc/model-signing" >/dev/null
for f in ca.crt server.crt server.key model-signing.key model-signing.pub; do
    [ -s "$etc/$f" ] || fail "$f was not made"
done
[ "$(stat -c %a "$etc/server.key")" = 600 ] || fail "server.key is not mode 0600"
[ "$(stat -c %a "$etc/model-signing.key")" = 600 ] || fail "model-signing.key is not mode 0600"
say "TLS material (make-ca.sh) and signing key (flotilla keygen) in a temporary /etc/flotilla"

# The installed example with its /etc/flotilla and /var/lib paths moved to
# the temporary directory, and free ports.
sed -e "s|/etc/flotilla|$etc|g" -e "s|/var/lib/flotilla-server|$state|g" \
    -e 's/^port = .*/port = 0/' -e 's/^metrics-port = .*/metrics-port = 0/' \
    "$ex/server.example.ini" > "$etc/server.ini"
grep -q "^tls-key = $etc/server.key" "$etc/server.ini" || fail "server.ini was not rewritten"

# As the unit runs it: an unprivileged user (the unit's DynamicUser; here
# nobody), a state directory it owns, the secret keys handed over as
# credentials the way the LoadCredential= drop-in of docs/OPERATIONS.md does
# (a directory of the service user's, mode 0500, files mode 0400), and the
# ExecStart of that drop-in, with the configuration and state moved.
svc_user=nobody
svc_group=$(id -gn "$svc_user")
cred=$tmp/credentials
mkdir -p "$state" "$cred"
chmod 0755 "$tmp" "$etc"
chmod 0644 "$etc/server.ini"
install -m 0400 -o "$svc_user" "$etc/server.key" "$cred/server.key"
install -m 0400 -o "$svc_user" "$etc/model-signing.key" "$cred/model-signing.key"
chown "$svc_user" "$cred" "$state"
chmod 0500 "$cred"
chmod 0700 "$state"
log=$tmp/server.log
CREDENTIALS_DIRECTORY=$cred
setpriv --reuid="$svc_user" --regid="$svc_group" --clear-groups \
    flotilla server --config "$etc/server.ini" --state "$state" \
    --tls-key "$CREDENTIALS_DIRECTORY/server.key" \
    --signing-key "$CREDENTIALS_DIRECTORY/model-signing.key" >"$log" 2>&1 &
server_pid=$!
i=0
while ! grep -q 'devices connect to' "$log"; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "the server exited"; }
    i=$((i + 1)); [ $i -lt 100 ] || { cat "$log" >&2; fail "the server did not start"; }
    sleep 0.1
done
port=$(sed -n 's/.*devices connect to [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
murl=$(sed -n 's/.*metrics on \(http[^ ]*\).*/\1/p' "$log" | head -1)
say "server started as $svc_user with credentials (pid $server_pid): devices on port $port, metrics on $murl"

if command -v curl >/dev/null; then
    [ "$(curl -fsS "${murl%/metrics}/healthz")" = ok ] || fail "/healthz did not answer ok"
    curl -fsS "$murl" | grep -q '^flotilla_model_version ' || fail "/metrics lacks flotilla_model_version"
    say "/healthz ok, /metrics answers"
fi
if command -v openssl >/dev/null; then
    out=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -tls1_3 \
          -CAfile "$etc/ca.crt" -verify_return_error -brief </dev/null 2>&1) \
        || { echo "$out" >&2; fail "TLS handshake"; }
    echo "$out" | grep -q 'TLSv1.3' || { echo "$out" >&2; fail "not TLS 1.3"; }
    say "TLS 1.3 handshake verified against the CA"
fi

# Enrol a device: its identity from `flotilla client id`, then SIGHUP.
dev=$(flotilla client id --state "$tmp/device" 2>/dev/null)
flotilla server enroll --state "$state" --name smoke-device "$dev" >/dev/null 2>&1
# root wrote the enrolment files: back to the service user, as documented.
chown -R --reference="$state" "$state/"
flotilla server list --state "$state" | grep -q "^$dev smoke-device" || fail "device not enrolled"
kill -HUP "$server_pid"
i=0
while ! grep -q 'enrolment reloaded: 1 devices' "$log"; do
    i=$((i + 1)); [ $i -lt 50 ] || { cat "$log" >&2; fail "SIGHUP did not reload the enrolment"; }
    sleep 0.1
done
say "device enrolled and the enrolment reloaded on SIGHUP"

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || { cat "$log" >&2; fail "the server exited with $status on SIGTERM"; }
grep -q 'stopped' "$log" || fail "no 'stopped' in the server log"
say "SIGTERM: the server stopped with status 0"

# ---- 5. remove --------------------------------------------------------------
dpkg -r flotilla >/dev/null
[ ! -e /usr/bin/flotilla ] || fail "/usr/bin/flotilla left after dpkg -r"
[ ! -e /lib/systemd/system/flotilla-server.service ] || fail "unit left after dpkg -r"
dpkg -P flotilla >/dev/null
installed=0
if dpkg-query -W -f='${Status}' flotilla 2>/dev/null | grep -q installed; then
    fail "flotilla still known to dpkg"
fi
say "dpkg -r and dpkg -P: removed cleanly"

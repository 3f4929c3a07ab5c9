#!/bin/sh
# Smoke test of the arm64 Debian package on an amd64 host, by hand (not part
# of `make check`: building the package takes minutes). Needs the cross
# toolchain and multiarch libraries (deploy/install-deps.sh --cross arm64)
# and qemu-user. From the source tree:
#
#   tests/deploy/deb_arm64_smoke.sh [--no-build]
#
# 1. make deb CROSS=aarch64-linux-gnu (unless --no-build: build/deb-arm64/
#    must hold the package)
# 2. the package is for arm64, its binary an aarch64 executable; the man
#    page, examples and units are in it
# 3. unpacked (dpkg-deb -x) in a temporary directory, the binary runs under
#    qemu-aarch64 with the multiarch libraries: --version, keygen, sign and
#    verify a version directory (a flipped byte is refused), and the server
#    from the packaged example configuration with TLS material from the
#    packaged make-ca.sh: /healthz, /metrics and a TLS 1.3 handshake
#    verified against the CA; SIGTERM stops it with status 0
#
# Nothing is installed; the temporary directory is removed at the end.
set -eu

name=deb_arm64_smoke
. "$(dirname "$0")/lib.sh"

command -v qemu-aarch64 >/dev/null || fail "qemu-aarch64 not found (qemu-user)"
[ -e /lib/ld-linux-aarch64.so.1 ] || fail "no arm64 libc (deploy/install-deps.sh --cross arm64)"

deb=build/deb-arm64/flotilla_${version}_arm64.deb

# ---- 1. build ---------------------------------------------------------------
if [ "$build" = 1 ]; then
    say "make deb CROSS=aarch64-linux-gnu"
    make --no-print-directory deb CROSS=aarch64-linux-gnu
fi
[ -f "$deb" ] || fail "$deb not found"
say "package: $deb"
dpkg-deb -f "$deb" Package Version Architecture Depends | sed 's/^/  /'
[ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || fail "not an arm64 package"

# ---- 2. contents ------------------------------------------------------------
root=$tmp/root
dpkg-deb -x "$deb" "$root"
bin=$root/usr/bin/flotilla
[ -x "$bin" ] || fail "usr/bin/flotilla missing or not executable"
file -b "$bin" | grep -q 'ARM aarch64' || fail "usr/bin/flotilla is not an aarch64 executable"
ex=$root/usr/share/doc/flotilla/examples
for f in "$root/usr/share/man/man1/flotilla.1.gz" "$ex/server.example.ini" \
         "$ex/client.example.ini" "$ex/make-ca.sh" \
         "$root/lib/systemd/system/flotilla-server.service" \
         "$root/lib/systemd/system/flotilla-client.service"; do
    [ -f "$f" ] || fail "${f#$root} not in the package"
done
say "aarch64 binary, man page, examples and units in the package"

# ---- 3. the binary under qemu ----------------------------------------------
fl() { qemu-aarch64 -L / "$bin" "$@"; }
v=$(fl --version)
[ "$v" = "flotilla $version" ] || fail "--version said '$v'"
say "flotilla --version under qemu-aarch64: $v"

etc=$tmp/etc
mkdir -p "$etc" "$tmp/v"
fl keygen --out "$etc/model-signing" >/dev/null
head -c 4096 /dev/urandom > "$tmp/v/model.bin"
echo q8 > "$tmp/v/model.q8"
fl sign --key "$etc/model-signing.key" "$tmp/v" >/dev/null
fl verify --pub "$etc/model-signing.pub" "$tmp/v" >/dev/null || fail "verify refused a signed version"
printf '\001' | dd of="$tmp/v/model.bin" bs=1 seek=100 conv=notrunc 2>/dev/null
if fl verify --pub "$etc/model-signing.pub" "$tmp/v" >/dev/null 2>&1; then
    fail "verify accepted a changed model.bin"
fi
say "keygen, sign, verify; a changed byte is refused"

sh "$ex/make-ca.sh" --out "$etc" --server-name localhost --server-ip 127.0.0.1 >/dev/null
state=$tmp/state
sed -e "s|/etc/flotilla|$etc|g" -e "s|/var/lib/flotilla-server|$state|g" \
    -e 's/^port = .*/port = 0/' -e 's/^metrics-port = .*/metrics-port = 0/' \
    "$ex/server.example.ini" > "$etc/server.ini"
mkdir -p "$state"
chmod 0700 "$state"
log=$tmp/server.log
qemu-aarch64 -L / "$bin" server --config "$etc/server.ini" >"$log" 2>&1 &
server_pid=$!
i=0
while ! grep -q 'metrics on' "$log" || ! grep -q 'devices connect to' "$log"; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "the server exited"; }
    i=$((i + 1)); [ $i -lt 300 ] || { cat "$log" >&2; fail "the server did not start"; }
    sleep 0.1
done
port=$(sed -n 's/.*devices connect to [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
murl=$(sed -n 's/.*metrics on \(http[^ ]*\).*/\1/p' "$log" | head -1)
say "server under qemu-aarch64 (pid $server_pid): devices on port $port, metrics on $murl"
[ "$(curl -fsS "${murl%/metrics}/healthz")" = ok ] || fail "/healthz did not answer ok"
curl -fsS "$murl" | grep -q '^flotilla_model_version ' || fail "/metrics lacks flotilla_model_version"
out=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost -tls1_3 \
      -CAfile "$etc/ca.crt" -verify_return_error -brief </dev/null 2>&1) \
    || { echo "$out" >&2; fail "TLS handshake"; }
echo "$out" | grep -q 'TLSv1.3' || { echo "$out" >&2; fail "not TLS 1.3"; }
say "/healthz ok, /metrics answers, TLS 1.3 handshake verified against the CA"

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || { cat "$log" >&2; fail "the server exited with $status on SIGTERM"; }
say "SIGTERM: the server stopped with status 0"

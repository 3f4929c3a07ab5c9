#!/bin/sh
# Install every Debian package flotilla needs to build, test and run.
# Idempotent: quiet and quick when everything is already present.
# Usage: deploy/install-deps.sh [--check]   (--check: exit 1 if anything is missing, install nothing)
set -eu

PKGS="build-essential pkg-config clang
libuv1-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler libsodium-dev
libopenblas-dev check libinih-dev libjansson-dev
fortunes gnuplot-nox python3 python3-numpy python3-nacl openssl curl
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
# Installed without recommends (the recommends pull in a large CUDA-free but heavy stack).
PKGS_NORECOMMENDS="python3-torch"

missing=""
for p in $PKGS $PKGS_NORECOMMENDS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing packages:$missing" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: these Debian packages are missing:$missing" >&2
    echo "install-deps.sh: run this script as root (or: sudo $0) to install them" >&2
    exit 1
fi

echo "install-deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
norec=""
rec=""
for p in $missing; do
    case " $PKGS_NORECOMMENDS " in
        *" $p "*) norec="$norec $p" ;;
        *) rec="$rec $p" ;;
    esac
done
if [ -n "$rec" ]; then
    apt-get install -y -qq $rec >/dev/null
fi
if [ -n "$norec" ]; then
    apt-get install -y -qq --no-install-recommends $norec >/dev/null
fi
echo "install-deps.sh: done"

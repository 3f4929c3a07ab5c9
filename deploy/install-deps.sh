#!/bin/sh
# Install every Debian package flotilla needs to build, test and run.
# Idempotent: quiet and quick when everything is already present.
# Usage: deploy/install-deps.sh [--check] [--cross ARCH]
#   --check       exit 1 if anything is missing, install nothing
#   --cross ARCH  also the libraries of Debian architecture ARCH (e.g. arm64)
#                 for `make CROSS=aarch64-linux-gnu`, with qemu-user to run tests
set -eu

check_only=0
cross=""
while [ $# -gt 0 ]; do
    case "$1" in
        --check) check_only=1; shift ;;
        --cross) cross=${2:?--cross needs an architecture}; shift 2 ;;
        *) echo "install-deps.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

PKGS="build-essential pkg-config clang libclang-rt-14-dev
libuv1-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler libsodium-dev
libopenblas-dev check libinih-dev libjansson-dev
debhelper dpkg-dev fakeroot
fortunes gnuplot-nox python3 python3-numpy python3-nacl python3-cryptography openssl curl
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
# Installed without recommends (the recommends pull in a large CUDA-free but heavy stack).
PKGS_NORECOMMENDS="python3-torch"

CROSS_LIBS="libuv1-dev libssl-dev libprotobuf-c-dev libsodium-dev libopenblas-dev
check libinih-dev libjansson-dev"
PKGS_CROSS=""
if [ -n "$cross" ]; then
    for p in $CROSS_LIBS; do PKGS_CROSS="$PKGS_CROSS $p:$cross"; done
    case "$cross" in
        arm64) PKGS_CROSS="$PKGS_CROSS gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
        *) PKGS_CROSS="$PKGS_CROSS gcc-$cross-linux-gnu" ;;
    esac
fi

missing=""
for p in $PKGS $PKGS_NORECOMMENDS $PKGS_CROSS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$check_only" = 1 ]; then
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
if [ -n "$cross" ] && ! dpkg --print-foreign-architectures | grep -qx "$cross"; then
    dpkg --add-architecture "$cross"
fi
apt-get update -qq
norec=""
rec=""
for p in $missing; do
    case " $PKGS_NORECOMMENDS " in
        *" $p "*|*:*) norec="$norec $p" ;;
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

#!/usr/bin/env bash
# Installs the comparison peers (rsyslog with mmnormalize, syslog-ng-core) into a private
# directory without installing either as a system package.
#
# Why unpack instead of `apt-get install`: rsyslog and syslog-ng-core conflict as Debian
# packages (both provide system-log-daemon), and installing either one would register and may
# start a system syslog service, which the benchmark must never touch. So: their shared-library
# dependencies come from apt (plain libraries, no services), the daemons themselves are
# `apt-get download`ed and unpacked with `dpkg-deb -x`, and the harness runs them with their
# module path (-M) pointing into the private tree, their own config, pid file and high ports.
#
# Idempotent: re-running only re-checks. Usage: install-peers.sh [PEER_DIR]
set -euo pipefail

PEER_DIR="${1:-${SLUICE_PEER_DIR:-/var/tmp/sluice-peers}}"
STAMP="$PEER_DIR/.installed-v1"

if [[ -f "$STAMP" && -x "$PEER_DIR/root/usr/sbin/rsyslogd" && -x "$PEER_DIR/root/usr/sbin/syslog-ng" ]]; then
    echo "peers already installed in $PEER_DIR"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Libraries only: the dependencies of rsyslog (incl. liblognorm for mmnormalize) and of
# syslog-ng-core. None of these ships a service. util-linux provides taskset.
$SUDO apt-get install -y -qq --no-install-recommends \
    libestr0 libfastjson4 liblognorm5 libuuid1 libzstd1 zlib1g libsystemd0 \
    libcap2 libglib2.0-0 libivykis0 libjson-c5 libnet1 libpcre3 libssl3 libwrap0 \
    util-linux procps >/dev/null

mkdir -p "$PEER_DIR/debs" "$PEER_DIR/root"
cd "$PEER_DIR/debs"
rm -f ./*.deb
apt-get download rsyslog syslog-ng-core >/dev/null
for deb in ./*.deb; do
    dpkg-deb -x "$deb" "$PEER_DIR/root"
done

"$PEER_DIR/root/usr/sbin/rsyslogd" -v | head -1
LD_LIBRARY_PATH="$PEER_DIR/root/usr/lib/x86_64-linux-gnu:$PEER_DIR/root/usr/lib/syslog-ng" \
    "$PEER_DIR/root/usr/sbin/syslog-ng" --version | head -1 || true
dpkg-deb -f rsyslog_*.deb Version >"$PEER_DIR/rsyslog.version"
dpkg-deb -f syslog-ng-core_*.deb Version >"$PEER_DIR/syslog-ng.version"
touch "$STAMP"
echo "peers installed in $PEER_DIR"

#!/usr/bin/env bash
# Builds the Debian python3 + grpcio test image of the grpc and HTTPS probe
# test (tests/probes.rs), from Debian bookworm's packages with mmdebstrap
# and umoci, as images/build-nginx.sh builds nginx:
#
#   images/build-python-grpc.sh [OUT_DIR]   (default: target/guest/oci)
#
#   OUT_DIR/python-grpc-oci.tar   OCI image layout as a tar, named
#                                 python-grpc:latest
#
# The root file system is mmdebstrap's `essential` variant plus
# python3-grpcio (which brings python3) and openssl (the test's HTTPS server
# makes its self-signed certificate with it). The test's servers are not in
# the image: the test passes tests/fixtures/probe_servers.py in a ConfigMap.
# Docs, man pages and locales are left out; usrmerge and perl are purged
# (see build-nginx.sh). Config: Cmd ["python3"], Env PATH.
#
# Cached in ~/.cache/unipod/python-grpc/<key>/ by a hash of this script and
# the two tools' versions, as nginx's.
set -euo pipefail
umask 022
out=$(realpath -m "${1:-target/guest/oci}")
cache_root="${UNIPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unipod}/python-grpc"
# shellcheck source=images/lib/debian-oci.sh
. "$(dirname "$0")/lib/debian-oci.sh"
ensure_image_tools
key=$(image_cache_key "$0")
cached="$cache_root/$key"
if [ -f "$cached/python-grpc-oci.tar" ]; then
  say "python-grpc OCI image: cached (key $key)"
else
  [ "$(id -u)" = 0 ] || { say "ERROR: building the python-grpc image needs root (mmdebstrap, umoci unpack)"; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  start=$(date +%s)
  say "python-grpc OCI image: mmdebstrap bookworm essential + python3-grpcio, openssl"
  mmdebstrap --quiet --variant=essential --include=usr-is-merged,python3-grpcio,openssl \
    "${DEBIAN_SLIM_DPKGOPTS[@]}" \
    --customize-hook='chroot "$1" sh -c "dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl >/dev/null 2>&1 || true"' \
    --customize-hook='chroot "$1" python3 -c "import grpc, ssl"' \
    bookworm "$work/rootfs.tar"

  oci_image "$work" "$work/rootfs.tar" python-grpc "images/build-python-grpc.sh: mmdebstrap bookworm essential + python3-grpcio, openssl" \
    --config.cmd python3 \
    --clear config.env --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  rm -rf "$cached.tmp"
  mkdir -p "$cached.tmp"
  mv "$work/python-grpc-oci.tar" "$cached.tmp/"
  rm -rf "$cached"
  mv "$cached.tmp" "$cached"
  say "python-grpc OCI image built in $(( $(date +%s) - start )) s (key $key)"
fi

mkdir -p "$out"
cp "$cached/python-grpc-oci.tar" "$out/python-grpc-oci.tar"
say "python-grpc OCI image: $out/python-grpc-oci.tar ($(du -m "$out/python-grpc-oci.tar" | cut -f1) MiB)"

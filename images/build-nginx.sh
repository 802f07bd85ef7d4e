#!/usr/bin/env bash
# Builds a stock Debian nginx image for 'unipod image import', from Debian
# bookworm's packages with mmdebstrap and umoci, with no registry and no
# docker:
#
#   images/build-nginx.sh [OUT_DIR]   (default: target/guest/oci)
#
#   OUT_DIR/nginx/          OCI image layout, index annotated
#                           org.opencontainers.image.ref.name=nginx:latest
#   OUT_DIR/nginx-oci.tar   the same layout as a tar
#
# The root file system is mmdebstrap's `essential` variant plus
# nginx-light: Debian's own /etc/nginx, whose default site listens on both
# 0.0.0.0:80 and [::]:80, and /var/www/html/index.nginx-debian.html.
# usrmerge (and the perl it pulls in) is purged afterwards: /usr is merged
# already, and it doubles the image. Docs, man pages and locales are left
# out. Config as the Docker library image's: Cmd ["nginx", "-g",
# "daemon off;"], StopSignal SIGQUIT, port 80/tcp, and no Env at all, so the
# runtime's default PATH is what finds `nginx`.
#
# The packages come from the Debian mirror, so the result is not
# byte-reproducible; it is cached in ~/.cache/unipod/nginx/<key>/ by a hash
# of this script and the two tools' versions, and rebuilt only when one of
# them changes (26 s on a fresh cache here; 86 s beside a kernel build).
set -euo pipefail
umask 022
out=$(realpath -m "${1:-target/guest/oci}")
cache_root="${UNIPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unipod}/nginx"
# shellcheck source=images/lib/debian-oci.sh
. "$(dirname "$0")/lib/debian-oci.sh"
ensure_image_tools
key=$(image_cache_key "$0")
cached="$cache_root/$key"
if [ -f "$cached/nginx-oci.tar" ] && [ -f "$cached/nginx/index.json" ]; then
  say "nginx OCI image: cached (key $key)"
else
  [ "$(id -u)" = 0 ] || { say "ERROR: building the nginx image needs root (mmdebstrap, umoci unpack)"; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  start=$(date +%s)
  say "nginx OCI image: mmdebstrap bookworm essential + nginx-light"
  mmdebstrap --quiet --variant=essential --include=usr-is-merged,nginx-light \
    "${DEBIAN_SLIM_DPKGOPTS[@]}" \
    --customize-hook='chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl perl-modules-5.36 libperl5.36 libgdbm-compat4 libgdbm6 >/dev/null' \
    bookworm "$work/rootfs.tar"
  # grep -q would close the pipe early and fail tar under pipefail.
  if ! tar -xOf "$work/rootfs.tar" ./etc/nginx/sites-available/default | grep 'listen \[::\]:80 default_server;' >/dev/null; then
    say "ERROR: Debian's default nginx site no longer listens on [::]:80"
    exit 1
  fi

  oci_image "$work" "$work/rootfs.tar" nginx "images/build-nginx.sh: mmdebstrap bookworm essential + nginx-light" \
    --config.cmd nginx --config.cmd -g --config.cmd 'daemon off;' \
    --config.stopsignal SIGQUIT --config.exposedports 80/tcp \
    --clear config.env
  image="$work/nginx"
  rm -rf "$cached.tmp"
  mkdir -p "$cached.tmp"
  mv "$image" "$work/nginx-oci.tar" "$cached.tmp/"
  rm -rf "$cached"
  mv "$cached.tmp" "$cached"
  say "nginx OCI image built in $(( $(date +%s) - start )) s (key $key)"
fi

mkdir -p "$out"
rm -rf "$out/nginx"
cp -a "$cached/nginx" "$out/nginx"
cp "$cached/nginx-oci.tar" "$out/nginx-oci.tar"
say "nginx OCI image: $out/nginx, $out/nginx-oci.tar ($(du -m "$out/nginx-oci.tar" | cut -f1) MiB)"

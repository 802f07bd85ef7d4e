#!/usr/bin/env bash
# Builds a guest initramfs (uncompressed newc cpio: unpacking a compressed one
# costs seconds of emulated ring-0 time on nested PVM hosts).
#
#   images/build-initramfs.sh boot-test OUT   busybox /init that prints a marker,
#                                             writes the boot-timer byte and reboots
#
# The output is reproducible: fixed mtimes, sorted names, --reproducible cpio.
set -euo pipefail
kind=${1:?usage: build-initramfs.sh boot-test OUT}
out=$(realpath -m "${2:?usage: build-initramfs.sh boot-test OUT}")
here=$(cd "$(dirname "$0")" && pwd)

for p in busybox-static cpio; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    echo "[images] installing $p with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
  fi
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc}
cp /bin/busybox "$root/bin/busybox"
for applet in sh echo uname ls cat mount devmem reboot sleep; do
  ln -s busybox "$root/bin/$applet"
done
case "$kind" in
  boot-test) install -m 0755 "$here/boot-test-init.sh" "$root/init" ;;
  *) echo "unknown initramfs kind: $kind" >&2; exit 2 ;;
esac
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1
find "$root" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
(
  cd "$root"
  { echo .; find . -mindepth 1 | LC_ALL=C sort; } \
    | cpio --quiet --reproducible -o -H newc -R 0:0 > "$out.tmp"
)
mv "$out.tmp" "$out"
echo "[images] $kind initramfs: $out ($(stat -c %s "$out") bytes)"

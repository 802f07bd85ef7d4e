#!/usr/bin/env bash
# Builds a guest initramfs (uncompressed newc cpio: unpacking a compressed one
# costs seconds of emulated ring-0 time on nested PVM hosts).
#
#   images/build-initramfs.sh boot-test OUT   busybox /init that prints a marker,
#                                             writes the boot-timer byte and reboots
#   images/build-initramfs.sh agent OUT AGENT_BINARY
#                                             unipod-agent (static musl) as /init, plus
#                                             busybox with all its applets for debugging
#
# The output is reproducible: fixed mtimes, sorted names, --reproducible cpio.
# It is cached in ~/.cache/unipod/initramfs/<key>.cpio, keyed by a hash of the
# kind, this script, the kind's inputs and the busybox-static version, so an
# unchanged image is a copy, not a rebuild.
set -euo pipefail
umask 022 # file modes in the image must not depend on the caller's umask
usage="usage: build-initramfs.sh boot-test OUT | build-initramfs.sh agent OUT AGENT_BINARY"
kind=${1:?$usage}
out=$(realpath -m "${2:?$usage}")
here=$(cd "$(dirname "$0")" && pwd)
cache_root="${UNIPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unipod}/initramfs"
say() { echo "[images] $*"; }

case "$kind" in
  boot-test) inputs=("$here/boot-test-init.sh") ;;
  agent)
    agent=${3:?$usage}
    [ -f "$agent" ] || { echo "agent binary not found: $agent (run 'make images')" >&2; exit 2; }
    # /init runs before any loader exists: a dynamically linked agent would
    # fail with a bare "No such file or directory" from the kernel.
    if file -b "$agent" | grep -q "dynamically linked"; then
      echo "$agent is dynamically linked; build it with --target x86_64-unknown-linux-musl" >&2
      exit 2
    fi
    inputs=("$agent")
    ;;
  *) echo "unknown initramfs kind: $kind" >&2; echo "$usage" >&2; exit 2 ;;
esac

for p in busybox-static cpio; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    say "installing $p with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
  fi
done

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
key=$( { echo "$kind $busybox_version"; cat "$0" "${inputs[@]}"; } | sha256sum | cut -c1-16)
cached="$cache_root/$kind-$key.cpio"
mkdir -p "$(dirname "$out")"
if [ -f "$cached" ]; then
  # Copy only on change, so an unchanged image keeps its mtime.
  cmp -s "$cached" "$out" || cp "$cached" "$out"
  say "$kind initramfs: $out (cached, key $key)"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc}
cp /bin/busybox "$root/bin/busybox"
case "$kind" in
  boot-test)
    for applet in sh echo uname ls cat mount devmem reboot sleep head dd; do
      ln -s busybox "$root/bin/$applet"
    done
    install -m 0755 "$here/boot-test-init.sh" "$root/init"
    ;;
  agent)
    # Every applet, for poking around from a debug shell in the guest, except
    # the ones that would pose as init. The common bin dirs all lead to /bin.
    for applet in $(/bin/busybox --list | LC_ALL=C sort); do
      case "$applet" in busybox|init|linuxrc) continue ;; esac
      ln -s busybox "$root/bin/$applet"
    done
    ln -s bin "$root/sbin"
    mkdir -p "$root/usr"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    # Mount points the agent fills (it creates missing ones, but the rootfs
    # should not depend on that). /sys/fs/cgroup lives inside sysfs.
    mkdir -p "$root/run"
    chmod 1777 "$root/tmp"
    echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
    # Stripped: its symbols would only take guest memory (tmpfs).
    install -m 0755 -s "$agent" "$root/init"
    ;;
esac
# The kernel opens /dev/console for init's stdio before anything is mounted.
mknod -m 600 "$root/dev/console" c 5 1
find "$root" -exec touch -h -d @0 {} +
(
  cd "$root"
  { echo .; find . -mindepth 1 | LC_ALL=C sort; } \
    | cpio --quiet --reproducible -o -H newc -R 0:0 > "$out.tmp"
)
mkdir -p "$cache_root"
rm -f "$cache_root/$kind"-*.cpio # keep one image per kind
cp "$out.tmp" "$cached.tmp" && mv "$cached.tmp" "$cached"
mv "$out.tmp" "$out"
say "$kind initramfs: $out ($(stat -c %s "$out") bytes, key $key)"

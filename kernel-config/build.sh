#!/usr/bin/env bash
# Builds the unipod guest kernel (target/guest/vmlinux) from Debian's
# linux-source-6.1, our config fragment and our patches.
#
# The result is cached in ~/.cache/unipod/kernel/<hash>/, keyed by a hash of
# the fragment, the patches, this script and the source package version, so a
# second run (or a fresh clone on the same machine) does no work.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out="$root/target/guest/vmlinux"
cache_root="${UNIPOD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unipod}/kernel"
say() { echo "[kernel] $*"; }

need_pkgs=(linux-source-6.1 bc flex bison libelf-dev make gcc)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$src_version"; cat "$here/unipod.config" "$here"/patches/*.patch; } | sha256sum | cut -c1-16)
cached="$cache_root/$key/vmlinux"

if [ -f "$cached" ]; then
  say "cached: $cached (key $key)"
else
  work="$cache_root/build-$key"
  # Leftovers of interrupted or failed builds are 1.5 GB each.
  rm -rf "$cache_root"/build-*
  mkdir -p "$work"
  say "unpacking linux-source $src_version"
  tar -C "$work" -xf /usr/src/linux-source-6.1.tar.xz
  ksrc="$work/linux-source-6.1"
  for p in "$here"/patches/*.patch; do
    say "applying $(basename "$p")"
    patch -s -p1 -d "$ksrc" < "$p"
  done
  say "configuring: tinyconfig + unipod.config"
  make -s -C "$ksrc" tinyconfig >/dev/null
  (cd "$ksrc" && scripts/kconfig/merge_config.sh -m .config "$here/unipod.config" >/dev/null 2>&1)
  make -s -C "$ksrc" olddefconfig >/dev/null 2>&1
  # merge_config only warns; a setting that did not stick is a build error.
  bad=0
  while IFS= read -r line; do
    case "$line" in \#*|"") continue ;; esac
    name=${line%%=*}; val=${line#*=}
    if [ "$val" = n ]; then
      grep -q "^$name=" "$ksrc/.config" && { say "ERROR: $name should be off"; bad=1; }
    else
      grep -qx "$line" "$ksrc/.config" || { say "ERROR: $line did not stick"; bad=1; }
    fi
  done < "$here/unipod.config"
  [ $bad -eq 0 ] || exit 1
  say "building vmlinux with $(nproc) jobs (about 5 minutes on 2 cores)"
  start=$(date +%s)
  make -C "$ksrc" -j"$(nproc)" vmlinux 2>&1 | grep --line-buffered -E '^\s+(CC|LD|AR)\b' | awk 'NR % 200 == 0 { print "[kernel] ... " NR " steps, at " $2; fflush() }'
  [ "${PIPESTATUS[0]}" -eq 0 ] || { say "ERROR: make vmlinux failed; rerun in $ksrc for the full log"; exit 1; }
  mkdir -p "$cache_root/$key"
  cp "$ksrc/.config" "$cache_root/$key/config"
  strip --strip-debug -o "$cached.tmp" "$ksrc/vmlinux"
  mv "$cached.tmp" "$cached"
  rm -rf "$work"
  say "built in $(( $(date +%s) - start )) s: $cached"
fi

mkdir -p "$(dirname "$out")"
cp "$cached" "$out"
cp "$cache_root/$key/config" "$root/target/guest/kernel.config"
say "ready: $out"

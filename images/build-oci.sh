#!/usr/bin/env bash
# Builds the busybox test image for 'unipod image import' from Debian's
# busybox-static, with no registry and no docker:
#
#   images/build-oci.sh [OUT_DIR [VECSTRESS]]   (default: target/guest/oci)
#
# VECSTRESS, if given, is the static test program of guest-agent/examples/
# vecstress.rs (`make images` builds it), added as /usr/local/bin/vecstress
# for the nested-PVM CPU-state tests (tests/cpu_state.rs).
#
#   OUT_DIR/busybox/                  OCI image layout (oci-layout, index.json,
#                                     blobs/sha256/), index annotated
#                                     org.opencontainers.image.ref.name=busybox:latest
#   OUT_DIR/busybox-oci.tar           the same layout as a tar
#   OUT_DIR/busybox-docker-save.tar   the same image in 'docker save''s legacy
#                                     format (manifest.json, <id>/layer.tar)
#   OUT_DIR/pause-oci.tar             a pod sandbox ("pause") image for the
#                                     CRI test: the same layers, Cmd sleep,
#                                     named unipod-pause:latest
#   OUT_DIR/nobody-oci.tar            the same layers with User nobody:users,
#                                     WorkingDir /home/nobody and one more
#                                     Env, named busybox-nobody:latest
#
# Two layers, so that import has whiteouts to apply:
#   1 (tar+gzip): /bin/busybox and a symlink per applet ('busybox --list'),
#     /usr/bin/env as a hard link to it, /etc/passwd and /etc/group (root,
#     nobody), /tmp (1777), /root (0700), /home/nobody (owned 65534:65534),
#     /etc/unipod-whiteout-me, /opt/opaque/{lower-a,lower-b}
#   2 (plain tar): deletes /etc/unipod-whiteout-me (.wh. file), makes
#     /opt/opaque opaque (.wh..wh..opq) and adds /opt/opaque/upper, and adds
#     /etc/unipod-test-image
# Config: Env PATH, Cmd ["sh"], WorkingDir /.
#
# The output is reproducible (sorted names, mtime 0, numeric owners, gzip -n)
# and rebuilt only when this script or busybox-static changes.
set -euo pipefail
umask 022
out=$(realpath -m "${1:-target/guest/oci}")
vecstress=${2:-}
if [ -n "$vecstress" ] && [ ! -f "$vecstress" ]; then
  echo "vecstress binary not found: $vecstress (run 'make images')" >&2
  exit 2
fi
say() { echo "[images] $*"; }

if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
  say "installing busybox-static with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
busybox=/bin/busybox
key=$( { dpkg-query -W -f='${Version}' busybox-static; cat "$0" ${vecstress:+"$vecstress"}; } | sha256sum | cut -c1-16)
stamp="$out/.busybox.key"
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ -f "$out/busybox/index.json" ] \
  && [ -f "$out/busybox-oci.tar" ] && [ -f "$out/busybox-docker-save.tar" ] \
  && [ -f "$out/pause-oci.tar" ] && [ -f "$out/nobody-oci.tar" ]; then
  say "busybox OCI image: $out/busybox (up to date)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reproducible tar: sorted names, time 0, numeric root ownership unless
# overridden after, GNU format (no pax atime/ctime headers).
TAR=(tar --format=gnu --sort=name --mtime=@0 --numeric-owner)

# --- layer 1 ---
l1="$work/layer1"
mkdir -p "$l1"/{bin,etc,tmp,root,home/nobody,usr/bin,opt/opaque}
chmod 0755 "$l1"
cp "$busybox" "$l1/bin/busybox"
chmod 0755 "$l1/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$l1/bin/$applet"
done
ln "$l1/bin/busybox" "$l1/usr/bin/env"
if [ -n "$vecstress" ]; then
  mkdir -p "$l1/usr/local/bin"
  install -m 0755 "$vecstress" "$l1/usr/local/bin/vecstress"
fi
chmod 1777 "$l1/tmp"
chmod 0700 "$l1/root"
cat >"$l1/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/home/nobody:/bin/false
EOF
cat >"$l1/etc/group" <<'EOF'
root:x:0:
users:x:100:nobody
nogroup:x:65534:
EOF
echo "deleted by layer 2's whiteout" >"$l1/etc/unipod-whiteout-me"
echo "hidden by layer 2's opaque marker" >"$l1/opt/opaque/lower-a"
echo "hidden by layer 2's opaque marker" >"$l1/opt/opaque/lower-b"
echo "owned by nobody" >"$l1/home/nobody/.profile"
# Everything as root, then /home/nobody appended as 65534:65534 (this way
# it works without root, and the uid is the same wherever it is built).
"${TAR[@]}" --owner=0 --group=0 --exclude=./home/nobody -C "$l1" -cf "$work/layer1.tar" .
"${TAR[@]}" --owner=65534 --group=65534 -C "$l1" -rf "$work/layer1.tar" ./home/nobody

# --- layer 2 ---
l2="$work/layer2"
mkdir -p "$l2"/{bin,etc,opt/opaque}
chmod 0755 "$l2"
# A setuid-root busybox, for tests/security.rs: allowPrivilegeEscalation:
# false (no_new_privs) must keep it from gaining root.
cp "$busybox" "$l2/bin/busybox-suid"
chmod 4755 "$l2/bin/busybox-suid"
: >"$l2/etc/.wh.unipod-whiteout-me"
: >"$l2/opt/opaque/.wh..wh..opq"
echo "added by layer 2" >"$l2/opt/opaque/upper"
echo "unipod test image (images/build-oci.sh)" >"$l2/etc/unipod-test-image"
"${TAR[@]}" --owner=0 --group=0 -C "$l2" -cf "$work/layer2.tar" .

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layout="$work/busybox"
blobs="$layout/blobs/sha256"
mkdir -p "$blobs"
# put FILE: stores FILE as a blob; prints its hex digest.
put() { local h; h=$(sha "$1"); cp "$1" "$blobs/$h"; echo "$h"; }

diff1=$(sha "$work/layer1.tar")
diff2=$(sha "$work/layer2.tar")
gzip -n -9 -c "$work/layer1.tar" >"$work/layer1.tar.gz"
blob1=$(put "$work/layer1.tar.gz")
blob2=$(put "$work/layer2.tar")

cat >"$work/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff1","sha256:$diff2"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"images/build-oci.sh: busybox, passwd, whiteout targets"},{"created":"1970-01-01T00:00:00Z","created_by":"images/build-oci.sh: whiteout, opaque dir, /etc/unipod-test-image"}]}
EOF
config=$(put "$work/config.json")

cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$work/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$blob1","size":$(size "$work/layer1.tar.gz")},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$blob2","size":$(size "$work/layer2.tar")}]}
EOF
manifest=$(put "$work/manifest.json")

cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$(size "$work/manifest.json"),"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"busybox:latest"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
"${TAR[@]}" --owner=0 --group=0 -C "$layout" -cf "$work/busybox-oci.tar" .

# variant NAME REF SED: the same layers with the config edited by SED, its
# own manifest, as OCI tar $work/NAME-oci.tar named REF.
variant() {
  local name=$1 ref=$2 edit=$3 dir="$work/$1" vconfig vmanifest
  mkdir -p "$dir/blobs/sha256"
  cp "$blobs/$blob1" "$blobs/$blob2" "$dir/blobs/sha256/"
  sed "$edit" "$work/config.json" >"$work/$name-config.json"
  vconfig=$(sha "$work/$name-config.json")
  cp "$work/$name-config.json" "$dir/blobs/sha256/$vconfig"
  sed "s/$config\",\"size\":$(size "$work/config.json")/$vconfig\",\"size\":$(size "$work/$name-config.json")/" \
    "$work/manifest.json" >"$work/$name-manifest.json"
  vmanifest=$(sha "$work/$name-manifest.json")
  cp "$work/$name-manifest.json" "$dir/blobs/sha256/$vmanifest"
  cat >"$dir/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$vmanifest","size":$(size "$work/$name-manifest.json"),"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"$ref"}}]}
EOF
  cp "$layout/oci-layout" "$dir/"
  "${TAR[@]}" --owner=0 --group=0 -C "$dir" -cf "$work/$name-oci.tar" .
}
# pause: a config that sleeps, for the CRI test's sandboxes.
variant pause unipod-pause:latest 's/"Cmd":\["sh"\]/"Cmd":["sleep","2147483647"]/'
# nobody: a config naming a user and group, a directory and more env, for
# the tests of image configs (tests/config.rs).
variant nobody busybox-nobody:latest \
  's|"WorkingDir":"/"|"WorkingDir":"/home/nobody","User":"nobody:users"|; s|"Env":\[|"Env":["IMAGE_GREETING=from the image",|'

# --- docker save (legacy format) ---
save="$work/docker-save"
mkdir -p "$save/$diff1" "$save/$diff2"
cp "$work/config.json" "$save/$config.json"
cp "$work/layer1.tar" "$save/$diff1/layer.tar"
cp "$work/layer2.tar" "$save/$diff2/layer.tar"
cat >"$save/manifest.json" <<EOF
[{"Config":"$config.json","RepoTags":["busybox:latest"],"Layers":["$diff1/layer.tar","$diff2/layer.tar"]}]
EOF
echo "{\"busybox\":{\"latest\":\"$config\"}}" >"$save/repositories"
"${TAR[@]}" --owner=0 --group=0 -C "$save" -cf "$work/busybox-docker-save.tar" .

mkdir -p "$out"
rm -rf "$out/busybox"
mv "$layout" "$out/busybox"
mv "$work/busybox-oci.tar" "$work/busybox-docker-save.tar" "$work/pause-oci.tar" \
  "$work/nobody-oci.tar" "$out/"
echo "$key" >"$stamp"
say "busybox OCI image: $out/busybox (manifest sha256:$manifest), $out/busybox-oci.tar, $out/busybox-docker-save.tar"

# Shared steps of the Debian test images (build-nginx.sh,
# build-python-grpc.sh): sourced, not run. Each image script picks its
# packages and its image config; this file installs the tools, keys the
# cache and turns a root file system tar into an OCI image.

say() { echo "[images] $*"; }

# Installs mmdebstrap and umoci with apt-get when missing.
ensure_image_tools() {
  local missing=() p
  for p in mmdebstrap umoci; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The cache key of image script $1: the tools' versions, the script and
# this file.
image_cache_key() {
  { dpkg-query -W -f='${Version}\n' mmdebstrap umoci; cat "$1" "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16
}

# mmdebstrap options that leave docs (but copyrights), man pages and
# locales out.
DEBIAN_SLIM_DPKGOPTS=(
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
)

# oci_image WORK ROOTFS_TAR NAME CREATED_BY [umoci config args...]: makes
# the OCI layout WORK/NAME of one layer from ROOTFS_TAR (removed), tag
# latest, configured with the umoci config args, its index entry named
# NAME:latest with its platform (as `docker save` and skopeo's oci-archive
# name it), and WORK/NAME-oci.tar of the same layout.
oci_image() {
  local work=$1 rootfs=$2 name=$3 created_by=$4
  shift 4
  local image="$work/$name"
  umoci init --layout "$image"
  umoci new --image "$image:latest"
  umoci unpack --image "$image:latest" "$work/bundle" >/dev/null
  tar -C "$work/bundle/rootfs" --numeric-owner -xpf "$rootfs"
  rm "$rootfs"
  umoci repack --image "$image:latest" --history.created_by "$created_by" "$work/bundle"
  umoci config --image "$image:latest" --os linux --architecture amd64 "$@" --no-history
  umoci gc --layout "$image"
  python3 - "$image/index.json" "$name:latest" <<'PY'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
index = json.load(open(path))
(manifest,) = index["manifests"]
manifest["annotations"]["org.opencontainers.image.ref.name"] = ref
manifest["platform"] = {"architecture": "amd64", "os": "linux"}
json.dump(index, open(path, "w"))
PY
  tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 -C "$image" -cf "$work/$name-oci.tar" .
}

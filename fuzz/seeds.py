#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/TARGET/seed-*.

Run once when the input layouts change (fuzz/src/lib.rs); libFuzzer grows
the rest of each corpus from these."""
import hashlib, io, json, os, struct, tarfile

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

NEXT, WRITE = 1, 2
def memory(size, writes):
    m = bytearray(size)
    for addr, data in writes:
        m[addr:addr + len(data)] = data
    return m
def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)
def avail(heads):
    return struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)

# Queue i: descriptors at i*0x300, avail at +0x100, used at +0x200;
# byte 0 = sizes (2 bits per queue: 8 << bits... see lib.rs), byte 1 = choice.
def guest(sizes, choice, mem):
    return bytes([sizes, choice]) + bytes(mem)

# vsock: a REQUEST to host port 1024, then a RW with data, on tx (queue 1).
def vsock_hdr(op, length=0, src=5000, dst=1024):
    return struct.pack("<QQIIIHHIII", 3, 2, src, dst, length, 1, op, 0, 65536, 0)
mem = memory(0xA00, [
    (0x300, desc(0x900, 44, 0, 0) + desc(0x940, 44, NEXT, 2) + desc(0x980, 8, 0, 0)),
    (0x400, avail([0, 1])),
    (0x900, vsock_hdr(1)), (0x940, vsock_hdr(5, 8)), (0x980, b"hello!!\n"),
    (0x000, desc(0x9a0, 60, WRITE, 0)), (0x100, avail([0])),
])
put("vsock_queues", "request-and-rw", guest(0x15, 0, mem))

# net: one tx frame (vnet header + 60 bytes), one rx buffer; choice 1 makes
# the last 64 input bytes an rx frame.
mem = memory(0x9c0, [
    (0x300, desc(0x900, 12 + 60, 0, 0)), (0x400, avail([0])),
    (0x000, desc(0x900, 1526, WRITE, 0)), (0x100, avail([0])),
    (0x90c, b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01\x08\x06"),
])
put("net_queues", "tx-and-rx", guest(0x05, 1, mem) + b"\x00" * 64)

# blk: IN of sector 1, GET_ID, and OUT (refused).
def blk_req(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)
mem = memory(0xc00, [
    (0x000, desc(0x900, 16, NEXT, 1) + desc(0xa00, 512, WRITE | NEXT, 2) + desc(0x920, 1, WRITE, 0)
            + desc(0x930, 16, NEXT, 4) + desc(0x940, 20, WRITE | NEXT, 5) + desc(0x960, 1, WRITE, 0)
            + desc(0x970, 16, NEXT, 7) + desc(0x980, 1, WRITE, 0)),
    (0x100, avail([0, 3, 6])),
    (0x900, blk_req(0, 1)), (0x930, blk_req(8, 0)), (0x970, blk_req(1, 0)),
])
put("blk_queues", "in-getid-out", guest(0x03, 0, mem))
put("blk_queues", "detached", guest(0x03, 1, mem))

# balloon: on the reporting queue (2) one good 4 KiB report, then a chain of
# a good, an unaligned and a read-only range; on inflate (0) a chain the
# device must return unused.
mem = memory(0x900, [
    (0x600, desc(0x2000, 4096, WRITE, 0) + desc(0x3000, 4096, WRITE | NEXT, 2)
            + desc(0x3001, 4096, WRITE | NEXT, 3) + desc(0x1000, 4096, 0, 0)),
    (0x700, avail([0, 1])),
    (0x000, desc(0x2000, 4096, 0, 0)), (0x100, avail([0])),
])
put("balloon_queues", "reports", guest(0x20, 0, mem))
put("balloon_queues", "reports-first", guest(0x30, 1, mem))

for i, line in enumerate([b"CONNECT 1024\n", b"CONNECT 4294967296\n", b"CONNECT 7\r\n", b"connect 1\n"]):
    put("vsock_connect_line", str(i), line)

with open(os.path.join(HERE, "..", "examples", "pod.yaml"), "rb") as f:
    put("pod_manifest", "example", f.read())
put("pod_manifest", "anchors", b"""apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  volumes: [{name: v, hostPath: {path: ../../etc}}]
  containers:
    - &c {name: a, image: busybox, env: [{name: X, value: "1"}], volumeMounts: [{name: v, mountPath: /../x}]}
    - <<: *c
      name: b
""")

# Layers: ordinary entries and every way out of the root.
def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(arg); t.addfile(ti, io.BytesIO(arg))
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE; ti.mode = arg; t.addfile(ti)
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE; ti.linkname = arg; t.addfile(ti)
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE; ti.linkname = arg; t.addfile(ti)
    data = buf.getvalue().rstrip(b"\0")
    # Two zero blocks end an archive; tarfile pads far beyond them.
    return data + b"\0" * (-len(data) % 512 + 1024)
put("image_layer", "plain", tar_of([("bin", "dir", 0o755), ("bin/sh", "file", b"#!x"),
                                    ("etc/.wh.passwd", "file", b""), ("etc/.wh..wh..opq", "file", b""),
                                    ("ro", "dir", 0o500), ("ro/f", "file", b"x")]))
put("image_layer", "escapes", tar_of([("evil", "sym", "../outside"), ("evil/pwned", "file", b"x"),
                                      ("abs", "sym", "/"), ("abs/pwned", "file", b"x"),
                                      ("../outside/pwned", "file", b"x"), ("/../pwned2", "file", b"x"),
                                      ("h", "hard", "../outside/canary"), ("evil", "file", b"replaced")]))

# Archives: a tiny OCI layout and a docker-save tar.
def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()
layer = tar_of([("hello", "file", b"hi\n")])
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                     "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer), "size": len(layer)}]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": sha(manifest), "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "x:1"}}]}).encode()
def blob(b): return ("blobs/sha256/" + hashlib.sha256(b).hexdigest(), "file", b)
put("image_archive", "oci", tar_of([("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}'),
                                    ("index.json", "file", index), blob(manifest), blob(config), blob(layer)]))
docker = json.dumps([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]).encode()
put("image_archive", "docker", tar_of([("manifest.json", "file", docker), ("config.json", "file", config),
                                       ("l/layer.tar", "file", layer)]))
evil = json.dumps([{"Config": "../config.json", "RepoTags": ["x:1"], "Layers": ["../../etc/passwd"]}]).encode()
put("image_archive", "docker-escape", tar_of([("manifest.json", "file", evil), ("config.json", "file", config)]))

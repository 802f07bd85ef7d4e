#!/usr/bin/env python3
"""Warm start vs cold boot vs QEMU microvm, in one run (docs/BENCHMARKS.md).

Usage: python3 bench/warm_start.py [--restores N] [--idle-pods N] [--cold-pods N]

Needs root, /dev/kvm, qemu-system-x86_64 and the artifacts from
`make build images kernel`. Uses its own state dir (target/bench-state) so
it never touches a user's pods. Prints a Markdown table.
"""

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIPOD = os.path.join(ROOT, "target/release/unipod")
KERNEL = os.path.join(ROOT, "target/guest/vmlinux")
INITRD = os.path.join(ROOT, "target/guest/initramfs.cpio")
STATE = os.path.join(ROOT, "target/bench-state")
WORK = os.path.join(STATE, "bench")
# What a pod VM has, and so what the snapshot's key covers: a detached net
# device and the image slots (vmm/src/pod/vmm_process.rs, MAX_IMAGES_PER_POD).
POD_DEVICES = ["--net-detached", "--disk-slots", "4", "--free-page-reporting"]
# Must match NESTED_PVM_CMDLINE in vmm/src/config/cmdline.rs.
NESTED_CMDLINE = "noxsave vmm_xstate=0xc0000000 nosmap nosmep clearcpuid=smap,smep,umip,fsgsbase,popcnt,cx16,erms,fsrm clocksource=kvm-clock"


def snapshot_dir():
    out = subprocess.run(
        [UNIPOD, "snapshot", "create", "--state-dir", STATE, "--kernel", KERNEL, "--initrd", INITRD],
        check=True, capture_output=True, text=True).stdout.split()
    return out[1]


def recv_exact(s, n):
    """Reads exactly `n` bytes (a frame can arrive in pieces)."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("the agent closed the connection")
        buf += chunk
    return buf


def boot_until_ready(extra, timeout):
    """Starts `unipod boot` and returns (ms to CONNECT OK, ms to Ready)."""
    sock = os.path.join(WORK, "v.sock")
    if os.path.exists(sock):
        os.remove(sock)
    t0 = time.monotonic()
    vmm = subprocess.Popen(
        [UNIPOD, "boot", "--kernel", KERNEL, "--initrd", INITRD, "--vsock-uds", sock,
         "--console-log", os.path.join(WORK, "console.log")] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("agent not ready in time")
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(sock)
                s.sendall(b"CONNECT 1024\n")
                if s.recv(64).startswith(b"OK"):
                    break
            except OSError:
                pass
            time.sleep(0.002)
        t_ok = time.monotonic()
        n, _ = struct.unpack(">IH", recv_exact(s, 6))
        recv_exact(s, n - 2)
        t_ready = time.monotonic()
        return (t_ok - t0) * 1000, (t_ready - t0) * 1000
    finally:
        vmm.kill()
        vmm.wait()


def run_until_running(name, cold):
    """`unipod run -- true`: ms until the pod is Running, and in total."""
    args = [UNIPOD, "run", "--state-dir", STATE, "--name", name]
    if cold:
        args.append("--cold")
    t0 = time.monotonic()
    p = subprocess.Popen(args + ["--", "/bin/true"], stderr=subprocess.PIPE, text=True)
    running = None
    for line in p.stderr:
        if running is None and ": Running" in line:
            running = (time.monotonic() - t0) * 1000
    p.wait()
    return running, (time.monotonic() - t0) * 1000


def ms_to_marker(cmd, marker, timeout=300):
    """ms from spawning `cmd` until `marker` shows on its stdout, or None."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    buf = b""
    try:
        while time.monotonic() - t0 < timeout:
            chunk = p.stdout.read1(4096)
            if not chunk:
                return None
            buf = buf[-len(marker):] + chunk
            if marker in buf:
                return (time.monotonic() - t0) * 1000
        return None
    finally:
        p.kill()
        p.wait()


def qemu_until_agent(timeout):
    """QEMU microvm (KVM) until the agent logs that it is starting, in ms."""
    return ms_to_marker(
        ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "qemu64,+xsaveerptr,-popcnt,-sse4.1,-sse4.2,-ssse3",
         "-m", "128", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
         "-kernel", KERNEL, "-initrd", INITRD,
         "-append", f"console=ttyS0 reboot=k panic=-1 quiet {NESTED_CMDLINE}"],
        b") starting", timeout)  # "unipod-agent V (protocol N) starting"


def memory_of(pids):
    """Sums Pss, Private_Dirty and Shared_Clean (KiB) over processes."""
    total = {"Pss": 0, "Private_Dirty": 0, "Shared_Clean": 0, "Rss": 0}
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in total:
                    total[key] += int(rest.split()[0])
    return total


def idle_pods(count, cold):
    """Starts `count` idle pods, waits until all run, measures their VMMs.

    Warm pods start one after another: on a 2-core nested host, starting
    20 containers at once starves the guests (emulated ring 0) until their
    heartbeats lapse. Cold pods boot together, or it would take an hour.
    """
    procs = []
    try:
        for i in range(count):
            args = [UNIPOD, "run", "--state-dir", STATE, "--name", f"idle-{'c' if cold else 'w'}{i}",
                    "--heartbeat-ms", "5000", "--unknown-timeout-secs", "600"]
            if cold:
                args.append("--cold")
            procs.append(subprocess.Popen(args + ["--", "sleep", "3600"],
                                          stderr=subprocess.PIPE, text=True))
            if not cold:
                wait_running(procs[-1])
        for p in procs:
            wait_running(p)
        time.sleep(2)
        pids = []
        for i in range(count):
            pid_file = os.path.join(STATE, "pods", f"idle-{'c' if cold else 'w'}{i}", "vmm.pid")
            with open(pid_file) as f:
                pids.append(int(f.read()))
        return memory_of(pids)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wait_running(p):
    """Reads a pod's stderr until it is Running."""
    if getattr(p, "running", False):
        return
    seen = []
    for line in p.stderr:
        seen.append(line)
        if ": Running" in line:
            p.running = True
            return
    raise RuntimeError("pod never ran:\n" + "".join(seen))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--restores", type=int, default=5)
    ap.add_argument("--idle-pods", type=int, default=20)
    ap.add_argument("--cold-pods", type=int, default=2)
    ap.add_argument("--memory-only", action="store_true", help="skip the timings")
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    snap = snapshot_dir()
    print(f"snapshot: {snap}", file=sys.stderr)
    if not args.memory_only:
        timings(snap, args)
    memory(args)
    shutil.rmtree(WORK, ignore_errors=True)


def timings(snap, args):
    rows = []
    warm = [boot_until_ready(["--restore", snap] + POD_DEVICES, 60) for _ in range(args.restores)]
    warm_ready = sorted(r for _, r in warm)[len(warm) // 2]
    rows.append(("unipod restore -> agent Ready (median of %d)" % len(warm), warm_ready))
    runs = [run_until_running(f"bench-w{i}", False) for i in range(args.restores)]
    rows.append(("unipod run, restored -> container Running (median)", sorted(r for r, _ in runs)[len(runs) // 2]))
    cold_ok, cold_ready = boot_until_ready(POD_DEVICES, 600)
    rows.append(("unipod cold boot -> agent Ready", cold_ready))
    cold_running, _ = run_until_running("bench-c", True)
    rows.append(("unipod run --cold -> container Running", cold_running))
    q = qemu_until_agent(600)
    rows.append(("QEMU microvm cold boot -> agent starting (console)", q))

    print("| measurement | ms | vs QEMU cold |")
    print("|---|---:|---:|")
    for name, ms in rows:
        ratio = f"{q / ms:.1f}x faster" if (q and ms) else "-"
        print(f"| {name} | {ms:.0f} | {ratio} |" if ms else f"| {name} | n/a | - |")



def memory(args):
    warm_mem = idle_pods(args.idle_pods, False)
    cold_mem = idle_pods(args.cold_pods, True)
    print()
    print("| idle pods | VMM processes' Pss KiB | Private_Dirty KiB | Shared_Clean KiB | Rss KiB | Pss per pod KiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, m in ((f"{args.idle_pods} restored", args.idle_pods, warm_mem),
                        (f"{args.cold_pods} cold-booted", args.cold_pods, cold_mem)):
        print(f"| {label} | {m['Pss']} | {m['Private_Dirty']} | {m['Shared_Clean']} | {m['Rss']} | {m['Pss'] // n} |")


if __name__ == "__main__":
    main()

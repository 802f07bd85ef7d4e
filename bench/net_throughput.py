#!/usr/bin/env python3
"""TCP throughput host -> pod (virtio-net over a tap on a bridge), beside a
veth pair between two network namespaces, in the same run.

Everything happens inside throwaway network namespaces (run as root):
  - "pod":  namespace ubench-node with bridge ubench0; a pod runs
            `nc -l -p 5001 >/dev/null`; the host side sends MiB bytes to it.
  - "veth": namespaces ubench-a/ubench-b joined by a veth; a Python reader
            in b, the same sender in a.
The time is from connect to the receiver closing the connection after EOF.

Usage: bench/net_throughput.py [--mib 64] [--runs 3]
"""

import argparse
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIPOD = os.path.join(ROOT, "target/release/unipod")
STATE = os.path.join(ROOT, "target/test-state")
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def sh(*args):
    subprocess.run(args, check=True)


def in_netns(name, fn):
    """Runs fn() on a thread that entered netns `name`."""
    result = {}

    def body():
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            # os.setns is Python 3.12+; Debian 12 has 3.11.
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({name})")
            os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # re-raised on the caller's thread
            result["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def send(addr, mib, retry_s=120):
    """Connects (retrying while the server starts), sends, waits for close."""
    chunk = b"\0" * (1 << 20)
    deadline = time.time() + retry_s
    while True:
        try:
            s = socket.create_connection(addr, timeout=5)
            break
        except OSError as e:
            if time.time() > deadline:
                raise SystemExit(f"cannot connect to {addr}: {e}")
            time.sleep(0.2)
    s.settimeout(120)
    t0 = time.monotonic()
    for _ in range(mib):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    elapsed = time.monotonic() - t0
    s.close()
    return mib / elapsed


def pod_run(mib):
    pod = subprocess.Popen(
        ["ip", "netns", "exec", "ubench-node", UNIPOD, "run", "--state-dir", STATE,
         "--name", "ubench", "--bridge", "ubench0", "--pod-cidr", "10.231.99.0/24",
         "--", "sh", "-c", "nc -l -p 5001 >/dev/null"],
        stderr=subprocess.DEVNULL)
    info = os.path.join(STATE, "pods/ubench/network.json")
    deadline = time.time() + 300
    while not os.path.exists(info):
        if time.time() > deadline or pod.poll() is not None:
            raise SystemExit("the pod did not start")
        time.sleep(0.2)
    ip = json.load(open(info))["ip"]
    vmm = int(open(os.path.join(STATE, "pods/ubench/vmm.pid")).read())
    cpu0, t0 = cpu_seconds(vmm), time.monotonic()
    rate = in_netns("ubench-node", lambda: send((ip, 5001), mib))
    busy = (cpu_seconds(vmm) - cpu0) / (time.monotonic() - t0)
    pod.wait(timeout=120)
    return rate, busy


def cpu_seconds(pid):
    """User + system CPU time of process `pid` (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def veth_run(mib):
    ready = threading.Event()

    def server():
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("192.168.250.2", 5001))
        srv.listen(1)
        ready.set()
        conn, _ = srv.accept()
        while conn.recv(1 << 20):
            pass
        conn.close()
        srv.close()

    t = threading.Thread(target=in_netns, args=("ubench-b", server))
    t.start()
    ready.wait(10)
    rate = in_netns("ubench-a", lambda: send(("192.168.250.2", 5001), mib))
    t.join()
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    names = ["ubench-node", "ubench-a", "ubench-b"]
    for n in names:
        subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", n)
    try:
        sh("ip", "-n", "ubench-a", "link", "add", "va", "type", "veth", "peer", "name", "vb")
        sh("ip", "-n", "ubench-a", "link", "set", "vb", "netns", "ubench-b")
        sh("ip", "-n", "ubench-a", "addr", "add", "192.168.250.1/24", "dev", "va")
        sh("ip", "-n", "ubench-b", "addr", "add", "192.168.250.2/24", "dev", "vb")
        for ns, dev in [("ubench-a", "va"), ("ubench-b", "vb")]:
            sh("ip", "-n", ns, "link", "set", dev, "up")
        pod, veth, busy = [], [], []
        for i in range(args.runs):
            rate, vmm_busy = pod_run(args.mib)
            pod.append(rate * 1024)
            busy.append(vmm_busy)
            veth.append(veth_run(args.mib) * 1024)
            print(f"run {i + 1}: pod {pod[-1]:.0f} KiB/s (VMM process busy {vmm_busy:.0%} "
                  f"of one CPU), veth {veth[-1]:.0f} KiB/s", flush=True)
        mp, mv = statistics.median(pod), statistics.median(veth)
        print(f"median of {args.runs} x {args.mib} MiB: host->pod {mp:.0f} KiB/s "
              f"(min {min(pod):.0f}, max {max(pod):.0f}; VMM busy "
              f"{statistics.median(busy):.0%}); veth {mv:.0f} KiB/s "
              f"(min {min(veth):.0f}, max {max(veth):.0f}); pod/veth = {mp / mv:.2e}")
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()

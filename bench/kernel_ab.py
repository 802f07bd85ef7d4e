#!/usr/bin/env python3
"""Two guest kernels against each other, in one run (docs/PERFORMANCE.md).

Usage: python3 bench/kernel_ab.py KERNEL_A KERNEL_B [--rounds N] [--idle-secs S]

For each kernel, in turn (A B A B ...), with the same initramfs
(target/guest/initramfs.cpio):
- restore -> agent Ready: `unipod boot --restore` of that kernel's
  warm-start snapshot until the agent's Ready frame (bench/warm_start.py's
  method);
- restored -> container Running: `unipod run -- /bin/true` on a pod network,
  so it includes the agent's Configure (lo and eth0 up, address, route);
- an idle pod's VMM CPU: `unipod run -- sleep 3600` on a pod network, then
  the VMM's utime+stime (/proc/PID/stat, all threads) over --idle-secs.

Needs root, /dev/kvm and `make build images`. Uses its own state dir
(target/bench-state) and its own network namespace (unipod-bench-ab, with
the bridge upt-bench-ab inside it), removed at the end; the snapshots stay in
the state dir for the next run. Prints medians and the median of the B/A
ratios, round by round.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import warm_start  # noqa: E402  (boot_until_ready, POD_DEVICES, paths)

UNIPOD = warm_start.UNIPOD
INITRD = warm_start.INITRD
STATE = warm_start.STATE
NETNS = "unipod-bench-ab"
NET_ARGS = ["--bridge", "upt-bench-ab", "--pod-cidr", "10.231.40.0/24"]
TICKS = os.sysconf("SC_CLK_TCK")


def snapshot_for(kernel):
    out = subprocess.run(
        [UNIPOD, "snapshot", "create", "--state-dir", STATE, "--kernel", kernel, "--initrd", INITRD],
        check=True, capture_output=True, text=True).stdout.split()
    return out[1]


def restore_ready_ms(kernel, snap):
    warm_start.KERNEL = kernel
    return warm_start.boot_until_ready(["--restore", snap] + warm_start.POD_DEVICES, 60)[1]


def pod(kernel, name, argv):
    return subprocess.Popen(
        ["ip", "netns", "exec", NETNS, UNIPOD, "run", "--state-dir", STATE, "--kernel", kernel,
         "--initrd", INITRD, "--name", name] + NET_ARGS + ["--"] + argv,
        stderr=subprocess.PIPE, text=True)


def until_running(p, t0):
    for line in p.stderr:
        if ": Running" in line:
            return (time.monotonic() - t0) * 1000
    raise RuntimeError(f"pod never ran (exit {p.wait()})")


def run_true_ms(kernel):
    t0 = time.monotonic()
    p = pod(kernel, "ab-true", ["/bin/true"])
    ms = until_running(p, t0)
    p.stderr.read()
    p.wait()
    return ms


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def idle_cpu_percent(kernel, secs):
    p = pod(kernel, "ab-idle", ["sleep", "3600"])
    try:
        until_running(p, time.monotonic())
        time.sleep(2)  # the pod's own start settles
        with open(os.path.join(STATE, "pods", "ab-idle", "vmm.pid")) as f:
            pid = int(f.read())
        before, t0 = cpu_ticks(pid), time.monotonic()
        time.sleep(secs)
        used = (cpu_ticks(pid) - before) / TICKS
        return 100 * used / (time.monotonic() - t0)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel_a")
    ap.add_argument("kernel_b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle-rounds", type=int, default=2)
    ap.add_argument("--idle-secs", type=float, default=30)
    args = ap.parse_args()
    kernels = {"A": os.path.abspath(args.kernel_a), "B": os.path.abspath(args.kernel_b)}
    os.makedirs(warm_start.WORK, exist_ok=True)
    snaps = {k: snapshot_for(path) for k, path in kernels.items()}
    subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    results = {}
    try:
        for what, measure, rounds in [
            ("restore -> agent Ready (ms)", lambda k: restore_ready_ms(kernels[k], snaps[k]), args.rounds),
            ("restored `unipod run -- /bin/true` -> Running, pod network (ms)",
             lambda k: run_true_ms(kernels[k]), args.rounds),
            (f"idle pod VMM CPU over {args.idle_secs:g} s (% of one CPU)",
             lambda k: idle_cpu_percent(kernels[k], args.idle_secs), args.idle_rounds),
        ]:
            if rounds == 0:
                continue
            pairs = []
            for i in range(rounds):
                pairs.append({k: measure(k) for k in "AB"})
                print(f"{what} round {i + 1}: A {pairs[-1]['A']:.2f}, B {pairs[-1]['B']:.2f}", file=sys.stderr)
            results[what] = pairs
    finally:
        subprocess.run(["ip", "netns", "del", NETNS])
    print(f"A: {kernels['A']}\nB: {kernels['B']}\n")
    print("| measurement | A median | B median | B/A (median of rounds) | rounds |")
    print("|---|---:|---:|---:|---:|")
    for what, pairs in results.items():
        a = statistics.median(p["A"] for p in pairs)
        b = statistics.median(p["B"] for p in pairs)
        ratio = statistics.median(p["B"] / p["A"] for p in pairs)
        print(f"| {what} | {a:.2f} | {b:.2f} | {ratio:.2f} | {len(pairs)} |")


if __name__ == "__main__":
    main()

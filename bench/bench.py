#!/usr/bin/env python3
"""unipod's benchmark harness: `make bench` runs it and it writes
docs/BENCHMARKS.md (each figure with its command, the machine and the date)
and docs/boot-timeline.svg.

Usage: python3 bench/bench.py [--runs N] [--only NAME,...] [--density-max N]
                              [--pull-dir DIR] [--out docs/BENCHMARKS.md]

Measures (names for --only): startup, boot, warm, timeline, memory, rate,
density, vsock, net, probes, pull. Each reports the median and the spread
(min-max) of its runs and, where there is a peer, the ratio to it in the
same run. Nothing here is a pass/fail test. Needs root, /dev/kvm,
qemu-system-x86_64 and the artifacts from `make build kernel images`; pull
(`unipod image pull` from a docker-registry on loopback, against `skopeo
copy`) needs root, docker-registry and skopeo, and no KVM. Uses its own
state dir (target/bench-state), never a user's; pods use `--network none`
except in the network benchmark, which makes its own namespaces.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import warm_start  # noqa: E402  (boot_until_ready, qemu_until_agent, memory_of)

ROOT = warm_start.ROOT
UNIPOD = warm_start.UNIPOD
KERNEL = warm_start.KERNEL
INITRD = warm_start.INITRD
BOOT_TEST = os.path.join(ROOT, "target/guest/boot-test.cpio")
STATE = warm_start.STATE
OCI = os.path.join(ROOT, "target/guest/oci/busybox")
PVM_CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet " + warm_start.NESTED_CMDLINE
BOOT_MARKER = b"hello from the guest"
QEMU_MICROVM = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-m", "128",
                "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"]


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def spread(values):
    """'median (min-max, n=N)' of numbers, or 'n/a'."""
    failed = sum(1 for v in values if v is None)
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    fmt = (lambda v: f"{v:.1f}") if max(values) < 100 else (lambda v: f"{v:.0f}")
    lost = f", {failed} run(s) never got there" if failed else ""
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))}, n={len(values)}{lost})"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def unipod(*args, check=True, **kw):
    return subprocess.run([UNIPOD, *args], check=check, capture_output=True, text=True, **kw)


# --- 1. VMM start-up and memory overhead -------------------------------------

REPORT = re.compile(r"first KVM_RUN (\d+) us after start \((\d+) us of CPU\); VMM peak RSS (\d+) KiB, "
                    r"of which guest memory (\d+) KiB, VMM overhead (\d+) KiB")


def boot_report(extra, stop_after):
    """Runs `unipod boot`, SIGTERMs it after `stop_after()` returns, parses its exit report."""
    p = subprocess.Popen([UNIPOD, "boot", "--kernel", KERNEL, "--mem-mib", "128", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        stop_after(p)
    finally:
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    m = REPORT.search(err)
    if not m:
        raise RuntimeError(f"no exit report from unipod boot:\n{err[-2000:]}")
    return [int(x) for x in m.groups()]


def restored_report(snap, stop_after):
    """boot_report of a VM restored from the pod snapshot `snap`."""
    with tempfile.TemporaryDirectory(dir=STATE) as tmp:
        sock = os.path.join(tmp, "v.sock")
        return boot_report(["--initrd", INITRD, "--restore", snap, "--vsock-uds", sock] + warm_start.POD_DEVICES,
                           stop_after)


def measure_startup(runs, snap):
    say(f"startup: {runs} cold starts and {runs} restores to the first KVM_RUN")
    rows = [boot_report(["--initrd", BOOT_TEST], lambda p: time.sleep(1)) for _ in range(runs)]
    restored = [restored_report(snap, lambda p: time.sleep(1)) for _ in range(runs)]
    exec_ms = []
    for _ in range(runs):
        t0 = time.monotonic()
        unipod("--version")
        exec_ms.append((time.monotonic() - t0) * 1000)
    return {
        "title": "VMM start-up: process start to the first KVM_RUN",
        "command": "unipod boot --kernel target/guest/vmlinux --initrd target/guest/boot-test.cpio "
                   "--mem-mib 128  (its exit report; stopped after 1 s)",
        "table": [("measure", "value"),
                  ("cold boot: wall ms, main() to first KVM_RUN", spread([r[0] / 1000 for r in rows])),
                  ("cold boot: CPU ms by then, all threads", spread([r[1] / 1000 for r in rows])),
                  ("restore (pod VM): wall ms, main() to first KVM_RUN", spread([r[0] / 1000 for r in restored])),
                  ("restore (pod VM): CPU ms by then", spread([r[1] / 1000 for r in restored])),
                  ("wall ms of `unipod --version` (exec, loader, exit)", spread(exec_ms))],
        "note": "Anchor: Firecracker at most 8 CPU ms to its API socket; goal: 5 ms wall. "
                "A cold boot's time goes to loading the 17 MiB vmlinux ELF into guest memory (page faults) "
                "and to KVM_CREATE_PIT2, which starts a kernel thread (`strace -f -r` on one run). A restore "
                "maps the snapshot's memory instead; its file hashes come from the hash memo "
                "(docs/DESIGN.md, warm start) once the snapshot has been restored before.",
        "data": {"wall_ms": [r[0] / 1000 for r in rows], "cpu_ms": [r[1] / 1000 for r in rows],
                 "restored_wall_ms": [r[0] / 1000 for r in restored]},
    }


def measure_memory_overhead(runs, snap):
    say(f"memory: VMM overhead, {runs} cold and {runs} restored VMs at 128 MiB")
    cold = [boot_report(["--initrd", BOOT_TEST], lambda p: time.sleep(3)) for _ in range(runs)]

    warm = [restored_report(snap, lambda p: time.sleep(3)) for _ in range(runs)]
    return cold, warm


# --- 2. Boot to init, against QEMU microvm --------------------------------------

def measure_boot(runs):
    say(f"boot: {runs} x (unipod, QEMU microvm KVM, QEMU microvm TCG) to the boot-test marker; "
        "about 2.5 minutes per run on nested PVM")
    res = {"unipod": [], "qemu-kvm": [], "qemu-tcg": []}
    for i in range(runs):
        res["unipod"].append(warm_start.ms_to_marker([UNIPOD, "boot", "--kernel", KERNEL, "--initrd", BOOT_TEST,
                                           "--mem-mib", "128"], BOOT_MARKER))
        res["qemu-kvm"].append(warm_start.ms_to_marker(QEMU_MICROVM + [
            "-enable-kvm", "-cpu", "qemu64,+xsaveerptr,-cx16,-popcnt,-sse4.1,-sse4.2,-ssse3",
            "-kernel", KERNEL, "-initrd", BOOT_TEST, "-append", PVM_CMDLINE], BOOT_MARKER))
        res["qemu-tcg"].append(warm_start.ms_to_marker(QEMU_MICROVM + [
            "-accel", "tcg", "-cpu", "qemu64", "-kernel", KERNEL, "-initrd", BOOT_TEST,
            "-append", "console=ttyS0 reboot=k panic=-1 quiet"], BOOT_MARKER))
        say(f"boot run {i + 1}: " + ", ".join(f"{k} {v[-1]} ms" for k, v in res.items()))
    u, k, t = (median(res[x]) for x in ("unipod", "qemu-kvm", "qemu-tcg"))
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"  # noqa: E731
    return {
        "title": "Boot to init: cold boot, against QEMU microvm",
        "command": "unipod boot --kernel target/guest/vmlinux --initrd target/guest/boot-test.cpio --mem-mib 128, "
                   "and qemu-system-x86_64 -M microvm with the same kernel, initramfs, memory and vCPU, "
                   "until the initramfs prints 'hello from the guest'",
        "table": [("VMM", "ms to the marker", "unipod's time / this"),
                  ("unipod (KVM)", spread(res["unipod"]), "1"),
                  ("QEMU microvm -enable-kvm", spread(res["qemu-kvm"]), ratio(u, k)),
                  ("QEMU microvm -accel tcg", spread(res["qemu-tcg"]), ratio(u, t))],
        "note": "Goal: unipod at most 0.33x QEMU-KVM. On this host both KVM VMMs spend the time in the "
                "guest kernel, which nested PVM runs in KVM's instruction emulator, so the VMM cannot make "
                "a cold boot faster; TCG emulates the whole guest in user space and wins by far. "
                "unipod's answer is warm start (next section), which is faster than TCG's cold boot.",
        "data": res,
    }


# --- 3. Warm start and the pod start-up timeline -------------------------------

def snapshot():
    os.makedirs(STATE, exist_ok=True)
    say("warm-start snapshot (a cold boot the first time)")
    return warm_start.snapshot_dir()


def measure_warm(runs, snap):
    say(f"warm: {runs} restores to agent Ready, QEMU-TCG boot to the agent for scale")
    os.makedirs(warm_start.WORK, exist_ok=True)
    restore = ["--restore", snap] + warm_start.POD_DEVICES
    ready = [warm_start.boot_until_ready(restore, 60)[1] for _ in range(runs)]
    tcg = []
    for _ in range(min(runs, 3)):
        tcg.append(warm_start.ms_to_marker(QEMU_MICROVM + ["-accel", "tcg", "-cpu", "qemu64", "-kernel", KERNEL,
                                                "-initrd", INITRD, "-append", "console=ttyS0 reboot=k panic=-1"],
                                b"listening on vsock"))
    r, t = median(ready), median(tcg)
    return {
        "title": "Warm start: restore from the snapshot to the agent's Ready",
        "command": "unipod boot --restore SNAPSHOT --vsock-uds S (until the agent's Ready frame); "
                   "QEMU microvm -accel tcg with the agent initramfs until it listens on vsock",
        "table": [("path", "ms", "vs QEMU-TCG cold"),
                  ("unipod restore -> agent Ready", spread(ready), f"{t / r:.1f}x faster" if r and t else "n/a"),
                  ("QEMU microvm TCG cold boot -> agent listening", spread(tcg), "1")],
        "note": "The restore maps the memory file MAP_PRIVATE; the host-side part is a few ms (KVM and "
                "device setup; the file hashes come from the hash memo, see the start-up section), the rest "
                "is the guest's own work, emulated here (see docs/PERFORMANCE.md).",
        "data": {"ready_ms": ready, "tcg_ms": tcg},
    }


IDLE_POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
    - name: idle
      image: busybox
      command: [sh, -c, "echo up; exec sleep 3600"]
"""


# An idle server, without a probe or with the kind most manifests have: a
# liveness probe every 10 s. An exec check is the dearest (a process in the
# container's namespaces); a tcpSocket check is a thread and a loopback
# connection.
PROBE_POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
    - name: idle
      image: busybox
      command: [sh, -c, "httpd -p 8080 -h /tmp; exec sleep 3600"]
{probe}"""
PROBES = {
    "none": "",
    "exec": "      livenessProbe: {exec: {command: [cat, /etc/hostname]}, periodSeconds: 10}\n",
    "tcpSocket": "      livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 10}\n",
}


def pod_manifest(name, probe=None):
    path = os.path.join(STATE, "bench", f"{name}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = PROBE_POD.format(name=name, probe=PROBES[probe]) if probe else IDLE_POD.format(name=name)
    with open(path, "w") as f:
        f.write(text)
    return path


def prepare_pods():
    """Imports the busybox image and makes the pod VM's snapshot (a cold
    boot, the first time), so that no measured start pays for them."""
    unipod("image", "import", "--state-dir", STATE, OCI)
    remove_pods(["bench-warmup"])
    start_pod("bench-warmup")
    remove_pods(["bench-warmup"])


def start_pod(name, env=None, probe=None):
    return unipod("run", "--state-dir", STATE, "--network", "none", "--detach", pod_manifest(name, probe),
                  check=False, env=env)


def pod_record(name):
    """The pod's status record (the pod dir's status.json), or None."""
    try:
        with open(os.path.join(STATE, "pods", name, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove_pods(names):
    for n in names:
        unipod("rm", "--state-dir", STATE, "-f", n, check=False)


def measure_timeline(runs):
    say(f"timeline: {runs} detached busybox pods, their start-up steps")
    steps = {}
    totals = []
    for i in range(runs):
        name = f"bench-tl{i}"
        remove_pods([name])
        t0 = time.monotonic()
        out = start_pod(name)
        totals.append((time.monotonic() - t0) * 1000)
        rec = pod_record(name) or {}
        prev = 0
        for s in rec.get("startup", []):
            steps.setdefault(s["step"], []).append(s["doneAtMs"] - prev)
            prev = s["doneAtMs"]
        remove_pods([name])
        if out.returncode != 0:
            say(f"pod {name} failed: {out.stderr.strip()}")
    table = [("step", "ms (median, min-max)")] + [(k, spread(v)) for k, v in steps.items()]
    table.append(("`unipod run --detach` returns (pod Running)", spread(totals)))
    return {
        "title": "Pod ready: `unipod run --detach` of a busybox pod, step by step",
        "command": "unipod run --network none --detach idle.yaml; the pod's status.json (`startup`); "
                   "`unipod describe` shows the same as 'Startup:'",
        "table": table,
        "note": "Steps: network (tap, IP lease), vmReady (VMM spawned, snapshot restored, agent Ready), "
                "configured (identity, clock, RNG, IP in the guest), firstContainerRunning (image device "
                "mounted, overlay, cgroup, fork and exec in the guest). Plotted in boot-timeline.svg.",
        "data": {k: median(v) for k, v in steps.items()},
    }


def timeline_svg(steps, path):
    """A horizontal stacked bar of the start-up steps' medians."""
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"]
    total = sum(v for v in steps.values() if v) or 1
    width, x = 760, 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 40}" height="120" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="20" y="18">unipod pod start-up, median ms ({total:.0f} ms in all)</text>']
    for i, (name, ms) in enumerate(steps.items()):
        w = width * (ms or 0) / total
        parts.append(f'<rect x="{x:.1f}" y="30" width="{w:.1f}" height="30" fill="{colors[i % 5]}"/>')
        parts.append(f'<text x="{x:.1f}" y="{78 + 16 * (i % 2)}">{name} {ms:.0f}</text>')
        x += w
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


# --- 4/5. Memory of an idle pod ---------------------------------------------------

def measure_idle_memory(runs, overhead):
    say(f"memory: {runs} idle busybox pods, guest and host view")
    guest_used, rss, pss, dirty = [], [], [], []
    for i in range(runs):
        name = f"bench-mem{i}"
        remove_pods([name])
        if start_pod(name).returncode != 0:
            continue
        time.sleep(2)
        info = unipod("exec", "--state-dir", STATE, name, "--", "cat", "/proc/meminfo", check=False).stdout
        kv = {l.split(":")[0]: int(l.split()[1]) for l in info.splitlines() if l.count(":") == 1 and l.split()[1:]}
        if "MemTotal" in kv and "MemAvailable" in kv:
            guest_used.append((kv["MemTotal"] - kv["MemAvailable"]) / 1024)
        rec = pod_record(name)
        pid = rec and rec.get("vmm") and rec["vmm"]["pid"]
        if pid:
            m = warm_start.memory_of([pid])
            rss.append(m["Rss"] / 1024)
            pss.append(m["Pss"] / 1024)
            dirty.append(m["Private_Dirty"] / 1024)
        remove_pods([name])
    cold, warm = overhead
    return {
        "title": "Memory: VMM overhead and an idle busybox pod",
        "command": "unipod boot ... (exit report: VmHWM minus resident guest memory) at 1 vCPU / 128 MiB; "
                   "an idle pod (`sleep 3600`): `unipod exec POD -- cat /proc/meminfo` and the VMM's "
                   "/proc/PID/smaps_rollup",
        "table": [("measure", "MiB"),
                  ("VMM overhead, cold boot (VmHWM - guest resident)", spread([r[4] / 1024 for r in cold])),
                  ("VMM overhead, restored VM", spread([r[4] / 1024 for r in warm])),
                  ("idle pod, guest view: MemTotal - MemAvailable", spread(guest_used)),
                  ("idle pod, host view: VMM Rss (shares the snapshot's page cache)", spread(rss)),
                  ("idle pod, host view: VMM Pss", spread(pss)),
                  ("idle pod, host view: VMM Private_Dirty (its own pages)", spread(dirty))],
        "note": "Goals: VMM overhead at most 4 MiB (Firecracker: at most 5 MiB); idle pod at most 32 MiB. "
                "A restored pod's clean pages are the snapshot file's page cache, shared by every pod "
                "restored from it, so Private_Dirty is what each extra pod really costs. Pod VMs report "
                "free pages to the host (virtio-balloon; docs/PERFORMANCE.md, \"Free page reporting\"), "
                "which matters for pods that free memory; an idle pod frees little.",
        "data": {"guest_used": guest_used, "private_dirty": dirty},
    }


# --- 6/7. Density and creation rate -----------------------------------------------

def running(name):
    rec = pod_record(name)
    return bool(rec) and rec["status"]["phase"] == "Running"


def measure_rate(count):
    say(f"rate: {count} pods started at once")
    names = [f"bench-rate{i}" for i in range(count)]
    remove_pods(names)
    results = [None] * count
    # 20 emulated guests starting at once on 2 cores can miss heartbeats for
    # longer than the default Unknown timeout; this measures the rate, not that.
    env = dict(os.environ, UNIPOD_UNKNOWN_TIMEOUT_SECS="300")
    t0 = time.monotonic()

    def one(i):
        results[i] = start_pod(names[i], env)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    ok = sum(1 for r in results if r.returncode == 0)
    errors = sorted({r.stderr.strip().splitlines()[-1] for r in results if r.returncode != 0 and r.stderr.strip()})
    remove_pods(names)
    return {
        "title": f"Creation rate: {count} pods started in parallel",
        "command": f"{count} x `unipod run --network none --detach idle.yaml` at once, until each returns Running",
        "table": [("measure", "value"), ("pods Running", f"{ok} of {count}"),
                  ("seconds until the last returned", f"{took:.1f}"),
                  ("pods per second", f"{ok / took:.2f}")],
        "note": "On 2 cores the guests' emulated kernels compete for the CPU, so the rate is CPU-bound. "
                "Run with UNIPOD_UNKNOWN_TIMEOUT_SECS=300, so that it measures the rate: starved guests "
                "can miss heartbeats for longer than the default allows (seen with the former 1 s "
                "heartbeat; not measured again with the 10 s one). " + (f"Failures: {'; '.join(errors)[:600]}" if errors else ""),
        "data": {"ok": ok, "seconds": took},
    }


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0


def idle_cpu_percent(names, seconds):
    """Mean CPU (% of one CPU) of the pods' VMMs over `seconds`, or None."""
    pids = [rec["vmm"]["pid"] for rec in map(pod_record, names) if rec and rec.get("vmm")]

    def ticks():
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total
    if not pids:
        return None
    start = ticks()
    time.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    return (ticks() - start) / hz / seconds * 100 / len(pids)


def measure_probe_cost(runs, seconds=60):
    say(f"probes: idle pods with and without a 10 s liveness probe, {runs} run(s) of {seconds} s each")
    cpu = {probe: [] for probe in PROBES}
    for i in range(runs):
        for probe in cpu:
            name = f"bench-probe{i}-{probe}".lower()
            remove_pods([name])
            if start_pod(name, probe=probe).returncode != 0:
                cpu[probe].append(None)
                continue
            time.sleep(5)  # let the start settle
            cpu[probe].append(idle_cpu_percent([name], seconds))
            remove_pods([name])
    base = median(cpu["none"])

    def ratio(values):
        m = median(values)
        return f"{m / base:.2f}x" if m is not None and base else "n/a"
    return {
        "title": "Probes: host CPU of an idle pod with a 10 s liveness probe",
        "command": f"an idle busybox pod (httpd on :8080, then `sleep 3600`), alone, with no probe, then "
                   f"with a livenessProbe (periodSeconds: 10) of each kind; the VMM's utime+stime over "
                   f"{seconds} s",
        "table": [("pod", "% of one CPU", "vs no probe"),
                  ("no probe", spread(cpu["none"]), "1"),
                  ("exec liveness probe (cat /etc/hostname)", spread(cpu["exec"]), ratio(cpu["exec"])),
                  ("tcpSocket liveness probe (:8080)", spread(cpu["tcpSocket"]), ratio(cpu["tcpSocket"]))],
        "note": "The agent runs the probes in the guest and sends nothing to the host while a result "
                "holds, so the host's supervisor does no work for them; the cost is the guest's wake-ups "
                "and, for exec, a process joining the container's namespaces, whose kernel work is "
                "emulated on nested PVM.",
        "data": cpu,
    }


def measure_density(limit, minutes):
    say(f"density: idle pods one after another, until one fails, {limit} run or {minutes} minutes pass")
    names, why = [], f"reached the bound of {limit}"
    deadline = time.monotonic() + minutes * 60
    before = mem_available_mib()
    t0 = time.monotonic()
    try:
        for i in range(limit):
            name = f"bench-d{i}"
            remove_pods([name])
            out = start_pod(name)
            names.append(name)
            if out.returncode != 0:
                why = f"pod {i + 1} failed to start: {' '.join(out.stderr.strip().splitlines()[-1:])}"
                remove_pods([names.pop()])
                break
            if mem_available_mib() < 1024:
                why = "host MemAvailable fell under 1 GiB"
                break
            if time.monotonic() > deadline:
                why = f"the {minutes}-minute budget ran out (starts slow down as idle guests share 2 cores)"
                break
            if (i + 1) % 10 == 0:
                lost = [n for n in names if not running(n)]
                say(f"density: {len(names)} pods, {len(lost)} not Running, "
                    f"host MemAvailable {mem_available_mib():.0f} MiB")
                if lost:
                    why = f"{len(lost)} earlier pods stopped being Running (e.g. {lost[0]})"
                    break
        alive = sum(1 for n in names if running(n))
        used = before - mem_available_mib()
        took = time.monotonic() - t0
        idle_cpu = idle_cpu_percent(names, 60)
    finally:
        remove_pods(names)
    return {
        "title": "Density: idle busybox pods at once",
        "command": f"python3 bench/bench.py --only density --density-max {limit} --density-minutes {minutes} "
                   "(starts `sleep 3600` pods one by one, checks every 10 that all are still Running)",
        "table": [("measure", "value"), ("pods started", str(len(names))),
                  ("pods Running at once, at the end", str(alive)), ("stopped because", why),
                  ("host memory used by them", f"{used:.0f} MiB ({used / max(alive, 1):.1f} MiB per pod)"),
                  ("time to start them", f"{took:.0f} s"),
                  ("CPU of all their VMMs over 60 s once started, per pod",
                   f"{idle_cpu:.2f}% of one CPU" if idle_cpu is not None else "n/a")],
        "note": "Goal: 250 or more on this 24 GiB host. Memory is not the limit here; CPU is: each idle "
                "guest's wake-ups (its heartbeat, every 10 s) are emulated ring-0 work, and each start "
                "costs seconds of it. The per-pod idle CPU bounds how many idle pods 2 cores carry, and it "
                "grows with the number of guests (docs/PERFORMANCE.md, \"Density\"). Once the CPU is "
                "saturated, guests miss heartbeats and their pods turn Unknown, then Failed: fewer pods "
                "are Running at the end than were started.",
        "data": {"started": len(names), "alive": alive, "why": why, "idle_cpu_percent": idle_cpu},
    }


# --- 8. vsock and network throughput ---------------------------------------------

def measure_vsock(runs, kib):
    say(f"vsock: {runs} x {kib} KiB guest -> host, and a Unix socket pair")
    cmd = f"dd if=/dev/zero bs=4096 count={kib // 4} 2>/dev/null"
    vs = []
    for i in range(runs):
        p = subprocess.Popen([UNIPOD, "run", "--state-dir", STATE, "--network", "none", "--name", f"bench-vs{i}",
                              "--", "/bin/sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got, t0 = 0, None
        while True:
            chunk = p.stdout.read1(1 << 16)
            if not chunk:
                break
            if t0 is None:
                t0, first = time.monotonic(), len(chunk)
            got += len(chunk)
        end = time.monotonic()
        p.wait()
        if t0 and got >= kib << 10:
            vs.append((got - first) / (end - t0) / 1024)
    ux = []
    # The host pair moves 64 MiB: 64 KiB can arrive as a single read, too fast to time.
    host_cmd = "dd if=/dev/zero bs=4096 count=16384 2>/dev/null"
    for _ in range(runs):
        a, b = socket.socketpair()
        p = subprocess.Popen(["/bin/sh", "-c", host_cmd], stdout=a.fileno())
        a.close()
        got, t0 = 0, None
        while True:
            chunk = b.recv(1 << 16)
            if not chunk:
                break
            if t0 is None:
                t0, first = time.monotonic(), len(chunk)
            got += len(chunk)
        ux.append((got - first) / (time.monotonic() - t0) / 1024)
        p.wait()
        b.close()
    v, u = median(vs), median(ux)
    return {
        "title": "vsock throughput, guest -> host",
        "command": f"unipod run -- sh -c '{cmd}' (its stdout, streamed by the agent over vsock), "
                   "next to dd of 64 MiB into a Unix socket pair on the host",
        "table": [("path", "KiB/s", "ratio"), ("guest -> host over vsock", spread(vs), "1"),
                  ("Unix socket pair on the host", spread(ux), f"{u / v:.0f}x" if u and v else "n/a")],
        "note": "Timed from the first byte, so the VM start is not included. The agent sends output as "
                "JSON (a number per byte, about 2 bytes on the wire per byte), and every byte is copied by "
                "the guest kernel (pipe, vsock), which nested PVM emulates: output-heavy pods are slow here.",
        "data": {"vsock": vs, "unix": ux},
    }


def measure_net(runs):
    say(f"net: {runs} x 2 MiB host -> pod and over a veth pair")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench/net_throughput.py"), "--mib", "2",
                          "--runs", str(runs)], capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith(("run ", "median"))]
    return {
        "title": "Network throughput, host -> pod, next to a veth pair",
        "command": f"python3 bench/net_throughput.py --mib 2 --runs {runs}",
        "table": [("output",)] + [(l,) for l in lines or [out.stderr.strip()[-300:]]],
        "note": "In throwaway network namespaces. See docs/PERFORMANCE.md for where the time goes.",
        "data": lines,
    }


# --- 9. Image pull from a registry, against skopeo copy ----------------------------

# The registry's configuration (docker-registry 2.8, the CNCF distribution
# registry): plain HTTP on loopback, storage in the bench's temp dir.
REGISTRY_YML = """version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: {addr}
"""
# skopeo's trust policy: the bench checks times, not signatures.
SKOPEO_POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}'
PULL_CACHE = os.path.join(os.path.expanduser("~"), ".cache/unipod/bench-pull")
# The big image: the first files (of a sorted walk) of each tree, up to its
# share of the uncompressed size, in layers of about LAYER_MIB.
BIG_TREES = [("/usr/lib/x86_64-linux-gnu", 100 << 20), ("/usr/share", 100 << 20)]
LAYER_MIB = 50
# Bump when the layout the bench writes changes, so the cache is rebuilt.
BIG_FORMAT = "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(work, timeout=30):
    """docker-registry on a free port of 127.0.0.1, storage in `work`;
    returns (process, 'host:port') once GET /v2/ answers 200."""
    # docker-registry reads REGISTRY_* variables as configuration
    # (REGISTRY_AUTH_FILE, which the containers tools use, would be auth.file).
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    for _ in range(5):
        host = f"127.0.0.1:{free_port()}"
        config = os.path.join(work, "registry.yml")
        with open(config, "w") as f:
            f.write(REGISTRY_YML.format(storage=os.path.join(work, "storage"), addr=host))
        log = open(os.path.join(work, "registry.log"), "w")
        p = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        try:
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
                        if r.status == 200:
                            return p, host
                except OSError:
                    time.sleep(0.1)
        except BaseException:
            p.kill()
            p.wait()
            raise
        p.kill()
        p.wait()
        with open(os.path.join(work, "registry.log")) as f:
            text = f.read()
        if "address already in use" not in text:
            raise RuntimeError(f"docker-registry did not answer GET /v2/ within {timeout} s:\n{text[-2000:]}")
    raise RuntimeError("docker-registry found no free port in 5 tries")


def skopeo(work, *args):
    """skopeo with the bench's own policy and an empty registries.conf, so
    the host's containers configuration changes nothing."""
    return ["skopeo", "--policy", os.path.join(work, "policy.json"),
            "--registries-conf", os.path.join(work, "registries.conf"), *args]


class _Hashing:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out):
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


def big_image_files():
    """The big image's files: (layer number, path) in path order, and a key
    of their names, sizes, times and modes."""
    key = hashlib.sha256(f"{BIG_FORMAT} {LAYER_MIB} {BIG_TREES}".encode())
    picked, first = [], 0
    for tree, budget in BIG_TREES:
        used, layers = 0, max(1, budget // (LAYER_MIB << 20))
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                link = os.path.islink(path)
                size = 0 if link else st.st_size
                if not (link or os.path.isfile(path)) or used + size > budget:
                    continue
                layer = first + min(used * layers // budget, layers - 1)
                picked.append((layer, path))
                used += size
                target = os.readlink(path) if link else ""
                key.update(f"{layer}\0{path}\0{size}\0{st.st_mtime_ns}\0{st.st_mode}\0{target}\n".encode())
        first += layers
    return picked, key.hexdigest()[:16]


def big_image_layout():
    """An OCI image layout of about 200 MiB of files (uncompressed) from
    BIG_TREES in gzip layers, made once per key under PULL_CACHE."""
    picked, key = big_image_files()
    layout = os.path.join(PULL_CACHE, key)
    if os.path.exists(os.path.join(layout, "index.json")):
        return layout
    say(f"pull: making the big image in {layout} (once; some seconds)")
    os.makedirs(PULL_CACHE, exist_ok=True)
    for old in os.listdir(PULL_CACHE):
        shutil.rmtree(os.path.join(PULL_CACHE, old), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=PULL_CACHE, prefix=".new-")
    blobs = os.path.join(tmp, "blobs/sha256")
    os.makedirs(blobs)

    def owned_by_root(info):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids = [], []
    for n in sorted({layer for layer, _ in picked}):
        part = os.path.join(tmp, "layer.tar.gz")
        with open(part, "wb") as raw:
            compressed = _Hashing(raw)
            with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=6, mtime=0) as gz:
                plain = _Hashing(gz)
                with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    dirs = set()
                    for layer, path in picked:
                        if layer != n:
                            continue
                        parents = []
                        d = os.path.dirname(path)
                        while d != "/" and d not in dirs:
                            parents.append(d)
                            d = os.path.dirname(d)
                        for d in reversed(parents):
                            dirs.add(d)
                            tar.add(d, arcname=d.lstrip("/"), recursive=False, filter=owned_by_root)
                        tar.add(path, arcname=path.lstrip("/"), recursive=False, filter=owned_by_root)
        digest = compressed.hash.hexdigest()
        os.rename(part, os.path.join(blobs, digest))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": f"sha256:{digest}", "size": compressed.size})
        diff_ids.append(f"sha256:{plain.hash.hexdigest()}")
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(json.dumps(config).encode())},
                "layers": layers}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            **blob(json.dumps(manifest).encode()),
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"org.opencontainers.image.ref.name": "big:latest"}}]}
    with open(os.path.join(tmp, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f)
    os.rename(tmp, layout)
    return layout


def file_bytes(layout):
    """The size of the files in the layers (gzip or plain tar) of an OCI
    layout's single image."""

    def read(digest):
        with open(os.path.join(layout, "blobs/sha256", digest.split(":", 1)[1]), "rb") as f:
            return json.load(f)
    with open(os.path.join(layout, "index.json")) as f:
        manifest = read(json.load(f)["manifests"][0]["digest"])
    files = 0
    for layer in manifest["layers"]:
        path = os.path.join(layout, "blobs/sha256", layer["digest"].split(":", 1)[1])
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as blob:
            with tarfile.open(fileobj=blob, mode="r|") as tar:
                files += sum(m.size for m in tar if m.isfile())
    return files


PULL_STEPS = [("start", None), ("download", "pulling "), ("unpack", "unpacking layer 1/"),
              ("erofs", "mkfs.erofs")]


def timed_pull(ref, state, env):
    """Runs `unipod image pull` and times it, whole and by step from its
    `[pull]` lines (stderr is a pipe, so it prints lines, not bars); returns
    (ms by step, its 'N layers, SIZE to fetch' line)."""
    t0 = time.monotonic()
    p = subprocess.Popen([UNIPOD, "image", "pull", "--tls-verify=false", "--state-dir", state, ref],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    marks, lines, fetch = {}, [], ""
    for raw in p.stderr:
        now = time.monotonic()
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        text = line.removeprefix("[pull] ")
        if text.endswith(" to fetch"):
            fetch = text.removesuffix(" to fetch")
        for step, start in PULL_STEPS:
            if start and step not in marks and text.startswith(start):
                marks[step] = now
    p.wait()
    end = time.monotonic()
    if p.returncode != 0 or len(marks) != len(PULL_STEPS) - 1:
        raise RuntimeError(f"unipod image pull {ref} failed (exit {p.returncode}) or printed other lines:\n"
                           + "\n".join(lines[-20:]))
    bounds = [t0] + [marks[s] for s, start in PULL_STEPS if start] + [end]
    times = {step: (bounds[i + 1] - bounds[i]) * 1000 for i, (step, _) in enumerate(PULL_STEPS)}
    times["total"] = (end - t0) * 1000
    return times, fetch


def measure_pull(runs, where):
    """`unipod image pull` against `skopeo copy`, both writing under `where`
    (None: /dev/shm)."""
    images = [("busybox", OCI)]
    say("pull: the big image's OCI layout (cached)")
    images.append(("big", big_image_layout()))
    say(f"pull: {runs} x (unipod image pull, skopeo copy) of busybox and a ~200 MiB image from a local registry")
    os.makedirs(STATE, exist_ok=True)
    work = tempfile.mkdtemp(dir=STATE, prefix="pull-")
    runs_dir, registry = None, None
    try:
        runs_dir = tempfile.mkdtemp(dir=where or "/dev/shm", prefix="unipod-bench-pull-")
        with open(os.path.join(work, "policy.json"), "w") as f:
            f.write(SKOPEO_POLICY)
        for name in ("registries.conf", "auth.json"):
            with open(os.path.join(work, name), "w") as f:
                f.write("{}" if name == "auth.json" else "")
        # unipod reads registries.conf and auth files too: the bench's own, empty ones.
        env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=os.path.join(work, "registries.conf"),
                   REGISTRY_AUTH_FILE=os.path.join(work, "auth.json"))
        registry, host = start_registry(work)
        res, sizes = {}, {}
        for name, layout in images:
            if not os.path.exists(os.path.join(layout, "index.json")):
                raise RuntimeError(f"{layout} is missing: run 'make images'")
            ref = f"{host}/bench/{name}:latest"
            subprocess.run(skopeo(work, "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}",
                                  f"docker://{ref}"), check=True, env=env, timeout=300)
            unipod_ms = {step: [] for step, _ in PULL_STEPS + [("total", None)]}
            skopeo_ms = []
            for i in range(runs):
                state = os.path.join(runs_dir, f"state-{name}-{i}")
                times, fetch = timed_pull(ref, state, env)
                for step, ms in times.items():
                    unipod_ms[step].append(ms)
                shutil.rmtree(state)
                dest = os.path.join(runs_dir, f"oci-{name}-{i}")
                t0 = time.monotonic()
                subprocess.run(skopeo(work, "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                                      f"oci:{dest}:{name}"), check=True, env=env, timeout=300)
                skopeo_ms.append((time.monotonic() - t0) * 1000)
                shutil.rmtree(dest)
                say(f"pull {name} run {i + 1}: unipod {unipod_ms['total'][-1]:.0f} ms "
                    f"(download {unipod_ms['download'][-1]:.0f}, unpack {unipod_ms['unpack'][-1]:.0f}, "
                    f"erofs {unipod_ms['erofs'][-1]:.0f}), skopeo {skopeo_ms[-1]:.0f} ms")
            res[name] = {"unipod": unipod_ms, "skopeo": skopeo_ms}
            sizes[name] = {"fetched": fetch, "file_bytes": file_bytes(layout)}
    finally:
        if registry:
            registry.kill()
            registry.wait()
        shutil.rmtree(work, ignore_errors=True)
        if runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)

    table = [("image", "what", "ms", "vs skopeo copy")]
    for name, _ in images:
        u, s = res[name]["unipod"], res[name]["skopeo"]
        base = median(s)

        def ratio(values):
            return f"{median(values) / base:.2f}x" if base else "n/a"
        label = (f"{name} ({sizes[name]['fetched']} of gzip layers, "
                 f"{sizes[name]['file_bytes'] / 2**20:.0f} MiB of files)")
        table += [(label, "`skopeo copy` to an OCI layout (download, write; no unpack)", spread(s), "1"),
                  ("", "`unipod image pull`, the whole command", spread(u["total"]), ratio(u["total"])),
                  ("", "of which start: exec to 'pulling'", spread(u["start"]), ""),
                  ("", "download: manifest, config, layers (3 at a time), digests checked",
                   spread(u["download"]), ratio(u["download"])),
                  ("", "unpack: layers into a directory, diff ids checked", spread(u["unpack"]), ""),
                  ("", "erofs: mkfs.erofs, removing the unpacked tree, the image record", spread(u["erofs"]), "")]
    return {
        "title": "Image pull from a registry on loopback, against skopeo copy",
        "command": f"docker-registry serve (distribution 2.8, plain HTTP on 127.0.0.1, filesystem storage); "
                   f"for each image, {runs} x `unipod image pull --tls-verify=false --state-dir FRESH "
                   f"127.0.0.1:PORT/bench/NAME:latest` and `skopeo copy --src-tls-verify=false "
                   f"docker://127.0.0.1:PORT/bench/NAME:latest oci:FRESH:NAME`, FRESH a new dir in "
                   f"{where or '/dev/shm'} each time; unipod's steps are timed from its `[pull]` lines on "
                   f"stderr as they arrive",
        "table": table,
        "note": "busybox is target/guest/oci/busybox (skopeo gzips its plain tar layers on the push). big is "
                "made by the bench and cached in ~/.cache/unipod/bench-pull, keyed by its files: 100 MiB "
                "of /usr/lib/x86_64-linux-gnu and 100 MiB of /usr/share (uncompressed; the first files of a "
                "sorted walk), as gzip tar layers of about 50 MiB of files each. skopeo stops at the OCI "
                "layout; unipod also unpacks the layers and packs the erofs image a pod boots from. Steps: "
                "download = the 'pulling' line to 'unpacking layer 1/', unpack = to 'mkfs.erofs', erofs = "
                "to the exit. unipod's download keeps up with skopeo's whole copy; the rest is CPU (perf "
                "record of a pull of big): unpack inflates the gzip (zlib-rs), hashes the uncompressed tar "
                "(its diff_id) and writes the files, one layer after another; erofs is mkfs.erofs copying every file into "
                "the image, then removing the unpacked tree. The runs write to tmpfs unless --pull-dir "
                "says otherwise: this host's root filesystem is ext4 without a journal, which skips "
                "recently deleted inodes when it allocates one (recently_deleted() in find_inode_bit), so "
                "each pull that follows another's deletes unpacks slower; in target/bench-state three "
                "pulls of big took 4.5, 7.1 and 9.7 s. History: with miniz_oxide and each blob hashed again "
                "before its unpack, the first run of this bench measured unpack 1349 ms for big (under "
                "other tests' load: not the same run, so no ratio is claimed).",
        "data": {**res, "sizes": sizes},
    }


# --- The report -------------------------------------------------------------------

def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    kvm = "nested PVM (kvm_pvm)" if os.path.exists("/sys/module/kvm_pvm") else "KVM"
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return (f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, {kvm}, Linux {platform.release()}; "
            f"unipod commit {commit or '?'}")


MEASURES = ["startup", "boot", "warm", "timeline", "memory", "rate", "density", "vsock", "net", "probes",
            "pull"]
# Committed next to the harness: a run of one measure (--only) rewrites the
# report from these, so every clone keeps the other sections.
RESULTS = os.path.join(ROOT, "bench/results")


def save_result(name, section, argv):
    """Keeps a measure's result, with its date and command line, for the report."""
    section["name"] = name
    section["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # --out only says where the report goes, not how it was measured.
    kept = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
    section["argv"] = " ".join(a for a in kept if not a.startswith("--out="))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(section, f, indent=1)


def write_report(path):
    """docs/BENCHMARKS.md from every kept result, so `--only X` refreshes one section."""
    sections = []
    for name in MEASURES:
        try:
            with open(os.path.join(RESULTS, f"{name}.json")) as f:
                sections.append(json.load(f))
        except FileNotFoundError:
            pass
    out = ["# Benchmarks", "",
           "Written by `make bench` (`python3 bench/bench.py`); do not edit by hand. Analysis and "
           "what was tried: [PERFORMANCE.md](PERFORMANCE.md). No test asserts a time.", "",
           f"- **Machine:** {machine()}",
           "- **Load:** the machine's other work ran beside the benchmark (builds, tests) unless a "
           "section says otherwise; spreads show it.", "",
           "On nested PVM the guest's ring-0 code runs in KVM's instruction emulator: absolute times are "
           "far slower than on a normal KVM host. Compare the ratios, measured in the same run.", ""]
    for s in sections:
        out += [f"## {s['title']}", "",
                f"Measured {s['date']} by `python3 bench/bench.py {s['argv']}`.".replace(" `.", "`."), "",
                f"What runs: `{s['command'].replace('`', '')}`", ""]
        header, *rows = s["table"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out += ["", s["note"], ""]
        if s.get("svg"):
            out += [f"![start-up timeline]({s['svg']})", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))
    say(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5,
                    help="runs per measure (boot, memory, vsock, net, probes, pull: at most 3)")
    ap.add_argument("--only", default=",".join(MEASURES), help="comma-separated measures")
    ap.add_argument("--density-max", type=int, default=300)
    ap.add_argument("--density-minutes", type=float, default=60, help="time budget of the density measure")
    ap.add_argument("--rate-pods", type=int, default=20)
    ap.add_argument("--pull-dir", help="where pull's state dirs and skopeo's layouts go (default: /dev/shm)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/BENCHMARKS.md"))
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from the kept results")
    args = ap.parse_args()
    if args.report_only:
        return write_report(args.out)
    only = args.only.split(",")
    unknown = set(only) - set(MEASURES)
    if unknown:
        sys.exit(f"bench: --only: unknown measure(s) {sorted(unknown)}; choose from {','.join(MEASURES)}")
    if os.geteuid() != 0 or (set(only) - {"pull"} and not os.path.exists("/dev/kvm")):
        sys.exit("bench: needs root and /dev/kvm (pull: root only)")
    snap = snapshot() if set(only) & {"startup", "warm", "memory"} else None
    if set(only) & {"timeline", "memory", "rate", "density", "probes"}:
        prepare_pods()
    few = min(args.runs, 3)
    svg = os.path.join(os.path.dirname(args.out), "boot-timeline.svg")
    runners = {
        "startup": lambda: measure_startup(args.runs, snap),
        "boot": lambda: measure_boot(few),
        "warm": lambda: measure_warm(args.runs, snap),
        "timeline": lambda: measure_timeline(args.runs),
        "memory": lambda: measure_idle_memory(args.runs, measure_memory_overhead(few, snap)),
        "rate": lambda: measure_rate(args.rate_pods),
        "density": lambda: measure_density(args.density_max, args.density_minutes),
        "vsock": lambda: measure_vsock(few, 64),
        "net": lambda: measure_net(few),
        "probes": lambda: measure_probe_cost(few),
        "pull": lambda: measure_pull(few, args.pull_dir),
    }
    for name in MEASURES:
        if name not in only:
            continue
        section = runners[name]()
        if name == "timeline":
            timeline_svg(section["data"], svg)
            section["svg"] = os.path.basename(svg)
        save_result(name, section, sys.argv[1:])
        write_report(args.out)


if __name__ == "__main__":
    main()

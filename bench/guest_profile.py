#!/usr/bin/env python3
"""Names the guest kernel functions in guest profiles.

`unipod boot --guest-profile FILE` (or UNIPOD_GUEST_PROFILE=DIR for the VMMs
`unipod run` starts) samples the guest's RIP every millisecond. This script
maps each address to the vmlinux symbol that holds it and prints the
functions with the most samples, summed over every FILE given:

    python3 bench/guest_profile.py [--vmlinux target/guest/vmlinux] [--top 40] FILE...

User-mode addresses (below the kernel's half) are one row, "[user]".
"""

import argparse
import bisect
import collections
import subprocess
import sys

KERNEL_HALF = 0xFFFF_8000_0000_0000


def symbols(vmlinux):
    """Sorted (address, name) of the text symbols in vmlinux."""
    out = subprocess.run(["nm", "-n", vmlinux], check=True, capture_output=True, text=True).stdout
    table = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            table.append((int(parts[0], 16), parts[2]))
    return table


def read_profile(path):
    """(rip, count) pairs of one profile file."""
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            count, rip = line.split()
            yield int(rip, 16), int(count)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmlinux", default="target/guest/vmlinux")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("profiles", nargs="+")
    args = ap.parse_args()

    table = symbols(args.vmlinux)
    addrs = [a for a, _ in table]
    by_function = collections.Counter()
    for path in args.profiles:
        for rip, count in read_profile(path):
            if rip < KERNEL_HALF:
                by_function["[user]"] += count
                continue
            i = bisect.bisect_right(addrs, rip) - 1
            by_function[table[i][1] if i >= 0 else f"[unknown {rip:#x}]"] += count
    total = sum(by_function.values())
    if total == 0:
        sys.exit("no samples")
    print(f"{total} samples from {len(args.profiles)} profile(s)")
    print(f"{'samples':>8} {'share':>6}  function")
    for name, count in by_function.most_common(args.top):
        print(f"{count:>8} {100 * count / total:>5.1f}%  {name}")


if __name__ == "__main__":
    main()

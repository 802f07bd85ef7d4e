#!/usr/bin/env bash
# Times cold boots to the guest's "hello from the guest" line, through unipod
# and through QEMU microvm (KVM and TCG), on the same kernel and initramfs,
# in one run. Prints one line per boot and a median per VMM.
#
#   bench/boot-compare.sh [RUNS]     (default 3; run from the repo root after `make all`)
set -euo pipefail
runs=${1:-3}
kernel=target/guest/vmlinux
initrd=target/guest/boot-test.cpio
unipod=target/release/unipod
cmdline_pvm="console=ttyS0 reboot=k panic=-1 quiet noxsave nosmap nosmep clearcpuid=smap,smep,umip,fsgsbase,popcnt,cx16"
command -v qemu-system-x86_64 >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null; }

# ms from start until the marker line appears on the command's stdout.
time_to_marker() {
  local start now
  start=$(date +%s%N)
  while IFS= read -r line; do
    if [[ $line == *"hello from the guest"* ]]; then
      now=$(date +%s%N); echo $(( (now - start) / 1000000 )); return 0
    fi
  done < <(timeout 300 "$@" 2>/dev/null)
  echo "timeout"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }

declare -A results
for i in $(seq "$runs"); do
  ms=$(time_to_marker "$unipod" boot --kernel "$kernel" --initrd "$initrd")
  echo "unipod run $i: $ms ms"; results[unipod]+="$ms "
  ms=$(time_to_marker qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm \
      -cpu qemu64,+xsaveerptr,-cx16,-popcnt,-sse4.1,-sse4.2,-ssse3 -m 128 -smp 1 -nodefaults \
      -no-user-config -nographic -serial stdio -kernel "$kernel" -initrd "$initrd" -append "$cmdline_pvm")
  pkill -f "qemu-system-x86_64 -M microvm" || true
  echo "qemu-kvm run $i: $ms ms"; results[qemu-kvm]+="$ms "
  ms=$(time_to_marker qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel tcg \
      -cpu qemu64 -m 128 -smp 1 -nodefaults -no-user-config -nographic -serial stdio \
      -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 reboot=k panic=-1 quiet")
  pkill -f "qemu-system-x86_64 -M microvm" || true
  echo "qemu-tcg run $i: $ms ms"; results[qemu-tcg]+="$ms "
done
for k in unipod qemu-kvm qemu-tcg; do
  echo "median $k: $(tr ' ' '\n' <<<"${results[$k]}" | grep -v '^$' | median) ms (runs: ${results[$k]})"
done

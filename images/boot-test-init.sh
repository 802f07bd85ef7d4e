#!/bin/sh
# /init of the boot-test initramfs: proves the guest reached userspace, marks
# the boot time for the VMM, and powers off through the i8042 reset (reboot=k).
mount -t devtmpfs dev /dev
echo "hello from the guest"
echo "UNIPOD_GUEST_MARKER kernel=$(uname -r)"
# With `unipod boot --disk FILE`: the disk's first bytes, its serial, and
# proof that it is read-only (the write, and its fsync, must fail).
if [ -b /dev/vda ]; then
  mount -t sysfs sys /sys
  echo "UNIPOD_DISK_MARKER $(head -c 32 /dev/vda)"
  echo "UNIPOD_DISK_SERIAL $(cat /sys/block/vda/serial) ro=$(cat /sys/block/vda/ro)"
  if dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=notrunc,fsync 2>/dev/null; then
    echo "UNIPOD_DISK_RO failed: a write to /dev/vda succeeded"
  else
    echo "UNIPOD_DISK_RO ok"
  fi
  # With --disk-slots 1 after it: an empty slot.
  [ -b /dev/vdb ] && echo "UNIPOD_DISK_SLOT vdb size=$(cat /sys/block/vdb/size)"
fi
# Boot-timer marker: the VMM timestamps this write (see vmm/src/devices/legacy/boot_timer.rs).
devmem 0xd0000000 8 123
reboot -f

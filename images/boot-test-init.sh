#!/bin/sh
# /init of the boot-test initramfs: proves the guest reached userspace, marks
# the boot time for the VMM, and powers off through the i8042 reset (reboot=k).
mount -t devtmpfs dev /dev
echo "hello from the guest"
echo "UNIPOD_GUEST_MARKER kernel=$(uname -r)"
# Boot-timer marker: the VMM timestamps this write (see vmm/src/devices/legacy/boot_timer.rs).
devmem 0xd0000000 8 123
reboot -f

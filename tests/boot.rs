//! Boots the real guest kernel through `unipod boot` on KVM.
//!
//! The cold boots here are the suite's slowest steps (about a minute each on
//! nested PVM hosts), so there are only two, and they run in parallel.

mod common;

use common::*;
use std::process::Output;

/// Boots the guest kernel with the boot-test initramfs, plus `extra` flags.
fn boot_test_guest(extra: &[&str]) -> Output {
    let kernel = guest_artifact("vmlinux");
    let initrd = guest_artifact("boot-test.cpio");
    let mut args = vec!["boot", "--kernel", kernel.to_str().expect("utf-8 path")];
    args.extend(["--initrd", initrd.to_str().expect("utf-8 path")]);
    args.extend(extra);
    unipod(&args)
}

/// The test disk starts with this line (32 bytes with its newline), which
/// the guest prints.
const DISK_MARKER: &str = "unipod-blk-e2e-0123456789abcdef";

/// The guest's init prints the marker, writes the boot-timer byte and runs
/// `reboot -f`; the VMM must exit 0 and report both. The same boot checks
/// the disks (no cold boot of their own): a read-only image as /dev/vda,
/// whose first bytes, serial and refused write the guest prints, and an
/// empty slot as /dev/vdb.
#[test]
fn guest_reaches_init_and_vmm_exits_cleanly_on_reboot() {
    if skip_without_kvm("guest_reaches_init_and_vmm_exits_cleanly_on_reboot") {
        return;
    }
    let dir = temp_dir("boot");
    let console = dir.join("console.log");
    let console_arg = console.to_str().expect("utf-8 path");
    // Not a whole number of sectors: the tail reads as zeros.
    let disk = dir.join("disk.img");
    let mut image = format!("{DISK_MARKER}\n").into_bytes();
    image.resize(700, b'.');
    std::fs::write(&disk, &image).expect("write the disk image");
    let disk_arg = disk.to_str().expect("utf-8 path");
    let out = boot_test_guest(&[
        "--mem-mib",
        "128",
        "--console-log",
        console_arg,
        "--disk",
        disk_arg,
        "--disk-slots",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    eprintln!("--- unipod stderr ---\n{stderr}--- guest console ---\n{console_text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "unipod must exit 0 after the guest reboots"
    );
    assert!(
        console_text.contains("hello from the guest"),
        "init did not print its greeting"
    );
    assert!(
        console_text.contains("UNIPOD_GUEST_MARKER kernel=6.1"),
        "init did not print the marker"
    );
    assert!(
        stderr.contains("unipod: guest shut down"),
        "the VMM must report a clean shutdown"
    );
    assert!(
        console_text.contains(&format!("UNIPOD_DISK_MARKER {DISK_MARKER}")),
        "the guest must read the disk image"
    );
    assert!(
        console_text.contains("UNIPOD_DISK_SERIAL unipod-disk0 ro=1"),
        "the guest must see the disk's serial and its read-only flag"
    );
    assert!(
        console_text.contains("UNIPOD_DISK_RO ok"),
        "a write to the disk must fail"
    );
    assert!(
        console_text.contains("UNIPOD_DISK_SLOT vdb size=0"),
        "an empty slot is a disk of size 0"
    );
    assert_eq!(std::fs::read(&disk).expect("read back"), image, "unchanged");
    // The guest kernel refuses the write itself; the device never sees it.
    let metrics = stderr
        .lines()
        .find_map(|l| l.strip_prefix("unipod: virtio-blk 0: "))
        .expect("the VMM logs the disk's counters");
    assert!(
        !metrics.contains("reads: 0,") && metrics.contains("writes_refused: 0,"),
        "{metrics}"
    );

    let boot_ms = number_after(&stderr, "boot-timer ").expect("the boot-timer marker was reached");
    let overhead = number_after(&stderr, "VMM overhead ").expect("the VMM reports its memory");
    let hwm = number_after(&stderr, "VMM peak RSS ").expect("the VMM reports its peak RSS");
    assert!(
        overhead > 0 && overhead < hwm,
        "overhead {overhead} KiB must be part of peak RSS {hwm} KiB"
    );
    println!("BOOT_MS={boot_ms}");
    println!("VMM_RSS_KIB={overhead}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A guest whose init cannot be found panics; the VMM must say so and exit 3.
#[test]
fn guest_kernel_panic_is_reported_with_exit_code_3() {
    if skip_without_kvm("guest_kernel_panic_is_reported_with_exit_code_3") {
        return;
    }
    let out = boot_test_guest(&["--cmdline", "rdinit=/no/such/init init=/no/such/init"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- unipod stderr ---\n{stderr}");
    assert_eq!(out.status.code(), Some(3), "a guest panic exits 3");
    assert!(
        stderr.contains("guest kernel panicked: Kernel panic - not syncing"),
        "panic not reported"
    );
}

/// Bad kernel paths fail fast with a message naming the path and the fix, a
/// setup-error exit code, and no console log left behind.
#[test]
fn missing_or_garbage_kernel_is_a_clear_error_and_leaves_nothing() {
    if skip_without_kvm("missing_or_garbage_kernel_is_a_clear_error_and_leaves_nothing") {
        return;
    }
    let dir = temp_dir("bad-kernel");
    let garbage = dir.join("garbage-vmlinux");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).expect("write garbage kernel");
    let missing = dir.join("no-such-vmlinux");
    let console = dir.join("console.log");
    for (kernel, expected) in [
        (&missing, "cannot read the file"),
        (&garbage, "not a Linux kernel"),
    ] {
        let out = unipod(&[
            "boot",
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--console-log",
            console.to_str().expect("utf-8 path"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&kernel.display().to_string()),
            "error must name the path: {stderr}"
        );
        assert!(stderr.contains(expected), "expected '{expected}': {stderr}");
        assert!(
            !console.exists(),
            "a failed boot must not leave a console log behind"
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A disk image that cannot be opened fails the start with a message that
/// names it, before the console log is created.
#[test]
fn a_missing_disk_image_is_a_clear_error_and_leaves_nothing() {
    if skip_without_kvm("a_missing_disk_image_is_a_clear_error_and_leaves_nothing") {
        return;
    }
    let dir = temp_dir("bad-disk");
    let console = dir.join("console.log");
    let missing = dir.join("no-such.erofs");
    let out = boot_test_guest(&[
        "--console-log",
        console.to_str().expect("utf-8 path"),
        "--disk",
        missing.to_str().expect("utf-8 path"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--disk {}: cannot open", missing.display()))
            && stderr.contains("No such file or directory"),
        "{stderr}"
    );
    assert!(!console.exists(), "nothing is left behind");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Usage errors exit 2 and `--help` explains the exit codes.
#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let out = unipod(&["boot"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel"));
    let help = unipod(&["boot", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Exit codes:") && text.contains("3  the guest crashed"),
        "{text}"
    );
}

/// Out-of-range sizes are rejected before any VM exists.
#[test]
fn invalid_sizes_are_rejected_naming_the_flag() {
    let out = unipod(&["boot", "--kernel", "/dev/null", "--vcpus", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpus 0"));
    let out = unipod(&["boot", "--kernel", "/dev/null", "--mem-mib", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mem-mib 1"));
}

/// On nested PVM hosts secondary vCPUs never come up, so asking for them is
/// an immediate, explained error instead of a guest that hangs.
#[test]
fn smp_on_nested_pvm_is_refused_with_the_reason() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("SKIPPED smp_on_nested_pvm_is_refused_with_the_reason: not a nested PVM host");
        return;
    }
    if skip_without_kvm("smp_on_nested_pvm_is_refused_with_the_reason") {
        return;
    }
    let kernel = guest_artifact("vmlinux");
    let out = unipod(&[
        "boot",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--vcpus",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--vcpus 2") && stderr.contains("use --vcpus 1"),
        "{stderr}"
    );
}

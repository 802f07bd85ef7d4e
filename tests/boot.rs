//! Boots the real guest kernel through `unipod boot` on KVM.
//!
//! The cold boots here are the suite's slowest steps (about a minute each on
//! nested PVM hosts), so there are only two, and they run in parallel.
//! Two vCPUs are tested by tests/cpu_state.rs: its pod has two, and its
//! warm-start template cold-boots both whenever that snapshot is made (the
//! first run, and after the kernel or initramfs changes).

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

/// Bad kernel and initrd files (missing, empty, a directory, garbage, a
/// truncated ELF, oversized) fail fast with a message naming the flag, the
/// path and the problem, a setup-error exit code, and no console log or
/// vsock socket left behind.
#[test]
fn bad_kernel_and_initrd_files_are_clear_errors_and_leave_nothing() {
    if skip_without_kvm("bad_kernel_and_initrd_files_are_clear_errors_and_leave_nothing") {
        return;
    }
    let dir = temp_dir("bad-kernel");
    let kernel = guest_artifact("vmlinux");
    let initrd = guest_artifact("boot-test.cpio");
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write a bad input");
        path
    };
    let sparse = |name: &str, len: u64| {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("make a sparse file");
        path
    };
    let vmlinux = std::fs::read(&kernel).expect("read vmlinux");
    let garbage = file("garbage", &[0x5a; 64 * 1024]);
    let empty = file("empty", b"");
    let truncated = file("truncated-vmlinux", &vmlinux[..8192]);
    let huge_kernel = sparse("huge-vmlinux", 300 << 20);
    let huge_initrd = sparse("huge-initrd", 200 << 20);
    let a_dir = dir.join("a-dir");
    std::fs::create_dir(&a_dir).expect("mkdir");
    let missing = dir.join("no-such-file");
    let console = dir.join("console.log");
    let vsock = dir.join("vsock.sock");
    // (--kernel, --initrd, expected message)
    let cases: &[(&std::path::Path, &std::path::Path, &str)] = &[
        (&missing, &initrd, "cannot read the file; check the path"),
        (&a_dir, &initrd, "cannot read the file; check the path"),
        (
            &garbage,
            &initrd,
            "not a Linux kernel: expected an ELF vmlinux or a bzImage",
        ),
        (
            &empty,
            &initrd,
            "not a Linux kernel: expected an ELF vmlinux or a bzImage",
        ),
        (&huge_kernel, &initrd, "not a Linux kernel"),
        (&truncated, &initrd, "a damaged or truncated ELF kernel"),
        (&kernel, &missing, "cannot read the file; check the path"),
        (
            &kernel,
            &empty,
            "the file is empty; expected a cpio archive",
        ),
        (
            &kernel,
            &a_dir,
            "not a regular file; expected a cpio archive",
        ),
        (
            &kernel,
            &huge_initrd,
            "209715200 bytes do not fit in guest memory above the kernel; raise --mem-mib",
        ),
    ];
    for &(k, i, expected) in cases {
        let bad = if k == kernel {
            ("--initrd", i)
        } else {
            ("--kernel", k)
        };
        let out = unipod(&[
            "boot",
            "--kernel",
            k.to_str().expect("utf-8 path"),
            "--initrd",
            i.to_str().expect("utf-8 path"),
            "--mem-mib",
            "128",
            "--console-log",
            console.to_str().expect("utf-8 path"),
            "--vsock-uds",
            vsock.to_str().expect("utf-8 path"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{} {}", bad.0, bad.1.display());
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {what}: {expected}")),
            "{what}: expected '{expected}': {stderr}"
        );
        assert!(
            !console.exists() && !vsock.exists(),
            "{what}: a failed boot must not leave a console log or socket behind"
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

/// `unipod boot` of the boot-test guest with `env` set, stderr piped.
fn spawn_boot_test_guest(env: (&str, &str), extra: &[&str]) -> std::process::Child {
    let kernel = guest_artifact("vmlinux");
    let initrd = guest_artifact("boot-test.cpio");
    std::process::Command::new(env!("CARGO_BIN_EXE_unipod"))
        .arg("boot")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(extra)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unipod boot starts")
}

/// The seccomp proof: a vCPU thread or the event loop that makes a
/// forbidden system call (the hidden UNIPOD_SECCOMP_PROBE hook issues
/// socket(AF_INET) right after the thread's filter is installed) takes the
/// whole VMM down with SIGSYS, and only the VMM: this test process, its
/// parent, lives on to check it. With --no-seccomp the same call goes
/// through and the VMM still answers SIGTERM from its event loop.
#[test]
fn a_forbidden_syscall_kills_the_vmm_with_sigsys_unless_no_seccomp() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    if skip_without_kvm("a_forbidden_syscall_kills_the_vmm_with_sigsys_unless_no_seccomp") {
        return;
    }
    for thread in ["vcpu", "main"] {
        let out = spawn_boot_test_guest(("UNIPOD_SECCOMP_PROBE", thread), &[])
            .wait_with_output()
            .expect("wait for unipod boot");
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- {thread}: unipod stderr ---\n{stderr}");
        assert!(
            stderr.contains(&format!("UNIPOD_SECCOMP_PROBE={thread}: issuing")),
            "the {thread} thread never reached its probe"
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{thread}: a forbidden call must kill the VMM with SIGSYS, got {}",
            out.status
        );
    }

    let mut vmm = spawn_boot_test_guest(("UNIPOD_SECCOMP_PROBE", "main"), &["--no-seccomp"]);
    let mut lines = std::io::BufReader::new(vmm.stderr.take().expect("piped")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read stderr");
        let probed = line.contains("UNIPOD_SECCOMP_PROBE=main: issuing");
        seen.push(line);
        if probed {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("issuing")),
        "the unfiltered VMM never reached its probe:\n{}",
        seen.join("\n")
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(vmm.id()).expect("pid fits")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal the VMM");
    let status = vmm.wait().expect("wait for the VMM");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "with --no-seccomp the probe must pass and the event loop handle SIGTERM; got {status}:\n{}",
        rest.join("\n")
    );
}

/// A VMM killed by its seccomp filter fails the pod, and `unipod run` says
/// it was seccomp.
#[test]
fn a_pod_whose_vmm_is_killed_by_seccomp_fails_naming_it() {
    if skip_without_kvm("a_pod_whose_vmm_is_killed_by_seccomp_fails_naming_it") {
        return;
    }
    let state = temp_dir("seccomp-pod");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unipod"))
        .args([
            "run",
            "--cold",
            "--network",
            "none",
            "--name",
            "seccomp-probe",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--kernel")
        .arg(guest_artifact("vmlinux"))
        .arg("--initrd")
        .arg(guest_artifact("initramfs.cpio"))
        .args(["--", "true"])
        .env("UNIPOD_SECCOMP_PROBE", "vcpu")
        .output()
        .expect("unipod run runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- unipod run stderr ---\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(125),
        "a VM that died is unipod's failure"
    );
    assert!(
        stderr.contains("SIGSYS")
            && stderr.contains("seccomp filter stopped a forbidden system call"),
        "the pod's failure must name seccomp"
    );
    let _ = std::fs::remove_dir_all(&state);
}

//! End-to-end tests of warm start: pods restored from the shared snapshot
//! get their own identity, and unusable snapshots are refused with a clear
//! error, then replaced by a cold boot.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    guest_artifact, shared_state_dir, skip_without_kvm, skip_without_root, temp_dir,
    unipod_command as unipod, Netns,
};

fn guest_args(cmd: &mut Command) -> &mut Command {
    common::with_guest(cmd)
}

/// Makes (or finds) the shared snapshot; returns its directory.
fn shared_snapshot() -> PathBuf {
    let out = guest_args(
        unipod()
            .args(["snapshot", "create", "--state-dir"])
            .arg(shared_state_dir()),
    )
    .output()
    .expect("unipod snapshot create runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "snapshot create failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = stdout.split_whitespace().nth(1).expect("KEY DIR");
    PathBuf::from(dir)
}

/// What one restored pod reports about itself.
#[derive(Debug)]
struct Identity {
    hostname: String,
    uid: String,
    random: String,
    /// Guest wall clock minus host wall clock when the line arrived, in s.
    clock_skew: i64,
    mac: String,
    /// `ip -o -4 addr show dev eth0`.
    address: String,
}

/// Starts pod `name` in `ns`; it prints its identity, then lingers (so that
/// the next pod cannot get its IP) until `stop_pod`.
fn identity_of(ns: &Netns, name: &str) -> (Identity, Child) {
    let mut child = guest_args(
        ns.command(env!("CARGO_BIN_EXE_unipod"))
            .arg("run")
            .arg("--state-dir")
            .arg(shared_state_dir()),
    )
    .args(["--bridge", "upt-ident", "--pod-cidr", "10.231.6.0/24"])
    .args(["--name", name, "--", "/bin/sh", "-c"])
    // No pipelines: concurrent guest processes can hit the AVX-state
    // hazard described in docs/NESTED-KVM.md.
    .arg(
        "hostname; cat /etc/podinfo/uid; echo; od -An -tx1 -N16 /dev/urandom; date +%s; \
         cat /sys/class/net/eth0/address; ip -o -4 addr show dev eth0; exec sleep 600",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("unipod run starts");
    let mut lines = Vec::new();
    let mut skew = None;
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    while lines.len() < 6 {
        let Some(line) = stdout.next() else {
            let out = child.wait_with_output().unwrap();
            panic!(
                "pod {name} ended early; printed {lines:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let line = line.unwrap();
        if lines.len() == 3 {
            let host = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let guest: u64 = line.trim().parse().expect("date +%s");
            skew = Some(i64::try_from(guest).unwrap() - i64::try_from(host).unwrap());
        }
        lines.push(line);
    }
    eprintln!("--- {name} ---\n{}", lines.join("\n"));
    let id = Identity {
        hostname: lines[0].clone(),
        uid: lines[1].clone(),
        random: lines[2].split_whitespace().collect(),
        clock_skew: skew.expect("the pod printed its clock"),
        mac: lines[4].trim().to_string(),
        address: lines[5].clone(),
    };
    (id, child)
}

/// Stops a lingering pod with Ctrl-C and checks it was restored.
fn stop_pod(child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().try_into().unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        stderr.contains("restoring the VM from snapshot"),
        "{stderr}"
    );
}

#[test]
fn pods_restored_from_one_snapshot_get_distinct_identities() {
    if skip_without_kvm("pods_restored_from_one_snapshot_get_distinct_identities")
        || skip_without_root("pods_restored_from_one_snapshot_get_distinct_identities")
    {
        return;
    }
    let snapshot = shared_snapshot();
    let ns = Netns::new("ident");
    let (a, pod_a) = identity_of(&ns, "ident-a");
    let (b, pod_b) = identity_of(&ns, "ident-b");
    stop_pod(pod_a);
    stop_pod(pod_b);
    assert_eq!(
        (a.hostname.as_str(), b.hostname.as_str()),
        ("ident-a", "ident-b")
    );
    for id in [&a, &b] {
        assert_eq!(id.uid.len(), 36, "a UUID: {id:?}");
        assert_eq!(id.random.len(), 32, "16 random bytes: {id:?}");
        // `date +%s` truncates, so one second of slack on each side.
        assert!(
            (-2..=1).contains(&id.clock_skew),
            "guest clock off by {} s",
            id.clock_skew
        );
    }
    // The pods' own view of eth0: the leased IPs and the MACs derived
    // from them, not the template's.
    assert_eq!(a.mac, "02:75:0a:e7:06:02");
    assert_eq!(b.mac, "02:75:0a:e7:06:03");
    assert!(a.address.contains("inet 10.231.6.2/24"), "{}", a.address);
    assert!(b.address.contains("inet 10.231.6.3/24"), "{}", b.address);
    assert_ne!(a.uid, b.uid, "pod UIDs");
    assert_ne!(
        a.random, b.random,
        "/dev/urandom must differ after the reseed"
    );
    // The clock check means something only if the snapshot is older than the
    // slack: a guest that kept the snapshot's clock would be behind by this.
    let info = std::fs::metadata(snapshot.join("state")).unwrap();
    let age = info
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default()
        .as_secs();
    assert!(
        age >= 3,
        "snapshot only {age} s old; the clock check proves nothing"
    );
}

/// A private copy of the shared snapshot in its own state dir, under the
/// same key, for tests that damage it.
fn copy_of_snapshot(name: &str) -> (PathBuf, PathBuf) {
    let good = shared_snapshot();
    let key = good.file_name().unwrap().to_owned();
    let state = temp_dir(name);
    let copy = state.join("snapshots").join(&key);
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["state", "memory"] {
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(good.join(file))
            .arg(copy.join(file))
            .status()
            .unwrap();
        assert!(status.success());
    }
    (state, copy)
}

fn restore(snapshot: &Path, kernel: &Path, sock: &Path) -> Output {
    unipod()
        .args(["boot", "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(guest_artifact("initramfs.cpio"))
        .arg("--vsock-uds")
        .arg(sock)
        .arg("--console-log")
        .arg(sock.with_extension("log"))
        .arg("--restore")
        .arg(snapshot)
        // Pod VMs (and so their snapshots) always have a net device, the
        // image slots (MAX_IMAGES_PER_POD) and the balloon.
        .arg("--net-detached")
        .args(["--disk-slots", "4"])
        .arg("--free-page-reporting")
        .output()
        .expect("unipod boot runs")
}

/// `unipod snapshot SUBCOMMAND --state-dir STATE`, ready for more args.
fn snapshot_cmd(subcommand: &str, state: &Path) -> Command {
    let mut cmd = unipod();
    cmd.args(["snapshot", subcommand, "--state-dir"]).arg(state);
    cmd
}

/// Flips one byte in place (the memory file stays sparse).
fn flip_byte(path: &Path, per_mille: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = file.metadata().unwrap().len() * per_mille / 1000;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
}

#[test]
fn unusable_snapshots_are_refused_with_a_reason() {
    if skip_without_kvm("unusable_snapshots_are_refused_with_a_reason") {
        return;
    }
    let (state, copy) = copy_of_snapshot("bad-snapshots");
    let sock = state.join("v.sock");
    let kernel = guest_artifact("vmlinux");
    let expect_refusal = |what: &str, out: &Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- {what} ---\n{stderr}");
        assert_eq!(out.status.code(), Some(4), "{what}: exit code 4");
        assert!(stderr.contains(needle), "{what}: {needle:?} missing");
        assert!(!sock.exists(), "{what}: no vsock socket left behind");
    };

    // A different kernel: same file plus one byte.
    let other_kernel = state.join("vmlinux-other");
    let mut bytes = std::fs::read(&kernel).unwrap();
    bytes.push(0);
    std::fs::write(&other_kernel, bytes).unwrap();
    expect_refusal(
        "other kernel",
        &restore(&copy, &other_kernel, &sock),
        "taken with other inputs",
    );

    let memory = copy.join("memory");
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    expect_refusal(
        "truncated memory",
        &restore(&copy, &kernel, &sock),
        "truncated",
    );

    let state_file = copy.join("state");
    let good_state = std::fs::read(&state_file).unwrap();
    flip_byte(&state_file, 500);
    expect_refusal(
        "corrupted state",
        &restore(&copy, &kernel, &sock),
        "checksum mismatch",
    );

    let mut other_version = good_state.clone();
    other_version[8] ^= 0xff;
    std::fs::write(&state_file, &other_version).unwrap();
    expect_refusal(
        "version",
        &restore(&copy, &kernel, &sock),
        "snapshot format version",
    );

    // The cache sees it as unusable too; prune removes it.
    let ls = snapshot_cmd("ls", &state).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains("unusable"), "{listing}");
    let prune = snapshot_cmd("prune", &state).output().unwrap();
    assert!(prune.status.success());
    assert!(!copy.exists(), "prune removed the broken snapshot");
    let _ = std::fs::remove_dir_all(&state);
}

/// One cold boot: `unipod run` falls back to it when the snapshot is bad.
#[test]
fn a_corrupted_snapshot_falls_back_to_a_cold_boot() {
    if skip_without_kvm("a_corrupted_snapshot_falls_back_to_a_cold_boot") {
        return;
    }
    let (state, copy) = copy_of_snapshot("fallback");
    flip_byte(&copy.join("memory"), 300);
    let out = guest_args(unipod().arg("run").arg("--state-dir").arg(&state))
        .args([
            "--network",
            "none",
            "--name",
            "fallback",
            "--",
            "/bin/echo",
            "cold and well",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cold and well\n");
    for needle in [
        "is unusable",
        "checksum mismatch",
        "booting cold",
        "pod fallback: Succeeded",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing");
    }
    assert!(!copy.exists(), "the bad snapshot was removed");
    assert!(!state.join("pods/fallback").exists(), "pod dir removed");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn snapshot_ls_shows_and_rm_removes() {
    if skip_without_kvm("snapshot_ls_shows_and_rm_removes") {
        return;
    }
    let (state, copy) = copy_of_snapshot("ls-rm");
    let key = copy.file_name().unwrap().to_string_lossy().into_owned();
    let ls = snapshot_cmd("ls", &state).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    eprintln!("{listing}");
    assert!(
        listing.contains(&key) && listing.contains("128MiB") && listing.contains("vmlinux"),
        "{listing}"
    );
    assert!(listing.contains("1 snapshot(s)"), "{listing}");
    let rm = snapshot_cmd("rm", &state).arg(&key).output().unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(!copy.exists());
    let again = snapshot_cmd("rm", &state).arg(&key).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no snapshot"));
    let _ = std::fs::remove_dir_all(&state);
}

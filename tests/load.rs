//! Load: create/run/delete cycles of a small pod, four at a time, on a
//! bridge in the test's own network namespace. Every cycle must succeed;
//! afterwards the taps, IPAM leases, mounts, unipod processes and pod
//! directories must be back where they started, and the VMMs' peak memory
//! must not grow from the first cycles to the last.
//!
//! `UNIPOD_LOAD_CYCLES` sets the number of cycles: 12 (three rounds, to keep
//! CI within its budget) in the normal run,
//! 100 in `make soak` (see docs/SECURITY.md for timings).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::pod::{assert_nothing_left, import_busybox, manifest, text, HostState};
use common::{guest_artifact, shared_state_dir, skip_without_kvm, skip_without_root, Netns};

const PARALLEL: usize = 4;
/// Cycles whose VMMs' peaks are compared, at each end of the run.
const SAMPLE: usize = 4;

fn cycles() -> usize {
    std::env::var("UNIPOD_LOAD_CYCLES")
        .ok()
        .map(|v| v.parse().expect("UNIPOD_LOAD_CYCLES is a number"))
        .unwrap_or(12)
}

/// `unipod SUBCOMMAND --state-dir STATE args...` inside `ns`.
fn unipod_in(ns: &Netns, state: &Path, subcommand: &str, args: &[&str]) -> Output {
    ns.command(env!("CARGO_BIN_EXE_unipod"))
        .arg(subcommand)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        // Four guests on a loaded host starve each other for many seconds.
        .env("UNIPOD_UNKNOWN_TIMEOUT_SECS", "180")
        .output()
        .expect("unipod runs")
}

/// One cycle: run pod `name` to its end on the bridge, check its output,
/// remove it. `Err` says what went wrong.
fn cycle(ns: &Netns, state: &Path, name: &str) -> Result<(), String> {
    let path = manifest(
        name,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  containers:\n    - name: c\n      image: busybox\n      command: [echo, load]\n"
        ),
    );
    let kernel = guest_artifact("vmlinux");
    let initrd = guest_artifact("initramfs.cpio");
    let run = unipod_in(
        ns,
        state,
        "run",
        &[
            "--bridge",
            "upt-load",
            "--pod-cidr",
            "10.231.20.0/24",
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--initrd",
            initrd.to_str().expect("utf-8"),
            path.to_str().expect("utf-8"),
        ],
    );
    let (stdout, stderr) = text(&run);
    if run.status.code() != Some(0) || !stdout.contains("[c] load") {
        return Err(format!("{name}: run: {}\n{stdout}{stderr}", run.status));
    }
    let rm = unipod_in(ns, state, "rm", &[name]);
    if !rm.status.success() {
        return Err(format!("{name}: rm: {:?}", text(&rm)));
    }
    let _ = std::fs::remove_dir_all(path.parent().expect("the manifest's dir"));
    Ok(())
}

/// The peak resident memory (VmHWM, KiB) of each running VMM of a
/// `load-<n>` pod, by `n`.
fn sample_vmm_peaks(state: &Path, peaks: &Mutex<BTreeMap<usize, u64>>) {
    let pods = state.join("pods").join("load-");
    let pods = pods.to_string_lossy();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) != Some("boot") {
            continue;
        }
        // The VMM's vsock socket is in its pod's directory.
        let Some(n) = args.iter().find_map(|a| {
            let rest = a.strip_prefix(pods.as_ref())?;
            rest.split('/').next()?.parse::<usize>().ok()
        }) else {
            continue;
        };
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            let mut peaks = peaks.lock().expect("not poisoned");
            let peak = peaks.entry(n).or_default();
            *peak = (*peak).max(kib);
        }
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn pods_created_and_removed_four_at_a_time_leave_nothing_and_do_not_grow() {
    let name = "pods_created_and_removed_four_at_a_time_leave_nothing_and_do_not_grow";
    if skip_without_kvm(name) || skip_without_root(name) {
        return;
    }
    let total = cycles();
    assert!(
        total >= 2 * SAMPLE,
        "UNIPOD_LOAD_CYCLES must be at least {}",
        2 * SAMPLE
    );
    let state = shared_state_dir();
    import_busybox(&state);
    let ns = Netns::new("load");
    for n in 0..total {
        let _ = unipod_in(&ns, &state, "rm", &["-f", &format!("load-{n}")]);
    }
    // The first pod on the bridge creates it (and its lease file); count
    // from there, so only what pods leave is compared.
    cycle(&ns, &state, "load-warmup").expect("the warm-up pod runs");
    let host = || HostState::of(&state, Some(&ns));
    let before = host();

    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let peaks = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                sample_vmm_peaks(&state, &peaks);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let workers: Vec<_> = (0..PARALLEL)
            .map(|_| {
                s.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    if let Err(e) = cycle(&ns, &state, &format!("load-{n}")) {
                        eprintln!("FAILED {e}");
                        failures.lock().expect("not poisoned").push(e);
                    }
                    // Progress for the long soak; cycles end out of order.
                    let finished = finished.fetch_add(1, Ordering::SeqCst) + 1;
                    if finished.is_multiple_of(10) {
                        eprintln!(
                            "load: {finished} of {total} cycles done in {:.0} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker panicked");
        }
        done.store(true, Ordering::SeqCst);
    });
    let took = started.elapsed();
    let failures = failures.into_inner().expect("not poisoned");
    let peaks = peaks.into_inner().expect("not poisoned");
    eprintln!(
        "{total} cycles, {PARALLEL} at a time: {:.0} s ({:.1} s per cycle); {} failed",
        took.as_secs_f64(),
        took.as_secs_f64() / total as f64,
        failures.len()
    );
    // Each VMM's peak, in cycle order; a pod too quick to be sampled has none.
    let seen: Vec<u64> = peaks.values().copied().collect();
    eprintln!("VMM VmHWM (KiB) by cycle: {peaks:?}");
    assert!(
        failures.is_empty(),
        "{} cycles failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_nothing_left(&before, host);
    assert!(
        seen.len() >= 2 * SAMPLE,
        "only {} of {total} VMMs were sampled",
        seen.len()
    );
    let first = median(seen[..SAMPLE].to_vec());
    let last = median(seen[seen.len() - SAMPLE..].to_vec());
    eprintln!(
        "VMM VmHWM: median of the first {SAMPLE} {first} KiB, of the last {SAMPLE} {last} KiB"
    );
    // A VMM's peak is mostly the guest pages it touched since the restore,
    // which varies a little with how far the guest got when sampled (and
    // how busy its neighbours kept it). Each VMM is a new process, so what
    // could grow is what pods share (the snapshot, image files, host-side
    // state the supervisor hands the VMM). The peaks seen here spread over
    // about 1% (docs/SECURITY.md); growth past 5% is not that noise.
    let slack = first / 20;
    assert!(
        last <= first + slack,
        "VMM peak memory grew from {first} KiB to {last} KiB (more than 5%)"
    );
}

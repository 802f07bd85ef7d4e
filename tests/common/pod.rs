//! Helpers for the tests of manifest pods (tests/pods.rs, faults.rs,
//! load.rs): running `unipod` against a state dir, reading a pod's status,
//! and checking that removed pods left nothing on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{guest_artifact, temp_dir, Netns};

/// `unipod SUBCOMMAND --state-dir STATE args...`.
pub fn unipod(state: &Path, subcommand: &str, args: &[&str]) -> Output {
    cmd(state, subcommand, args).output().expect("unipod runs")
}

/// The command [`unipod`] runs.
pub fn cmd(state: &Path, subcommand: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unipod"));
    c.arg(subcommand).arg("--state-dir").arg(state).args(args);
    // Restarts in tests back off for 200 ms, not Kubernetes' 10 s.
    c.env("UNIPOD_RESTART_BACKOFF_MS", "200");
    c
}

/// `unipod run MANIFEST` with the agent guest, no network, and `extra`.
pub fn run_pod(state: &Path, manifest: &Path, extra: &[&str]) -> Command {
    let mut c = cmd(state, "run", &["--network", "none"]);
    // These tests' VMs can starve each other for seconds under the
    // suite's load (docs/NESTED-KVM.md): don't fail a pod that is only slow.
    c.env("UNIPOD_UNKNOWN_TIMEOUT_SECS", "180");
    c.arg("--kernel")
        .arg(guest_artifact("vmlinux"))
        .arg("--initrd")
        .arg(guest_artifact("initramfs.cpio"))
        .args(extra)
        .arg(manifest);
    c
}

/// The output's stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a manifest named `name`.yaml into a fresh directory.
pub fn manifest(name: &str, yaml: &str) -> PathBuf {
    let path = temp_dir(&format!("pods-{name}")).join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

/// Imports the busybox test image into `state` (a no-op when present).
pub fn import_busybox(state: &Path) {
    let oci = guest_artifact("oci/busybox");
    let out = unipod(
        state,
        "image",
        &["import", oci.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "image import: {:?}", text(&out));
}

/// The pod's status.json.
pub fn status(state: &Path, pod: &str) -> serde_json::Value {
    let path = state.join("pods").join(pod).join("status.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("status.json is JSON")
}

/// Waits until `check` holds for the pod's status, or panics.
pub fn wait_for(state: &Path, pod: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(state, pod);
        if check(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod}: never {what}:\n{s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes a pod left by an earlier, failed run of the test.
pub fn remove(state: &Path, pod: &str) {
    let _ = unipod(state, "rm", &["-f", pod]);
}

/// What pods leave on the host, counted so that a test can compare a
/// snapshot taken before its pods with one taken after `unipod rm`.
#[derive(Debug, PartialEq, Eq)]
pub struct HostState {
    /// Pod taps (`up` and the pod IP in hex) in the test's namespace; none
    /// without one (pods with `--network none` make no tap).
    pub taps: Vec<String>,
    /// IPAM leases in every `net/<bridge>/leases.json` of the state dir.
    pub leases: usize,
    /// Lines of /proc/self/mountinfo naming the state dir (or the pods' own
    /// directories): unipod mounts nothing on the host, and this would
    /// catch it if it started to. Not every line: other work on the host
    /// mounts and unmounts too.
    pub mounts: usize,
    /// Processes (supervisors, VMMs) whose command line names the state dir.
    pub processes: Vec<i32>,
    /// Directories under `pods/`.
    pub pod_dirs: Vec<String>,
}

impl HostState {
    /// Everything under `state`, in `ns`, and every mount of the host: for
    /// a test that has the state dir to itself.
    pub fn of(state: &Path, ns: Option<&Netns>) -> HostState {
        Self::count(state, ns, None)
    }

    /// Only what concerns `pods` (their leases, processes, directories and
    /// mounts naming their directories): for tests sharing a state dir with
    /// tests running at the same time.
    pub fn of_pods(state: &Path, ns: Option<&Netns>, pods: &[&str]) -> HostState {
        Self::count(state, ns, Some(pods))
    }

    fn count(state: &Path, ns: Option<&Netns>, pods: Option<&[&str]>) -> HostState {
        let state_text = state.to_string_lossy();
        // A VMM names files in its pod's directory, a supervisor the state
        // dir and the manifest (NAME.yaml in the tests).
        let mentions = |text: &str| {
            text.contains(state_text.as_ref())
                && pods.is_none_or(|pods| {
                    pods.iter().any(|p| {
                        text.contains(&format!("/pods/{p}/"))
                            || text.contains(&format!("/{p}.yaml"))
                    })
                })
        };
        let ours = |pod: &str| pods.is_none_or(|pods| pods.contains(&pod));
        // The host's own links change with whatever else runs there.
        let links = ns.map(Netns::links).unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        HostState {
            taps: links.into_iter().filter(|l| is_pod_tap(l)).collect(),
            leases: leased_pods(state).iter().filter(|p| ours(p)).count(),
            mounts: mountinfo.lines().filter(|l| mentions(l)).count(),
            processes: processes(mentions),
            pod_dirs: dir_names(&state.join("pods"))
                .into_iter()
                .filter(|d| ours(d))
                .collect(),
        }
    }
}

/// Waits (the VMM's exit and the tap's removal lag `rm` by a moment) until
/// the host is back to `before` (taken with `now`), or panics naming what
/// was left.
pub fn assert_nothing_left(before: &HostState, now: impl Fn() -> HostState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = now();
        if &now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pods left something behind:\nbefore: {before:#?}\nafter: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pod taps: `up` and the pod IP in hex (test bridges are named `upt-...`).
pub fn is_pod_tap(link: &str) -> bool {
    link.len() == 10 && link.starts_with("up") && link[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pods holding a lease, in every `net/<bridge>/leases.json` of `state`.
fn leased_pods(state: &Path) -> Vec<String> {
    dir_names(&state.join("net"))
        .iter()
        .filter_map(|bridge| {
            std::fs::read_to_string(state.join("net").join(bridge).join("leases.json")).ok()
        })
        .flat_map(|text| {
            let file: serde_json::Value = serde_json::from_str(&text).expect("leases.json is JSON");
            file["leases"]
                .as_object()
                .map(|l| {
                    l.values()
                        .filter_map(|lease| Some(lease["pod"].as_str()?.to_string()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Pids of live processes whose command line `matches`.
fn processes(matches: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &i32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie is gone but for its exit status.
            let zombie = stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'));
            !zombie && matches(&String::from_utf8_lossy(&cmdline))
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

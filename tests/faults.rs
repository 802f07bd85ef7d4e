//! Fault injection on running pods: a container's process killed with
//! SIGKILL, a guest kernel panic, a container trying to reach the guest's
//! PID 1, and a full state dir before and while a pod runs. Each test
//! checks the pod's phase and reason, and that `unipod rm` leaves nothing
//! on the host.
//!
//! The pods restore the shared warm-start snapshot (tests/pods.rs's pods
//! have the same size, so whichever runs first makes it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pod::{
    assert_nothing_left, cmd, import_busybox, manifest, remove, run_pod, status, text, unipod,
    wait_for, HostState,
};
use common::{
    guest_artifact, run_ok, shared_state_dir, skip_without_kvm, skip_without_root, temp_dir,
};

/// A pod whose container runs a logging loop as a child of its shell and
/// exits with the loop's status: killing the loop (the shell is the pid
/// namespace's init, which SIGKILL from inside cannot reach) ends the
/// container with 137, as the death of its main process would. The loop's
/// pid is in /tmp/loop.
fn looping_pod(name: &str, policy: &str) -> PathBuf {
    manifest(
        name,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  containers:\n    - name: c\n      image: busybox\n      command: [sh, -c, '(while true; do echo tick; sleep 0.2; done) & echo $! > /tmp/loop; wait $!']\n"
        ),
    )
}

/// `unipod exec POD -- sh -c SCRIPT`; returns stdout, asserting success.
fn exec(state: &Path, pod: &str, script: &str) -> String {
    let out = unipod(state, "exec", &[pod, "--", "sh", "-c", script]);
    assert!(out.status.success(), "exec {script:?}: {:?}", text(&out));
    text(&out).0
}

/// Starts `path` detached and waits until its container ran long enough
/// to record its loop's pid.
fn start_looping(state: &Path, pod: &str, path: &Path) {
    let out = run_pod(state, path, &["-d"]).output().expect("runs");
    assert!(out.status.success(), "{pod}: {:?}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let probe = unipod(state, "exec", &[pod, "--", "test", "-s", "/tmp/loop"]);
        if probe.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{pod}: the loop never started");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn sigkill_of_a_containers_process_is_exit_code_137_and_the_restart_policy_holds() {
    if skip_without_kvm(
        "sigkill_of_a_containers_process_is_exit_code_137_and_the_restart_policy_holds",
    ) {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let (never, always) = ("faults-kill-never", "faults-kill-always");
    remove(&state, never);
    remove(&state, always);
    let host = || HostState::of_pods(&state, None, &[never, always]);
    let before = host();
    start_looping(&state, never, &looping_pod(never, "Never"));
    start_looping(&state, always, &looping_pod(always, "Always"));
    for pod in [never, always] {
        exec(&state, pod, "kill -9 $(cat /tmp/loop)");
    }

    wait_for(&state, never, "Failed", |s| {
        s["status"]["phase"] == "Failed"
    });
    let s = status(&state, never);
    let c = &s["status"]["containerStatuses"][0];
    assert_eq!(c["state"]["terminated"]["exitCode"], 137, "{s:#}");
    assert_eq!(c["restartCount"], 0, "Never does not restart: {s:#}");
    let (described, _) = text(&unipod(&state, "describe", &[never]));
    assert!(described.contains("Exit Code:    137"), "{described}");

    wait_for(&state, always, "restarted", |s| {
        s["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
    });
    let s = status(&state, always);
    assert_eq!(
        s["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "{s:#}"
    );
    assert_ne!(s["status"]["phase"], "Failed", "Always restarts: {s:#}");

    for pod in [never, always] {
        let out = unipod(&state, "rm", &["-f", pod]);
        assert!(out.status.success(), "{pod}: {:?}", text(&out));
    }
    assert_nothing_left(&before, host);
}

/// A guest kernel panic (the test-hooks agent, PID 1, exits on request once
/// the container runs) under `restartPolicy: Always`: the pod gets a new VM
/// and its container runs again, counted as a restart, as the kubelet
/// handles a dead sandbox. Both VMs restore the test-hooks agent's
/// snapshot, which tests/agent.rs's silent-agent test shares.
#[test]
fn a_guest_kernel_panic_gets_the_pod_a_new_vm_and_a_counted_restart() {
    if skip_without_kvm("a_guest_kernel_panic_gets_the_pod_a_new_vm_and_a_counted_restart") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let pod = "faults-panic";
    remove(&state, pod);
    let host = || HostState::of_pods(&state, None, &[pod]);
    let before = host();
    let path = manifest(
        pod,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  containers:\n    - name: c\n      image: busybox\n      command: [sleep, '3600']\n"
        ),
    );
    let out = cmd(&state, "run", &["-d", "--network", "none"])
        .args(["--debug-agent", "panic", "--kernel"])
        .arg(guest_artifact("vmlinux"))
        .arg("--initrd")
        .arg(guest_artifact("initramfs-test-hooks.cpio"))
        .arg(&path)
        .output()
        .expect("unipod runs");
    assert!(out.status.success(), "{:?}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(600);
    let s = loop {
        let s = status(&state, pod);
        let c = &s["status"]["containerStatuses"][0];
        if c["restartCount"] == 1 && c["state"]["running"].is_object() {
            break s;
        }
        assert_ne!(s["status"]["phase"], "Failed", "{s:#}");
        assert!(Instant::now() < deadline, "never running again: {s:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let events: Vec<String> = (s["events"].as_array().unwrap().iter())
        .map(|e| format!("{}: {}", e["reason"], e["message"]))
        .collect();
    let crashed = events
        .iter()
        .position(|e| e.contains("VMMExited") && e.contains("the guest crashed"));
    let changed = events.iter().position(|e| e.contains("SandboxChanged"));
    assert!(
        crashed.is_some() && changed > crashed,
        "the crash, then the new sandbox: {events:#?}"
    );
    let console = std::fs::read_to_string(state.join("pods").join(pod).join("console.log.1"))
        .expect("the lost VM's console is kept");
    assert!(console.contains("Kernel panic"), "{console}");
    let out = unipod(&state, "rm", &["-f", pod]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_nothing_left(&before, host);
}

/// A container is root with every capability, but in its own pid
/// namespace: the guest's PID 1 (the agent, whose death would panic the
/// guest kernel) is not in it, and SIGKILL from inside to the namespace's
/// own init (the container's main process) is dropped by the kernel. So a
/// container cannot kill the agent; the guest-panic path is tested with a
/// guest whose init is missing (tests/boot.rs,
/// `guest_kernel_panic_is_reported_with_exit_code_3`) and its pod-level
/// reason in vmm_process.rs's unit tests.
#[test]
fn a_container_cannot_reach_the_guests_pid_1() {
    if skip_without_kvm("a_container_cannot_reach_the_guests_pid_1") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let pod = "faults-pid1";
    remove(&state, pod);
    let host = || HostState::of_pods(&state, None, &[pod]);
    let before = host();
    start_looping(&state, pod, &looping_pod(pod, "Never"));
    // Every process the container sees runs its own image's programs: no
    // agent (/init) among them.
    let seen = exec(
        &state,
        pod,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
    );
    assert!(seen.contains("sh -c (while true"), "{seen}");
    assert!(
        !seen.lines().any(|l| l.trim() == "/init"),
        "the agent is visible:\n{seen}"
    );
    let out = unipod(&state, "exec", &[pod, "--", "kill", "-9", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    // Had the kill landed, the container would have ended: it still
    // answers, with its loop alive.
    exec(&state, pod, "kill -0 $(cat /tmp/loop)");
    let s = status(&state, pod);
    assert_eq!(s["status"]["phase"], "Running", "{s:#}");
    assert_eq!(s["status"]["containerStatuses"][0]["restartCount"], 0);
    let out = unipod(&state, "rm", &["-f", pod]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_nothing_left(&before, host);
}

/// A small tmpfs as a state dir, unmounted on drop. The image store and the
/// snapshot cache are links to the shared state dir's, so only the pod's
/// own files (its directory, status, logs) land on the small disk.
struct SmallStateDir {
    dir: PathBuf,
}

impl SmallStateDir {
    fn new(tag: &str, size: &str) -> SmallStateDir {
        let dir = temp_dir(tag);
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "unipod-faults",
                ])
                .arg(&dir),
        );
        let small = SmallStateDir { dir };
        let shared = shared_state_dir();
        for link in ["images", "snapshots"] {
            std::os::unix::fs::symlink(shared.join(link), small.dir.join(link)).expect("link");
        }
        small
    }

    /// Fills the disk with a file until the kernel says it is full.
    fn fill(&self) {
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.filler().display()))
            .output()
            .expect("dd runs");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
            "the disk did not fill: {out:?}"
        );
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }
}

impl Drop for SmallStateDir {
    fn drop(&mut self) {
        // A failed test's pod would outlive its directory and keep the
        // mount busy.
        for pod in std::fs::read_dir(self.dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            remove(&self.dir, &pod.file_name().to_string_lossy());
        }
        // A removed pod's processes may still hold files here for a moment.
        let unmounted = common::wait_until(Duration::from_secs(30), || {
            Command::new("umount")
                .arg(&self.dir)
                .output()
                .is_ok_and(|out| out.status.success())
        });
        if !unmounted {
            eprintln!("{} stays busy; detaching it lazily", self.dir.display());
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_pod_on_a_full_state_dir_is_refused_naming_the_disk_and_leaves_nothing() {
    let name = "a_pod_on_a_full_state_dir_is_refused_naming_the_disk_and_leaves_nothing";
    if skip_without_kvm(name) || skip_without_root(name) {
        return;
    }
    import_busybox(&shared_state_dir());
    let small = SmallStateDir::new("faults-full", "1m");
    let state = &small.dir;
    small.fill();
    let pod = "faults-full";
    let host = || HostState::of_pods(state, None, &[pod]);
    let before = host();
    let out = run_pod(state, &looping_pod(pod, "Never"), &["-d"])
        .output()
        .expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    let pod_dir = state.join("pods").join(pod);
    assert!(
        stderr.contains(&format!("cannot write {}", pod_dir.display()))
            && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert_nothing_left(&before, host);
}

#[test]
fn a_state_dir_filling_up_under_a_running_pod_keeps_it_running_and_status_catches_up() {
    let name = "a_state_dir_filling_up_under_a_running_pod_keeps_it_running_and_status_catches_up";
    if skip_without_kvm(name) || skip_without_root(name) {
        return;
    }
    import_busybox(&shared_state_dir());
    let small = SmallStateDir::new("faults-filling", "4m");
    let state = &small.dir;
    let pod = "faults-filling";
    let host = || HostState::of_pods(state, None, &[pod]);
    let before = host();
    start_looping(state, pod, &looping_pod(pod, "Always"));
    let supervisor = status(state, pod)["supervisor"]["pid"]
        .as_i64()
        .expect("the supervisor's pid");
    small.fill();
    // The container logs on; its log writes fail from now on, and so do
    // status writes: the container restarts while nothing can be saved.
    exec(state, pod, "kill -9 $(cat /tmp/loop)");
    std::thread::sleep(Duration::from_secs(10));
    let out = unipod(state, "get", &["-o", "json", pod]);
    assert!(out.status.success(), "get on a full disk: {:?}", text(&out));
    let shown: serde_json::Value = serde_json::from_str(&text(&out).0).expect("JSON");
    assert_eq!(shown["status"]["phase"], "Running", "{shown:#}");
    assert!(
        Path::new(&format!("/proc/{supervisor}")).exists(),
        "the supervisor died on a full disk"
    );
    // Room again: the restart the supervisor could not save shows up.
    std::fs::remove_file(small.filler()).expect("remove the filler");
    wait_for(state, pod, "shown restarted", |s| {
        s["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
    });
    // And the restarted container's log, lost while full, fills again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&unipod(state, "logs", &[pod])).0.contains("tick") {
        assert!(Instant::now() < deadline, "the log never filled again");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = unipod(state, "rm", &["-f", pod]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_nothing_left(&before, host);
}

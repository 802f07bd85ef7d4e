//! End-to-end tests of the containerd shim (`containerd-shim-unipod-v2`)
//! against Debian's containerd, driven with `ctr`.
//!
//! Each test starts its own containerd (own config, root, state and
//! socket; never the system one), imports the locally built busybox OCI
//! tarball, and removes everything when it ends, even on failure. The pod
//! VMs restore the shared warm-start snapshot (target/test-state).

mod common;
#[path = "shim/cri_checks.rs"]
mod cri_checks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    guest_artifact, output_text as text, shared_state_dir, skip_without_kvm_or_root as skip,
    wait_until, workspace,
};

const RUNTIME: &str = "io.containerd.unipod.v2";

/// Installs Debian's containerd (and the CNI plugins) when missing, once
/// per test binary: tests run in parallel, and concurrent `apt-get`s fail
/// on dpkg's lock.
fn ensure_containerd() -> Result<(), String> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(install_containerd).clone()
}

fn install_containerd() -> Result<(), String> {
    let installed = |p: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
    };
    let missing: Vec<&str> = ["containerd", "containernetworking-plugins"]
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {missing:?} with apt-get");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("apt-get install {missing:?} failed"))
    }
}

/// A private containerd: its own config, root, state and socket, under
/// target/, killed and removed on drop.
struct Containerd {
    dir: PathBuf,
    child: Child,
    /// The imported busybox image's name.
    image: String,
    /// The containerd namespace of this test's containers; tests run in
    /// parallel, and each finds its own VMMs by it.
    namespace: String,
}

impl Containerd {
    /// A containerd with the CRI plugin off, for `ctr`.
    fn start(tag: &str) -> Containerd {
        let mut c = Containerd::launch(
            tag,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            None,
        );
        c.image = c.import(&guest_artifact("oci/busybox-oci.tar"));
        c
    }

    /// Starts containerd with `extra` in its config, in network namespace
    /// `netns` (default: the host's), and waits until it answers.
    fn launch(tag: &str, extra: &str, netns: Option<&str>) -> Containerd {
        ensure_containerd().expect("containerd is installed");
        let dir = workspace().join(format!("target/shim-e2e-{tag}"));
        cleanup_dir(&dir);
        std::fs::create_dir_all(&dir).expect("create the containerd dir");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{extra}\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("write config");
        let release = workspace().join("target/release");
        let path = format!(
            "{}:{}",
            release.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "containerd"]);
                cmd
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("UNIPOD_STATE_DIR", shared_state_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let c = Containerd {
            dir,
            child,
            image: String::new(),
            namespace: format!("unipod-e2e-{tag}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s; see {}",
                c.dir.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// Imports the OCI tarball `tar`; returns the image's name.
    fn import(&self, tar: &Path) -> String {
        let out = self.ctr(&["images", "import", &tar.display().to_string()]);
        assert!(out.status.success(), "ctr images import: {}", text(&out));
        // "unpacking NAME (sha256:...)...done"
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split_whitespace()
            .skip_while(|w| *w != "unpacking")
            .nth(1)
            .unwrap_or_else(|| panic!("no image name in: {stdout}"))
            .to_string()
    }

    /// Builds and imports `busybox-app:latest`: the busybox image plus a
    /// layer with /etc/unipod-app-image, so its rootfs differs. Returns its
    /// name.
    fn import_app_image(&self) -> String {
        use serde_json::{json, Value};
        use sha2::{Digest, Sha256};

        let layout = self.dir.join("app-oci");
        let cp = Command::new("cp")
            .arg("-a")
            .arg(guest_artifact("oci/busybox"))
            .arg(&layout)
            .status();
        assert!(cp.is_ok_and(|s| s.success()), "copy the busybox layout");
        let blobs = layout.join("blobs/sha256");
        let put = |bytes: &[u8]| -> (String, usize) {
            let hex = format!("{:x}", Sha256::digest(bytes));
            std::fs::write(blobs.join(&hex), bytes).expect("write blob");
            (format!("sha256:{hex}"), bytes.len())
        };
        let read = |digest: &Value| -> Value {
            let hex = digest
                .as_str()
                .expect("a digest")
                .trim_start_matches("sha256:");
            serde_json::from_slice(&std::fs::read(blobs.join(hex)).expect("read blob"))
                .expect("JSON blob")
        };
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("JSON index");
        let mut manifest = read(&index["manifests"][0]["digest"]);
        let mut config = read(&manifest["config"]["digest"]);

        let marker = b"the app image\n";
        let mut header = tar::Header::new_gnu();
        header.set_path("etc/unipod-app-image").expect("path");
        header.set_size(marker.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        let mut layer = tar::Builder::new(Vec::new());
        layer.append(&header, &marker[..]).expect("tar");
        let (layer, layer_len) = put(&layer.into_inner().expect("tar"));
        manifest["layers"]
            .as_array_mut()
            .expect("layers")
            .push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_len}));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .expect("diff_ids")
            .push(json!(layer));
        let (config, config_len) = put(&serde_json::to_vec(&config).expect("JSON"));
        manifest["config"]["digest"] = json!(config);
        manifest["config"]["size"] = json!(config_len);
        let (manifest, manifest_len) = put(&serde_json::to_vec(&manifest).expect("JSON"));
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest,
                "size": manifest_len,
                "annotations": {"org.opencontainers.image.ref.name": "busybox-app:latest"}
            }]
        });
        std::fs::write(layout.join("index.json"), index.to_string()).expect("write index");
        let tar = self.dir.join("app-oci.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status();
        assert!(packed.is_ok_and(|s| s.success()), "tar the app layout");
        self.import(&tar)
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.join("c.sock"))
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("ctr runs")
    }

    /// The log, for assertion messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first, so their shims shut down cleanly.
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).lines() {
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims of this containerd that outlived it.
        for pid in shim_pids(&self.dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        cleanup_dir(&self.dir);
    }
}

/// Unmounts whatever is mounted below `dir`, then removes it.
fn cleanup_dir(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Processes whose command line mentions `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The shims serving the containerd in `dir` (they get its socket address).
fn shim_pids(dir: &Path) -> Vec<i32> {
    pids_with(&format!("{}/c.sock", dir.display()))
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("containerd-shim"))
        })
        .collect()
}

/// The VMM processes of the shim's pods in containerd namespace `namespace`.
fn vmm_pids(namespace: &str) -> Vec<i32> {
    let marker = shared_state_dir()
        .join("shim")
        .join(namespace)
        .display()
        .to_string();
    pids_with(&marker)
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "unipod")
        })
        .collect()
}

#[test]
fn ctr_run_prints_output_and_returns_the_exit_code() {
    if skip("ctr_run_prints_output_and_returns_the_exit_code") {
        return;
    }
    let containerd = Containerd::start("run");
    let c = &containerd;
    // The guest kernel's command line names our virtio-mmio devices; the
    // host's does not: proof that the container ran in our VM.
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &containerd.image,
        "shim-hi",
        "/bin/sh",
        "-c",
        "echo hi; grep -c virtio_mmio.device /proc/cmdline; exit 7",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\ncontainerd log:\n{}",
        text(&out),
        containerd.log_tail()
    );
    assert_eq!(stdout.lines().next(), Some("hi"), "{}", text(&out));
    assert_eq!(
        stdout.lines().nth(1),
        Some("1"),
        "not in our VM: {}",
        text(&out)
    );
    // --rm: nothing left.
    let containers = containerd.ctr(&["containers", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&containers.stdout).trim(), "");
    assert_pod_gone(c, "shim-hi");
}

#[test]
fn killing_the_vmm_exits_the_task_and_the_shim_cleans_up() {
    if skip("killing_the_vmm_exits_the_task_and_the_shim_cleans_up") {
        return;
    }
    let containerd = Containerd::start("kill");
    let c = &containerd;
    let out = containerd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &containerd.image,
        "shim-kill",
        "sleep",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        containerd.log_tail()
    );
    let vmms = vmm_pids(&c.namespace);
    assert_eq!(vmms.len(), 1, "expected one VMM, found {vmms:?}");
    let status =
        |c: &Containerd| String::from_utf8_lossy(&c.ctr(&["tasks", "ls"]).stdout).into_owned();
    assert!(
        status(&containerd).contains("RUNNING"),
        "{}",
        status(&containerd)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmms[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    assert!(
        wait_until(Duration::from_secs(60), || status(&containerd)
            .contains("STOPPED")),
        "containerd did not see the task exit: {}\n{}",
        status(&containerd),
        containerd.log_tail()
    );
    let rm = containerd.ctr(&["tasks", "rm", "shim-kill"]);
    assert!(rm.status.success(), "{}", text(&rm));
    let rm = containerd.ctr(&["containers", "rm", "shim-kill"]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert_pod_gone(c, "shim-kill");
}

/// `ctr run` arguments that put container `id` into pod `pod` the way CRI
/// does: the sandbox, or a container naming its sandbox.
fn pod_member(image: &str, pod: &str, id: &str, detach: bool, argv: &[&str]) -> Vec<String> {
    let kind = if id == pod { "sandbox" } else { "container" };
    let mut args: Vec<String> = vec!["run".into()];
    args.push(if detach { "-d" } else { "--rm" }.into());
    args.extend([
        "--runtime".into(),
        RUNTIME.into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
        image.into(),
        id.into(),
    ]);
    args.extend(argv.iter().map(|s| s.to_string()));
    args
}

/// Waits until no VMM or shim of `c` is left, then checks that the
/// directory of pod `pod` went with them.
fn assert_pod_gone(c: &Containerd, pod: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || vmm_pids(&c.namespace)
            .is_empty()
            && shim_pids(&c.dir).is_empty()),
        "VMMs {:?} or shims {:?} outlived the pod",
        vmm_pids(&c.namespace),
        shim_pids(&c.dir)
    );
    assert!(
        !shared_state_dir()
            .join("shim")
            .join(&c.namespace)
            .join(pod)
            .exists(),
        "the pod directory outlived the pod"
    );
}

/// Kills task `id` with SIGKILL, waits until containerd sees it stopped,
/// then removes the task and the container.
fn kill_and_remove(c: &Containerd, id: &str) {
    let out = c.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    assert!(out.status.success(), "kill {id}: {}", text(&out));
    let stopped = wait_until(Duration::from_secs(60), || {
        String::from_utf8_lossy(&c.ctr(&["tasks", "ls"]).stdout)
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    });
    assert!(stopped, "{id} did not stop: {}", c.log_tail());
    let out = c.ctr(&["tasks", "rm", id]);
    assert!(out.status.success(), "tasks rm {id}: {}", text(&out));
    let out = c.ctr(&["containers", "rm", id]);
    assert!(out.status.success(), "containers rm {id}: {}", text(&out));
}

#[test]
fn a_pod_of_annotated_containers_shares_one_vm() {
    if skip("a_pod_of_annotated_containers_shares_one_vm") {
        return;
    }
    let c = Containerd::start("pod");
    let pod = "shim-pod";
    let run = |id: &str, detach: bool, argv: &[&str]| {
        let args = pod_member(&c.image, pod, id, detach, argv);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.ctr(&args)
    };
    let out = run(pod, true, &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "sandbox: {}\n{}",
        text(&out),
        c.log_tail()
    );
    let server = "shim-pod-server";
    let out = run(
        server,
        true,
        &["sh", "-c", "while true; do echo pong | nc -l -p 7000; done"],
    );
    assert!(
        out.status.success(),
        "server: {}\n{}",
        text(&out),
        c.log_tail()
    );
    let out = run(
        "shim-pod-client",
        false,
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 7000 && exit 0; sleep 1; done; exit 1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "client: {}\n{}",
        text(&out),
        c.log_tail()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pong",
        "{}",
        text(&out)
    );
    let vmms = vmm_pids(&c.namespace);
    assert_eq!(vmms.len(), 1, "one pod, one VMM; found {vmms:?}");
    assert_eq!(shim_pids(&c.dir).len(), 1, "one pod, one shim");

    let out = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        server,
        "/bin/sh",
        "-c",
        "echo exec-ok; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "exec: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "exec-ok",
        "{}",
        text(&out)
    );

    kill_and_remove(&c, server);
    assert_eq!(
        vmm_pids(&c.namespace),
        vmms,
        "the VM outlives a container while its sandbox runs"
    );
    kill_and_remove(&c, pod);
    assert_pod_gone(&c, pod);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(&format!("{}/state", c.dir.display())),
        "a rootfs mount outlived the pod"
    );
}

/// The value of `metric` in `ctr tasks metrics` table output.
fn metric(table: &str, metric: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(metric)).then(|| words.next()?.parse().ok())?
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

#[test]
fn a_task_can_be_measured_paused_and_resumed() {
    if skip("a_task_can_be_measured_paused_and_resumed") {
        return;
    }
    let c = Containerd::start("pause");
    let id = "shim-pause";
    // One line per second of the guest's clock, which the agent set from
    // the host's when the pod started.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &c.image,
        id,
        "sh",
        "-c",
        "while true; do date +%s >> /tmp/ticks; sleep 1; done",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log_tail());
    let ticks = |c: &Containerd, exec_id: &str| -> Vec<u64> {
        let out = c.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            exec_id,
            id,
            "cat",
            "/tmp/ticks",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let mut n = 0;
    let mut next_exec = || {
        n += 1;
        format!("t{n}")
    };
    assert!(
        wait_until(Duration::from_secs(60), || !ticks(&c, &next_exec())
            .is_empty()),
        "the container never ticked: {}",
        c.log_tail()
    );

    let out = c.ctr(&["tasks", "metrics", id]);
    assert!(out.status.success(), "metrics: {}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    // sh and its sleep (or date), in the container's cgroup.
    assert!(
        metric(&table, "pids.current").is_some_and(|n| n >= 1),
        "{table}"
    );
    assert!(
        metric(&table, "memory.usage").is_some_and(|n| n > 0),
        "{table}"
    );
    assert!(
        metric(&table, "cpu.usage_usec").is_some_and(|n| n > 0),
        "{table}"
    );

    let out = c.ctr(&["tasks", "pause", id]);
    assert!(
        out.status.success(),
        "pause: {}\n{}",
        text(&out),
        c.log_tail()
    );
    let paused_at = unix_now();
    let tasks = String::from_utf8_lossy(&c.ctr(&["tasks", "ls"]).stdout).into_owned();
    assert!(tasks.contains("PAUSED"), "{tasks}");
    let out = c.ctr(&["tasks", "exec", "--exec-id", "frozen", id, "true"]);
    assert!(
        !out.status.success(),
        "an exec into a paused task must fail"
    );
    std::thread::sleep(Duration::from_secs(8));
    let resumed_at = unix_now();
    let out = c.ctr(&["tasks", "resume", id]);
    assert!(
        out.status.success(),
        "resume: {}\n{}",
        text(&out),
        c.log_tail()
    );
    let tasks = String::from_utf8_lossy(&c.ctr(&["tasks", "ls"]).stdout).into_owned();
    assert!(tasks.contains("RUNNING"), "{tasks}");
    let mut all = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            all = ticks(&c, &next_exec());
            all.iter().any(|&t| t > resumed_at)
        }),
        "no tick after the resume: {all:?}"
    );
    // The guest clock is within a second of the host's: 2 s of margin.
    let while_paused: Vec<u64> = all
        .iter()
        .copied()
        .filter(|&t| t > paused_at + 2 && t + 2 < resumed_at)
        .collect();
    assert!(
        while_paused.is_empty(),
        "ticks {while_paused:?} while paused from {paused_at} to {resumed_at}"
    );

    kill_and_remove(&c, id);
    assert_pod_gone(&c, id);
}

#[test]
fn ctr_run_with_a_tty_sizes_the_terminal_and_forwards_stdin() {
    if skip("ctr_run_with_a_tty_sizes_the_terminal_and_forwards_stdin") {
        return;
    }
    let c = Containerd::start("tty");
    let id = "shim-tty";
    // ctr runs on a terminal of ours, 33x101: it resizes the task's tty
    // to match after the start, and copies what we type to its stdin.
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let slave = || Stdio::from(pty.slave.try_clone().expect("dup the pty slave"));
    let mut child = c
        .ctr_cmd(&[
            "run",
            "-t",
            "--rm",
            "--runtime",
            RUNTIME,
            &c.image,
            id,
            "sh",
            "-c",
            "echo ready; read line; stty size; echo got:$line; exit 3",
        ])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .expect("ctr runs");
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let mut master = master.try_clone().expect("dup the pty master");
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once ctr, the last holder of the slave, has exited.
            while let Ok(n @ 1..) = std::io::Read::read(&mut master, &mut buf) {
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let seen = |what: &str| String::from_utf8_lossy(&screen.lock().unwrap()).contains(what);
    let ready = wait_until(Duration::from_secs(120), || seen("ready"));
    if ready {
        // ctr's resize follows the start at once; give it a moment.
        std::thread::sleep(Duration::from_secs(1));
        std::io::Write::write_all(&mut master, b"hello\r").expect("type into the terminal");
    }
    let exited = wait_until(Duration::from_secs(120), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("reap ctr");
    drop(master);
    let _ = reader.join();
    let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(ready && exited, "ctr -t: {screen:?}\n{}", c.log_tail());
    assert!(screen.contains("33 101"), "the tty size: {screen:?}");
    assert!(screen.contains("got:hello"), "stdin: {screen:?}");
    assert_eq!(status.code(), Some(3), "{screen:?}");
    assert_pod_gone(&c, id);
}

/// The node's network namespace for the CRI test: containerd runs in it, so
/// the CNI bridge and all pod traffic stay inside. Deleted on drop, with
/// the bridge in it.
struct NodeNetns(&'static str);

impl NodeNetns {
    fn create(name: &'static str) -> NodeNetns {
        // A leftover of an interrupted run.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", name],
            vec!["-n", name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        }
        NodeNetns(name)
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

/// The CRI plugin, configured as a Kubernetes node using unipod would be
/// (docs/CONTAINERD.md), with the CNI config in `net_dir`.
fn cri_config(net_dir: &Path, pause_image: &str) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 sandbox_image = \"{pause_image}\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20   default_runtime_name = \"unipod\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.unipod]\n\
         \x20   runtime_type = \"{RUNTIME}\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20   bin_dir = \"/usr/lib/cni\"\n\
         \x20   conf_dir = \"{d}/cni\"\n",
        d = net_dir.display()
    )
}

/// The pod network: a bridge holding the gateway, host-local IPAM.
const CNI_SUBNET_PREFIX: &str = "10.89.0.";

/// Writes the CNI config to `net_dir/cni`; its leases go to `net_dir/cni-ipam`.
fn write_cni_conf(dir: &Path) {
    let conf = format!(
        r#"{{"cniVersion":"0.4.0","name":"unipod-e2e","plugins":[{{"type":"bridge","bridge":"unipodcni0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"{CNI_SUBNET_PREFIX}0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{d}/cni-ipam"}}}}]}}"#,
        d = dir.display()
    );
    std::fs::create_dir_all(dir.join("cni")).expect("create the CNI conf dir");
    std::fs::write(dir.join("cni/10-unipod-e2e.conflist"), conf).expect("write the CNI conf");
}

/// Removes, on drop, the pod network namespaces CRI made after it was
/// created: a failed test kills containerd before it could remove them, and
/// their mounts died with its mount namespace, leaving empty files.
struct CniNetnsGuard(Vec<String>);

impl Drop for CniNetnsGuard {
    fn drop(&mut self) {
        for ns in cni_netns().iter().filter(|n| !self.0.contains(n)) {
            let _ = std::fs::remove_file(Path::new("/var/run/netns").join(ns));
        }
    }
}

/// Network namespaces CRI made for pods (`/var/run/netns/cni-*`).
fn cni_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cni-"))
        .collect()
}

/// The body of `GET path` from `ip:port`, sent from network namespace
/// `netns` (on a thread of its own, which alone enters it), or the error.
/// A TCP connection to `addr` made inside the named network namespace (the
/// socket stays there; the caller's thread does not move).
fn connect_in_netns(netns: &str, addr: &str) -> Result<std::net::TcpStream, String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let path = PathBuf::from(format!("/run/netns/{netns}"));
    let conn = vmm::net::cni::in_netns(&path, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .map_err(|e| format!("enter {netns}: {e}"))?
    .map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The body of an HTTP/1.1 200 answer to `GET path`, else what came.
fn http_body(response: &str) -> Result<String, String> {
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("unexpected response: {response:?}")),
    }
}

fn http_get_from(netns: &str, ip: &str, port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut conn = connect_in_netns(netns, &format!("{ip}:{port}"))?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {ip}:{port}: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("read from {ip}:{port}: {e}"))?;
    http_body(&response)
}

/// What a failed pod-network check needs: the pod's container log, the tc
/// filters' packet counts and the links in the pod's namespace, the node's
/// neighbours.
fn network_report(c: &Containerd, node: &str, netns_before: &[String], app_log: &Path) -> String {
    // The pods' namespaces are mounted in containerd's mount namespace
    // (`ip netns exec` gave it its own): look from there.
    let mnt = format!("--mount=/proc/{}/ns/mnt", c.child.id());
    let run = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(&mnt)
            .arg("ip")
            .args(args)
            .output()
            .expect("run nsenter");
        format!(
            "$ ip {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mut report = format!(
        "app log:\n{}\n",
        std::fs::read_to_string(app_log).unwrap_or_default()
    );
    let pods = shared_state_dir().join("shim").join(&c.namespace);
    for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
        for file in ["console.log", "vmm.log"] {
            let text = std::fs::read_to_string(pod.path().join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            report += &format!(
                "{}:\n{}\n",
                pod.path().join(file).display(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
    for what in ["neigh", "addr", "route"] {
        report += &run(&["-n", node, what]);
    }
    for ns in cni_netns().iter().filter(|n| !netns_before.contains(n)) {
        report += &run(&["-n", ns, "-s", "link"]);
        report += &run(&["-n", ns, "addr"]);
        for dev in ["eth0", "unipod-tap0"] {
            report += &run(&[
                "netns", "exec", ns, "tc", "-s", "filter", "show", "dev", dev, "ingress",
            ]);
        }
    }
    report
}

mod cri {
    //! A CRI client, as the kubelet talks to containerd: gRPC over the
    //! Unix socket.
    use std::path::PathBuf;

    use hyper_util::rt::TokioIo;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use tonic::transport::{Channel, Endpoint, Uri};

    pub async fn connect(socket: PathBuf) -> RuntimeServiceClient<Channel> {
        // The URI is required but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]:0")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connect to containerd's CRI socket");
        RuntimeServiceClient::new(channel)
    }
}

/// One CRI pod, as the kubelet drives containerd: its IP and DNS from CNI
/// and CRI, then, in the same pod VM, the CRI validation suite's security
/// context and container lifecycle checks (`shim/cri_checks.rs`).
#[test]
fn cri_runs_a_pod_on_its_cni_ip_in_our_vm() {
    use k8s_cri::v1::{
        ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
        CreateContainerRequest, DnsConfig, ImageSpec, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
        RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
        StopPodSandboxRequest, VersionRequest,
    };

    if skip("cri_runs_a_pod_on_its_cni_ip_in_our_vm") {
        return;
    }
    let node = NodeNetns::create("unipod-e2e-node");
    let netns_guard = CniNetnsGuard(cni_netns());
    let netns_before = &netns_guard.0;
    // The CNI config and the IPAM's leases, outside containerd's own dir.
    let net_dir = workspace().join("target/shim-e2e-cri-net");
    let _ = std::fs::remove_dir_all(&net_dir);
    write_cni_conf(&net_dir);
    // CRI looks images up by their normalized names (docker.io/library/...);
    // ctr imports them under the index's short names, so each is tagged.
    let pause = "docker.io/library/unipod-pause:latest";
    let mut c = Containerd::launch("cri", &cri_config(&net_dir, pause), Some(node.0));
    c.namespace = "k8s.io".into();
    let normalized = |c: &Containerd, artifact: &str| {
        let short = c.import(&guest_artifact(artifact));
        let name = format!("docker.io/library/{short}");
        let out = c.ctr(&["images", "tag", "--force", &short, &name]);
        assert!(out.status.success(), "ctr images tag: {}", text(&out));
        name
    };
    assert_eq!(normalized(&c, "oci/pause-oci.tar"), pause);
    let busybox = normalized(&c, "oci/busybox-oci.tar");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let socket = c.dir.join("c.sock");
    let log_dir = c.dir.join("pod-logs");
    std::fs::create_dir_all(&log_dir).expect("create the pod log dir");
    let pod_ip = rt.block_on(async {
        let mut cri = cri::connect(socket).await;
        let version = cri.version(VersionRequest::default()).await;
        let version = version.expect("CRI Version").into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");

        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "e2e-uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: log_dir.display().to_string(),
            // CRI writes it to the pod's resolv.conf, which it binds into
            // app containers only.
            dns_config: Some(DnsConfig {
                servers: vec!["10.89.0.53".into()],
                searches: vec!["unipod.test".into()],
                options: Vec::new(),
            }),
            // For the security checks below: privileged containers need a
            // privileged sandbox.
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                sysctls: cri_checks::SYSCTLS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: "unipod".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        let status = cri
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let pod_ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        assert!(
            pod_ip.starts_with(CNI_SUBNET_PREFIX),
            "the pod IP {pod_ip:?} is not from the CNI network {CNI_SUBNET_PREFIX}0/24"
        );

        // The page names the pod's IP as the guest sees it, whether the
        // kernel is ours (its command line names our virtio-mmio devices),
        // and the container's nameserver and search domain.
        let serve = "mkdir -p /tmp/www; \
             echo \"unipod-cri $(ip -4 -o addr show eth0 | awk '{print $4}') \
             $(grep -c virtio_mmio.device /proc/cmdline) \
             $(awk '$1 == \"nameserver\" {print $2}' /etc/resolv.conf) \
             $(awk '$1 == \"search\" {print $2}' /etc/resolv.conf)\" \
             >/tmp/www/index.html; \
             exec httpd -f -p 8080 -h /tmp/www";
        let container = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: busybox.clone(),
                        ..Default::default()
                    }),
                    command: vec!["sh".into(), "-c".into(), serve.into()],
                    log_path: "app.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail()))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log_tail()));
        let state = cri
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .map(|s| s.state);
        assert_eq!(state, Some(ContainerState::ContainerRunning as i32));

        let vmms = vmm_pids(&c.namespace);
        assert_eq!(vmms.len(), 1, "one pod, one VMM; found {vmms:?}");

        // From the node to the pod IP: the page comes back from our guest.
        let url = format!("http://{pod_ip}:8080/index.html");
        let mut page = String::new();
        // The guest is slow here: httpd may listen a few seconds after Start.
        for _ in 0..30 {
            match http_get_from(node.0, &pod_ip, 8080, "/index.html") {
                Ok(body) => {
                    page = body;
                    break;
                }
                Err(e) => page = e,
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        assert_eq!(
            page.trim(),
            format!("unipod-cri {pod_ip}/24 1 10.89.0.53 unipod.test"),
            "{url} from the node\n{}\n{}",
            network_report(&c, node.0, netns_before, &log_dir.join("app.log")),
            c.log_tail()
        );

        // The security context and lifecycle checks, in the same pod VM.
        let profile_dir = c.dir.join("seccomp");
        cri_checks::write_profiles(&profile_dir);
        let failures = cri_checks::run_all(&mut cri_checks::Pod {
            cri: &mut cri,
            sandbox: &sandbox,
            config: &sandbox_config,
            image: &busybox,
            log_dir: &log_dir,
            profile_dir: &profile_dir,
        })
        .await;
        assert!(
            failures.is_empty(),
            "{} CRI checks failed:\n{}\n{}",
            failures.len(),
            failures.join("\n"),
            c.log_tail()
        );
        // kubectl port-forward's path: CRI PortForward, then the stream.
        let forwarded = cri_checks::port_forward(&mut cri, &sandbox, node.0, 8080, "/index.html")
            .await
            .and_then(|response| http_body(&response));
        match forwarded {
            Ok(page) => assert_eq!(
                page.split_whitespace().nth(1),
                Some(format!("{pod_ip}/24").as_str()),
                "the page through port-forward: {page:?}"
            ),
            Err(e) => panic!("port-forward to 8080: {e}\n{}", c.log_tail()),
        }

        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log_tail()));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log_tail()));
        pod_ip
    });
    assert!(
        wait_until(Duration::from_secs(30), || vmm_pids(&c.namespace)
            .is_empty()
            && shim_pids(&c.dir).is_empty()),
        "VMMs {:?} or shims {:?} outlived the pod {pod_ip}",
        vmm_pids(&c.namespace),
        shim_pids(&c.dir)
    );
    assert_eq!(&cni_netns(), netns_before, "the pod's netns outlived it");
    drop(c);
    let _ = std::fs::remove_dir_all(&net_dir);
}

#[test]
fn a_pod_whose_containers_use_different_images_hot_attaches_the_second() {
    if skip("a_pod_whose_containers_use_different_images_hot_attaches_the_second") {
        return;
    }
    let c = Containerd::start("images");
    let app = c.import_app_image();
    let pod = "shim-images";
    let run = |image: &str, id: &str, detach: bool, argv: &[&str]| {
        let args = pod_member(image, pod, id, detach, argv);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.ctr(&args)
    };
    let out = run(&c.image, pod, true, &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "sandbox: {}\n{}",
        text(&out),
        c.log_tail()
    );
    // The app's file, and the disk its root's lower layer comes from.
    let out = run(
        &app,
        "shim-images-app",
        false,
        &[
            "sh",
            "-c",
            "cat /etc/unipod-app-image && grep -o 'lowerdir=[^,]*' /proc/self/mounts | head -n 1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "app: {}\n{}",
        text(&out),
        c.log_tail()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"the app image"), "{}", text(&out));
    assert_eq!(
        lines.get(1),
        Some(&"lowerdir=/run/unipod/images/vdb"),
        "the app's image is the pod VM's second disk: {}",
        text(&out)
    );
    // The sandbox still runs on the first image, which lacks the file.
    let out = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        pod,
        "/bin/sh",
        "-c",
        "test -e /etc/unipod-app-image",
    ]);
    assert_eq!(out.status.code(), Some(1), "sandbox exec: {}", text(&out));
    let vmms = vmm_pids(&c.namespace);
    assert_eq!(vmms.len(), 1, "one pod, one VMM; found {vmms:?}");

    kill_and_remove(&c, pod);
    assert_pod_gone(&c, pod);
}

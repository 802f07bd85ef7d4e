//! End-to-end tests of the guest agent over hybrid vsock, on real guests
//! with the agent initramfs (`make images`). The `unipod run` tests restore
//! the shared warm-start snapshot (the first one to run makes it); the raw
//! socket test boots cold, so both paths stay covered. The silent-agent test
//! runs on `initramfs-test-hooks.cpio`: only an agent built with the
//! `test-hooks` feature obeys the host's `Debug` request.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    shared_state_dir, skip_without_kvm, temp_dir, unipod_command, unipod_run, with_guest,
    with_guest_initrd,
};

/// Cold boots here take about a minute; leave room for a loaded CI machine.
const BOOT_BUDGET: Duration = Duration::from_secs(400);

/// `unipod <subcommand>` with the agent guest's kernel and initramfs.
fn unipod_with_agent_guest(subcommand: &str) -> Command {
    let mut cmd = unipod_command();
    with_guest(cmd.arg(subcommand));
    cmd
}

/// `unipod run --network none` of `args` (flags, `--`, the command).
fn run_pod(state: &Path, args: &[&str]) -> std::process::Output {
    unipod_run(unipod_command(), state)
        .args(["--network", "none"])
        .args(args)
        .output()
        .expect("unipod runs")
}

/// Positions of `needles` in `haystack`, asserting each is present and in order.
fn assert_in_order(haystack: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        let at = haystack[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing (in order) from:\n{haystack}"));
        from += at + needle.len();
    }
}

#[test]
fn run_streams_both_outputs_and_exits_with_the_container_code() {
    if skip_without_kvm("run_streams_both_outputs_and_exits_with_the_container_code") {
        return;
    }
    let state = shared_state_dir();
    let out = run_pod(
        &state,
        &[
            "--name",
            "streams",
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; echo out2; exit 3",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- unipod run stderr ---\n{stderr}");
    assert_eq!(out.status.code(), Some(3), "the container's exit code");
    assert_eq!(stdout, "out\nout2\n", "stdout intact and in order");
    assert_in_order(
        &stderr,
        &[
            "pod streams: Pending",
            "pod streams: Running",
            "err\n",
            "pod streams: Failed (Error, exit code 3)",
        ],
    );
    assert!(!state.join("pods/streams").exists(), "pod dir removed");
}

#[test]
fn a_silent_agent_makes_the_pod_unknown_then_failed() {
    if skip_without_kvm("a_silent_agent_makes_the_pod_unknown_then_failed") {
        return;
    }
    let state = shared_state_dir();
    let started = Instant::now();
    // Only an agent built with test-hooks takes the Debug request; it has
    // its own initramfs and snapshot (tests/faults.rs's panic test shares
    // it).
    let mut run = unipod_command();
    let out = with_guest_initrd(run.arg("run"), "initramfs-test-hooks.cpio")
        .args(["--network", "none", "--state-dir"])
        .arg(&state)
        .args([
            "--name",
            "silent",
            "--heartbeat-ms",
            "500",
            "--unknown-timeout-secs",
            "3",
            "--debug-agent",
            "stop-heartbeat",
            "--",
            "sleep",
            "600",
        ])
        .output()
        .expect("unipod runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- unipod run stderr ---\n{stderr}");
    assert_in_order(
        &stderr,
        &[
            "pod silent: Running",
            "pod silent: Unknown (no heartbeat",
            "pod silent: Failed (AgentUnresponsive",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "unipod's own failure code");
    assert!(
        started.elapsed() < BOOT_BUDGET + Duration::from_secs(60),
        "gave up instead of waiting for sleep 600"
    );
    assert!(!state.join("pods/silent").exists(), "pod dir removed");
}

#[test]
fn a_dead_vmm_fails_the_pod_with_a_reason() {
    if skip_without_kvm("a_dead_vmm_fails_the_pod_with_a_reason") {
        return;
    }
    let state = shared_state_dir();
    let mut run = VmmProcess(
        unipod_with_agent_guest("run")
            .args(["--network", "none", "--name", "doomed", "--state-dir"])
            .arg(&state)
            .args(["--", "sleep", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unipod run starts"),
    );
    let mut stderr = std::io::BufReader::new(run.0.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + BOOT_BUDGET;
    while !seen.contains("pod doomed: Running") {
        assert!(Instant::now() < deadline, "never Running:\n{seen}");
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "unipod run ended early:\n{seen}");
        seen.push_str(&line);
    }
    let pid: i32 = std::fs::read_to_string(state.join("pods/doomed/vmm.pid"))
        .expect("the VMM pid is recorded")
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) on the VMM child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = run.0.wait().unwrap();
    stderr.read_to_string(&mut seen).unwrap();
    eprintln!("--- unipod run stderr ---\n{seen}");
    assert_eq!(status.code(), Some(125));
    assert_in_order(&seen, &["pod doomed: Failed (VMM exited (signal: 9"]);
    assert!(!state.join("pods/doomed").exists(), "pod dir removed");
}

/// Raw bytes only: no unipod code on the host side of this conversation.
#[test]
fn a_plain_unix_socket_client_speaks_connect_and_the_agent_protocol() {
    if skip_without_kvm("a_plain_unix_socket_client_speaks_connect_and_the_agent_protocol") {
        return;
    }
    let dir = temp_dir("agent-raw");
    let uds = dir.join("v.sock");
    let mut vmm = VmmProcess(
        unipod_with_agent_guest("boot")
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--console-log")
            .arg(dir.join("console.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unipod boot starts"),
    );

    let (mut s, ok) = connect_when_listening(&uds, &mut vmm.0);
    let host_port: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("bad OK line {ok:?}"));
    assert!(
        host_port >= 1 << 30,
        "host-initiated ports start at 2^30: {host_port}"
    );

    // Frame: u32 BE length, u16 BE version, JSON.
    let (version, ready) = read_raw_frame(&mut s);
    assert_eq!(version, guest_agent::protocol::PROTOCOL_VERSION);
    assert!(ready.contains("\"ready\""), "first frame is Ready: {ready}");

    s.write_all(&raw_frame(r#"{"id":7,"request":"ping"}"#))
        .unwrap();
    let reply = read_until(&mut s, "\"id\":7");
    assert!(reply.contains("pong"), "ping answered: {reply}");

    s.write_all(&raw_frame(r#"{"id":8,"request":"shutdown"}"#))
        .unwrap();
    let reply = read_until(&mut s, "\"id\":8");
    assert!(reply.contains("\"ok\""), "shutdown acknowledged: {reply}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = vmm.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the guest did not power off");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    vmm.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "clean shutdown: {status}\n{stderr}");
    assert!(stderr.contains("guest shut down"), "{stderr}");
    assert!(!uds.exists(), "the VMM removes its socket");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the VMM if a test fails midway.
struct VmmProcess(Child);

impl Drop for VmmProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Retries CONNECT until the agent listens; returns the stream and OK line.
fn connect_when_listening(uds: &Path, vmm: &mut Child) -> (UnixStream, String) {
    let deadline = Instant::now() + BOOT_BUDGET;
    loop {
        assert!(
            Instant::now() < deadline,
            "the agent never accepted CONNECT"
        );
        if let Some(status) = vmm.try_wait().unwrap() {
            panic!("the VMM exited early: {status}");
        }
        if let Ok(mut s) = UnixStream::connect(uds) {
            s.set_read_timeout(Some(BOOT_BUDGET)).unwrap();
            s.write_all(b"CONNECT 1024\n").unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\n") {
                match s.read(&mut byte) {
                    Ok(1) => line.push(byte[0]),
                    _ => break,
                }
            }
            if line.ends_with(b"\n") {
                return (s, String::from_utf8(line).unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn raw_frame(json: &str) -> Vec<u8> {
    let len = u32::try_from(json.len() + 2).unwrap();
    let mut f = len.to_be_bytes().to_vec();
    f.extend(guest_agent::protocol::PROTOCOL_VERSION.to_be_bytes());
    f.extend(json.as_bytes());
    f
}

fn read_raw_frame(s: &mut UnixStream) -> (u16, String) {
    let mut head = [0u8; 6];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let version = u16::from_be_bytes(head[4..].try_into().unwrap());
    let mut body = vec![0u8; len - 2];
    s.read_exact(&mut body).unwrap();
    (version, String::from_utf8(body).unwrap())
}

/// Reads frames (skipping heartbeats and other events) until one contains `needle`.
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    for _ in 0..100 {
        let (_, body) = read_raw_frame(s);
        if body.contains(needle) {
            return body;
        }
    }
    panic!("no frame with {needle:?} in 100 frames");
}

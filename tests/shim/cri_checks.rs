//! The container runtime spec and lifecycle as the CRI validation suite
//! (kubernetes-sigs/cri-tools, `pkg/validate`) checks them, through
//! containerd's CRI plugin: each check is a container in one pod sandbox,
//! so they share one pod VM. A check runs its command to the end and is
//! judged by its exit code and its CRI log, as the suite judges its
//! `RunAsGroup` and `ReadOnlyRootfs` checks.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatusRequest, CreateContainerRequest, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerSecurityContext, ListContainersRequest, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PortForwardRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;
// The kubelet's default procMount paths, which it sends in every container's
// security context (containerd's own defaults are empty).
use vmm::pod::runtime_spec::{MASKED_PATHS, READONLY_PATHS};

/// Pod-level sysctls the checks read back: a safe one and an allowed unsafe
/// one, as in the suite's sysctl checks.
pub const SYSCTLS: [(&str, &str); 2] = [
    ("kernel.shm_rmid_forced", "1"),
    ("fs.mqueue.msg_max", "100"),
];

/// A seccomp profile for `Localhost`: everything allowed but chmod.
const BLOCK_CHMOD: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]}"#;

/// The guest kernel's capabilities (CAP_LAST_CAP 40 on Linux 6.1).
const GUEST_CAPS: u64 = (1 << 41) - 1;

/// What "ALL" capabilities means here, as CapBnd prints it: containerd's
/// "all" is the set it holds itself (this test's bounding set, which may
/// lack some, e.g. CAP_SYS_RESOURCE in some CI sandboxes), within the
/// guest kernel's.
fn all_caps() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let host = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    format!("{:016x}", host & GUEST_CAPS)
}

/// The sandbox and image the checks run in.
pub struct Pod<'a> {
    pub cri: &'a mut RuntimeServiceClient<Channel>,
    pub sandbox: &'a str,
    pub config: &'a PodSandboxConfig,
    pub image: &'a str,
    pub log_dir: &'a Path,
    pub profile_dir: &'a Path,
}

/// How a check's container ended.
struct Ended {
    exit_code: i32,
    /// The CRI log's lines, each "stream text".
    log: String,
}

fn security(
    edit: impl FnOnce(&mut LinuxContainerSecurityContext),
) -> LinuxContainerSecurityContext {
    let mut sc = LinuxContainerSecurityContext::default();
    edit(&mut sc);
    sc
}

fn caps(add: &[&str], drop: &[&str]) -> Option<Capability> {
    Some(Capability {
        add_capabilities: add.iter().map(|c| c.to_string()).collect(),
        drop_capabilities: drop.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    })
}

fn profile(kind: ProfileType, localhost: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.to_string(),
    })
}

/// The text of a CRI log ("TIME STREAM TAG TEXT" per line) as "STREAM TEXT".
fn cri_log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    raw.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, stream, _, text) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            Some(format!("{stream} {text}\n"))
        })
        .collect()
}

impl Pod<'_> {
    fn container(
        &self,
        name: &str,
        command: &str,
        sc: LinuxContainerSecurityContext,
    ) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), command.into()],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        let id = self
            .cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.sandbox.into(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        Ok(id)
    }

    async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.cri
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    async fn state(&mut self, id: &str) -> (i32, i32) {
        let status = self
            .cri
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status");
        (status.state, status.exit_code)
    }

    /// Polls until `id` has exited, for up to a minute (the suite's bound).
    async fn wait_exited(&mut self, id: &str) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let (state, code) = self.state(id).await;
            if state == ContainerState::ContainerExited as i32 {
                return Some(code);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn remove(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.cri
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Runs `command` in a container of its own to the end.
    async fn run(&mut self, name: &str, command: &str, sc: LinuxContainerSecurityContext) -> Ended {
        let config = self.container(name, command, sc);
        let id = self
            .create(config)
            .await
            .unwrap_or_else(|e| panic!("{name}: CreateContainer: {e}"));
        self.start(&id)
            .await
            .unwrap_or_else(|e| panic!("{name}: StartContainer: {e}"));
        let exit_code = self
            .wait_exited(&id)
            .await
            .unwrap_or_else(|| panic!("{name}: still running after a minute"));
        let log = cri_log_text(&self.log_dir.join(format!("{name}.log")));
        self.remove(&id)
            .await
            .unwrap_or_else(|e| panic!("{name}: RemoveContainer: {e}"));
        Ended { exit_code, log }
    }

    async fn ids(&mut self, id: &str) -> Vec<String> {
        self.cri
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: id.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect()
    }
}

/// Each check, as (container name, command, security context, expected
/// output). Commands print what they observe and exit 0.
fn checks(
    profile_dir: &Path,
) -> Vec<(&'static str, String, LinuxContainerSecurityContext, String)> {
    let block_chmod = profile_dir.join("block-chmod.json").display().to_string();
    let all_caps = all_caps();
    let cap = |bit: u32| {
        format!(
            "c=$(awk '/^CapEff/ {{print $2}}' /proc/self/status); echo $(( (0x$c >> {bit}) & 1 ))"
        )
    };
    vec![
        (
            "user-group-groups",
            "echo $(id -u):$(id -g):$(id -G)".into(),
            security(|s| {
                s.run_as_user = Some(Int64Value { value: 1001 });
                s.run_as_group = Some(Int64Value { value: 1002 });
                s.supplemental_groups = vec![1234, 5678];
            }),
            "stdout 1001:1002:1002 1234 5678\n".into(),
        ),
        // The image's /etc/group puts nobody in `users` (100): containerd
        // adds the image's groups of the user.
        (
            "user-name-and-image-groups",
            "echo $(id -nu) $(id -G)".into(),
            security(|s| s.run_as_username = "nobody".into()),
            "stdout nobody 65534 100\n".into(),
        ),
        (
            "readonly-rootfs",
            "touch test.go; echo rc=$?".into(),
            security(|s| s.readonly_rootfs = true),
            "stderr touch: test.go: Read-only file system\nstdout rc=1\n".into(),
        ),
        (
            "writable-rootfs",
            "touch test.go && [ -f test.go ] && echo Found".into(),
            security(|_| {}),
            "stdout Found\n".into(),
        ),
        (
            "add-net-admin",
            cap(12),
            security(|s| s.capabilities = caps(&["NET_ADMIN"], &[])),
            "stdout 1\n".into(),
        ),
        // CAP_NET_ADMIN (12) is not in containerd's default set.
        ("default-caps", cap(12), security(|_| {}), "stdout 0\n".into()),
        (
            "drop-net-raw",
            "ping -c1 -W5 127.0.0.1 2>&1 | grep -o 'permission denied' | head -1".into(),
            security(|s| s.capabilities = caps(&[], &["NET_RAW"])),
            "stdout permission denied\n".into(),
        ),
        (
            "add-all",
            "awk '/^CapBnd/ {print $2}' /proc/self/status".into(),
            security(|s| s.capabilities = caps(&["ALL"], &[])),
            format!("stdout {all_caps}\n"),
        ),
        (
            "drop-all",
            "awk '/^CapBnd/ {print $2}' /proc/self/status".into(),
            security(|s| s.capabilities = caps(&[], &["ALL"])),
            "stdout 0000000000000000\n".into(),
        ),
        (
            "privileged",
            "awk '/^CapEff/ {print $2}' /proc/self/status; grep -c ' /sys sysfs rw' /proc/mounts"
                .into(),
            security(|s| s.privileged = true),
            format!("stdout {all_caps}\nstdout 1\n"),
        ),
        (
            "no-new-privs",
            "grep NoNewPrivs /proc/self/status; \
             /bin/busybox-suid ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo suid=ok || echo suid=refused"
                .into(),
            security(|s| {
                s.run_as_user = Some(Int64Value { value: 1000 });
                s.no_new_privs = true;
            }),
            "stdout NoNewPrivs:\t1\nstdout suid=refused\n".into(),
        ),
        (
            "new-privs",
            "/bin/busybox-suid ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo suid=ok || echo suid=refused"
                .into(),
            security(|s| s.run_as_user = Some(Int64Value { value: 1000 })),
            "stdout suid=ok\n".into(),
        ),
        (
            "masked-paths",
            "wc -c </etc/group".into(),
            security(|s| s.masked_paths = vec!["/etc/group".into()]),
            "stdout 0\n".into(),
        ),
        (
            "kubelet-default-paths",
            "wc -c </proc/timer_list; echo x >/proc/sys/kernel/domainname; echo rc=$?".into(),
            security(|s| {
                s.masked_paths = MASKED_PATHS.map(String::from).to_vec();
                s.readonly_paths = READONLY_PATHS.map(String::from).to_vec();
            }),
            "stdout 0\nstderr sh: can't create /proc/sys/kernel/domainname: Read-only file system\nstdout rc=1\n"
                .into(),
        ),
        (
            "readonly-paths",
            "touch /tmp/test; echo rc=$?".into(),
            security(|s| s.readonly_paths = vec!["/tmp".into()]),
            "stderr touch: /tmp/test: Read-only file system\nstdout rc=1\n".into(),
        ),
        (
            "seccomp-nil",
            "grep Seccomp: /proc/self/status".into(),
            security(|_| {}),
            "stdout Seccomp:\t0\n".into(),
        ),
        (
            "seccomp-default",
            "grep Seccomp: /proc/self/status".into(),
            security(|s| s.seccomp = profile(ProfileType::RuntimeDefault, "")),
            "stdout Seccomp:\t2\n".into(),
        ),
        (
            "seccomp-unconfined-sys-admin",
            "hostname ANewHostName && echo set".into(),
            security(|s| {
                s.seccomp = profile(ProfileType::Unconfined, "");
                s.capabilities = caps(&["SYS_ADMIN"], &[]);
            }),
            "stdout set\n".into(),
        ),
        (
            "seccomp-default-sys-admin",
            "hostname ANewHostName; echo rc=$?".into(),
            security(|s| {
                s.seccomp = profile(ProfileType::RuntimeDefault, "");
                s.capabilities = caps(&["SYS_ADMIN"], &[]);
            }),
            // containerd's default profile allows sethostname only with
            // CAP_SYS_ADMIN, as docker's does.
            "stdout rc=0\n".into(),
        ),
        (
            "seccomp-default-no-sys-admin",
            "hostname ANewHostName 2>&1 | grep -o 'Operation not permitted'".into(),
            security(|s| s.seccomp = profile(ProfileType::RuntimeDefault, "")),
            "stdout Operation not permitted\n".into(),
        ),
        (
            "seccomp-localhost",
            "chmod 400 /; echo rc=$?".into(),
            security(|s| s.seccomp = profile(ProfileType::Localhost, &block_chmod)),
            "stderr chmod: /: Operation not permitted\nstdout rc=1\n".into(),
        ),
        (
            "seccomp-localhost-privileged",
            "chmod 755 / && echo allowed".into(),
            security(|s| {
                s.privileged = true;
                s.seccomp = profile(ProfileType::Localhost, &block_chmod);
            }),
            "stdout allowed\n".into(),
        ),
        (
            "pod-sysctls",
            format!(
                "cat /proc/sys/{} /proc/sys/{}",
                SYSCTLS[0].0.replace('.', "/"),
                SYSCTLS[1].0.replace('.', "/")
            ),
            security(|_| {}),
            format!("stdout {}\nstdout {}\n", SYSCTLS[0].1, SYSCTLS[1].1),
        ),
    ]
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| l.split_once(' ').map_or("", |(stream, _)| stream));
    lines
}

/// Writes the `Localhost` seccomp profiles the checks name.
pub fn write_profiles(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the profile dir");
    std::fs::write(dir.join("block-chmod.json"), BLOCK_CHMOD).expect("write a profile");
}

/// Runs every check and the lifecycle checks; returns the failures, one
/// line each.
pub async fn run_all(pod: &mut Pod<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, command, sc, want) in checks(pod.profile_dir) {
        let ended = pod.run(name, &command, sc).await;
        // stdout and stderr are copied apart, so only each stream's own
        // order is kept.
        if ended.exit_code != 0 || sorted_lines(&ended.log) != sorted_lines(&want) {
            failures.push(format!(
                "{name}: exit {} with log {:?}; expected exit 0 with {want:?}",
                ended.exit_code, ended.log
            ));
        }
    }
    failures.extend(lifecycle(pod).await);
    failures.extend(host_namespaces(pod).await);
    failures
}

/// The suite's stop and remove checks: `top` stopped with a 60 s timeout
/// ends within it and reports exited; a stopped, a created and a running
/// container can each be removed, and are then gone from the list.
async fn lifecycle(pod: &mut Pod<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    let top = |pod: &Pod, name: &str| {
        let mut c = pod.container(name, "top", security(|_| {}));
        c.command = vec!["top".into()];
        c
    };
    let stopped = pod
        .create(top(pod, "stop-me"))
        .await
        .expect("CreateContainer");
    pod.start(&stopped).await.expect("StartContainer");
    let asked = Instant::now();
    let stop = pod.cri.stop_container(StopContainerRequest {
        container_id: stopped.clone(),
        timeout: 60,
    });
    match tokio::time::timeout(Duration::from_secs(75), stop).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failures.push(format!("StopContainer: {e}")),
        Err(_) => failures.push("StopContainer did not return within its timeout".into()),
    }
    if pod.wait_exited(&stopped).await.is_none() {
        failures.push(format!(
            "a stopped container is not reported exited {:?} after StopContainer",
            asked.elapsed()
        ));
    }
    let created = pod
        .create(top(pod, "never-started"))
        .await
        .expect("CreateContainer");
    let running = pod
        .create(top(pod, "still-running"))
        .await
        .expect("CreateContainer");
    pod.start(&running).await.expect("StartContainer");
    for (what, id) in [
        ("stopped", stopped),
        ("created", created),
        ("running", running),
    ] {
        if let Err(e) = pod.remove(&id).await {
            failures.push(format!("RemoveContainer of a {what} container: {e}"));
        } else if !pod.ids(&id).await.is_empty() {
            failures.push(format!("a removed {what} container is still listed"));
        }
    }
    failures
}

/// A pod asking for the node's PID namespace (hostPID) cannot run in a pod
/// VM, and says why.
async fn host_namespaces(pod: &mut Pod<'_>) -> Vec<String> {
    let mut config = pod.config.clone();
    if let Some(meta) = config.metadata.as_mut() {
        meta.name = "host-pid".into();
        meta.uid = "e2e-uid-host-pid".into();
    }
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let run = pod
        .cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "unipod".into(),
        })
        .await;
    match run {
        Err(e) if e.message().contains("hostPID") => Vec::new(),
        Err(e) => vec![format!("a hostPID pod failed without naming hostPID: {e}")],
        Ok(started) => {
            let id = started.into_inner().pod_sandbox_id;
            let _ = pod
                .cri
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = pod
                .cri
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
            vec!["a hostPID pod started".to_string()]
        }
    }
}

/// CRI `PortForward` as `kubectl port-forward` uses it: the streaming URL
/// containerd returns, opened as a WebSocket with the channel protocol
/// (data on channel 0, errors on 1, each first carrying the port, little
/// endian), carries `GET path` to `port` in the pod and the whole answer
/// back. containerd's streaming server listens in `node_netns`.
pub async fn port_forward(
    cri: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    node_netns: &str,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::{Error, Message};

    let url = cri
        .port_forward(PortForwardRequest {
            pod_sandbox_id: sandbox.into(),
            port: vec![i32::from(port)],
        })
        .await
        .map_err(|e| format!("PortForward: {e}"))?
        .into_inner()
        .url;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("PortForward gave {url:?}, not an http:// URL"))?;
    let (host_port, _) = rest.split_once('/').unwrap_or((rest, ""));
    let stream = super::connect_in_netns(node_netns, host_port)?;
    let mut request = format!("ws://{rest}?port={port}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let (mut ws, _) =
        tungstenite::client::client(request, stream).map_err(|e| format!("WebSocket: {e}"))?;
    let get = format!("GET {path} HTTP/1.0\r\n\r\n");
    ws.send(Message::binary([&[0u8][..], get.as_bytes()].concat()))
        .map_err(|e| format!("send: {e}"))?;
    let (mut data, mut errors) = (Vec::new(), Vec::new());
    let mut opened = [false; 2];
    loop {
        match ws.read() {
            Ok(Message::Binary(frame)) if !frame.is_empty() => {
                let channel = usize::from(frame[0]);
                let Some(was_opened) = opened.get_mut(channel) else {
                    return Err(format!("a frame on channel {channel}"));
                };
                let mut payload = &frame[1..];
                if !*was_opened {
                    if payload.get(..2) != Some(&port.to_le_bytes()[..]) {
                        return Err(format!("channel {channel} opened with {payload:?}"));
                    }
                    *was_opened = true;
                    payload = &payload[2..];
                }
                [&mut data, &mut errors][channel].extend_from_slice(payload);
            }
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(String::from_utf8_lossy(&errors).into_owned());
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

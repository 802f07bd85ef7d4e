//! End-to-end tests of a manifest pod's `securityContext`: the host builds
//! each container's runtime spec as containerd's CRI plugin would, and the
//! guest agent applies it as runc would.
//!
//! One pod VM holds a container per setting, each printing what it
//! observed; every check is then asserted on its own, and all failures are
//! reported together. Refusals need no VM.

mod common;

use std::collections::BTreeMap;

use common::pod::{import_busybox, manifest, remove, run_pod, text};
use common::{shared_state_dir, skip_without_kvm, temp_dir};

/// Each container prints `key=value` lines; `ping` is busybox's, to
/// 127.0.0.1 inside the pod only; `dmesg` is the syslog(2) syscall, which
/// containerd's default profile allows only with CAP_SYSLOG or
/// CAP_SYS_ADMIN, and which the guest kernel (no dmesg_restrict) allows
/// any process otherwise.
const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: sec
spec:
  restartPolicy: Never
  securityContext:
    supplementalGroups: [4000]
  containers:
    - name: defaults
      image: busybox
      securityContext:
        seccompProfile: {type: Unconfined}
      command:
        - sh
        - -c
        - |
          ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo ping=ok || echo ping=refused
          dmesg >/dev/null 2>&1 && echo syslog=allowed || echo syslog=blocked
          echo seccomp=$(grep '^Seccomp:' /proc/self/status | tr -dc 0-9)
          echo timer_list_mounts=$(grep -c ' /proc/timer_list ' /proc/self/mountinfo)
          echo timer_list_bytes=$(cat /proc/timer_list | wc -c)
          if [ -e /proc/kcore ]; then
            echo kcore=$(grep -c ' /proc/kcore ' /proc/self/mountinfo)-$(cat /proc/kcore | wc -c)
          else
            echo kcore=absent
          fi
          echo firmware_entries=$(ls -A /sys/firmware | wc -l)
          (echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo proc_sys=writable || echo proc_sys=read-only
    - name: nonroot
      image: busybox
      securityContext:
        runAsUser: 1000
        runAsNonRoot: true
        readOnlyRootFilesystem: true
      command:
        - sh
        - -c
        - |
          echo uid=$(id -u)
          echo groups=$(id -G)
          touch /probe 2>/dev/null && echo rootfs=writable || echo rootfs=read-only
          /bin/busybox-suid ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo suid_ping=ok || echo suid_ping=refused
    - name: noraw
      image: busybox
      securityContext:
        capabilities: {drop: [NET_RAW]}
      command:
        - sh
        - -c
        - |
          ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo ping=ok || echo ping=refused
    - name: nnp
      image: busybox
      securityContext:
        runAsUser: 1000
        allowPrivilegeEscalation: false
      command:
        - sh
        - -c
        - |
          echo no_new_privs=$(grep '^NoNewPrivs:' /proc/self/status | tr -dc 0-9)
          /bin/busybox-suid ping -c1 -W5 127.0.0.1 >/dev/null 2>&1 && echo suid_ping=ok || echo suid_ping=refused
    - name: seccomp
      image: busybox
      securityContext:
        seccompProfile: {type: RuntimeDefault}
      command:
        - sh
        - -c
        - |
          echo seccomp=$(grep '^Seccomp:' /proc/self/status | tr -dc 0-9)
          dmesg >/dev/null 2>&1 && echo syslog=allowed || echo syslog=blocked
          echo syslog_error=$(dmesg 2>&1 >/dev/null | head -n1)
"#;

/// What a check says, the container and key it reads, and what must hold.
type Check = (
    &'static str,
    &'static str,
    &'static str,
    Box<dyn Fn(&str) -> bool>,
);

/// `[container] key=value` lines of `out`, by container then key.
fn observations(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut seen: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((container, kv)) = rest.split_once("] ") else {
            continue;
        };
        if let Some((k, v)) = kv.split_once('=') {
            seen.entry(container.to_string())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    seen
}

#[test]
fn security_contexts_apply_in_the_guest_as_runc_applies_them() {
    if skip_without_kvm("security_contexts_apply_in_the_guest_as_runc_applies_them") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    remove(&state, "sec");
    let path = manifest("sec", POD);
    let out = run_pod(&state, &path, &[]).output().expect("runs");
    let (stdout, stderr) = text(&out);
    remove(&state, "sec");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let seen = observations(&stdout);
    let get = |c: &str, k: &str| seen.get(c).and_then(|m| m.get(k)).cloned();

    let checks: Vec<Check> = vec![
        (
            "default capabilities let root ping",
            "defaults",
            "ping",
            Box::new(|v| v == "ok"),
        ),
        (
            "Unconfined allows syslog(2)",
            "defaults",
            "syslog",
            Box::new(|v| v == "allowed"),
        ),
        (
            "Unconfined installs no filter",
            "defaults",
            "seccomp",
            Box::new(|v| v == "0"),
        ),
        (
            "/proc/timer_list is masked by default",
            "defaults",
            "timer_list_mounts",
            Box::new(|v| v == "1"),
        ),
        (
            "the masked /proc/timer_list reads empty",
            "defaults",
            "timer_list_bytes",
            Box::new(|v| v == "0"),
        ),
        (
            "/proc/kcore is masked (/dev/null over it) or the guest kernel has none",
            "defaults",
            "kcore",
            Box::new(|v| v == "absent" || v == "1-0"),
        ),
        (
            "/sys/firmware is an empty tmpfs",
            "defaults",
            "firmware_entries",
            Box::new(|v| v == "0"),
        ),
        (
            "/proc/sys is read-only by default",
            "defaults",
            "proc_sys",
            Box::new(|v| v == "read-only"),
        ),
        (
            "runAsUser sets the uid",
            "nonroot",
            "uid",
            Box::new(|v| v == "1000"),
        ),
        (
            "supplementalGroups are the process's groups",
            "nonroot",
            "groups",
            Box::new(|v| v.split(' ').any(|g| g == "4000")),
        ),
        (
            "readOnlyRootFilesystem makes / read-only",
            "nonroot",
            "rootfs",
            Box::new(|v| v == "read-only"),
        ),
        (
            "a setuid-root binary gains root while escalation is allowed",
            "nonroot",
            "suid_ping",
            Box::new(|v| v == "ok"),
        ),
        (
            "dropping NET_RAW stops ping",
            "noraw",
            "ping",
            Box::new(|v| v == "refused"),
        ),
        (
            "allowPrivilegeEscalation: false sets no_new_privs",
            "nnp",
            "no_new_privs",
            Box::new(|v| v == "1"),
        ),
        (
            "allowPrivilegeEscalation: false keeps a setuid binary from gaining root",
            "nnp",
            "suid_ping",
            Box::new(|v| v == "refused"),
        ),
        (
            "RuntimeDefault installs a filter",
            "seccomp",
            "seccomp",
            Box::new(|v| v == "2"),
        ),
        (
            "RuntimeDefault blocks syslog(2)",
            "seccomp",
            "syslog",
            Box::new(|v| v == "blocked"),
        ),
        (
            "RuntimeDefault's refusal is EPERM",
            "seccomp",
            "syslog_error",
            Box::new(|v| v.contains("Operation not permitted")),
        ),
    ];
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|(what, container, key, ok)| {
            let value = get(container, key);
            match &value {
                Some(v) if ok(v) => None,
                _ => Some(format!("{what}: [{container}] {key}={value:?}")),
            }
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed:\n{}\n\nstdout:\n{stdout}\nstderr:\n{stderr}",
        failed.len(),
        checks.len(),
        failed.join("\n")
    );
}

#[test]
fn run_as_non_root_and_host_namespaces_are_refused_before_any_vm() {
    let state = temp_dir("security-refused");
    import_busybox(&state);
    let root_image = manifest(
        "sec-root",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sec-root\nspec:\n  containers:\n    - name: app\n      image: busybox\n      securityContext: {runAsNonRoot: true}\n",
    );
    let out = run_pod(&state, &root_image, &[]).output().expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("spec.containers[0].securityContext.runAsNonRoot: container has runAsNonRoot and image will run as root (pod: \"sec-root\", container: app)"),
        "{stderr}"
    );
    let host_pid = manifest(
        "sec-hostpid",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sec-hostpid\nspec:\n  hostPID: true\n  hostNetwork: true\n  containers:\n    - name: app\n      image: busybox\n",
    );
    let out = run_pod(&state, &host_pid, &[]).output().expect("runs");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    for key in ["spec.hostPID", "spec.hostNetwork"] {
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    assert!(stderr.contains("own VM"), "{stderr}");
    assert!(
        !state.join("pods/sec-root").exists() && !state.join("pods/sec-hostpid").exists(),
        "a refused pod leaves no directory"
    );
}

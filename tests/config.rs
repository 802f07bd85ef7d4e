//! End-to-end tests of pod configuration as Kubernetes gives it, on a real
//! pod VM on a bridge in a network namespace of their own: the downward API
//! (env and volume), ConfigMaps and Secrets (env, envFrom, volumes with
//! items and modes, subPath, an update reaching the mounted files), a
//! container waiting for a ConfigMap that does not exist yet, and an
//! image's User, WorkingDir and Env; pod-level limits on the pod's cgroup,
//! and IPv6 off on `eth0` of a pod whose network has no IPv6 range. One pod
//! VM serves every check.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::pod::{import_busybox, manifest, status, text, wait_for};
use common::{guest_artifact, shared_state_dir, skip_without_kvm, skip_without_root, Netns};

const POD: &str = "config-demo";

/// The objects and the pod, in one file as `kubectl apply -f` takes them;
/// the pod is modelled on the Kubernetes docs' downward API, ConfigMap and
/// Secret examples.
const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: game-config
data:
  game.properties: |
    enemies=aliens
    lives=3
  lives: "3"
  ui.properties: "color.good=purple"
---
apiVersion: v1
kind: Secret
metadata:
  name: db-creds
type: Opaque
data:
  password: czNjcjN0
stringData:
  username: admin
---
apiVersion: v1
kind: Pod
metadata:
  name: config-demo
  labels:
    app: config-demo
    tier: backend
spec:
  nodeSelector:
    disktype: ssd
  resources:
    limits:
      memory: 64Mi
      cpu: 500m
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "echo started as $(POD_NAME); while true; do sleep 1; done"]
    resources:
      limits:
        memory: 64Mi
    envFrom:
    - configMapRef:
        name: game-config
      prefix: CFG_
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: APP_LABEL
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['app']
    - name: MEM_LIMIT_MI
      valueFrom:
        resourceFieldRef:
          containerName: app
          resource: limits.memory
          divisor: 1Mi
    - name: LIVES
      valueFrom:
        configMapKeyRef:
          name: game-config
          key: lives
    - name: DB_PASSWORD
      valueFrom:
        secretKeyRef:
          name: db-creds
          key: password
    - name: GREETING
      value: "hello $(POD_NAME) with $(LIVES) lives"
    volumeMounts:
    - name: config
      mountPath: /etc/config
    - name: secret
      mountPath: /etc/secret
    - name: podinfo
      mountPath: /etc/podinfo
    - name: config
      mountPath: /etc/lives-at-start
      subPath: lives
  - name: user
    image: busybox-nobody
    command: ["sh", "-c", "while true; do sleep 1; done"]
  - name: late
    image: busybox
    command: ["sh", "-c", "echo late got $LATE; while true; do sleep 1; done"]
    env:
    - name: LATE
      valueFrom:
        configMapKeyRef:
          name: late-config
          key: value
  volumes:
  - name: config
    configMap:
      name: game-config
      items:
      - key: game.properties
        path: game.properties
        mode: 0440
      - key: lives
        path: lives
  - name: secret
    secret:
      secretName: db-creds
      defaultMode: 0400
  - name: podinfo
    downwardAPI:
      items:
      - path: labels
        fieldRef:
          fieldPath: metadata.labels
      - path: name
        fieldRef:
          fieldPath: metadata.name
      - path: mem_limit
        resourceFieldRef:
          containerName: app
          resource: limits.memory
          divisor: 1Mi
"#;

/// The objects the test applies.
const OBJECTS: [(&str, &str); 3] = [
    ("configmap", "game-config"),
    ("configmap", "late-config"),
    ("secret", "db-creds"),
];

struct Pod<'a> {
    ns: &'a Netns,
    state: &'a Path,
}

impl Pod<'_> {
    fn unipod(&self, args: &[&str]) -> Output {
        // --state-dir goes right after the subcommand: exec's command
        // takes every word after `--`.
        self.ns
            .command(env!("CARGO_BIN_EXE_unipod"))
            .arg(args[0])
            .arg("--state-dir")
            .arg(self.state)
            .args(&args[1..])
            .output()
            .expect("unipod runs")
    }

    /// `sh -c script` in `container`; its stdout.
    fn sh(&self, container: &str, script: &str) -> String {
        let out = self.unipod(&["exec", POD, "-c", container, "--", "sh", "-c", script]);
        assert!(out.status.success(), "exec {script:?}: {:?}", text(&out));
        text(&out).0
    }

    /// Waits until `script`'s output contains `want`.
    fn wait_for_output(&self, container: &str, script: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sh(container, script);
            if got.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{script:?} never gave {want:?}: last {got:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn container_state(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .map(|c| c["state"].clone())
        .unwrap_or_default()
}

#[test]
fn downward_api_config_maps_secrets_and_image_users_reach_the_containers() {
    let name = "downward_api_config_maps_secrets_and_image_users_reach_the_containers";
    if skip_without_kvm(name) || skip_without_root(name) {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let nobody = guest_artifact("oci/nobody-oci.tar");
    let out = common::pod::unipod(&state, "image", &["import", nobody.to_str().unwrap()]);
    assert!(out.status.success(), "import: {:?}", text(&out));
    let ns = Netns::new("config");
    let pod = Pod {
        ns: &ns,
        state: &state,
    };
    let _ = pod.unipod(&["rm", "-f", POD]);
    // Objects an earlier, failed run left.
    for (kind, object) in OBJECTS {
        let _ = pod.unipod(&["delete", kind, object]);
    }
    let path = manifest(POD, MANIFEST);

    // The dry run finds the missing ConfigMap and stores nothing.
    let kernel = guest_artifact("vmlinux");
    let initrd = guest_artifact("initramfs.cpio");
    let run_args = [
        "run",
        "--bridge",
        "upt-config",
        "--pod-cidr",
        "10.231.31.0/24",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ];
    let mut dry = run_args.to_vec();
    dry.extend(["--dry-run", "-f", path.to_str().unwrap()]);
    let out = pod.unipod(&dry);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stdout}{stderr}");
    assert!(
        stderr.contains("spec.containers[2]: configmap \"late-config\" not found"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.nodeSelector: ignored"), "{stderr}");
    assert!(
        stdout.contains("configmap/game-config: would be created"),
        "{stdout}"
    );
    let out = pod.unipod(&["get", "configmaps", "game-config"]);
    assert!(!out.status.success(), "the dry run stored nothing");

    // The real run stores the objects, then runs the pod; the container
    // whose ConfigMap is missing waits, and -d says so.
    let mut run = run_args.to_vec();
    run.extend(["-d", "-f", path.to_str().unwrap()]);
    let out = pod.unipod(&run);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("configmap/game-config created"), "{stderr}");
    assert!(stderr.contains("secret/db-creds created"), "{stderr}");
    wait_for(&state, POD, "running app and user", |s| {
        container_state(s, "app")["running"].is_object()
            && container_state(s, "user")["running"].is_object()
    });
    let s = status(&state, POD);
    let waiting = &container_state(&s, "late")["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerConfigError", "{s:#}");
    assert_eq!(waiting["message"], "configmap \"late-config\" not found");
    let pod_ip = s["status"]["podIP"].as_str().expect("a pod IP").to_string();

    // Environment: downward API, resources, ConfigMap and Secret keys,
    // envFrom with its prefix, $(VAR) expansion.
    // The shell's own environment as exec gave it: sh passes on only the
    // names that are shell variables, and `ui.properties` is not one (and
    // `; true` keeps sh from exec'ing cat in its place).
    let env = pod
        .sh("app", "cat /proc/$$/environ; true")
        .replace('\0', "\n");
    for want in [
        "POD_NAME=config-demo".to_string(),
        format!("POD_IP={pod_ip}"),
        "APP_LABEL=config-demo".into(),
        "MEM_LIMIT_MI=64".into(),
        "LIVES=3".into(),
        "DB_PASSWORD=s3cr3t".into(),
        "CFG_ui.properties=color.good=purple".into(),
        "GREETING=hello config-demo with 3 lives".into(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in:\n{env}");
    }
    let (logs, _) = text(&pod.unipod(&["logs", POD, "-c", "app"]));
    assert!(logs.contains("started as config-demo"), "{logs}");

    // Volumes: items with their modes (0440 given, 0644 by default), the
    // Secret at 0400, the downward API files.
    let files = pod.sh(
        "app",
        "cd /etc/config && ls; stat -L -c '%n %a' game.properties lives /etc/secret/password; \
         cat /etc/secret/username; echo; cat /etc/podinfo/labels; echo; cat /etc/podinfo/name /etc/podinfo/mem_limit",
    );
    for want in [
        "game.properties 440",
        "lives 644",
        "/etc/secret/password 400",
        "admin",
        "app=\"config-demo\"\ntier=\"backend\"",
        "config-demo64",
    ] {
        assert!(files.contains(want), "{want:?} in:\n{files}");
    }
    assert!(!files.contains("ui.properties"), "only the items: {files}");
    // The pod-level limits are on the cgroup above the containers' (the
    // containers have no cgroup namespace, so they see the guest's tree).
    let cgroup = pod.sh(
        "app",
        "cat /proc/self/cgroup /sys/fs/cgroup/unipod/memory.max /sys/fs/cgroup/unipod/cpu.max",
    );
    let lines: Vec<&str> = cgroup.lines().collect();
    assert!(
        matches!(lines.as_slice(), [own, "67108864", "50000 100000"] if own.starts_with("0::/unipod/")),
        "the pod's cgroup and its memory.max and cpu.max:\n{cgroup}"
    );

    // Without --pod-cidr6, eth0 has no IPv6 address, not even link-local
    // (so no DAD, router solicitations or MLD); lo has ::1.
    let inet6 = pod.sh("app", "cat /proc/net/if_inet6");
    assert!(
        inet6
            .lines()
            .any(|l| l.starts_with("00000000000000000000000000000001 ") && l.ends_with(" lo")),
        "::1 on lo:\n{inet6}"
    );
    assert!(
        !inet6.lines().any(|l| l.ends_with(" eth0")),
        "no IPv6 address on eth0:\n{inet6}"
    );

    let ro = pod.sh("app", "touch /etc/config/x 2>&1; echo rc=$?");
    assert!(ro.contains("rc=1"), "a ConfigMap volume is read-only: {ro}");

    // The image's user, group, directory and env, for the container that
    // names none.
    let user = pod.sh("user", "id -u; id -g; pwd; echo $IMAGE_GREETING");
    assert_eq!(user, "65534\n100\n/home/nobody\nfrom the image\n");

    // An update reaches the mounted files; env and subPath keep what the
    // container started with, as in Kubernetes.
    let updated = manifest(
        "config-demo-update",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game-config\ndata:\n  game.properties: \"lives=5\"\n  lives: \"5\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late-config\ndata:\n  value: here\n",
    );
    let out = pod.unipod(&["apply", "-f", updated.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        stdout.contains("configmap/game-config configured"),
        "{stdout}"
    );
    pod.wait_for_output("app", "cat /etc/config/lives", "5");
    assert_eq!(pod.sh("app", "cat /etc/config/game.properties"), "lives=5");
    assert_eq!(
        pod.sh("app", "cat /etc/lives-at-start; echo \" $LIVES\""),
        "3 3\n"
    );

    // The waiting container starts once its ConfigMap exists.
    wait_for(&state, POD, "late running", |s| {
        container_state(s, "late")["running"].is_object()
    });
    pod.wait_for_output("late", "echo $LATE", "here");

    let out = pod.unipod(&["get", "secrets"]);
    let (listing, _) = text(&out);
    assert!(
        listing.contains("db-creds") && listing.contains("Opaque"),
        "{listing}"
    );
    let (shown, _) = text(&pod.unipod(&["get", "secret", "db-creds", "-o", "yaml"]));
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("czNjcjN0"),
        "{shown}"
    );
    let out = pod.unipod(&["rm", "-f", POD]);
    assert!(out.status.success(), "{:?}", text(&out));
    for (kind, object) in OBJECTS {
        let out = pod.unipod(&["delete", kind, object]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
}

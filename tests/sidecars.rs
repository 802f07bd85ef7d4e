//! End-to-end test of native sidecars and lifecycle hooks on one real pod
//! VM, with a manifest modelled on the Kubernetes docs' examples ("Sidecar
//! Containers": a Job-like pod whose `logshipper` init container has
//! `restartPolicy: Always`; "Attach Handlers to Container Lifecycle
//! Events": a postStart exec writing `/usr/share/message`). A second
//! sidecar serves the app over localhost once its startup probe passes;
//! when the app exits, the pod (`restartPolicy: Never`) stops the sidecars,
//! last first, running the logshipper's preStop hook before its stop
//! signal, and ends Succeeded.

mod common;

use std::path::Path;

use common::pod::{import_busybox, manifest, remove, run_pod, status, text, unipod, wait_for};
use common::{shared_state_dir, skip_without_kvm};

const POD: &str = "sidecar-demo";

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: sidecar-demo
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 30
  volumes:
  - name: data
    emptyDir: {}
  initContainers:
  - name: logshipper
    image: busybox
    restartPolicy: Always
    command:
    - sh
    - -c
    - |
      trap 'if wget -q -O /dev/null http://127.0.0.1:8081/; then echo web still up; else echo web already stopped; fi; [ -e /opt/app-done ] && echo shipper stopped after the app; exit 0' TERM
      touch /opt/logs.txt
      tail -F /opt/logs.txt &
      while :; do sleep 1; done
    lifecycle:
      preStop:
        exec:
          command: [sh, -c, "echo preStop hook ran > /proc/1/fd/1"]
    volumeMounts:
    - name: data
      mountPath: /opt
  - name: web
    image: busybox
    restartPolicy: Always
    command:
    - sh
    - -c
    - |
      mkdir -p /www && echo served by the sidecar > /www/index.html
      httpd -p 127.0.0.1:8081 -h /www
      trap 'exit 0' TERM
      while :; do sleep 1; done
    startupProbe:
      tcpSocket:
        host: 127.0.0.1
        port: 8081
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 60
  containers:
  - name: myapp
    image: busybox
    command:
    - sh
    - -c
    - |
      wget -q -O - http://127.0.0.1:8081/
      echo logging >> /opt/logs.txt
      until [ -e /opt/done ]; do sleep 1; done
      touch /opt/app-done
      echo app done
    lifecycle:
      postStart:
        exec:
          # busybox has no /usr/share, which the docs' nginx has.
          command: [/bin/sh, -c, "mkdir -p /usr/share && echo Hello from the postStart handler > /usr/share/message"]
    volumeMounts:
    - name: data
      mountPath: /opt
"#;

fn logs(state: &Path, container: &str) -> String {
    let out = unipod(state, "logs", &[POD, "-c", container]);
    assert!(out.status.success(), "logs {container}: {:?}", text(&out));
    text(&out).0
}

fn state_of(s: &serde_json::Value, list: &str, name: &str) -> serde_json::Value {
    s["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .map(|c| c["state"].clone())
        .unwrap_or_default()
}

/// The index of the first event of `reason` whose message is `message`.
fn event_index(s: &serde_json::Value, reason: &str, message: &str) -> usize {
    s["events"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .position(|e| e["reason"] == reason && e["message"] == message)
        })
        .unwrap_or_else(|| panic!("no {reason} event {message:?}: {s:#}"))
}

#[test]
fn native_sidecars_and_lifecycle_hooks_run_as_the_kubelet_runs_them() {
    if skip_without_kvm("native_sidecars_and_lifecycle_hooks_run_as_the_kubelet_runs_them") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    remove(&state, POD);
    let path = manifest(POD, MANIFEST);
    let out = run_pod(&state, &path, &["-d"]).output().expect("runs");
    assert!(out.status.success(), "{:?}", text(&out));

    // The sidecars start in order, each before the next container, and
    // keep running beside the app; the pod is Ready with all three.
    wait_for(&state, POD, "running and ready", |s| {
        s["status"]["phase"] == "Running"
            && state_of(s, "containerStatuses", "myapp")["running"].is_object()
            && s["status"]["conditions"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    let s = status(&state, POD);
    let started = |name: &str| event_index(&s, "Started", &format!("Started container {name}"));
    assert!(
        started("logshipper") < started("web") && started("web") < started("myapp"),
        "{s:#}"
    );
    for sidecar in ["logshipper", "web"] {
        assert!(
            state_of(&s, "initContainerStatuses", sidecar)["running"].is_object(),
            "{sidecar}: {s:#}"
        );
    }
    // kubectl counts started sidecars with the app containers.
    let (get, _) = text(&unipod(&state, "get", &[]));
    let row: Vec<&str> = get
        .lines()
        .find(|l| l.starts_with(POD))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1..3), Some(&["3/3", "Running"][..]), "{get}");

    // postStart ran in the app's own root before it was Running.
    let out = unipod(
        &state,
        "exec",
        &[POD, "-c", "myapp", "--", "cat", "/usr/share/message"],
    );
    assert_eq!(
        text(&out).0,
        "Hello from the postStart handler\n",
        "{:?}",
        text(&out)
    );

    // The app was served by its sidecar over localhost, and the other
    // sidecar ships its log.
    wait_for(&state, POD, "the log shipped", |_| {
        logs(&state, "logshipper").contains("logging")
    });
    assert!(
        logs(&state, "myapp").contains("served by the sidecar"),
        "{}",
        logs(&state, "myapp")
    );

    // The app ends: the sidecars do not keep the pod from Succeeded. They
    // are stopped last first (web, then logshipper), the logshipper's
    // preStop hook before its stop signal.
    let out = unipod(
        &state,
        "exec",
        &[POD, "-c", "myapp", "--", "touch", "/opt/done"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    wait_for(&state, POD, "Succeeded", |s| {
        s["status"]["phase"] == "Succeeded"
    });
    let s = status(&state, POD);
    assert_eq!(
        state_of(&s, "containerStatuses", "myapp")["terminated"]["exitCode"],
        0,
        "{s:#}"
    );
    for sidecar in ["logshipper", "web"] {
        let t = &state_of(&s, "initContainerStatuses", sidecar)["terminated"];
        assert!(t.is_object(), "{sidecar} ended: {s:#}");
    }
    let shipper = logs(&state, "logshipper");
    let pre_stop = shipper.find("preStop hook ran");
    let term = shipper.find("web already stopped");
    assert!(
        pre_stop.is_some() && term.is_some() && pre_stop < term,
        "preStop, then SIGTERM after web had stopped:\n{shipper}"
    );
    assert!(
        shipper.contains("shipper stopped after the app"),
        "{shipper}"
    );

    let out = unipod(&state, "rm", &["-f", POD]);
    assert!(out.status.success(), "{:?}", text(&out));
}

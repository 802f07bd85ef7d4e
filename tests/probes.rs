//! End-to-end test of health probes on one real pod VM, with a manifest
//! modelled on the Kubernetes docs' "Configure Liveness, Readiness and
//! Startup Probes" examples: an exec liveness probe on a file the
//! container deletes (a restart, with the kubelet's events), an exec
//! readiness probe flipping READY as a file appears and disappears, and a
//! busybox httpd whose startup probe (tcpSocket) holds its httpGet
//! liveness and readiness probes, and whose liveness probe restarts it
//! once the page it checks is gone. The probes run in the guest agent.
//!
//! A second pod runs real gRPC and HTTPS servers (Python's grpcio and ssl,
//! tests/fixtures/probe_servers.py, in the python-grpc image of
//! images/build-python-grpc.sh): a grpc startup probe, a grpc readiness
//! probe that flips READY as the server answers NOT_SERVING and SERVING
//! again, and an HTTPS readiness probe against a self-signed certificate.
//!
//! The third pod runs native sidecars and lifecycle hooks, with a manifest
//! modelled on the docs' "Sidecar Containers" and "Attach Handlers to
//! Container Lifecycle Events" examples (see its test). The three pods
//! share this binary so that their VMs overlap in CI.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pod::{import_busybox, manifest, remove, run_pod, status, text, unipod, wait_for};
use common::{guest_artifact, shared_state_dir, skip_without_kvm, wait_until};

const POD: &str = "probes-demo";

/// Short periods keep the test quick; timeouts are generous because an
/// exec or a request to httpd (which forks) in a nested guest can take
/// seconds when the host is busy.
const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: probes-demo
spec:
  terminationGracePeriodSeconds: 5
  volumes:
  - name: state
    emptyDir: {}
  containers:
  - name: liveness
    image: busybox
    # The docs' liveness-exec example, deleting the file on its first run
    # only (the emptyDir remembers), so that the pod settles after one
    # restart.
    args:
    - /bin/sh
    - -c
    - touch /tmp/healthy; if [ ! -e /state/died ]; then touch /state/died; sleep 3; rm -f /tmp/healthy; fi; sleep 600
    volumeMounts:
    - name: state
      mountPath: /state
    livenessProbe:
      exec:
        command: [cat, /tmp/healthy]
      initialDelaySeconds: 1
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
  - name: ready
    image: busybox
    command: [sh, -c, "sleep 600"]
    readinessProbe:
      exec:
        command: [cat, /tmp/ready]
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 1
  - name: web
    image: busybox
    command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && echo ok > /www/live && exec httpd -f -p 8080 -h /www"]
    ports:
    - containerPort: 8080
      name: http
    startupProbe:
      tcpSocket:
        port: 8080
      periodSeconds: 1
      failureThreshold: 60
    livenessProbe:
      httpGet:
        path: /live
        port: http
        httpHeaders:
        - name: X-Probe
          value: liveness
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
    readinessProbe:
      httpGet:
        path: /index.html
        port: 8080
      periodSeconds: 1
      timeoutSeconds: 10
"#;

fn container(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn condition(s: &serde_json::Value, kind: &str) -> String {
    s["status"]["conditions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Whether the pod has an event of `reason` whose message contains `text`.
fn has_event(s: &serde_json::Value, reason: &str, text: &str) -> bool {
    s["events"].as_array().is_some_and(|l| {
        l.iter().any(|e| {
            e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(text))
        })
    })
}

/// `sh -c script` in `container`.
fn sh(state: &Path, container: &str, script: &str) {
    let out = unipod(
        state,
        "exec",
        &[POD, "-c", container, "--", "sh", "-c", script],
    );
    assert!(out.status.success(), "exec {script:?}: {:?}", text(&out));
}

/// The READY column of `unipod get`, once it shows `want` (bounded).
fn wait_ready_column(state: &Path, want: &str) {
    let mut last = String::new();
    let shown = wait_until(Duration::from_secs(60), || {
        let out = unipod(state, "get", &[]);
        last = text(&out).0;
        last.lines()
            .any(|l| l.starts_with(POD) && l.split_whitespace().nth(1) == Some(want))
    });
    assert!(shown, "unipod get never showed READY {want}:\n{last}");
}

#[test]
fn liveness_readiness_and_startup_probes_run_as_the_kubelet_runs_them() {
    if skip_without_kvm("liveness_readiness_and_startup_probes_run_as_the_kubelet_runs_them") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    remove(&state, POD);
    let path = manifest(POD, MANIFEST);
    let out = run_pod(&state, &path, &["-d"]).output().expect("runs");
    assert!(out.status.success(), "{:?}", text(&out));

    // The startup probe passes once httpd listens; then the httpGet
    // readiness probe makes web ready. `ready` has failed its probe.
    wait_for(&state, POD, "web started and ready", |s| {
        let web = container(s, "web");
        web["started"] == true && web["ready"] == true
    });
    // Its first failure is reported: cat's message, or a time-out when the
    // guest is busy starting the three containers.
    wait_for(&state, POD, "ready reported not ready", |s| {
        has_event(s, "Unhealthy", "Readiness probe failed: ")
    });
    let s = status(&state, POD);
    assert_eq!(container(&s, "ready")["ready"], false, "{s:#}");
    assert!(
        container(&s, "ready")["state"]["running"].is_object(),
        "{s:#}"
    );
    assert_eq!(condition(&s, "Ready"), "False", "{s:#}");

    // The exec liveness probe fails once the file is gone: one restart,
    // with the kubelet's events.
    wait_for(&state, POD, "liveness restarted and running", |s| {
        let c = container(s, "liveness");
        c["restartCount"].as_u64() >= Some(1) && c["state"]["running"].is_object()
    });
    let s = status(&state, POD);
    assert!(
        has_event(
            &s,
            "Unhealthy",
            "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"
        ),
        "{s:#}"
    );
    assert!(
        has_event(
            &s,
            "Killing",
            "Container liveness failed liveness probe, will be restarted"
        ),
        "{s:#}"
    );

    // Readiness follows the file: READY 3/3 and the Ready condition, then
    // back to 2/3.
    sh(&state, "ready", "touch /tmp/ready");
    wait_for(&state, POD, "ready", |s| {
        container(s, "ready")["ready"] == true
            && condition(s, "ContainersReady") == "True"
            && condition(s, "Ready") == "True"
    });
    wait_ready_column(&state, "3/3");
    sh(&state, "ready", "rm /tmp/ready");
    wait_for(&state, POD, "not ready again", |s| {
        container(s, "ready")["ready"] == false && condition(s, "Ready") == "False"
    });
    wait_ready_column(&state, "2/3");
    assert_eq!(
        container(&status(&state, POD), "ready")["restartCount"],
        0,
        "a readiness failure restarts nothing"
    );

    // The httpGet liveness probe: a 404 restarts web, whose fresh
    // writable layer serves the page again.
    let before = container(&status(&state, POD), "web")["restartCount"]
        .as_u64()
        .expect("a restart count");
    sh(&state, "web", "rm /www/live");
    wait_for(&state, POD, "web failed its httpGet probe", |s| {
        has_event(
            s,
            "Unhealthy",
            "Liveness probe failed: HTTP probe failed with statuscode: 404",
        )
    });
    wait_for(&state, POD, "web restarted and ready", |s| {
        let web = container(s, "web");
        web["restartCount"].as_u64() > Some(before) && web["ready"] == true
    });
    let s = status(&state, POD);
    assert!(
        has_event(
            &s,
            "Unhealthy",
            "Liveness probe failed: HTTP probe failed with statuscode: 404"
        ),
        "{s:#}"
    );
    assert!(
        has_event(
            &s,
            "Killing",
            "Container web failed liveness probe, will be restarted"
        ),
        "{s:#}"
    );
    let (describe, _) = text(&unipod(&state, "describe", &[POD]));
    assert!(describe.contains("Unhealthy"), "{describe}");
    assert!(
        describe.contains("Liveness:       exec [cat /tmp/healthy] delay=1s timeout=10s period=1s #success=1 #failure=2"),
        "{describe}"
    );

    let out = unipod(&state, "rm", &["-f", POD]);
    assert!(out.status.success(), "{:?}", text(&out));
}

const GRPC_POD: &str = "probes-grpc";

/// How long the python-grpc container may take to start serving: Python
/// and grpcio's C core take about two minutes to start on a nested-PVM
/// host, where every page fault and system call is emulated.
const GRPC_START_BUDGET: Duration = Duration::from_secs(600);

/// The Python servers in a ConfigMap; a container running them whose grpc
/// startup probe holds its grpc readiness probe, and a busybox container
/// whose HTTPS readiness probe checks the HTTPS server across the pod's
/// shared network (so that one slow Python start serves both checks).
/// Timeouts are generous for a busy nested guest.
fn grpc_manifest() -> String {
    let script: String = include_str!("fixtures/probe_servers.py")
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: probe-servers
data:
  probe_servers.py: |
{script}---
apiVersion: v1
kind: Pod
metadata:
  name: {GRPC_POD}
spec:
  terminationGracePeriodSeconds: 5
  volumes:
  - name: app
    configMap:
      name: probe-servers
  containers:
  - name: grpc
    image: python-grpc:latest
    command: [python3, -u, /app/probe_servers.py]
    volumeMounts:
    - name: app
      mountPath: /app
    startupProbe:
      grpc:
        port: 9090
        service: probe-test
      periodSeconds: 2
      timeoutSeconds: 10
      failureThreshold: 300
    readinessProbe:
      grpc:
        port: 9090
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 1
  - name: https
    image: busybox
    command: [sleep, "3600"]
    readinessProbe:
      httpGet:
        scheme: HTTPS
        port: 8443
        path: /healthz
      periodSeconds: 2
      timeoutSeconds: 10
"#
    )
}

/// Waits (up to `limit`) until `check` holds for the pod's status.
fn wait_long(
    state: &Path,
    what: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let held = wait_until(limit, || check(&status(state, GRPC_POD)));
    assert!(
        held,
        "pod {GRPC_POD}: never {what}:\n{:#}",
        status(state, GRPC_POD)
    );
}

#[test]
fn grpc_and_https_probes_check_real_servers() {
    if skip_without_kvm("grpc_and_https_probes_check_real_servers") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    let tar = guest_artifact("oci/python-grpc-oci.tar");
    let out = unipod(&state, "image", &["import", tar.to_str().expect("utf-8")]);
    assert!(out.status.success(), "import python-grpc: {:?}", text(&out));
    remove(&state, GRPC_POD);
    let path = manifest(GRPC_POD, &grpc_manifest());
    let out = run_pod(&state, &path, &["-d"]).output().expect("runs");
    assert!(out.status.success(), "{:?}", text(&out));

    // The grpc startup probe (service "probe-test") passes once the server
    // is up, then its grpc readiness probe makes it ready; the HTTPS
    // readiness probe (a self-signed certificate) makes `https` ready.
    wait_long(
        &state,
        "ready over grpc and HTTPS",
        GRPC_START_BUDGET,
        |s| {
            let grpc = container(s, "grpc");
            grpc["started"] == true
                && grpc["ready"] == true
                && container(s, "https")["ready"] == true
        },
    );
    let s = status(&state, GRPC_POD);
    assert_eq!(condition(&s, "Ready"), "True", "{s:#}");

    // NOT_SERVING fails the grpc readiness probe with the kubelet's words;
    // SERVING again makes it ready again. HTTPS stays ready throughout.
    let grpc_sh = |script: &str| {
        let out = unipod(
            &state,
            "exec",
            &[GRPC_POD, "-c", "grpc", "--", "sh", "-c", script],
        );
        assert!(out.status.success(), "exec {script:?}: {:?}", text(&out));
    };
    grpc_sh("touch /tmp/not-serving");
    wait_long(
        &state,
        "not ready on NOT_SERVING",
        Duration::from_secs(120),
        |s| {
            container(s, "grpc")["ready"] == false
                && has_event(
                    s,
                    "Unhealthy",
                    "Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")",
                )
        },
    );
    let s = status(&state, GRPC_POD);
    assert_eq!(condition(&s, "Ready"), "False", "{s:#}");
    assert_eq!(container(&s, "https")["ready"], true, "{s:#}");
    grpc_sh("rm /tmp/not-serving");
    wait_long(
        &state,
        "ready again on SERVING",
        Duration::from_secs(120),
        |s| container(s, "grpc")["ready"] == true && condition(s, "Ready") == "True",
    );
    let s = status(&state, GRPC_POD);
    assert_eq!(container(&s, "grpc")["restartCount"], 0, "{s:#}");
    let (describe, _) = text(&unipod(&state, "describe", &[GRPC_POD]));
    assert!(
        describe
            .contains("Startup:        grpc <pod>:9090 probe-test delay=0s timeout=10s period=2s"),
        "{describe}"
    );
    assert!(
        describe.contains("Readiness:      http-get https://:8443/healthz"),
        "{describe}"
    );

    let out = unipod(&state, "rm", &["-f", GRPC_POD]);
    assert!(out.status.success(), "{:?}", text(&out));
}

// ---- native sidecars and lifecycle hooks ----

const SIDECAR_POD: &str = "sidecar-demo";

// The pod's sidecars share one grace period when the app ends: on a loaded
// nested host a sidecar's SIGTERM, preStop and trap can take tens of seconds
// each, so the grace is long enough that the order, not the speed, is what
// the test sees.
const SIDECAR_MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: sidecar-demo
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 300
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
    livenessProbe:
      tcpSocket:
        host: 127.0.0.1
        port: 8081
      periodSeconds: 1
      timeoutSeconds: 10
      failureThreshold: 2
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
    let out = unipod(state, "logs", &[SIDECAR_POD, "-c", container]);
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

/// A Job-like pod whose `logshipper` init container has `restartPolicy:
/// Always` (the docs' sidecar example) and whose app writes
/// `/usr/share/message` in a postStart exec; a second sidecar serves the
/// app over localhost once its startup probe passes. When the app exits,
/// the pod (`restartPolicy: Never`) stops the sidecars, last first, running
/// the logshipper's preStop hook before its stop signal, and ends
/// Succeeded.
#[test]
fn native_sidecars_and_lifecycle_hooks_run_as_the_kubelet_runs_them() {
    if skip_without_kvm("native_sidecars_and_lifecycle_hooks_run_as_the_kubelet_runs_them") {
        return;
    }
    let state = shared_state_dir();
    import_busybox(&state);
    remove(&state, SIDECAR_POD);
    let path = manifest(SIDECAR_POD, SIDECAR_MANIFEST);
    let out = run_pod(&state, &path, &["-d"]).output().expect("runs");
    assert!(out.status.success(), "{:?}", text(&out));

    // The sidecars start in order, each before the next container, and
    // keep running beside the app; the pod is Ready with all three.
    wait_for(&state, SIDECAR_POD, "running and ready", |s| {
        s["status"]["phase"] == "Running"
            && state_of(s, "containerStatuses", "myapp")["running"].is_object()
            && s["status"]["conditions"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    let s = status(&state, SIDECAR_POD);
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
        .find(|l| l.starts_with(SIDECAR_POD))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1..3), Some(&["3/3", "Running"][..]), "{get}");

    // postStart ran in the app's own root before it was Running.
    let out = unipod(
        &state,
        "exec",
        &[
            SIDECAR_POD,
            "-c",
            "myapp",
            "--",
            "cat",
            "/usr/share/message",
        ],
    );
    assert_eq!(
        text(&out).0,
        "Hello from the postStart handler\n",
        "{:?}",
        text(&out)
    );

    // The app was served by its sidecar over localhost, and the other
    // sidecar ships its log.
    wait_for(&state, SIDECAR_POD, "the log shipped", |_| {
        logs(&state, "logshipper").contains("logging")
    });
    assert!(
        logs(&state, "myapp").contains("served by the sidecar"),
        "{}",
        logs(&state, "myapp")
    );

    // web's tcpSocket liveness probe fails once its server is gone: the
    // sidecar is killed and restarted, and serves again.
    // killall fails when an httpd serving a request exits before its
    // signal ("can't kill pid N"): the restart below is the check.
    let out = unipod(
        &state,
        "exec",
        &[
            SIDECAR_POD,
            "-c",
            "web",
            "--",
            "sh",
            "-c",
            "killall httpd; exit 0",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    wait_for(
        &state,
        SIDECAR_POD,
        "web restarted by its liveness probe",
        |s| {
            let web = s["status"]["initContainerStatuses"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == "web"))
                .cloned()
                .unwrap_or_default();
            web["restartCount"].as_u64() >= Some(1) && web["started"] == true
        },
    );
    let s = status(&state, SIDECAR_POD);
    assert!(
        has_event(
            &s,
            "Killing",
            "Container web failed liveness probe, will be restarted"
        ),
        "{s:#}"
    );
    assert!(
        has_event(
            &s,
            "Unhealthy",
            "Liveness probe failed: dial tcp 127.0.0.1:8081: connect: connection refused"
        ),
        "{s:#}"
    );

    // The app ends: the sidecars do not keep the pod from Succeeded. They
    // are stopped last first (web, then logshipper), the logshipper's
    // preStop hook before its stop signal.
    let out = unipod(
        &state,
        "exec",
        &[SIDECAR_POD, "-c", "myapp", "--", "touch", "/opt/done"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    wait_for(&state, SIDECAR_POD, "Succeeded", |s| {
        s["status"]["phase"] == "Succeeded"
    });
    let s = status(&state, SIDECAR_POD);
    assert_eq!(
        state_of(&s, "containerStatuses", "myapp")["terminated"]["exitCode"],
        0,
        "{s:#}"
    );
    for sidecar in ["logshipper", "web"] {
        let t = &state_of(&s, "initContainerStatuses", sidecar)["terminated"];
        assert!(t.is_object(), "{sidecar} ended: {s:#}");
    }
    // The last output of a container can reach its log file just after
    // its exit is recorded.
    wait_for(
        &state,
        SIDECAR_POD,
        "the shipper's last words logged",
        |_| logs(&state, "logshipper").contains("shipper stopped after the app"),
    );
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

    let out = unipod(&state, "rm", &["-f", SIDECAR_POD]);
    assert!(out.status.success(), "{:?}", text(&out));
}

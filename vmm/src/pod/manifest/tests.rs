use super::*;
use crate::pod::security_context::SeccompProfile;

/// The smallest valid pod; tests add to it or break it.
const MINIMAL: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
    - name: c
      image: busybox:latest
";

/// The message of each problem in the refused manifest `yaml`.
fn problems(yaml: &str) -> Vec<String> {
    let error = parse(yaml).expect_err("the manifest should be refused");
    error.problems().iter().map(ToString::to_string).collect()
}

/// `MINIMAL` with `extra` (already indented) appended to its only container.
fn with_container_fields(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn parse_ok(yaml: &str) -> (PodManifest, Vec<Warning>) {
    parse(yaml).unwrap_or_else(|e| panic!("the manifest should parse: {e}"))
}

fn container(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_owned(),
        image: "busybox:latest".to_owned(),
        // The kubelet's default for a :latest image.
        image_pull_policy: ImagePullPolicy::Always,
        command: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        env_from: Vec::new(),
        working_dir: None,
        ports: Vec::new(),
        resources: Resources::default(),
        volume_mounts: Vec::new(),
        security_context: Default::default(),
        probes: Default::default(),
        hooks: Default::default(),
        sidecar: false,
    }
}

#[test]
fn full_manifest_parses_into_the_expected_struct() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: full-pod
  labels:
    app: demo
    tier: "1"
  annotations:
    example.com/note: hello
spec:
  hostname: box-1
  imagePullSecrets:
    - name: regcred
  restartPolicy: OnFailure
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 0
  volumes:
    - name: scratch
      emptyDir: {}
    - name: cache
      emptyDir:
        medium: Memory
        sizeLimit: 64Mi
    - name: plain
  initContainers:
    - name: init
      image: busybox:latest
      command: ["sh", "-c", "echo hi > /scratch/hi"]
      ports:
        - containerPort: 9000
      volumeMounts:
        - name: scratch
          mountPath: /scratch
  containers:
    - name: web
      image: registry.example/web:1.2
      command: [httpd]
      args: ["-f", "-p", "8080"]
      env:
        - name: MODE
          value: prod
        - name: EMPTY
      workingDir: /srv
      ports:
        - name: http
          containerPort: 8080
          hostPort: 18080
          protocol: TCP
        - containerPort: 5353
          protocol: UDP
      resources:
        limits:
          cpu: 1500m
          memory: 1Gi
        requests:
          cpu: 0.5
          memory: 128M
      volumeMounts:
        - name: scratch
          mountPath: /scratch
          readOnly: true
        - name: cache
          mountPath: /cache
          readOnly: false
"#;
    let (pod, warnings) = parse_ok(yaml);
    assert_eq!(warnings, Vec::new());
    let expected = PodManifest {
        name: "full-pod".to_owned(),
        namespace: "default".to_owned(),
        resources: Resources::default(),
        labels: BTreeMap::from([
            ("app".to_owned(), "demo".to_owned()),
            ("tier".to_owned(), "1".to_owned()),
        ]),
        annotations: BTreeMap::from([("example.com/note".to_owned(), "hello".to_owned())]),
        hostname: Some("box-1".to_owned()),
        restart_policy: RestartPolicy::OnFailure,
        share_process_namespace: true,
        termination_grace_period: Duration::ZERO,
        init_containers: vec![ContainerSpec {
            command: vec!["sh".into(), "-c".into(), "echo hi > /scratch/hi".into()],
            ports: vec![ContainerPort {
                container_port: 9000,
                host_port: None,
                protocol: Protocol::Tcp,
                name: None,
            }],
            volume_mounts: vec![VolumeMount {
                name: "scratch".to_owned(),
                mount_path: PathBuf::from("/scratch"),
                read_only: false,
                sub_path: None,
                sub_path_expr: None,
            }],
            ..container("init")
        }],
        containers: vec![ContainerSpec {
            name: "web".to_owned(),
            image: "registry.example/web:1.2".to_owned(),
            image_pull_policy: ImagePullPolicy::IfNotPresent,
            command: vec!["httpd".into()],
            args: vec!["-f".into(), "-p".into(), "8080".into()],
            env: vec![EnvVar::value("MODE", "prod"), EnvVar::value("EMPTY", "")],
            env_from: Vec::new(),
            working_dir: Some(PathBuf::from("/srv")),
            ports: vec![
                ContainerPort {
                    container_port: 8080,
                    host_port: Some(18080),
                    protocol: Protocol::Tcp,
                    name: Some("http".to_owned()),
                },
                ContainerPort {
                    container_port: 5353,
                    host_port: None,
                    protocol: Protocol::Udp,
                    name: None,
                },
            ],
            resources: Resources {
                limits: ResourceList {
                    cpu_millis: Some(1500),
                    memory_bytes: Some(1 << 30),
                },
                requests: ResourceList {
                    cpu_millis: Some(500),
                    memory_bytes: Some(128_000_000),
                },
            },
            volume_mounts: vec![
                VolumeMount {
                    name: "scratch".to_owned(),
                    mount_path: PathBuf::from("/scratch"),
                    read_only: true,
                    sub_path: None,
                    sub_path_expr: None,
                },
                VolumeMount {
                    name: "cache".to_owned(),
                    mount_path: PathBuf::from("/cache"),
                    read_only: false,
                    sub_path: None,
                    sub_path_expr: None,
                },
            ],
            security_context: SecurityContext::default(),
            probes: Default::default(),
            hooks: Default::default(),
            sidecar: false,
        }],
        volumes: vec![
            Volume {
                name: "scratch".to_owned(),
                source: VolumeSource::EmptyDir(EmptyDir::default()),
            },
            Volume {
                name: "cache".to_owned(),
                source: VolumeSource::EmptyDir(EmptyDir {
                    medium: StorageMedium::Memory,
                    size_limit_bytes: Some(64 << 20),
                }),
            },
            Volume {
                name: "plain".to_owned(),
                source: VolumeSource::EmptyDir(EmptyDir::default()),
            },
        ],
        security_context: PodSecurityContext::default(),
        image_pull_secrets: vec!["regcred".to_owned()],
    };
    assert_eq!(pod, expected);
}

#[test]
fn minimal_manifest_gets_kubernetes_defaults() {
    let (pod, warnings) = parse_ok(MINIMAL);
    assert_eq!(warnings, Vec::new());
    assert_eq!(
        pod,
        PodManifest {
            name: "p".to_owned(),
            namespace: "default".to_owned(),
            resources: Resources::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            hostname: None,
            restart_policy: RestartPolicy::Always,
            share_process_namespace: false,
            termination_grace_period: Duration::from_secs(30),
            init_containers: Vec::new(),
            containers: vec![container("c")],
            volumes: Vec::new(),
            security_context: Default::default(),
            image_pull_secrets: Vec::new(),
        }
    );
}

#[test]
fn null_fields_count_as_absent() {
    let yaml = with_container_fields("      env:\n      args: ~\n");
    let (pod, _) = parse_ok(&format!("{yaml}  restartPolicy:\n"));
    assert_eq!(pod.containers, vec![container("c")]);
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
}

#[test]
fn unknown_container_field_is_refused_with_its_path() {
    let yaml = with_container_fields("      stopSignal: SIGUSR1\n");
    let found = problems(&yaml);
    assert!(
        found.len() == 1 && found[0].starts_with("spec.containers[0].stopSignal"),
        "{found:?}"
    );
}

#[test]
fn lifecycle_hooks_parse_from_the_kubernetes_docs_example() {
    use guest_agent::protocol::ProbeHandler;
    let (pod, warnings) = parse_ok(&with_container_fields(
        "      ports: [{containerPort: 80, name: web}]
      lifecycle:
        postStart:
          exec:
            command: [/bin/sh, -c, echo Hello from the postStart handler > /usr/share/message]
        preStop:
          httpGet: {path: /shutdown, port: web}
",
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    let hooks = &pod.containers[0].hooks;
    assert!(matches!(
        &hooks.post_start,
        Some(Hook::InGuest(ProbeHandler::Exec { command })) if command.len() == 3
    ));
    assert_eq!(
        hooks.pre_stop,
        Some(Hook::InGuest(ProbeHandler::HttpGet {
            host: None,
            port: 80,
            path: "/shutdown".into(),
            headers: vec![],
            https: false,
        }))
    );
    let (pod, warnings) = parse_ok(&with_container_fields(
        "      lifecycle:\n        preStop: {sleep: {seconds: 5}}\n        postStart: {tcpSocket: {port: 80}}\n",
    ));
    assert_eq!(
        pod.containers[0].hooks.pre_stop,
        Some(Hook::Sleep(Duration::from_secs(5)))
    );
    assert_eq!(pod.containers[0].hooks.post_start, Some(Hook::TcpSocket));
    assert_eq!(warnings.len(), 1, "tcpSocket is deprecated: {warnings:?}");
    assert_eq!(
        warnings[0].path,
        "spec.containers[0].lifecycle.postStart.tcpSocket"
    );
}

#[test]
fn invalid_hooks_are_refused_with_the_field_and_the_rule() {
    let cases = [
        (
            "      lifecycle:\n        preStop: {exec: {command: [x]}, sleep: {seconds: 1}}\n",
            "spec.containers[0].lifecycle.preStop.sleep: exec and sleep is not valid; expected exactly one handler",
        ),
        (
            "      lifecycle:\n        postStart: {}\n",
            "spec.containers[0].lifecycle.postStart.exec|httpGet|sleep",
        ),
        (
            "      lifecycle:\n        preStop: {sleep: {seconds: 31}}\n",
            "spec.containers[0].lifecycle.preStop.sleep.seconds: 31 is not valid; expected at most terminationGracePeriodSeconds (30)",
        ),
        (
            "      lifecycle:\n        preStop: {httpGet: {port: admin}}\n",
            "spec.containers[0].lifecycle.preStop.httpGet.port",
        ),
        (
            "      restartPolicy: Always\n",
            "spec.containers[0].restartPolicy: \"Always\" is not valid; expected no value",
        ),
    ];
    for (fields, expected) in cases {
        let found = problems(&with_container_fields(fields));
        assert!(
            found.len() == 1 && found[0].starts_with(expected),
            "{fields}: {found:?}"
        );
    }
}

#[test]
fn native_sidecars_parse_and_take_probes_and_hooks_unlike_other_init_containers() {
    let (pod, _) = parse_ok(&format!(
        "{MINIMAL}  initContainers:
    - name: logshipper
      image: busybox
      restartPolicy: Always
      readinessProbe: {{exec: {{command: [cat, /tmp/ready]}}}}
      lifecycle: {{preStop: {{sleep: {{seconds: 1}}}}}}
"
    ));
    let side = &pod.init_containers[0];
    assert!(
        side.sidecar && side.probes.probes.readiness.is_some() && side.hooks.pre_stop.is_some()
    );
    let found = problems(&format!(
        "{MINIMAL}  initContainers:\n    - name: i\n      image: busybox\n      restartPolicy: Never\n      lifecycle: {{preStop: {{sleep: {{seconds: 1}}}}}}\n"
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with(
            "spec.initContainers[0].restartPolicy: \"Never\" is not valid; expected \"Always\""
        ),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("spec.initContainers[0].lifecycle"),
        "{found:?}"
    );
}

/// `MINIMAL` with a port named `http` (8080) and `probes` (indented as
/// container fields).
fn with_probes(probes: &str) -> String {
    with_container_fields(&format!(
        "      ports: [{{containerPort: 8080, name: http}}]\n{probes}"
    ))
}

#[test]
fn probes_parse_with_the_kubernetes_defaults_and_named_ports_resolved() {
    use guest_agent::protocol::{ProbeHandler, ProbeSpec};
    let (pod, _) = parse_ok(&with_probes(
        "      livenessProbe:
        exec: {command: [cat, /tmp/healthy]}
        initialDelaySeconds: 5
        periodSeconds: 5
        terminationGracePeriodSeconds: 7
      readinessProbe:
        httpGet:
          path: healthz
          port: http
          httpHeaders: [{name: X-Custom-Header, value: Awesome}]
        successThreshold: 2
        periodSeconds: 0
      startupProbe:
        tcpSocket: {port: 8080, host: 127.0.0.1}
        failureThreshold: 30
",
    ));
    let p = &pod.containers[0].probes;
    assert_eq!(
        p.probes.liveness,
        Some(ProbeSpec {
            handler: ProbeHandler::Exec {
                command: vec!["cat".into(), "/tmp/healthy".into()]
            },
            initial_delay_secs: 5,
            period_secs: 5,
            timeout_secs: 1,
            success_threshold: 1,
            failure_threshold: 3,
        })
    );
    assert_eq!(p.liveness_grace, Some(Duration::from_secs(7)));
    assert_eq!(
        p.probes.readiness,
        Some(ProbeSpec {
            handler: ProbeHandler::HttpGet {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Custom-Header".into(), "Awesome".into())],
                https: false,
            },
            initial_delay_secs: 0,
            period_secs: 10,
            timeout_secs: 1,
            success_threshold: 2,
            failure_threshold: 3,
        }),
        "periodSeconds: 0 takes the default, as the API server defaults it"
    );
    let startup = p.probes.startup.as_ref().unwrap();
    assert_eq!(
        startup.handler,
        ProbeHandler::TcpSocket {
            host: Some("127.0.0.1".into()),
            port: 8080
        }
    );
    assert_eq!((startup.failure_threshold, p.startup_grace), (30, None));
}

#[test]
fn grpc_and_https_probes_parse_as_the_kubelet_runs_them() {
    use guest_agent::protocol::ProbeHandler;
    let (pod, _) = parse_ok(&with_probes(
        "      livenessProbe:
        grpc: {port: 9090}
      readinessProbe:
        grpc: {port: 9090, service: echo.v1.Echo}
      startupProbe:
        httpGet: {port: http, scheme: HTTPS, path: /ready}
",
    ));
    let p = &pod.containers[0].probes.probes;
    assert_eq!(
        p.liveness.as_ref().unwrap().handler,
        ProbeHandler::Grpc {
            host: None,
            port: 9090,
            service: String::new()
        }
    );
    assert_eq!(
        p.readiness.as_ref().unwrap().handler,
        ProbeHandler::Grpc {
            host: None,
            port: 9090,
            service: "echo.v1.Echo".into()
        }
    );
    assert_eq!(
        p.startup.as_ref().unwrap().handler,
        ProbeHandler::HttpGet {
            host: None,
            port: 8080,
            path: "/ready".into(),
            headers: vec![],
            https: true,
        }
    );
}

#[test]
fn invalid_probes_are_refused_with_the_field_and_the_rule() {
    let cases = [
        (
            "      livenessProbe:\n        exec: {command: [ls]}\n        tcpSocket: {port: 80}\n",
            "spec.containers[0].livenessProbe.tcpSocket: exec and tcpSocket is not valid; expected exactly one handler",
        ),
        (
            "      livenessProbe:\n        periodSeconds: 3\n",
            "spec.containers[0].livenessProbe.exec|httpGet|tcpSocket|grpc: required field is missing",
        ),
        (
            "      readinessProbe:\n        exec: {command: [ls]}\n        periodSeconds: -1\n",
            "spec.containers[0].readinessProbe.periodSeconds: -1 is not valid; expected a whole number, 0 or more",
        ),
        (
            "      livenessProbe:\n        httpGet: {port: metrics}\n",
            "spec.containers[0].livenessProbe.httpGet.port: \"metrics\" is not valid; expected a port number or the name of one of this container's ports (named: http)",
        ),
        (
            "      startupProbe:\n        exec: {command: [ls]}\n        successThreshold: 2\n",
            "spec.containers[0].startupProbe.successThreshold: 2 is not valid; expected 1: a startup probe",
        ),
        (
            "      readinessProbe:\n        exec: {command: [ls]}\n        terminationGracePeriodSeconds: 5\n",
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: 5 is not valid; expected no value",
        ),
        (
            "      livenessProbe:\n        exec: {command: [ls]}\n        terminationGracePeriodSeconds: 0\n",
            "spec.containers[0].livenessProbe.terminationGracePeriodSeconds: 0 is not valid; expected a whole number of seconds greater than 0",
        ),
        (
            "      livenessProbe:\n        httpGet: {port: 8080, scheme: FTP}\n",
            "spec.containers[0].livenessProbe.httpGet.scheme: \"FTP\" is not valid; expected \"HTTP\" or \"HTTPS\"",
        ),
        (
            "      livenessProbe:\n        grpc: {port: 0}\n",
            "spec.containers[0].livenessProbe.grpc.port: 0 is not valid; expected a port number from 1 to 65535",
        ),
        (
            "      livenessProbe:\n        grpc: {port: 65536}\n",
            "spec.containers[0].livenessProbe.grpc.port: 65536 is not valid; expected a port number from 1 to 65535",
        ),
        (
            "      livenessProbe:\n        grpc: {port: http}\n",
            "spec.containers[0].livenessProbe.grpc.port: \"http\" is not valid; expected a port number from 1 to 65535 (a grpc probe takes no named port)",
        ),
        (
            "      readinessProbe:\n        grpc: {service: x}\n",
            "spec.containers[0].readinessProbe.grpc.port: required field is missing",
        ),
        (
            "      readinessProbe:\n        grpc: {port: 9090, host: 10.0.0.1}\n",
            "spec.containers[0].readinessProbe.grpc.host",
        ),
        (
            "      livenessProbe:\n        exec: {command: []}\n",
            "spec.containers[0].livenessProbe.exec.command: required field is missing",
        ),
    ];
    for (probe, expected) in cases {
        let found = problems(&with_probes(probe));
        assert!(
            found.len() == 1 && found[0].starts_with(expected),
            "{probe}: expected {expected:?}, got {found:?}"
        );
    }
}

#[test]
fn init_containers_take_no_probes() {
    let yaml = format!(
        "{MINIMAL}  initContainers:\n    - name: i\n      image: busybox\n      readinessProbe:\n        exec: {{command: [ls]}}\n"
    );
    let found = problems(&yaml);
    assert!(
        found.len() == 1
            && found[0].starts_with(
                "spec.initContainers[0].readinessProbe: a probe is not valid; expected no probe"
            ),
        "{found:?}"
    );
}

#[test]
fn unknown_spec_field_is_refused_with_its_path() {
    let yaml = format!("{MINIMAL}  preset: x\n");
    assert_eq!(
        problems(&yaml),
        ["spec.preset: unknown field, or not supported yet"]
    );
}

#[test]
fn scheduling_fields_are_accepted_with_one_warning_each() {
    let yaml = format!(
        "{MINIMAL}  affinity:\n    nodeAffinity: {{}}\n  nodeSelector: {{disk: ssd}}\n  priorityClassName: high\n  runtimeClassName: unipod\n  topologySpreadConstraints: []\n  schedulingGates: []\n  preemptionPolicy: Never\n"
    );
    let (_, warnings) = parse_ok(&yaml);
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.affinity",
            "spec.nodeSelector",
            "spec.priorityClassName",
            "spec.runtimeClassName",
            "spec.topologySpreadConstraints",
            "spec.schedulingGates",
            "spec.preemptionPolicy"
        ]
    );
    assert!(warnings[0].message.contains("scheduler"), "{}", warnings[0]);
}

#[test]
fn misspelt_field_suggests_the_supported_one() {
    let yaml = MINIMAL.replace("image:", "imagee:");
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].imagee: unknown field, or not supported yet (did you mean \"image\"?)",
            "spec.containers[0].image: required field is missing",
        ]
    );
}

#[test]
fn bad_restart_policy_names_the_valid_values() {
    let yaml = format!("{MINIMAL}  restartPolicy: Sometimes\n");
    assert_eq!(
        problems(&yaml),
        [
            "spec.restartPolicy: \"Sometimes\" is not valid; expected one of \"Always\", \"OnFailure\" or \"Never\""
        ]
    );
}

#[test]
fn restart_policies_parse() {
    for (text, policy) in [
        ("Always", RestartPolicy::Always),
        ("OnFailure", RestartPolicy::OnFailure),
        ("Never", RestartPolicy::Never),
    ] {
        let (pod, _) = parse_ok(&format!("{MINIMAL}  restartPolicy: {text}\n"));
        assert_eq!(pod.restart_policy, policy, "{text}");
    }
}

#[test]
fn duplicate_container_name_names_both_indices() {
    let yaml = format!("{MINIMAL}    - name: d\n      image: x\n    - name: c\n      image: y\n");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[2].name: duplicate container name \"c\" (also spec.containers[0])"]
    );
}

#[test]
fn container_named_like_an_init_container_is_refused() {
    let yaml = format!("{MINIMAL}  initContainers:\n    - name: c\n      image: busybox:latest\n");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].name: duplicate container name \"c\" (also spec.initContainers[0])"]
    );
}

#[test]
fn missing_image_is_refused() {
    let yaml = MINIMAL.replace("      image: busybox:latest\n", "");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].image: required field is missing"]
    );
}

#[test]
fn empty_image_is_refused() {
    let yaml = MINIMAL.replace("image: busybox:latest", "image: \"\"");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].image: \"\" is not valid; expected an image reference without surrounding spaces, e.g. \"busybox:latest\""]
    );
}

#[test]
fn bad_quantities_name_the_path_and_a_valid_example() {
    let yaml = with_container_fields(
        "      resources:\n        limits:\n          memory: 12 Mb\n        requests:\n          cpu: lots\n",
    );
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].resources.limits.memory: \"12 Mb\" is not valid; expected a memory quantity such as \"64Mi\", \"1Gi\", \"128M\" or \"1000000\"",
            "spec.containers[0].resources.requests.cpu: \"lots\" is not valid; expected a CPU quantity such as \"500m\", \"1\" or \"0.5\"",
        ]
    );
}

#[test]
fn memory_in_millibytes_is_refused_with_a_hint() {
    let yaml = with_container_fields("      resources:\n        limits:\n          memory: 128m\n");
    let problems = problems(&yaml);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with(
            "spec.containers[0].resources.limits.memory: \"128m\" is not valid; expected \"Mi\""
        ),
        "{problems:?}"
    );
}

#[test]
fn yaml_numbers_are_quantities() {
    let yaml = with_container_fields(
        "      resources:\n        limits: {cpu: 2, memory: 1e6}\n        requests: {cpu: 0.5, memory: 1000}\n",
    );
    let (pod, _) = parse_ok(&yaml);
    assert_eq!(
        pod.containers[0].resources,
        Resources {
            limits: ResourceList {
                cpu_millis: Some(2000),
                memory_bytes: Some(1_000_000),
            },
            requests: ResourceList {
                cpu_millis: Some(500),
                memory_bytes: Some(1000),
            },
        }
    );
    let negative = with_container_fields("      resources:\n        limits: {cpu: -1}\n");
    assert_eq!(
        problems(&negative),
        ["spec.containers[0].resources.limits.cpu: -1 is not valid; expected a quantity of 0 or more, such as \"500m\""]
    );
}

#[test]
fn request_above_limit_is_refused() {
    let yaml = with_container_fields(
        "      resources:\n        limits: {cpu: \"1\"}\n        requests: {cpu: 1500m}\n",
    );
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].resources.requests.cpu: \"1500m\" is not valid; expected at most the limit \"1\" (spec.containers[0].resources.limits.cpu)"]
    );
}

#[test]
fn unsupported_resource_is_refused() {
    let yaml = with_container_fields(
        "      resources:\n        limits: {example.com/dongle: 1, hugepages-2Mi: 2Mi}\n        claims: []\n",
    );
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].resources.claims: dynamic resource claims need an API server and their drivers",
            "spec.containers[0].resources.limits[\"example.com/dongle\"]: extended resources need a device plugin; unipod has none",
            "spec.containers[0].resources.limits[\"hugepages-2Mi\"]: huge pages are not supported in pod VMs",
        ]
    );
    let yaml =
        with_container_fields("      resources:\n        limits: {ephemeral-storage: 1Gi}\n");
    let (_, warnings) = parse_ok(&yaml);
    assert_eq!(
        warnings[0].path,
        "spec.containers[0].resources.limits.ephemeral-storage"
    );
}

#[test]
fn pod_level_resources_size_the_vm() {
    let yaml = format!("{MINIMAL}  resources:\n    limits: {{cpu: 1500m, memory: 100Mi}}\n");
    let (pod, _) = parse_ok(&yaml);
    assert_eq!(
        pod.vm_size(),
        VmSize {
            vcpus: 2,
            mem_mib: 100 + GUEST_OVERHEAD_MIB
        }
    );
}

#[test]
fn env_value_from_and_env_from_parse_into_their_sources() {
    let yaml = with_container_fields(concat!(
        "      env:\n",
        "        - {name: A, value: a}\n",
        "        - {name: B, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n",
        "        - {name: C, valueFrom: {configMapKeyRef: {name: cfg.v1, key: k.x, optional: true}}}\n",
        "        - {name: D, valueFrom: {secretKeyRef: {name: s, key: p}}}\n",
        "        - {name: E, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n",
        "      envFrom:\n",
        "        - {prefix: P_, configMapRef: {name: cfg}}\n",
        "        - {secretRef: {name: s, optional: true}}\n",
    ));
    let (pod, _) = parse_ok(&yaml);
    let c = &pod.containers[0];
    assert_eq!(c.env[0], EnvVar::value("A", "a"));
    assert_eq!(
        c.env[1].source,
        EnvSource::Field(FieldRef::Label("app".into()))
    );
    assert_eq!(
        c.env[2].source,
        EnvSource::Key(KeyRef {
            kind: Kind::ConfigMap,
            name: "cfg.v1".into(),
            key: "k.x".into(),
            optional: true
        })
    );
    assert!(matches!(&c.env[3].source, EnvSource::Key(k) if k.kind == Kind::Secret && !k.optional));
    assert!(
        matches!(&c.env[4].source, EnvSource::Resource(r) if r.divisor == 1 << 20 && r.container.is_none())
    );
    assert_eq!(c.env_from.len(), 2);
    assert_eq!(
        (c.env_from[0].prefix.as_str(), c.env_from[0].kind),
        ("P_", Kind::ConfigMap)
    );
    assert!(c.env_from[1].optional && c.env_from[1].kind == Kind::Secret);
}

#[test]
fn bad_env_sources_name_the_field_and_the_fix() {
    let yaml = with_container_fields(concat!(
        "      env:\n",
        "        - {name: A, value: a, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n",
        "        - {name: B, valueFrom: {fieldRef: {fieldPath: metadata.labels}}}\n",
        "        - {name: C, valueFrom: {configMapKeyRef: {name: cfg, key: \"a/b\"}}}\n",
        "        - {name: D, valueFrom: {resourceFieldRef: {resource: limits.cpu, containerName: nope}}}\n",
        "      envFrom:\n",
        "        - {configMapRef: {name: x}, secretRef: {name: y}}\n",
    ));
    let got = problems(&yaml);
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(
        got[0].starts_with("spec.containers[0].env[0].valueFrom: valueFrom with value"),
        "{}",
        got[0]
    );
    assert!(got[1].starts_with("spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: \"metadata.labels\" is not valid"), "{}", got[1]);
    assert!(
        got[2].starts_with("spec.containers[0].env[2].valueFrom.configMapKeyRef.key"),
        "{}",
        got[2]
    );
    assert!(
        got[3].starts_with("spec.containers[0].envFrom[0]"),
        "{}",
        got[3]
    );
    assert!(got[4].contains("\"nope\""), "{}", got[4]);
}

#[test]
fn config_volumes_parse_with_items_octal_modes_and_sub_paths() {
    let yaml = format!(
        "{}{}",
        with_container_fields(concat!(
            "      volumeMounts:\n",
            "        - {name: cm, mountPath: /etc/cfg}\n",
            "        - {name: cm, mountPath: /etc/one.conf, subPath: one.conf}\n",
            "        - {name: logs, mountPath: /logs, subPathExpr: $(POD_NAME)}\n",
        )),
        concat!(
            "  volumes:\n",
            "    - name: cm\n",
            "      configMap: {name: app, defaultMode: 0440, items: [{key: a, path: one.conf, mode: 0400}]}\n",
            "    - name: logs\n",
            "    - name: sec\n",
            "      secret: {secretName: creds, defaultMode: 256, optional: true}\n",
            "    - name: info\n",
            "      downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}\n",
            "    - name: all\n",
            "      projected: {sources: [{configMap: {name: app}}, {secret: {name: creds}}]}\n",
        )
    );
    let (pod, warnings) = parse_ok(&yaml);
    assert_eq!(warnings, []);
    let VolumeSource::Files(cm) = &pod.volumes[0].source else {
        panic!("{:?}", pod.volumes[0]);
    };
    assert_eq!(
        cm,
        &[FileSource::Keys(KeysSource {
            kind: Kind::ConfigMap,
            name: "app".into(),
            items: vec![KeyToPath {
                key: "a".into(),
                path: "one.conf".into(),
                mode: Some(0o400)
            }],
            default_mode: 0o440,
            optional: false,
        })]
    );
    let VolumeSource::Files(sec) = &pod.volumes[2].source else {
        panic!()
    };
    assert!(matches!(&sec[0], FileSource::Keys(k) if k.default_mode == 0o400 && k.optional));
    let VolumeSource::Files(all) = &pod.volumes[4].source else {
        panic!()
    };
    assert_eq!(all.len(), 2);
    let mounts = &pod.containers[0].volume_mounts;
    // ConfigMap mounts are read-only whatever the manifest says; emptyDirs are not.
    assert!(mounts[0].read_only && mounts[1].read_only && !mounts[2].read_only);
    assert_eq!(mounts[1].sub_path.as_deref(), Some("one.conf"));
    assert_eq!(mounts[2].sub_path_expr.as_deref(), Some("$(POD_NAME)"));
}

#[test]
fn config_volume_problems_name_the_field() {
    let yaml = format!(
        "{MINIMAL}{}",
        concat!(
            "  volumes:\n",
            "    - name: a\n",
            "      configMap: {name: app, defaultMode: 0999, items: [{key: k, path: ../x}]}\n",
            "    - name: b\n",
            "      projected: {sources: [{serviceAccountToken: {path: token}}]}\n",
            "    - name: c\n",
            "      emptyDir: {}\n",
            "      secret: {secretName: s}\n",
        )
    );
    let got = problems(&yaml);
    assert_eq!(
        got,
        [
            "spec.volumes[0].configMap.defaultMode: \"0999\" is not valid; expected a file mode from 0 to 0777, e.g. 0400 (octal) or 256 (decimal)",
            "spec.volumes[0].configMap.items[0].path: \"../x\" is not valid; expected a relative path whose parts do not start with \"..\", e.g. \"conf/app.properties\"",
            "spec.volumes[1].projected.sources[0].serviceAccountToken: it needs an API server to issue the token",
            "spec.volumes[2]: emptyDir and secret is not valid; expected one volume source",
        ]
    );
}

#[test]
fn a_file_of_several_documents_holds_a_pod_and_its_objects() {
    let text = format!(
        "{}---\n{MINIMAL}---\n{}",
        concat!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game, namespace: default}\n",
            "data: {lives: \"3\"}\nbinaryData: {raw: aGk=}\n",
        ),
        concat!(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\ntype: Opaque\n",
            "data: {password: czNjcjN0}\nstringData: {user: admin}\n",
        )
    );
    let docs = parse_documents(&text).unwrap();
    assert_eq!(docs.pods.len(), 1);
    assert_eq!(docs.objects.len(), 2);
    assert_eq!(docs.objects[0].text("lives").as_deref(), Some("3"));
    assert_eq!(docs.objects[0].data["raw"], b"hi");
    assert_eq!(docs.objects[1].text("password").as_deref(), Some("s3cr3t"));
    assert_eq!(docs.objects[1].text("user").as_deref(), Some("admin"));
    assert_eq!(docs.warnings[0].path, "metadata.namespace");
    let bad =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: Bad}\ndata: {p: \"not base64!\"}\n---\n"
            .to_string()
            + MINIMAL;
    let err = parse_documents(&bad).unwrap_err().to_string();
    assert!(err.starts_with("document 1 (Secret): 2 problems:"), "{err}");
    assert!(err.contains("metadata.name: \"Bad\" is not valid"), "{err}");
    assert!(
        err.contains("data[\"p\"]: \"not base64!\" is not valid; expected base64"),
        "{err}"
    );
}

#[test]
fn env_value_must_be_a_string() {
    let yaml = with_container_fields("      env:\n        - name: PORT\n          value: 8080\n");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].env[0].value: expected a string, found a number (quote it to make it a string)"]
    );
}

#[test]
fn duplicate_env_names_warn_and_keep_both() {
    let yaml = with_container_fields(
        "      env:\n        - {name: A, value: \"1\"}\n        - {name: A, value: \"2\"}\n",
    );
    let (pod, warnings) = parse_ok(&yaml);
    assert_eq!(
        pod.containers[0].env,
        [EnvVar::value("A", "1"), EnvVar::value("A", "2")]
    );
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "spec.containers[0].env[1].name");
}

#[test]
fn host_path_volume_is_refused() {
    let yaml = format!("{MINIMAL}  volumes:\n    - name: v\n      hostPath: {{path: /etc}}\n");
    assert_eq!(
        problems(&yaml),
        ["spec.volumes[0].hostPath: host directories are not supported yet"]
    );
}

#[test]
fn duplicate_volume_names_are_refused() {
    let yaml = format!("{MINIMAL}  volumes:\n    - name: v\n    - name: w\n    - name: v\n");
    assert_eq!(
        problems(&yaml),
        ["spec.volumes[2].name: duplicate volume name \"v\" (also spec.volumes[0])"]
    );
}

#[test]
fn bad_empty_dir_medium_is_refused() {
    let yaml =
        format!("{MINIMAL}  volumes:\n    - name: v\n      emptyDir: {{medium: HugePages}}\n");
    assert_eq!(
        problems(&yaml),
        ["spec.volumes[0].emptyDir.medium: \"HugePages\" is not valid; expected \"\" (the default) or \"Memory\""]
    );
}

#[test]
fn mount_of_an_undeclared_volume_is_refused() {
    let yaml = format!(
        "{MINIMAL}      volumeMounts:\n        - {{name: data, mountPath: /data}}\n  volumes:\n    - name: other\n"
    );
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].volumeMounts[0].name: volume \"data\" is not declared in spec.volumes"]
    );
}

#[test]
fn mount_paths_must_be_absolute_and_unique() {
    let yaml = format!(
        "{MINIMAL}      volumeMounts:\n        - {{name: v, mountPath: data}}\n        - {{name: v, mountPath: /d}}\n        - {{name: v, mountPath: /d}}\n        - {{name: v, mountPath: /d/../etc}}\n  volumes:\n    - name: v\n"
    );
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].volumeMounts[0].mountPath: \"data\" is not valid; expected an absolute path without \"..\", e.g. \"/data\"",
            "spec.containers[0].volumeMounts[2].mountPath: duplicate mount path \"/d\" (also spec.containers[0].volumeMounts[1])",
            "spec.containers[0].volumeMounts[3].mountPath: \"/d/../etc\" is not valid; expected an absolute path without \"..\", e.g. \"/data\"",
        ]
    );
}

#[test]
fn wrong_api_version_is_refused() {
    let yaml = MINIMAL.replace("apiVersion: v1", "apiVersion: apps/v1");
    assert_eq!(
        problems(&yaml),
        ["apiVersion: \"apps/v1\" is not valid; expected \"v1\""]
    );
}

#[test]
fn wrong_kind_is_refused() {
    let yaml = MINIMAL.replace("kind: Pod", "kind: Deployment");
    assert_eq!(
        problems(&yaml),
        ["kind: \"Deployment\" is not valid; expected \"Pod\""]
    );
}

#[test]
fn missing_api_version_and_kind_are_refused() {
    let yaml = MINIMAL
        .replace("apiVersion: v1\n", "")
        .replace("kind: Pod\n", "");
    assert_eq!(
        problems(&yaml),
        [
            "apiVersion: required field is missing",
            "kind: required field is missing"
        ]
    );
}

#[test]
fn string_where_a_list_is_expected_is_refused() {
    let yaml = with_container_fields("      command: sh -c 'echo hi'\n      ports: 8080\n");
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].command: expected a list of strings, found a string",
            "spec.containers[0].ports: expected a list, found a number",
        ]
    );
}

#[test]
fn list_where_a_mapping_is_expected_is_refused() {
    let yaml = MINIMAL.replace("  name: p\n", "  name: p\n  labels: [a, b]\n");
    assert_eq!(
        problems(&yaml),
        ["metadata.labels: expected a mapping of strings to strings, found a list"]
    );
}

#[test]
fn invalid_names_are_refused() {
    let yaml = MINIMAL
        .replace("name: p", "name: My_Pod")
        .replace("name: c", "name: -c");
    assert_eq!(
        problems(&yaml),
        [
            "metadata.name: \"My_Pod\" is not valid; expected a DNS-1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, e.g. \"web-1\"",
            "spec.containers[0].name: \"-c\" is not valid; expected a DNS-1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, e.g. \"web-1\"",
        ]
    );
}

#[test]
fn pod_without_containers_is_refused() {
    let without = MINIMAL.replace(
        "  containers:\n    - name: c\n      image: busybox:latest\n",
        "  hostname: h\n",
    );
    assert_eq!(
        problems(&without),
        ["spec.containers: required field is missing"]
    );
    let empty = format!("{without}  containers: []\n");
    assert_eq!(
        problems(&empty),
        ["spec.containers: an empty list is not valid; expected at least one container"]
    );
}

#[test]
fn bad_ports_are_refused() {
    let yaml = with_container_fields(
        "      ports:\n        - containerPort: 70000\n        - containerPort: 80\n          protocol: SCTP\n        - {containerPort: \"81\"}\n        - {containerPort: 82, name: web, hostPort: 0}\n        - {containerPort: 83, name: web}\n",
    );
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].ports[0].containerPort: 70000 is not valid; expected a port number from 1 to 65535",
            "spec.containers[0].ports[1].protocol: \"SCTP\" is not valid; expected \"TCP\" or \"UDP\" (SCTP is not supported yet)",
            "spec.containers[0].ports[2].containerPort: expected an integer, found a string",
            "spec.containers[0].ports[3].hostPort: 0 is not valid; expected a port number from 1 to 65535",
            "spec.containers[0].ports[4].name: duplicate port name \"web\" (also spec.containers[0].ports[3])",
        ]
    );
}

#[test]
fn negative_grace_period_is_refused() {
    let yaml = format!("{MINIMAL}  terminationGracePeriodSeconds: -5\n");
    assert_eq!(
        problems(&yaml),
        ["spec.terminationGracePeriodSeconds: -5 is not valid; expected a whole number of seconds, 0 or more"]
    );
}

#[test]
fn ignored_fields_give_warnings_not_errors() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: p
  uid: 4a1c6c1e-0000-0000-0000-000000000000
  creationTimestamp: null
  resourceVersion: "123"
spec:
  dnsPolicy: ClusterFirst
  nodeName: node-1
  securityContext: {}
  tolerations:
    - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}
  containers:
    - name: c
      image: busybox:latest
      imagePullPolicy: IfNotPresent
      terminationMessagePolicy: File
status:
  phase: Running
"#;
    let (pod, warnings) = parse_ok(yaml);
    assert_eq!(
        pod.containers,
        vec![ContainerSpec {
            image_pull_policy: ImagePullPolicy::IfNotPresent,
            ..container("c")
        }]
    );
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "status",
            "metadata.uid",
            // creationTimestamp: null is a key like any other.
            "metadata.creationTimestamp",
            "metadata.resourceVersion",
            "spec.dnsPolicy",
            "spec.nodeName",
            "spec.tolerations",
            "spec.containers[0].terminationMessagePolicy",
        ]
    );
    assert_eq!(
        warnings[1].to_string(),
        "metadata.uid: ignored: unipod gives every pod it runs a fresh UID"
    );
}

#[test]
fn image_pull_policy_defaults_as_the_kubelet_and_refuses_other_values() {
    for (image, policy) in [
        ("busybox", ImagePullPolicy::Always),
        ("busybox:latest", ImagePullPolicy::Always),
        ("busybox:1.28", ImagePullPolicy::IfNotPresent),
        (
            "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ImagePullPolicy::IfNotPresent,
        ),
    ] {
        assert_eq!(ImagePullPolicy::default_for(image), policy, "{image}");
    }
    let never = with_container_fields("      imagePullPolicy: Never\n");
    assert_eq!(
        parse_ok(&never).0.containers[0].image_pull_policy,
        ImagePullPolicy::Never
    );
    let bad = with_container_fields("      imagePullPolicy: Sometimes\n");
    let err = parse(&bad).expect_err("Sometimes is no policy").to_string();
    assert!(
        err.contains("spec.containers[0].imagePullPolicy")
            && err.contains("\"Always\", \"IfNotPresent\" or \"Never\""),
        "{err}"
    );
}

#[test]
fn security_contexts_are_read_at_both_levels() {
    let yaml = format!(
        "{MINIMAL}      securityContext:
        runAsUser: 1001
        runAsNonRoot: true
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {{drop: [NET_RAW], add: [SYS_TIME]}}
        seccompProfile: {{type: Localhost, localhostProfile: profiles/deny.json}}
        procMount: Unmasked
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    supplementalGroups: [4000]
    fsGroup: 2000
    sysctls: [{{name: net.ipv4.ping_group_range, value: \"0 1000\"}}]
    seccompProfile: {{type: RuntimeDefault}}
"
    );
    let (pod, warnings) = parse_ok(&yaml);
    assert_eq!(warnings, Vec::new());
    assert_eq!(
        pod.security_context,
        PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            run_as_non_root: None,
            supplemental_groups: vec![4000],
            fs_group: Some(2000),
            sysctls: vec![("net.ipv4.ping_group_range".into(), "0 1000".into())],
            seccomp_profile: Some(SeccompProfile::RuntimeDefault),
        }
    );
    assert_eq!(
        pod.containers[0].security_context,
        SecurityContext {
            run_as_user: Some(1001),
            run_as_group: None,
            run_as_non_root: Some(true),
            read_only_root_filesystem: true,
            allow_privilege_escalation: Some(false),
            privileged: false,
            add_capabilities: vec!["SYS_TIME".into()],
            drop_capabilities: vec!["NET_RAW".into()],
            seccomp_profile: Some(SeccompProfile::Localhost("profiles/deny.json".into())),
            proc_mount_unmasked: true,
        }
    );
}

#[test]
fn host_namespaces_and_localhost_apparmor_are_refused() {
    let yaml = format!(
        "{MINIMAL}      securityContext:
        appArmorProfile: {{type: Localhost, localhostProfile: k8s-deny}}
  hostPID: true
  hostNetwork: false
  hostIPC: true
"
    );
    let problems = problems(&yaml);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("spec.hostPID: "), "{problems:?}");
    assert!(problems[0].contains("own VM"), "{problems:?}");
    assert!(problems[1].starts_with("spec.hostIPC: "), "{problems:?}");
    assert!(
        problems[2].starts_with("spec.containers[0].securityContext.appArmorProfile.type: "),
        "{problems:?}"
    );
}

#[test]
fn apparmor_and_selinux_defaults_are_accepted_with_a_warning() {
    let yaml = format!(
        "{MINIMAL}      securityContext:
        seLinuxOptions: {{level: \"s0:c123,c456\"}}
  securityContext:
    appArmorProfile: {{type: RuntimeDefault}}
"
    );
    let (_, warnings) = parse_ok(&yaml);
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.securityContext.appArmorProfile",
            "spec.containers[0].securityContext.seLinuxOptions"
        ]
    );
    assert!(warnings[0].message.contains("VM"), "{}", warnings[0]);
}

#[test]
fn every_problem_is_reported_at_once_object_by_object() {
    let yaml = r#"
apiVersion: v2
kind: Pod
metadata:
  name: p
spec:
  restartPolicy: Sometimes
  containers:
    - name: c
      stdin: true
"#;
    let error = parse(yaml).expect_err("four problems");
    assert!(matches!(error, ManifestError::Multiple(ref all) if all.len() == 4));
    assert_eq!(
        error.to_string(),
        "4 problems:\n  \
         apiVersion: \"v2\" is not valid; expected \"v1\"\n  \
         spec.containers[0].stdin: unipod run attaches no stdin to a manifest's containers\n  \
         spec.containers[0].image: required field is missing\n  \
         spec.restartPolicy: \"Sometimes\" is not valid; expected one of \"Always\", \"OnFailure\" or \"Never\""
    );
}

#[test]
fn text_that_is_not_a_pod_mapping_is_refused() {
    assert!(matches!(parse("a: [unclosed"), Err(ManifestError::Yaml(_))));
    assert!(matches!(parse("a: 1\na: 2\n"), Err(ManifestError::Yaml(_))));
    assert_eq!(
        problems(""),
        ["the document: expected a mapping with apiVersion, kind, metadata and spec, found nothing (null)"]
    );
    assert_eq!(
        problems("- a\n"),
        ["the document: expected a mapping with apiVersion, kind, metadata and spec, found a list"]
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
    - &base
      name: a
      image: busybox:latest
      command: [sleep, "1"]
    - <<: *base
      name: b
"#;
    let (pod, _) = parse_ok(yaml);
    assert_eq!(pod.containers[1].name, "b");
    assert_eq!(pod.containers[1].command, ["sleep", "1"]);
}

#[test]
fn example_pod_parses() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pod.yaml"));
    let (pod, warnings) = parse_ok(text);
    assert_eq!(warnings, Vec::new());
    assert_eq!(pod.name, "hello");
    let names = |cs: &[ContainerSpec]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&pod.init_containers), ["setup"]);
    assert_eq!(names(&pod.containers), ["web", "client"]);
    assert_eq!(pod.volumes.len(), 1);
    for c in pod.init_containers.iter().chain(&pod.containers) {
        assert_eq!(c.image, "busybox:latest");
        assert_eq!(c.volume_mounts.len(), 1, "{}", c.name);
        assert_eq!(c.volume_mounts[0].name, pod.volumes[0].name, "{}", c.name);
    }
    assert_eq!(
        pod.vm_size(),
        VmSize {
            vcpus: 1,
            mem_mib: 48 + GUEST_OVERHEAD_MIB
        }
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("unipod-manifest-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    std::fs::write(&good, MINIMAL).expect("write good.yaml");
    std::fs::write(&bad, MINIMAL.replace("kind: Pod", "kind: Job")).expect("write bad.yaml");

    let documents = load_documents(&good).expect("good.yaml loads");
    assert_eq!(documents.pods[0].0.name, "p");

    let error = load_documents(&bad).expect_err("bad.yaml is refused");
    assert_eq!(
        error.to_string(),
        format!("{}: invalid pod manifest", bad.display())
    );
    let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems, ["kind: \"Job\" is not valid; expected \"Pod\""]);

    let missing = dir.join("missing.yaml");
    let error = load_documents(&missing).expect_err("missing.yaml does not exist");
    assert!(matches!(error, ManifestError::Read { .. }));
    assert_eq!(
        error.to_string(),
        format!("{}: cannot read the pod manifest", missing.display())
    );
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

/// A pod whose containers have these (cpu limit, memory limit) and whose init
/// containers have those.
fn sized(app: &[(Option<u64>, Option<u64>)], init: &[(Option<u64>, Option<u64>)]) -> VmSize {
    let make = |prefix: &str, list: &[(Option<u64>, Option<u64>)]| -> Vec<ContainerSpec> {
        list.iter()
            .enumerate()
            .map(|(i, &(cpu_millis, memory_bytes))| ContainerSpec {
                resources: Resources {
                    limits: ResourceList {
                        cpu_millis,
                        memory_bytes,
                    },
                    requests: ResourceList::default(),
                },
                ..container(&format!("{prefix}{i}"))
            })
            .collect()
    };
    let (mut pod, _) = parse_ok(MINIMAL);
    pod.containers = make("app", app);
    pod.init_containers = make("init", init);
    pod.vm_size()
}

const MI: u64 = 1 << 20;

#[test]
fn vm_size_without_limits_is_the_default() {
    assert_eq!(
        sized(&[(None, None), (None, None)], &[(None, None)]),
        VmSize {
            vcpus: DEFAULT_VCPUS,
            mem_mib: NO_LIMIT_MEM_MIB
        }
    );
}

#[test]
fn vm_size_sums_app_containers() {
    assert_eq!(
        sized(
            &[(Some(500), Some(64 * MI)), (Some(700), Some(100 * MI))],
            &[]
        ),
        VmSize {
            vcpus: 2,
            mem_mib: 164 + GUEST_OVERHEAD_MIB
        }
    );
}

#[test]
fn vm_size_takes_an_init_container_larger_than_the_sum() {
    assert_eq!(
        sized(
            &[(Some(500), Some(64 * MI)), (Some(400), Some(64 * MI))],
            &[(Some(2000), Some(512 * MI)), (Some(100), Some(MI))],
        ),
        VmSize {
            vcpus: 2,
            mem_mib: 512 + GUEST_OVERHEAD_MIB
        }
    );
}

#[test]
fn vm_size_rounds_cpu_up_to_whole_vcpus() {
    assert_eq!(sized(&[(Some(1500), None)], &[]).vcpus, 2);
    assert_eq!(sized(&[(Some(1000), None)], &[]).vcpus, 1);
    assert_eq!(sized(&[(Some(0), None)], &[]).vcpus, 1);
    assert_eq!(sized(&[(Some(64_000), None)], &[]).vcpus, MAX_VCPUS);
}

#[test]
fn vm_size_is_capped_by_the_host_cores() {
    let two = sized(&[(Some(2000), Some(64 * MI))], &[]);
    assert_eq!(two.vcpus, 2);
    assert_eq!(two.capped_to_host(1), VmSize { vcpus: 1, ..two });
    assert_eq!(two.capped_to_host(2), two);
    assert_eq!(two.capped_to_host(64), two);
    // A host that reports no cores still gets one vCPU.
    assert_eq!(two.capped_to_host(0).vcpus, 1);
    // More cores than a u8 counts cap nothing.
    assert_eq!(two.capped_to_host(1000).vcpus, 2);
    let one = sized(&[(Some(1000), None)], &[]);
    assert_eq!(one.capped_to_host(8), one);
}

#[test]
fn vm_size_rounds_memory_up_to_mib_and_uses_requests_without_limits() {
    // Memory but no CPU anywhere: the CPU default, the memory from the limit.
    assert_eq!(
        sized(&[(None, Some(MI + 1))], &[]),
        VmSize {
            vcpus: DEFAULT_VCPUS,
            mem_mib: 2 + GUEST_OVERHEAD_MIB
        }
    );
    let yaml =
        with_container_fields("      resources:\n        requests: {cpu: 1500m, memory: 200Mi}\n");
    let (pod, _) = parse_ok(&yaml);
    assert_eq!(
        pod.vm_size(),
        VmSize {
            vcpus: 2,
            mem_mib: 200 + GUEST_OVERHEAD_MIB
        }
    );
}

#[test]
fn a_container_whose_env_cannot_be_sent_is_refused_before_any_vm() {
    let env: String = (0..3000)
        .map(|i| {
            format!(
                "\n        - name: VAR_{i}\n          value: \"{}\"",
                "x".repeat(100)
            )
        })
        .collect();
    let problems = problems(&with_container_fields(&format!("      env:{env}\n")));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("spec.containers[0]: command, args and env take ")
            && problems[0].ends_with(&format!(
                "bytes; at most {MAX_EXEC_BYTES} fit in the message that starts the container"
            )),
        "{problems:?}"
    );
    // Just under the limit is fine.
    let env: String = (0..2000)
        .map(|i| {
            format!(
                "\n        - name: VAR_{i}\n          value: \"{}\"",
                "x".repeat(100)
            )
        })
        .collect();
    parse_ok(&with_container_fields(&format!("      env:{env}\n")));
}

#[test]
fn memory_past_the_largest_vm_is_refused_and_the_largest_fits() {
    let limits = |memory: &str| {
        with_container_fields(&format!(
            "      resources: {{limits: {{memory: {memory}}}}}\n"
        ))
    };
    let max = crate::config::MAX_MEM_MIB;
    let fits = format!("{}Mi", max - GUEST_OVERHEAD_MIB);
    assert_eq!(parse_ok(&limits(&fits)).0.vm_size().mem_mib, max);
    let over = format!("{}Mi", max - GUEST_OVERHEAD_MIB + 1);
    assert_eq!(
        problems(&limits(&over)),
        [format!(
            "spec.containers: the memory limits (or requests) need a VM of {} MiB with the \
             guest's own 64 MiB; a pod VM has at most {max} MiB: lower resources.limits.memory",
            max + 1
        )]
    );
    // Past u32 MiB the size saturates, and is still refused.
    assert_eq!(problems(&limits("1Ei")).len(), 1);
}

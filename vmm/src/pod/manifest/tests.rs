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
        command: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        ports: Vec::new(),
        resources: Resources::default(),
        volume_mounts: Vec::new(),
        security_context: Default::default(),
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
            }],
            ..container("init")
        }],
        containers: vec![ContainerSpec {
            name: "web".to_owned(),
            image: "registry.example/web:1.2".to_owned(),
            command: vec!["httpd".into()],
            args: vec!["-f".into(), "-p".into(), "8080".into()],
            env: vec![
                ("MODE".to_owned(), "prod".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ],
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
                },
                VolumeMount {
                    name: "cache".to_owned(),
                    mount_path: PathBuf::from("/cache"),
                    read_only: false,
                },
            ],
            security_context: SecurityContext::default(),
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
    let yaml = with_container_fields("      livenessProbe:\n        exec: {command: [true]}\n");
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].livenessProbe: not supported yet"]
    );
}

#[test]
fn unknown_spec_field_is_refused_with_its_path() {
    let yaml = format!("{MINIMAL}  affinity:\n    nodeAffinity: {{}}\n");
    assert_eq!(problems(&yaml), ["spec.affinity: not supported yet"]);
}

#[test]
fn misspelt_field_suggests_the_supported_one() {
    let yaml = MINIMAL.replace("image:", "imagee:");
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].imagee: not supported yet (did you mean \"image\"?)",
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
        "      resources:\n        limits: {ephemeral-storage: 1Gi}\n        claims: []\n",
    );
    assert_eq!(
        problems(&yaml),
        [
            "spec.containers[0].resources.claims: not supported yet",
            "spec.containers[0].resources.limits.ephemeral-storage: not supported yet",
        ]
    );
}

#[test]
fn env_value_from_is_refused() {
    let yaml = with_container_fields(
        "      env:\n        - name: A\n          value: a\n        - name: B\n          valueFrom:\n            fieldRef: {fieldPath: metadata.name}\n",
    );
    assert_eq!(
        problems(&yaml),
        ["spec.containers[0].env[1].valueFrom: not supported yet"]
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
        [
            ("A".to_owned(), "1".to_owned()),
            ("A".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "spec.containers[0].env[1].name");
}

#[test]
fn host_path_volume_is_refused() {
    let yaml = format!("{MINIMAL}  volumes:\n    - name: v\n      hostPath: {{path: /etc}}\n");
    assert_eq!(
        problems(&yaml),
        ["spec.volumes[0].hostPath: not supported yet"]
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
  namespace: default
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
    assert_eq!(pod.containers, vec![container("c")]);
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "status",
            "metadata.namespace",
            "metadata.uid",
            // creationTimestamp: null is a key like any other.
            "metadata.creationTimestamp",
            "metadata.resourceVersion",
            "spec.dnsPolicy",
            "spec.nodeName",
            "spec.tolerations",
            "spec.containers[0].imagePullPolicy",
            "spec.containers[0].terminationMessagePolicy",
        ]
    );
    assert_eq!(
        warnings[1].to_string(),
        "metadata.namespace: ignored: unipod runs each pod in its own VM, with no namespaces to place it in"
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
         spec.containers[0].stdin: not supported yet\n  \
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

    let (pod, _) = load(&good).expect("good.yaml loads");
    assert_eq!(pod.name, "p");

    let error = load(&bad).expect_err("bad.yaml is refused");
    assert_eq!(
        error.to_string(),
        format!("{}: invalid pod manifest", bad.display())
    );
    let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems, ["kind: \"Job\" is not valid; expected \"Pod\""]);

    let missing = dir.join("missing.yaml");
    let error = load(&missing).expect_err("missing.yaml does not exist");
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
            &[(Some(500), Some(64 * MI)), (Some(500), Some(64 * MI))],
            &[(Some(3000), Some(512 * MI)), (Some(100), Some(MI))],
        ),
        VmSize {
            vcpus: 3,
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
        with_container_fields("      resources:\n        requests: {cpu: 2500m, memory: 200Mi}\n");
    let (pod, _) = parse_ok(&yaml);
    assert_eq!(
        pod.vm_size(),
        VmSize {
            vcpus: 3,
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

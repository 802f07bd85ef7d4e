//! From a manifest container and its image's config to the agent's
//! [`RunSpec`], with Kubernetes' defaulting rules.
//!
//! # Design
//! Pure functions, so that each rule is unit-tested:
//! - `command` replaces the image's Entrypoint and `args` its Cmd; when
//!   `command` is set and `args` is not, the image's Cmd is dropped too (so
//!   `command` alone runs as written);
//! - the environment is [`DEFAULT_PATH`], then the image's `Env`, then the
//!   container's `env`, a later entry of one name replacing the earlier in
//!   place (containerd's default spec starts from that `PATH` too, so an
//!   image with no `PATH` still finds its entrypoint);
//! - `workingDir` defaults to the image's WorkingDir; the runtime spec is
//!   CRI's default (`runtime_spec.rs`) with the pod's and the container's
//!   `securityContext` applied (`security_context.rs`), the image's User
//!   being the user unless `runAsUser` says otherwise;
//! - each distinct image (by digest) gets one disk, in the order the pod
//!   first names them, init containers first: `/dev/vda`, `/dev/vdb`, ...
//!
//! `$(VAR)` references are expanded as the kubelet does (see
//! [`config_sources`]).

#![forbid(unsafe_code)]

use guest_agent::protocol::{Rootfs, RunSpec, VolumeMount};

use super::config_sources;
use super::manifest::{ContainerSpec, PodManifest};
use super::runtime_spec::{self, Process};
use super::security_context::{self, SecurityError, Subject};
use crate::image::{ImageConfig, StoredImage};

/// The `PATH` of a container whose image and manifest set none: the one
/// containerd's and Docker's default spec starts from.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The file system type of imported images.
pub const IMAGE_FSTYPE: &str = "erofs";

/// A problem merging a container with its image.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Nothing to run.
    #[error("container {0:?}: nothing to run: the image has no Entrypoint or Cmd and the manifest no command")]
    NoCommand(String),
    /// The `securityContext` cannot be applied.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// `subPathExpr` expanded to a path outside the volume.
    #[error("container {container:?}: subPathExpr {expr:?} expands to {path:?}, which is not a relative path inside the volume")]
    SubPathExpr {
        /// The container.
        container: String,
        /// The expression.
        expr: String,
        /// What it expanded to.
        path: String,
    },
    /// More images than disk slots.
    #[error("the pod uses {found} distinct images; a pod VM has disks for at most {max}")]
    TooManyImages {
        /// Distinct images named.
        found: usize,
        /// The limit.
        max: usize,
    },
}

/// The guest block device of disk `index` (0 is `/dev/vda`).
pub fn device_name(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index % 26).expect("below 26"));
    format!("/dev/vd{letter}")
}

/// The pod's distinct images in disk order, given each container's image
/// (init containers first, then the app containers, as `resolved` lists
/// them), and for each container the index of its disk.
pub fn assign_disks(resolved: &[&StoredImage], max: usize) -> Result<Vec<usize>, SpecError> {
    let mut digests: Vec<&str> = Vec::new();
    let mut disk_of = Vec::with_capacity(resolved.len());
    for image in resolved {
        let index = match digests.iter().position(|d| *d == image.digest) {
            Some(i) => i,
            None => {
                digests.push(&image.digest);
                digests.len() - 1
            }
        };
        disk_of.push(index);
    }
    if digests.len() > max {
        return Err(SpecError::TooManyImages {
            found: digests.len(),
            max,
        });
    }
    Ok(disk_of)
}

/// The program and arguments, by Kubernetes' rules.
pub fn argv(container: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = match (container.command.is_empty(), container.args.is_empty()) {
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        (true, false) => image
            .entrypoint
            .iter()
            .chain(&container.args)
            .cloned()
            .collect(),
        (false, _) => container
            .command
            .iter()
            .chain(&container.args)
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(SpecError::NoCommand(container.name.clone()));
    }
    Ok(argv)
}

/// `PATH=`[`DEFAULT_PATH`], then the image's environment, then the
/// container's (resolved by [`config_sources::container_env`]); a name set
/// twice keeps its first position and its last value.
pub fn env(container_env: &[(String, String)], image: &ImageConfig) -> Vec<String> {
    let mut out = vec![("PATH".to_string(), DEFAULT_PATH.to_string())];
    let image_env = image.env.iter().map(|e| match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (e.clone(), String::new()),
    });
    for (k, v) in image_env.chain(container_env.iter().cloned()) {
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The agent's [`RunSpec`] for `container` of `pod`, whose image is
/// `image` on disk `disk`, and whose environment from the manifest is
/// `container_env` (resolved by [`config_sources::container_env`]), which
/// also expands `$(VAR)` in `command`, `args` and `subPathExpr`.
pub fn run_spec(
    pod: &PodManifest,
    container: &ContainerSpec,
    image: &ImageConfig,
    disk: usize,
    container_env: &[(String, String)],
) -> Result<RunSpec, SpecError> {
    let lookup = |name: &str| {
        container_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let expanded = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| config_sources::expand(s, lookup))
            .collect()
    };
    let container = &ContainerSpec {
        command: expanded(&container.command),
        args: expanded(&container.args),
        ..container.clone()
    };
    let mut volume_mounts = Vec::new();
    for m in &container.volume_mounts {
        let sub_path = match &m.sub_path_expr {
            Some(expr) => {
                let path = config_sources::expand(expr, lookup);
                if !crate::pod::manifest::is_relative_path(&path) {
                    return Err(SpecError::SubPathExpr {
                        container: container.name.clone(),
                        expr: expr.clone(),
                        path,
                    });
                }
                Some(path)
            }
            None => m.sub_path.clone(),
        };
        volume_mounts.push(VolumeMount {
            name: m.name.clone(),
            path: m.mount_path.display().to_string(),
            read_only: m.read_only,
            sub_path,
        });
    }
    let cwd = container
        .working_dir
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| image.working_dir.clone().filter(|d| !d.is_empty()));
    let mut spec = runtime_spec::default_spec(&Process {
        argv: argv(container, image)?,
        env: env(container_env, image),
        cwd,
        memory_bytes: container.resources.limits.memory_bytes,
        cpu_millis: container.resources.limits.cpu_millis,
        share_pid_namespace: pod.share_process_namespace,
    });
    let path = container_path(pod, &container.name);
    let image_user = security_context::apply(
        &mut spec,
        &pod.security_context,
        &container.security_context,
        image.user.as_deref(),
        &security_context::seccomp_dir(),
        Subject {
            pod: &pod.name,
            container: &container.name,
            path: &path,
        },
    )?;
    Ok(RunSpec {
        name: container.name.clone(),
        spec: Box::new(spec),
        rootfs: Some(Rootfs {
            device: device_name(disk),
            fstype: IMAGE_FSTYPE.into(),
        }),
        volume_mounts,
        image_user,
        // `unipod run` has no terminal to attach, and its containers take
        // the pod's resolv.conf; the shim sets these.
        stdin: false,
        resolv_conf: None,
        probes: Box::new(container.probes.probes.clone()),
    })
}

/// The manifest path of the container named `name`, e.g.
/// `spec.initContainers[0]`.
pub(crate) fn container_path(pod: &PodManifest, name: &str) -> String {
    let find = |list: &[ContainerSpec]| list.iter().position(|c| c.name == name);
    match (find(&pod.init_containers), find(&pod.containers)) {
        (Some(i), _) => format!("spec.initContainers[{i}]"),
        (None, Some(i)) => format!("spec.containers[{i}]"),
        (None, None) => format!("container {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            env: strings(&["PATH=/usr/bin:/bin", "LANG=C"]),
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            stop_signal: None,
        }
    }

    fn pod(container_yaml: &str) -> PodManifest {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  shareProcessNamespace: true\n  volumes:\n    - name: v\n      emptyDir: {{}}\n  containers:\n    - name: c\n      image: busybox\n{container_yaml}"
        );
        manifest::parse(&text).expect("valid manifest").0
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = image(&["/entry"], &["default", "args"]);
        let cases: [(&str, &[&str]); 4] = [
            ("", &["/entry", "default", "args"]),
            ("      args: [x, y]\n", &["/entry", "x", "y"]),
            ("      command: [/bin/sh]\n", &["/bin/sh"]),
            (
                "      command: [/bin/sh]\n      args: [-c, 'echo']\n",
                &["/bin/sh", "-c", "echo"],
            ),
        ];
        for (yaml, want) in cases {
            let p = pod(yaml);
            assert_eq!(
                argv(&p.containers[0], &img).unwrap(),
                strings(want),
                "{yaml}"
            );
        }
        let p = pod("");
        assert!(matches!(
            argv(&p.containers[0], &ImageConfig::default()),
            Err(SpecError::NoCommand(c)) if c == "c"
        ));
        let only_cmd = image(&[], &["sh"]);
        assert_eq!(argv(&p.containers[0], &only_cmd).unwrap(), ["sh"]);
    }

    #[test]
    fn container_env_overrides_image_env_in_place() {
        let container_env = [
            ("LANG".to_string(), "fr".to_string()),
            ("X".into(), "1".into()),
        ];
        assert_eq!(
            env(&container_env, &image(&[], &["sh"])),
            ["PATH=/usr/bin:/bin", "LANG=fr", "X=1"]
        );
    }

    #[test]
    fn path_defaults_to_containerds_unless_the_image_or_container_sets_it() {
        let no_path = ImageConfig {
            env: strings(&["LANG=C"]),
            ..image(&["nginx"], &[])
        };
        assert_eq!(
            env(&[], &no_path),
            [format!("PATH={DEFAULT_PATH}"), "LANG=C".into()]
        );
        let late_path = ImageConfig {
            env: strings(&["LANG=C", "PATH=/opt/bin"]),
            ..image(&["nginx"], &[])
        };
        assert_eq!(env(&[], &late_path), ["PATH=/opt/bin", "LANG=C"]);
        let own = [("PATH".to_string(), "/x".to_string())];
        assert_eq!(env(&own, &no_path), ["PATH=/x", "LANG=C"]);
    }

    #[test]
    fn run_spec_takes_defaults_from_the_image_and_the_rest_from_the_pod() {
        let p = pod(concat!(
            "      command: [sleep, '1']\n",
            "      resources:\n        limits:\n          memory: 64Mi\n          cpu: 500m\n",
            "      volumeMounts:\n        - name: v\n          mountPath: /data\n          readOnly: true\n",
        ));
        let spec = run_spec(&p, &p.containers[0], &image(&[], &["sh"]), 1, &[]).unwrap();
        assert_eq!(spec.cwd().as_deref(), Some("/srv"));
        assert_eq!(spec.image_user.as_deref(), Some("1000:1000"));
        assert_eq!(
            spec.rootfs,
            Some(Rootfs {
                device: "/dev/vdb".into(),
                fstype: "erofs".into()
            })
        );
        assert_eq!(spec.limits().memory_bytes, Some(64 << 20));
        assert_eq!(spec.limits().cpu_millis, Some(500));
        assert_eq!(
            spec.volume_mounts,
            [VolumeMount {
                name: "v".into(),
                path: "/data".into(),
                read_only: true,
                sub_path: None,
            }]
        );
        assert!(spec.share_pid_namespace());
        let p = pod("      workingDir: /work\n");
        let spec = run_spec(&p, &p.containers[0], &image(&[], &["sh"]), 0, &[]).unwrap();
        assert_eq!(spec.cwd().as_deref(), Some("/work"));
    }

    #[test]
    fn command_args_and_sub_path_expr_expand_the_containers_env() {
        let p = pod(concat!(
            "      command: [echo, '$(POD)']
",
            "      args: ['$$(POD)', '$(NONE)']
",
            "      volumeMounts:\n        - name: v\n          mountPath: /logs\n          subPathExpr: $(POD)/logs\n",
        ));
        let env = [("POD".to_string(), "web-1".to_string())];
        let spec = run_spec(&p, &p.containers[0], &image(&[], &["sh"]), 0, &env).unwrap();
        assert_eq!(spec.argv(), ["echo", "web-1", "$(POD)", "$(NONE)"]);
        assert_eq!(
            spec.volume_mounts[0].sub_path.as_deref(),
            Some("web-1/logs")
        );
        let escape = [("POD".to_string(), "../x".to_string())];
        let err = run_spec(&p, &p.containers[0], &image(&[], &["sh"]), 0, &escape).unwrap_err();
        assert!(matches!(err, SpecError::SubPathExpr { .. }), "{err}");
    }

    #[test]
    fn distinct_images_get_disks_in_order_of_first_use() {
        let img = |digest: &str| StoredImage {
            digest: digest.into(),
            names: vec![],
            rootfs: "x".into(),
            config: ImageConfig::default(),
            size_bytes: 0,
            imported_unix: 0,
        };
        let (a, b, c) = (img("sha256:a"), img("sha256:b"), img("sha256:c"));
        assert_eq!(assign_disks(&[&a, &b, &a, &c], 4).unwrap(), [0, 1, 0, 2]);
        assert!(matches!(
            assign_disks(&[&a, &b, &c], 2),
            Err(SpecError::TooManyImages { found: 3, max: 2 })
        ));
        assert_eq!(device_name(0), "/dev/vda");
        assert_eq!(device_name(3), "/dev/vdd");
    }
}

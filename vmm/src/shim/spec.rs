//! What the shim reads from an OCI bundle's `config.json`: the whole runtime
//! spec, which goes to the guest agent adjusted for the VM
//! (`runtime_spec.rs`), and what the shim itself needs: the hostname, the
//! CRI annotations that group containers into pods, the network namespace
//! and the pod's resolv.conf.
//!
//! # Design
//! The shim's own fields are read through `serde_json::Value`, so that each
//! error names its field; the spec the agent applies is oci-spec's
//! `runtime::Spec`, the same type manifest pods build.

use std::path::{Path, PathBuf};

use guest_agent::protocol::RunSpec;
use oci_spec::runtime::Spec;
use serde_json::Value;

/// CRI's annotation saying whether a container is a pod's sandbox.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Errors reading a bundle's spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// config.json is not JSON.
    #[error("{}: not valid JSON", .0.display())]
    Json(PathBuf, #[source] serde_json::Error),
    /// A field has the wrong shape.
    #[error("{path}: {field}: {problem}")]
    Field {
        /// The file.
        path: String,
        /// The JSON path of the field, e.g. `process.args`.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// A container's OCI spec, and the parts of it the shim uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    /// The runtime spec, adjusted for the guest (`runtime_spec::for_guest`).
    pub runtime: Box<Spec>,
    /// `process.terminal`.
    pub terminal: bool,
    /// `hostname`.
    pub hostname: Option<String>,
    /// The pod this container belongs to (see [`pod_id`]).
    pub pod_id: String,
    /// Whether the container is its pod's sandbox (or a one-container pod).
    pub is_sandbox: bool,
    /// `linux.namespaces[type=network].path`.
    pub netns: Option<PathBuf>,
    /// The source of the bind mount on `/etc/resolv.conf` (CRI writes the
    /// pod's DNS settings there).
    pub resolv_conf: Option<PathBuf>,
    /// What that file says, read by [`ContainerSpec::load`]: the guest
    /// gives the container this `/etc/resolv.conf`, as runc's bind would.
    pub resolv_conf_text: Option<String>,
}

impl ContainerSpec {
    /// Reads `bundle/config.json` of container `id`.
    pub fn load(bundle: &Path, id: &str) -> Result<ContainerSpec, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| SpecError::Read(path.clone(), e))?;
        let json: Value =
            serde_json::from_slice(&text).map_err(|e| SpecError::Json(path.clone(), e))?;
        let mut spec =
            ContainerSpec::from_json(&json, id).map_err(|(field, problem)| SpecError::Field {
                path: path.display().to_string(),
                field,
                problem,
            })?;
        if let Some(resolv_conf) = &spec.resolv_conf {
            let text = std::fs::read_to_string(resolv_conf)
                .map_err(|e| SpecError::Read(resolv_conf.clone(), e))?;
            spec.resolv_conf_text = Some(text);
        }
        Ok(spec)
    }

    fn from_json(json: &Value, id: &str) -> Result<ContainerSpec, (&'static str, &'static str)> {
        let process = &json["process"];
        let args = strings(&process["args"]).ok_or(("process.args", "expected strings"))?;
        if args.is_empty() {
            return Err(("process.args", "empty: the container has no program to run"));
        }
        strings(&process["env"]).ok_or(("process.env", "expected strings"))?;
        let runtime: Spec = serde_json::from_value(json.clone()).map_err(|_| {
            (
                "(the runtime spec)",
                "not an OCI runtime spec oci-spec can read",
            )
        })?;
        let runtime = super::runtime_spec::for_guest(runtime)?;
        let netns = json["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let resolv_conf = json["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .and_then(|m| m["source"].as_str())
            .map(PathBuf::from);
        let annotations = &json["annotations"];
        let (pod_id, is_sandbox) = pod_id(
            id,
            annotations[CONTAINER_TYPE_ANNOTATION].as_str(),
            annotations[SANDBOX_ID_ANNOTATION].as_str(),
        );
        let _ = args;
        Ok(ContainerSpec {
            runtime: Box::new(runtime),
            terminal: process["terminal"].as_bool().unwrap_or(false),
            hostname: json["hostname"].as_str().map(str::to_string),
            pod_id,
            is_sandbox,
            netns,
            resolv_conf,
            resolv_conf_text: None,
        })
    }

    /// The agent's request to run this container as `name` from `device`,
    /// on a terminal if `terminal`.
    pub fn run_spec(&self, name: &str, device: &str, terminal: bool) -> RunSpec {
        let mut spec = self.runtime.clone();
        if let Some(p) = spec.process_mut().as_mut() {
            p.set_terminal(Some(terminal));
        }
        RunSpec {
            name: name.to_string(),
            spec,
            rootfs: Some(guest_agent::protocol::Rootfs {
                device: device.to_string(),
                fstype: "erofs".into(),
            }),
            resolv_conf: self.resolv_conf_text.clone(),
            ..RunSpec::default()
        }
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// The pod a container belongs to, and whether it is the pod's sandbox: a
/// CRI container names its sandbox; a sandbox, or a container without CRI
/// annotations (`ctr run`), is its own one-container pod.
pub fn pod_id(id: &str, container_type: Option<&str>, sandbox_id: Option<&str>) -> (String, bool) {
    match (container_type, sandbox_id) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => (sandbox.to_string(), false),
        _ => (id.to_string(), true),
    }
}

/// A guest hostname (a DNS label) for the pod: the spec's hostname when it
/// is one, else `unipod-` and the first 12 characters of the pod id.
pub fn guest_hostname(spec_hostname: Option<&str>, pod_id: &str) -> String {
    let is_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if let Some(h) = spec_hostname.filter(|h| is_label(h)) {
        return h.to_string();
    }
    let tail: String = pod_id
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    if tail.is_empty() {
        "unipod".into()
    } else {
        format!("unipod-{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_without_annotations_is_its_own_pod() {
        assert_eq!(pod_id("web", None, None), ("web".into(), true));
    }

    #[test]
    fn a_cri_container_joins_its_sandbox() {
        assert_eq!(
            pod_id("c1", Some("container"), Some("sb")),
            ("sb".into(), false)
        );
        assert_eq!(
            pod_id("sb", Some("sandbox"), Some("sb")),
            ("sb".into(), true)
        );
    }

    #[test]
    fn spec_fields_are_read() {
        let json = serde_json::json!({
            "hostname": "web-0",
            "process": {"args": ["/bin/sh", "-c", "echo hi"], "env": ["A=1"], "cwd": "/tmp",
                        "user": {"uid": 1000, "gid": 10}},
            "annotations": {CONTAINER_TYPE_ANNOTATION: "container", SANDBOX_ID_ANNOTATION: "pod1"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"},
                                     {"type": "network", "path": "/var/run/netns/x"}]},
            "mounts": [{"destination": "/etc/hosts", "source": "/h"},
                       {"destination": "/etc/resolv.conf", "source": "/sb/resolv.conf"}]
        });
        let spec = ContainerSpec::from_json(&json, "c1").unwrap();
        assert_eq!(spec.pod_id, "pod1");
        assert!(!spec.is_sandbox);
        assert_eq!(spec.netns, Some(PathBuf::from("/var/run/netns/x")));
        assert_eq!(spec.resolv_conf, Some(PathBuf::from("/sb/resolv.conf")));
        let run = spec.run_spec("c1", "/dev/vda", true);
        assert_eq!(run.argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(run.env(), ["A=1"]);
        assert_eq!(run.cwd().as_deref(), Some("/tmp"));
        assert!(run.tty(), "the task's terminal wins");
        let user = run.spec.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (1000, 10));
        assert!(
            run.probes.is_empty(),
            "the kubelet probes shim containers itself; the agent must not"
        );
        assert_eq!(run.rootfs.unwrap().device, "/dev/vda");
    }

    #[test]
    fn load_reads_the_resolv_conf_the_container_gets() {
        let bundle = std::env::temp_dir().join(format!("unipod-spec-{}", std::process::id()));
        std::fs::create_dir_all(&bundle).unwrap();
        let resolv = bundle.join("resolv.conf");
        let config = serde_json::json!({
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/etc/resolv.conf", "source": resolv}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "network"}]}
        });
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let missing = ContainerSpec::load(&bundle, "c").unwrap_err().to_string();
        assert!(missing.contains("resolv.conf"), "{missing}");
        std::fs::write(&resolv, "nameserver 10.89.0.53\n").unwrap();
        let spec = ContainerSpec::load(&bundle, "c").unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
        assert_eq!(
            spec.run_spec("c", "/dev/vda", false).resolv_conf.as_deref(),
            Some("nameserver 10.89.0.53\n")
        );
    }

    #[test]
    fn a_spec_without_args_names_the_field() {
        let json = serde_json::json!({"process": {"args": []}});
        assert_eq!(
            ContainerSpec::from_json(&json, "c").unwrap_err().0,
            "process.args"
        );
    }

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(guest_hostname(Some("web-0"), "x"), "web-0");
        assert_eq!(
            guest_hostname(Some("Not_A_Label"), "ABCdef0123456789"),
            "unipod-abcdef012345"
        );
        assert_eq!(guest_hostname(None, "--"), "unipod");
    }
}

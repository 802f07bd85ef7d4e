//! `unipod run --dry-run`: checks manifests and everything they name, and
//! says what would run, starting nothing.
//!
//! # Design
//! The same checks as a real run, collected instead of stopping at the
//! first: the documents (every problem with its field path), the pod name,
//! the guest kernel and initramfs, each container's image and spec, and the
//! ConfigMaps and Secrets its env and volumes name (the files' own objects
//! laid over the stored ones, as a real run would apply them first). A
//! missing image is a note, not a problem: it can still be imported (or
//! pulled) before the real run. Exit 0 when the pod would run, 125 when not.

use std::path::PathBuf;

use super::config_sources::{self, PodFacts};
use super::manifest::{self, FileSource, ImagePullPolicy, PodManifest, VolumeSource};
use super::objects::{Applied, Catalog, ObjectStore};
use super::options::RunOptions;
use super::spec;
use super::start::{guest_inputs, state_root};
use crate::error_chain::error_chain;
use crate::exit_code::EXIT_RUN_ERROR;
use crate::image::ImageStore;

/// Runs the dry run of `files`; prints problems, warnings and the plan and
/// returns the exit code.
pub fn dry_run(args: &RunOptions, files: &[PathBuf]) -> i32 {
    let mut problems: Vec<String> = Vec::new();
    let mut pods = Vec::new();
    let mut objects = Vec::new();
    for file in files {
        match manifest::load_documents(file) {
            Ok(d) => {
                for w in &d.warnings {
                    eprintln!("unipod: warning: {}: {w}", file.display());
                }
                pods.extend(d.pods.into_iter().map(|p| (file.clone(), p)));
                objects.extend(d.objects);
            }
            Err(e) => {
                let at = format!("{}: ", file.display());
                let e = match e {
                    manifest::ManifestError::File { source, .. } => *source,
                    other => other,
                };
                problems.extend(e.problems().iter().map(|p| format!("{at}{p}")));
            }
        }
    }
    let state = state_root(args.state_dir.as_deref());
    let store = ObjectStore::open(&state);
    let mut plan: Vec<String> = Vec::new();
    for o in &objects {
        let would = match store.get(o.kind, &o.name) {
            Ok(None) => Applied::Created.to_string(),
            Ok(Some(old)) if old == *o => Applied::Unchanged.to_string(),
            Ok(Some(_)) => Applied::Configured.to_string(),
            Err(e) => format!("not stored: {}", error_chain(&e, ": ")),
        };
        plan.push(format!("{}/{}: would be {would}", o.kind.lower(), o.name));
    }
    if pods.len() != 1 && problems.is_empty() {
        problems.push(format!(
            "the files hold {} Pods; give exactly one (ConfigMaps and Secrets may come with it)",
            pods.len()
        ));
    }
    if let [(file, (pod, warnings))] = &pods[..] {
        for w in warnings {
            eprintln!("unipod: warning: {}: {w}", file.display());
        }
        let catalog = Catalog::new(Some(store)).with(&objects);
        check_pod(args, &state, pod, &catalog, &mut problems, &mut plan);
    }
    for p in &problems {
        eprintln!("unipod: problem: {p}");
    }
    println!("Plan (dry run; nothing was started or stored):");
    for line in &plan {
        println!("  {line}");
    }
    if problems.is_empty() {
        println!("The pod would run.");
        0
    } else {
        println!("The pod would not run: {} problem(s).", problems.len());
        EXIT_RUN_ERROR
    }
}

fn check_pod(
    args: &RunOptions,
    state: &std::path::Path,
    pod: &PodManifest,
    catalog: &Catalog,
    problems: &mut Vec<String>,
    plan: &mut Vec<String>,
) {
    if state.join("pods").join(&pod.name).exists() {
        problems.push(format!(
            "metadata.name: pod {:?} already exists; remove it with: unipod rm {}",
            pod.name, pod.name
        ));
    }
    let size = pod.host_vm_size();
    if let Err(e) = guest_inputs(args.kernel.as_deref(), args.initrd.as_deref(), size.mem_mib) {
        problems.push(error_chain(&e, ": "));
    }
    let asked = pod.vm_size().vcpus;
    let capped = if asked > size.vcpus {
        format!(
            " (capped from {asked} at this host's available cores: {})",
            manifest::host_cores()
        )
    } else {
        String::new()
    };
    plan.push(format!(
        "pod {}: a VM of {} vCPU{capped} and {} MiB",
        pod.name, size.vcpus, size.mem_mib
    ));
    let images = ImageStore::open(state);
    // Facts a running pod would have; the IP is not known before it runs.
    let facts = PodFacts {
        uid: "<uid>".into(),
        pod_ips: vec!["<pod IP>".into()],
        host_ips: vec!["<host IP>".into()],
        node_name: "<node>".into(),
        vm: Some(size),
    };
    let lists = [
        ("initContainers", "init container", &pod.init_containers),
        ("containers", "container", &pod.containers),
    ];
    for (list, what, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let path = format!("spec.{list}[{i}]");
            let image = match images.resolve(&c.image) {
                Ok(image) => {
                    let env = config_sources::literal_env(c);
                    if let Err(e) = spec::run_spec(pod, c, &image.config, 0, &env) {
                        problems.push(format!("{path}: {e}"));
                    }
                    c.image.clone()
                }
                Err(e) => {
                    eprintln!("unipod: note: {path}.image: {}", error_chain(&e, ": "));
                    match c.image_pull_policy {
                        ImagePullPolicy::Never => {
                            problems.push(format!(
                                "{path}.image: {} is absent and imagePullPolicy is Never",
                                c.image
                            ));
                            format!("{} (absent; never pulled)", c.image)
                        }
                        _ => format!("{} (absent: would be pulled)", c.image),
                    }
                }
            };
            if let Err(e) = config_sources::container_env(pod, c, &facts, catalog) {
                problems.push(format!(
                    "{path}: {e} (the container would wait with CreateContainerConfigError)"
                ));
            }
            plan.push(format!("  {what} {}: {image}", c.name));
        }
    }
    for (i, v) in pod.volumes.iter().enumerate() {
        let kind = match &v.source {
            VolumeSource::EmptyDir(_) => "emptyDir".to_owned(),
            VolumeSource::Files(sources) => {
                if let Err(e) = config_sources::volume_files(pod, &v.name, sources, &facts, catalog)
                {
                    problems.push(format!("spec.volumes[{i}]: {e}"));
                }
                sources
                    .iter()
                    .map(|s| match s {
                        FileSource::Keys(k) => format!("{} {}", k.kind, k.name),
                        FileSource::Downward(_) => "downward API".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        plan.push(format!("  volume {}: {kind}", v.name));
    }
}

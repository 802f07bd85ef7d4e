//! A detached pod whose image could not be pulled waits for it, as the
//! kubelet's does: the pod stays Pending, the container shows
//! `ErrImagePull`, then `ImagePullBackOff`, and the pull is tried again
//! after the back-off (10 s, doubling to 300 s), with the kubelet's events
//! (`Pulling`, `Failed`, `BackOff`). The pod's VM starts once every image
//! is there. `unipod stop`, `delete` and signals end the wait.
//!
//! In the foreground a failed pull fails `unipod run` at once (exit 125),
//! as podman's does, so that a mistyped image does not hold a terminal.
//!
//! The detached run records the failure (`waiting_record`); the
//! supervisor it starts sees the waiting container in the record and
//! pulls from there on (`await_images`) before it prepares the pod.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::start::{state_root, SIGNALS};
use super::supervisor::{
    container_info, lifecycle_config, listen, load, new_record, Msg, PodRunError,
};
use crate::exit_code::{EXIT_INTERRUPTED, EXIT_POD_FAILED};
use crate::image::ImageStore;
use crate::pod::control::{self, ControlReply, ControlRequest, CONTROL_SOCKET};
use crate::pod::images::{self, PullEvent};
use crate::pod::lifecycle::{backoff, Lifecycle};
use crate::pod::manifest::{ContainerSpec, PodManifest};
use crate::pod::objects::{Catalog, ObjectStore};
use crate::pod::options::RunOptions;
use crate::pod::status::{unix_now, ContainerState, PodRecord, ProcessRef};

/// How long a failed pull shows `ErrImagePull` before `ImagePullBackOff`:
/// the kubelet's next sync of the pod.
const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

/// The first record of a pod whose container `container` could not get
/// its image (`message`: why), after the pull events so far.
pub(crate) fn waiting_record(
    pod: &PodManifest,
    manifest_file: &Path,
    args: &RunOptions,
    pull_events: &[PullEvent],
    container: &str,
    message: &str,
) -> PodRecord {
    let now = Instant::now();
    let mut life = waiting_lifecycle(pod, args, now);
    for (kind, reason, text) in pull_events {
        life.event(now, kind, reason, text.clone());
    }
    life.image_pull_failed(container, message, now);
    new_record(pod, Some(manifest_file), &mut life)
}

/// Pulls, with back-off, the images of the containers from the first one
/// the pod's record shows waiting for its image. `Ok(None)`: every image is
/// there (or none was waited for), so the pod may start; `Ok(Some(code))`:
/// the pod ended while it waited.
pub(crate) fn await_images(
    args: &RunOptions,
    files: &[PathBuf],
) -> Result<Option<i32>, PodRunError> {
    let loaded = load(files)?;
    let pod = &loaded.manifest;
    let state = state_root(args.state_dir.as_deref());
    let dir = state.join("pods").join(&pod.name);
    let Ok(mut record) = PodRecord::read(&dir) else {
        return Ok(None);
    };
    let containers: Vec<&ContainerSpec> =
        pod.init_containers.iter().chain(&pod.containers).collect();
    let Some((mut next, message)) = containers
        .iter()
        .enumerate()
        .find_map(|(i, c)| waiting_message(&record, &c.name).map(|m| (i, m)))
    else {
        return Ok(None);
    };
    record.supervisor = Some(ProcessRef::current());
    let now = Instant::now();
    let mut life = waiting_lifecycle(pod, args, now);
    life.image_pull_failed(&containers[next].name, &message, now);
    // The run's events, in place of the one just recorded.
    life.continue_events(&record.events);
    let store = ImageStore::open(&state);
    let catalog = Catalog::new(Some(ObjectStore::open(&state)));
    // The run already reported a Secret it could not read.
    let credentials = images::pull_credentials(&pod.image_pull_secrets, &catalog, &mut Vec::new());
    let cfg = lifecycle_config(pod, args.unknown_after(), args.give_up_after());
    // The kubelet's image back-off: the first retry after the base.
    let delay_after = |failures: u32| backoff(failures + 1, cfg.backoff_base, cfg.backoff_cap);
    let mut failures = 1;
    let mut retry_at = now + delay_after(failures);
    // ErrImagePull is shown until the kubelet's next sync of the pod, or
    // half the back-off when that is shorter (tests shorten it).
    let shown_for = |delay: Duration| ERR_IMAGE_PULL_SHOWN.min(delay / 2);
    let mut back_off_at = now + shown_for(delay_after(failures));
    let (tx, rx) = mpsc::channel();
    let listener = listen(&dir, tx);
    eprintln!(
        "unipod: pod {}: waiting for image {:?} of container {}: {message}",
        pod.name, containers[next].image, containers[next].name
    );
    let outcome = loop {
        let now = Instant::now();
        if SIGNALS.load(Ordering::SeqCst) > 0 {
            life.vm_failed(
                "Interrupted",
                "interrupted while waiting for an image".into(),
                now,
            );
            break Some(EXIT_INTERRUPTED);
        }
        if now >= back_off_at {
            life.image_pull_backoff(&containers[next].name, now);
        }
        if now >= retry_at {
            while let Some(c) = containers.get(next) {
                let mut events = Vec::new();
                let got = images::ensure(&store, c, &credentials, &mut events);
                let now = Instant::now();
                for (kind, reason, text) in events {
                    life.event(now, kind, reason, text);
                }
                match got {
                    Ok(_) => {
                        life.image_present(&c.name);
                        next += 1;
                    }
                    Err(e) if e.is_pull_failure() => {
                        eprintln!(
                            "unipod: pod {}: pulling {:?} failed: {}",
                            pod.name,
                            c.image,
                            e.pull_reason()
                        );
                        life.image_pull_failed(&c.name, &e.pull_reason(), now);
                        failures += 1;
                        let delay = delay_after(failures);
                        retry_at = now + delay;
                        back_off_at = now + shown_for(delay);
                        eprintln!(
                            "unipod: pod {}: next pull in {} s",
                            pod.name,
                            delay.as_secs()
                        );
                        break;
                    }
                    Err(e) => {
                        life.vm_failed("Failed", format!("container {}: {e}", c.name), now);
                        break;
                    }
                }
            }
            if next == containers.len() {
                break None;
            }
            if life.failure().is_some() {
                break Some(EXIT_POD_FAILED);
            }
        }
        save(&mut record, &mut life, &dir);
        match rx.recv_timeout(TICK) {
            Ok(Msg::Control(request, mut stream)) => {
                let reply = match request {
                    ControlRequest::Stop | ControlRequest::StopWithGrace { .. } => {
                        let _ = control::write_line(&mut stream, &ControlReply::Ok);
                        life.vm_failed(
                            "Stopped",
                            format!(
                                "stopped while waiting for image {:?}",
                                containers[next].image
                            ),
                            Instant::now(),
                        );
                        break Some(EXIT_POD_FAILED);
                    }
                    _ => ControlReply::Error(format!(
                        "pod {} is waiting for image {:?}; no container runs yet",
                        pod.name, containers[next].image
                    )),
                };
                let _ = control::write_line(&mut stream, &reply);
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(TICK),
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
    if outcome.is_some() {
        record.supervisor = None;
    }
    save(&mut record, &mut life, &dir);
    if outcome.is_some() {
        eprintln!("unipod: pod {}: {}", pod.name, life.phase());
    }
    Ok(outcome)
}

/// The lifecycle of a pod none of whose containers started, for its
/// status while it waits for images (digests and stop signals are not known
/// yet, and not shown).
fn waiting_lifecycle(pod: &PodManifest, args: &RunOptions, now: Instant) -> Lifecycle {
    let infos = |list: &[ContainerSpec]| {
        list.iter()
            .map(|c| container_info(c, "", libc::SIGTERM))
            .collect()
    };
    Lifecycle::new(
        &pod.name,
        lifecycle_config(pod, args.unknown_after(), args.give_up_after()),
        infos(&pod.init_containers),
        infos(&pod.containers),
        now,
        unix_now(),
    )
}

/// The message of container `name` when the record shows it waiting for
/// its image.
fn waiting_message(record: &PodRecord, name: &str) -> Option<String> {
    let status = &record.status;
    let c = (status.init_container_statuses.iter())
        .chain(&status.container_statuses)
        .find(|c| c.name == name)?;
    match &c.state {
        ContainerState::Waiting { reason, message }
            if reason == "ErrImagePull" || reason == "ImagePullBackOff" =>
        {
            Some(message.clone().unwrap_or_default())
        }
        _ => None,
    }
}

/// Writes the record when the lifecycle changed.
fn save(record: &mut PodRecord, life: &mut Lifecycle, dir: &Path) {
    if !life.take_changed() {
        return;
    }
    record.status = life.status(Instant::now());
    record.events = life.events().to_vec();
    if let Err(e) = record.write(dir) {
        log::warn!("{}: {e}", dir.join("status.json").display());
    }
}

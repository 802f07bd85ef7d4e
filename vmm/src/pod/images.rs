//! A pod's images, got as the kubelet gets them: `imagePullPolicy` decides
//! between the store's image and a pull, `imagePullSecrets` add
//! credentials, and each step is an event with the kubelet's words
//! (`Pulling`, `Pulled`, `Failed`, `ErrImageNeverPull`).
//!
//! Pulls happen before the pod VM starts. A failed pull fails a
//! foreground `unipod run` (exit 125) with the registry's reason, leaving
//! nothing behind; a detached pod waits and retries, as the kubelet's does
//! ([`super::image_wait`]). One departure from the kubelet: with `Always`,
//! an image that is present runs when no registry can be reached at all
//! (offline hosts, imported images; podman's `--pull=newer`), after a
//! `Failed` warning event. A registry that answers with an error still
//! fails the pull.

use std::path::Path;
use std::time::Instant;

use crate::image::registry::{self, auth::Credentials, ProgressSink, PullOptions};
use crate::image::{ImageError, ImageStore, StoredImage};
use crate::pod::manifest::{ContainerSpec, ImagePullPolicy};
use crate::pod::objects::{Catalog, Kind};

/// An event a pull adds to the pod: type, reason, message.
pub(crate) type PullEvent = (&'static str, &'static str, String);

/// The registry credentials the pod's `imagePullSecrets` hold; a Secret
/// that is missing or holds none gives a warning event, as the kubelet's
/// `FailedToRetrieveImagePullSecret`.
pub(crate) fn pull_credentials(
    secrets: &[String],
    catalog: &Catalog,
    events: &mut Vec<PullEvent>,
) -> Vec<(String, Credentials)> {
    let mut credentials = Vec::new();
    for name in secrets {
        let origin = Path::new("secret").join(name);
        let parsed = catalog.get(Kind::Secret, name).and_then(|secret| {
            let json = secret
                .data
                .get(".dockerconfigjson")
                .or_else(|| secret.data.get(".dockercfg"))?;
            registry::auth::from_docker_config(json, &origin)
                .map_err(|e| log::warn!("imagePullSecrets: {e}"))
                .ok()
        });
        match parsed {
            Some(found) => credentials.extend(found),
            None => events.push((
                "Warning",
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({name}); attempting to pull \
                     the image may not succeed."
                ),
            )),
        }
    }
    credentials
}

/// The image of `container`, pulled if its policy says so; the events
/// go to `events`.
pub(crate) fn ensure(
    store: &ImageStore,
    container: &ContainerSpec,
    credentials: &[(String, Credentials)],
    events: &mut Vec<PullEvent>,
) -> Result<StoredImage, ImageError> {
    let image = &container.image;
    let present = match store.resolve(image) {
        Ok(found) => Some(found),
        Err(ImageError::NotImported { .. }) => None,
        Err(e) => return Err(e),
    };
    match (container.image_pull_policy, present) {
        (ImagePullPolicy::IfNotPresent | ImagePullPolicy::Never, Some(found)) => {
            events.push((
                "Normal",
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ));
            Ok(found)
        }
        (ImagePullPolicy::Never, None) => {
            let error = ImageError::NeverPull {
                reference: image.clone(),
            };
            events.push((
                "Warning",
                "ErrImageNeverPull",
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            ));
            Err(error)
        }
        (ImagePullPolicy::Always | ImagePullPolicy::IfNotPresent, present) => {
            events.push(("Normal", "Pulling", format!("Pulling image \"{image}\"")));
            let started = Instant::now();
            let options = PullOptions {
                credentials: credentials.to_vec(),
                ..PullOptions::default()
            };
            match registry::pull(store, image, &options, &ProgressSink::new("[pull] ")) {
                Ok(pulled) => {
                    let took = started.elapsed().as_secs_f64();
                    events.push((
                        "Normal",
                        "Pulled",
                        format!(
                            "Successfully pulled image \"{image}\" in {took:.3}s ({took:.3}s \
                             including waiting). Image size: {} bytes.",
                            pulled.size
                        ),
                    ));
                    Ok(pulled.image.image)
                }
                Err(e) => {
                    events.push((
                        "Warning",
                        "Failed",
                        format!("Failed to pull image \"{image}\": {e}"),
                    ));
                    match present {
                        // Offline, an image at hand still runs (podman's
                        // --pull=newer; the kubelet would stop here).
                        Some(found) if e.is_unreachable() => {
                            events.push((
                                "Normal",
                                "Pulled",
                                format!(
                                    "Container image \"{image}\" already present on machine; \
                                     no registry could be reached to refresh it"
                                ),
                            ));
                            Ok(found)
                        }
                        Some(_) => Err(e),
                        None => Err(ImageError::NotPulled {
                            reference: image.clone(),
                            pull: Box::new(e),
                        }),
                    }
                }
            }
        }
    }
}

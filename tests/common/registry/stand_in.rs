//! A stand-in registry that serves one image from an OCI layout and can
//! break one of its layers on purpose: what a real registry never does,
//! for the tests of how a client refuses it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::http::{HttpServer, Request, Response};
use super::sha256_digest;

/// How a [`FakeRegistry`] misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// It serves the image as it is.
    None,
    /// One layer's bytes do not match its digest: a letter of a file in the
    /// uncompressed layer is changed (the tar stays valid).
    DigestMismatch,
    /// The biggest layer announces its full Content-Length, then the
    /// connection closes after half of it; every time it is asked for.
    Truncated,
}

/// A stand-in registry on 127.0.0.1 that serves one image from an OCI
/// layout as `broken/busybox:1` (and by its manifest digest), over plain
/// HTTP without auth, with a [`Fault`].
pub struct FakeRegistry {
    server: HttpServer,
    manifest_digest: String,
    faulty_blob: Option<String>,
}

/// The repository a [`FakeRegistry`] serves.
pub const FAKE_REPOSITORY: &str = "broken/busybox";
/// Its one tag.
pub const FAKE_TAG: &str = "1";

impl FakeRegistry {
    /// Serves the first image of the OCI layout `layout` with `fault`.
    pub fn start(layout: &Path, fault: Fault) -> FakeRegistry {
        let read_json = |path: PathBuf| -> serde_json::Value {
            let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let blob_path = |digest: &str| {
            layout
                .join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
        };
        let index = read_json(layout.join("index.json"));
        let descriptor = &index["manifests"][0];
        let manifest_digest = descriptor["digest"]
            .as_str()
            .expect("index.json names a manifest")
            .to_string();
        let manifest_type = descriptor["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        let manifest_bytes = fs::read(blob_path(&manifest_digest)).expect("read the manifest");
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest_bytes).expect("the manifest is JSON");
        let mut blobs = BTreeMap::new();
        let config = manifest["config"]["digest"].as_str().expect("a config");
        blobs.insert(
            config.to_string(),
            fs::read(blob_path(config)).expect("read the config"),
        );
        let layers: Vec<(String, String)> = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().expect("a layer digest").to_string(),
                    l["mediaType"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        for (digest, _) in &layers {
            blobs.insert(
                digest.clone(),
                fs::read(blob_path(digest)).expect("read a layer"),
            );
        }
        let mut cut = None;
        let faulty_blob = match fault {
            Fault::None => None,
            Fault::DigestMismatch => {
                // A letter of /etc/unipod-test-image's contents in the
                // uncompressed layer (images/build-oci.sh writes it).
                let marker = b"unipod test image (images/build-oci.sh)";
                let (digest, _) = layers
                    .iter()
                    .find(|(_, media)| media.ends_with(".tar"))
                    .expect("the test image has an uncompressed layer");
                let bytes = blobs.get_mut(digest).expect("the layer is loaded");
                let at = bytes
                    .windows(marker.len())
                    .position(|w| w == marker)
                    .expect("the uncompressed layer holds /etc/unipod-test-image");
                bytes[at] = b'U';
                assert_ne!(sha256_digest(bytes), *digest, "the layer was changed");
                Some(digest.clone())
            }
            Fault::Truncated => {
                let (digest, _) = layers
                    .iter()
                    .max_by_key(|(d, _)| blobs[d].len())
                    .expect("the image has layers");
                cut = Some(blobs[digest].len() / 2);
                Some(digest.clone())
            }
        };
        let (served_digest, faulty) = (manifest_digest.clone(), faulty_blob.clone());
        let handler = move |req: &Request| -> Response {
            if req.method != "GET" && req.method != "HEAD" {
                return Response::error(405, "UNSUPPORTED", "this registry is read-only");
            }
            let path = req.path();
            if path == "/v2/" || path == "/v2" {
                let mut r = Response::json(200, &serde_json::json!({}));
                r.headers.push((
                    "Docker-Distribution-Api-Version".into(),
                    "registry/2.0".into(),
                ));
                return r;
            }
            let Some(rest) = path
                .strip_prefix("/v2/")
                .and_then(|p| p.strip_prefix(FAKE_REPOSITORY))
            else {
                return Response::error(
                    404,
                    "NAME_UNKNOWN",
                    "repository name not known to registry",
                );
            };
            if let Some(reference) = rest.strip_prefix("/manifests/") {
                if reference != FAKE_TAG && reference != served_digest {
                    return Response::error(404, "MANIFEST_UNKNOWN", "manifest unknown");
                }
                return Response {
                    status: 200,
                    headers: vec![
                        ("Content-Type".into(), manifest_type.clone()),
                        ("Docker-Content-Digest".into(), served_digest.clone()),
                    ],
                    body: manifest_bytes.clone(),
                    cut_after: None,
                };
            }
            if let Some(digest) = rest.strip_prefix("/blobs/") {
                let Some(bytes) = blobs.get(digest) else {
                    return Response::error(404, "BLOB_UNKNOWN", "blob unknown to registry");
                };
                return Response {
                    status: 200,
                    headers: vec![
                        ("Content-Type".into(), "application/octet-stream".into()),
                        ("Docker-Content-Digest".into(), digest.to_string()),
                    ],
                    body: bytes.clone(),
                    cut_after: if faulty.as_deref() == Some(digest) {
                        cut
                    } else {
                        None
                    },
                };
            }
            Response::error(404, "NOT_FOUND", "not found")
        };
        FakeRegistry {
            server: HttpServer::start(Arc::new(handler)),
            manifest_digest,
            faulty_blob,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// `127.0.0.1:PORT/broken/busybox:1`.
    pub fn reference(&self) -> String {
        format!("{}/{FAKE_REPOSITORY}:{FAKE_TAG}", self.host())
    }

    /// The digest of the manifest it serves.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The digest of the blob it breaks (`None` for [`Fault::None`]).
    pub fn faulty_blob(&self) -> Option<&str> {
        self.faulty_blob.as_deref()
    }

    /// `METHOD target` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.server.requests()
    }
}

//! Talking to one registry with `oci-client`: its HTTP client (TLS roots,
//! insecure fallback to plain HTTP), manifests and verified blob downloads,
//! and what its errors mean to a user.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::io::AsyncWrite;

use super::conf::Source;
use super::ProgressSink;
use crate::image::reference::Parsed;
use crate::image::{human_size, sha256_of, ImageStore};

/// Manifest media types a pull accepts.
const ACCEPTED_MANIFESTS: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// What a TLS handshake with a plain-HTTP server gives.
const NOT_TLS: &str = "it does not answer in TLS";
/// How long a connection may take to open, and a read may stall.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where CA certificates for a registry are looked for, as by podman and
/// docker (`HOST:PORT/*.crt`).
const CERT_DIRS: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];

/// A client bound to one source, authenticated for pulls.
pub struct Session {
    client: Client,
    auth: RegistryAuth,
    /// The reference on the source's registry.
    pub reference: Reference,
    /// `host[:port]`, for messages.
    pub registry: String,
    /// The auth file the credentials came from, if any.
    credentials_file: Option<PathBuf>,
    /// The registry gave a Bearer token (its token service took the
    /// credentials, or granted anonymous access).
    bearer: bool,
}

/// Why a session could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The registry could not be reached at all (no such host, refused,
    /// TLS, timeout).
    Unreachable(String),
    /// It answered, and refused (credentials, a bad answer).
    Refused(String),
}

impl OpenError {
    /// What went wrong, for a user.
    pub fn reason(self) -> String {
        match self {
            OpenError::Unreachable(r) | OpenError::Refused(r) => r,
        }
    }
}

/// How to reach a source.
pub struct Connect<'a> {
    /// The source.
    pub source: &'a Source,
    /// `--tls-verify=false`: treat the source as insecure.
    pub tls_verify: bool,
    /// `--cert-dir`, replacing certs.d's per-registry directories.
    pub cert_dir: Option<&'a Path>,
    /// User and password, and the file they come from.
    pub credentials: Option<(String, String, PathBuf)>,
}

impl Session {
    /// Connects to `connect.source`'s registry and authenticates (the
    /// anonymous or credentialed Bearer flow, or Basic). An insecure source
    /// is tried over HTTPS without certificate checks, then plain HTTP.
    pub async fn open(connect: Connect<'_>) -> Result<Session, OpenError> {
        // Installing it twice is harmless (the Err is ignored).
        let _ = crypto_provider().install_default();
        let parsed = &connect.source.reference;
        let registry = parsed.registry().to_string();
        let reference = oci_reference(parsed);
        let auth = match &connect.credentials {
            Some((user, password, _)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let insecure = connect.source.insecure || !connect.tls_verify;
        let certs = ca_certificates(&registry, connect.cert_dir).map_err(OpenError::Refused)?;
        let mut protocols = vec![ClientProtocol::Https];
        if insecure {
            protocols.push(ClientProtocol::Http);
        }
        let mut failure: Option<OpenError> = None;
        for protocol in protocols {
            let scheme = if protocol == ClientProtocol::Http {
                "HTTP"
            } else {
                "HTTPS"
            };
            let client = Client::new(ClientConfig {
                protocol,
                accept_invalid_certificates: insecure,
                extra_root_certificates: certs.clone(),
                platform_resolver: None,
                connect_timeout: Some(CONNECT_TIMEOUT),
                read_timeout: Some(READ_TIMEOUT),
                max_concurrent_download: 3,
                ..ClientConfig::default()
            });
            let session = Session {
                client,
                auth: auth.clone(),
                reference: reference.clone(),
                registry: registry.clone(),
                credentials_file: connect.credentials.as_ref().map(|c| c.2.clone()),
                bearer: false,
            };
            match session
                .client
                .auth(&reference, &auth, RegistryOperation::Pull)
                .await
            {
                Ok(token) => {
                    return Ok(Session {
                        bearer: token.is_some(),
                        ..session
                    })
                }
                Err(e) => {
                    let transport = matches!(e, OciDistributionError::RequestError(_));
                    let mut message = session.explain(&e, "reach");
                    // An insecure source tried both ways: say how each failed.
                    if let Some(https) = failure.take().map(OpenError::reason) {
                        if !https.contains(NOT_TLS) {
                            message = format!("over HTTPS: {https}; over {scheme}: {message}");
                        }
                    }
                    failure = Some(if transport {
                        OpenError::Unreachable(message)
                    } else {
                        OpenError::Refused(message)
                    });
                    if !transport {
                        break;
                    }
                }
            }
        }
        Err(failure.expect("one protocol was tried"))
    }

    /// The manifest (or index) `reference` names, with its digest, checked
    /// against the digest the reference pins.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), String> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.explain(&e, "get the manifest of"))?;
        let digest = sha256_of(&bytes);
        if let Some(pinned) = reference.digest() {
            if pinned != digest {
                return Err(format!(
                    "{} sent a manifest with digest {digest} for {pinned}; nothing was stored",
                    self.registry
                ));
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Downloads blob `descriptor` into the store unless it is there
    /// already, checking its size and digest before it is kept.
    pub async fn fetch_blob(
        &self,
        store: &ImageStore,
        descriptor: &OciDescriptor,
        label: &str,
        progress: &ProgressSink,
    ) -> Result<u64, String> {
        let size = u64::try_from(descriptor.size).map_err(|_| {
            format!(
                "{label}: the manifest gives a negative size for {}",
                descriptor.digest
            )
        })?;
        let path = store
            .blob_file(&descriptor.digest)
            .map_err(|e| e.to_string())?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
            progress.line(&format!("{label}: already downloaded"));
            return Ok(0);
        }
        let tmp = store
            .blob_download_dir(&descriptor.digest)
            .map_err(|e| e.to_string())?;
        let file_path = tmp.path.join("blob");
        let file = tokio::fs::File::create(&file_path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", file_path.display()))?;
        let bar = progress.bar(label, size);
        let writer = SizeLimited {
            inner: file,
            written: 0,
            limit: size,
            bar: &bar,
        };
        let reference = self.reference.clone_with_digest(descriptor.digest.clone());
        self.client
            .pull_blob(&reference, descriptor, writer)
            .await
            .map_err(|e| self.explain(&e, &format!("download {label} from")))?;
        let written = std::fs::metadata(&file_path).map_or(0, |m| m.len());
        if written != size {
            return Err(format!(
                "{label}: {} sent {written} bytes but the manifest says {size}; nothing was \
                 stored",
                self.registry
            ));
        }
        store
            .keep_blob(&descriptor.digest, tmp, &file_path)
            .map_err(|e| e.to_string())?;
        progress.done(&bar, &format!("{label}: downloaded {}", human_size(size)));
        Ok(size)
    }

    /// Whether the registry takes the session's credentials: a token
    /// registry's token service checked them in [`Session::open`]; a Basic
    /// one answers a tag list (even of a repository it lacks) with 401 only
    /// when they are wrong.
    pub async fn check_credentials(&self) -> Result<(), String> {
        if self.bearer {
            // Its token service refuses wrong credentials (401), and
            // registries such as Docker Hub answer 401 for a repository
            // that does not exist, whatever the credentials.
            return Ok(());
        }
        match self
            .client
            .list_tags(&self.reference, &self.auth, Some(1), None)
            .await
        {
            Err(
                e @ (OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)),
            ) => Err(self.explain(&e, "log in to")),
            Err(OciDistributionError::ServerError { code: 401, .. }) => Err(format!(
                "{} refused the user name or password (401)",
                self.registry
            )),
            Err(OciDistributionError::RequestError(e)) => Err(transport(&self.registry, &e)),
            _ => Ok(()),
        }
    }

    /// What went wrong while trying to `doing` (a verb phrase) the
    /// reference, in words a user can act on.
    fn explain(&self, error: &OciDistributionError, doing: &str) -> String {
        let what = self.reference.repository();
        let registry = &self.registry;
        let tag = self
            .reference
            .tag()
            .map(|t| format!(":{t}"))
            .or_else(|| self.reference.digest().map(|d| format!("@{d}")))
            .unwrap_or_default();
        let login = match &self.credentials_file {
            Some(file) => format!(
                "check the credentials for {} in {}, or log in again with 'unipod login {}'",
                self.registry,
                file.display(),
                self.registry
            ),
            None => format!("log in with 'unipod login {}'", self.registry),
        };
        match error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                format!("{} refused access to {what} (401 Unauthorized): {login}", self.registry)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let has = |c: OciErrorCode| codes.contains(&&c);
                if has(OciErrorCode::ManifestUnknown) || has(OciErrorCode::NotFound) {
                    format!(
                        "{what}{tag} not found on {registry} (manifest unknown): check the \
                         repository and tag"
                    )
                } else if has(OciErrorCode::NameUnknown) {
                    format!("repository {what} not found on {registry} (name unknown)")
                } else if has(OciErrorCode::Unauthorized) || has(OciErrorCode::Denied) {
                    format!("{} denied access to {what}: {login}", self.registry)
                } else if has(OciErrorCode::BlobUnknown) {
                    format!("{} lacks a blob of {what}{tag}: {envelope}", self.registry)
                } else {
                    format!("cannot {doing} {registry}/{what}{tag}: {envelope}")
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 => format!("{} refused access to {what} (401): {login}", self.registry),
                403 => format!("{} denied access to {what} (403 Forbidden): {login}", self.registry),
                404 => format!("{what}{tag} not found on {registry} (404)"),
                _ => format!(
                    "cannot {doing} {registry}/{what}{tag}: the registry answered {code}: {}",
                    message.trim()
                ),
            },
            OciDistributionError::DigestError(e) => format!(
                "cannot {doing} {registry}/{what}{tag}: the content does not match its digest ({e}); it \
                 is corrupt or was tampered with, and nothing was stored"
            ),
            OciDistributionError::RequestError(e) => transport(&self.registry, e),
            OciDistributionError::IoError(e) if e.kind() == io::ErrorKind::InvalidData => {
                format!("cannot {doing} {registry}/{what}{tag}: {e}; nothing was stored")
            }
            other => format!("cannot {doing} {registry}/{what}{tag}: {}", chain(other)),
        }
    }
}

/// The TLS crypto: ring, as the agent's. rustls deprecates it for want of
/// post-quantum key exchange; aws-lc-rs, which has it, adds a C library
/// build (minutes on a fresh CI machine) for secrecy a pull of public
/// image layers rarely needs. Revisit when ring gains ML-KEM.
#[expect(
    deprecated,
    reason = "see above: ring is the provider unipod builds with"
)]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A transport failure in words: no such host, refused, TLS, timeout.
fn transport(registry: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let detail = chain(error);
    let lower = detail.to_lowercase();
    if lower.contains("invalidcontenttype") || lower.contains("wrong version number") {
        format!(
            "cannot reach {registry} over TLS: {NOT_TLS} (a plain-HTTP registry?); if it is \
             one you trust, mark it insecure = true in registries.conf or pass \
             --tls-verify=false"
        )
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        format!(
            "cannot reach {registry} over TLS: its certificate is not trusted ({detail}); put \
             the CA that signed it in /etc/containers/certs.d/{registry}/ca.crt (or a \
             --cert-dir), or mark the registry insecure = true in registries.conf"
        )
    } else if lower.contains("connection refused") {
        format!("cannot reach {registry}: connection refused (is the registry running, and on that port?)")
    } else if lower.contains("dns error") || lower.contains("failed to lookup") {
        format!("cannot reach {registry}: unknown host (the DNS lookup found no address)")
    } else if lower.contains("timed out") {
        format!("cannot reach {registry}: timed out ({detail})")
    } else {
        format!("cannot reach {registry}: {detail}")
    }
}

/// An error and its sources, joined with ": ".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The reference as `oci-client` takes it.
fn oci_reference(parsed: &Parsed) -> Reference {
    let registry = parsed.registry().to_string();
    let repository = parsed.repository.clone();
    match (&parsed.digest, parsed.tag_or_latest()) {
        (Some(digest), Some(tag)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_string(), digest.clone())
        }
        (Some(digest), None) => Reference::with_digest(registry, repository, digest.clone()),
        (None, tag) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_string())
        }
    }
}

/// The CA certificates for `registry`: every `*.crt` in `cert_dir`, else
/// in certs.d's directory for it.
fn ca_certificates(registry: &str, cert_dir: Option<&Path>) -> Result<Vec<Certificate>, String> {
    let dirs: Vec<PathBuf> = match cert_dir {
        Some(dir) => vec![dir.to_path_buf()],
        None => CERT_DIRS
            .iter()
            .map(|d| Path::new(d).join(registry))
            .collect(),
    };
    let mut certs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file)
                .map_err(|e| format!("cannot read CA certificate {}: {e}", file.display()))?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
    }
    Ok(certs)
}

/// A file writer that refuses more bytes than the manifest announced (an
/// endless response) and moves a progress bar.
struct SizeLimited<'a, W> {
    inner: W,
    written: u64,
    limit: u64,
    bar: &'a indicatif::ProgressBar,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SizeLimited<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.written + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the registry sent more than the {} bytes the manifest gives",
                    self.limit
                ),
            )));
        }
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written += *n as u64;
            this.bar.inc(*n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

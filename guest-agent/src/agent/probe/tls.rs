//! The TLS client of HTTPS probes: rustls with ring, accepting any server
//! certificate, as the kubelet's HTTP prober does (its transport sets Go's
//! `InsecureSkipVerify`).
//!
//! # Design
//!
//! Only the certificate chain goes unchecked, as with Go's setting: the
//! server still proves that it holds the key of the certificate it sent
//! (the handshake signature is verified), so a check talks to one TLS peer
//! end to end. No client certificate, no ALPN (HTTP/1.1, as the kubelet's
//! transport speaks it), SNI when the host is a name rather than an IP
//! address. The configuration is built once, on first use.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// Accepts every certificate chain; checks handshake signatures with the
/// provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// ring's provider. rustls deprecates it for want of post-quantum key
/// exchange; the alternative, aws-lc-rs, needs cmake and a C toolchain for
/// musl and is several times larger, and a probe that checks no certificate
/// gains nothing from post-quantum secrecy.
#[expect(
    deprecated,
    reason = "see above: ring is the provider that fits the agent"
)]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The probes' client configuration, made on first use.
fn config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// A client connection to `host` (a name or an IP address), handshake not
/// yet done: it happens on the first write.
pub(super) fn client(host: &str) -> Result<ClientConnection, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("tls: server name {host:?}: {e}"))?;
    ClientConnection::new(config()?, name).map_err(|e| format!("tls: {e}"))
}

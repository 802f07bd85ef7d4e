//! End-to-end tests against a real registry on loopback (Debian's
//! `docker-registry`, the CNCF distribution registry 2.8, started by
//! tests/common/registry.rs) and a stand-in that serves corrupt or
//! truncated layers.
//!
//! The `fixture_*` tests check the fixture itself with skopeo, a client
//! that is known to work: each kind of registry starts, takes a push and
//! refuses what it should, and the stand-in serves an image skopeo can copy
//! until it is told to break it.
//!
//! Each kind of registry is started once and shared by the tests that use
//! it ([`shared`], [`tls`], [`basic`], [`token`]).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::registry::http::http_get;
use common::registry::layout::{
    multi_platform_layout, registries_conf_docker_io_mirror, registries_conf_insecure,
    write_private, MultiPlatformLayout,
};
use common::registry::stand_in::{FakeRegistry, Fault};
use common::registry::{free_port, fresh_dir, run_bounded, Registry};
use common::{guest_artifact, output_text};

/// The busybox test image (images/build-oci.sh), an OCI layout.
fn busybox_layout() -> PathBuf {
    guest_artifact("oci/busybox")
}

/// The plain-HTTP registry the tests share, with the busybox test image as
/// `library/busybox:1.28` and a two-platform index as `multi/busybox:1`.
struct Shared {
    registry: Registry,
    /// The manifest digest of `library/busybox:1.28`.
    busybox: String,
    /// The two-platform layout pushed as `multi/busybox:1`.
    multi: MultiPlatformLayout,
}

/// The shared registry, started by the first test that asks. It is never
/// dropped: its lifeline stops it when the test process exits.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let registry = Registry::plain();
        let busybox = registry.push(&busybox_layout(), "library/busybox:1.28");
        let scratch = registry.scratch_dir("multi");
        let multi = multi_platform_layout(&busybox_layout(), &scratch);
        registry.push(&multi.dir, "multi/busybox:1");
        Shared {
            registry,
            busybox,
            multi,
        }
    })
}

/// A registry kept for the whole test process, with busybox pushed to it
/// as `library/busybox:1.28`.
struct Pushed {
    registry: Registry,
    /// The manifest digest of `library/busybox:1.28`.
    busybox: String,
}

impl Pushed {
    fn start(registry: Registry) -> Pushed {
        let busybox = registry.push(&busybox_layout(), "library/busybox:1.28");
        Pushed { registry, busybox }
    }
}

/// The HTTPS registry the tests share.
fn tls() -> &'static Pushed {
    static TLS: OnceLock<Pushed> = OnceLock::new();
    TLS.get_or_init(|| Pushed::start(Registry::tls()))
}

/// The Basic auth registry the tests share.
fn basic() -> &'static Pushed {
    static BASIC: OnceLock<Pushed> = OnceLock::new();
    BASIC.get_or_init(|| Pushed::start(Registry::basic_auth()))
}

/// The token auth registry the tests share.
fn token() -> &'static Pushed {
    static TOKEN: OnceLock<Pushed> = OnceLock::new();
    TOKEN.get_or_init(|| Pushed::start(Registry::token_auth()))
}

/// `haystack` contains `needle`, ignoring ASCII case.
fn mentions(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------
// The fixture, checked with skopeo.

#[test]
fn fixture_plain_registry_serves_what_was_pushed() {
    let shared = shared();
    let registry = &shared.registry;
    // skopeo's own idea of the digest agrees with the raw manifest's.
    let out = registry.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}", registry.reference("library/busybox:1.28")),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shared.busybox);
    let manifest: serde_json::Value =
        serde_json::from_slice(&registry.raw_manifest("library/busybox:1.28")).unwrap();
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2));
    // By digest too.
    assert_eq!(
        registry.manifest_digest(&format!("library/busybox@{}", shared.busybox)),
        shared.busybox
    );
    assert!(
        registry
            .log()
            .contains("\"GET /v2/library/busybox/manifests/1.28 HTTP/1.1\" 200"),
        "the access log records requests:\n{}",
        registry.log()
    );
    let (status, _) = http_get(registry.host(), "/v2/").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn fixture_a_dropped_registry_leaves_nothing() {
    let registry = Registry::plain();
    let (pid, dir, host) = (
        registry.pid(),
        registry.dir().to_path_buf(),
        registry.host().to_string(),
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(dir.join("config.yml").is_file());
    drop(registry);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "docker-registry {pid} is gone (reaped, not a zombie)"
    );
    assert!(!dir.exists(), "{} was removed", dir.display());
    assert!(
        http_get(&host, "/v2/").is_err(),
        "nothing answers on {host}"
    );
}

#[test]
fn fixture_registries_confs_work_for_skopeo() {
    let shared = shared();
    let registry = &shared.registry;
    let dir = fresh_dir("registry-skopeo-conf");
    let dead = format!("127.0.0.1:{}", free_port());
    let digest_of = |conf_text: &str, reference: &str| {
        let conf = dir.join("registries.conf");
        fs::write(&conf, conf_text).unwrap();
        registry.skopeo_with_conf(
            &conf,
            // Listing tags would ask docker.io itself, not the mirror.
            &[
                "inspect",
                "--no-tags",
                "--format",
                "{{.Digest}}",
                &format!("docker://{reference}"),
            ],
        )
    };
    // A short name goes to the mirror, and only there.
    let out = digest_of(
        &registries_conf_docker_io_mirror(registry.host(), &dead),
        "busybox:1.28",
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shared.busybox);
    let out = digest_of(
        &registries_conf_docker_io_mirror(&dead, &dead),
        "busybox:1.28",
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&dead),
        "{}",
        output_text(&out)
    );
    // `insecure = true` is what lets plain HTTP through.
    let reference = registry.reference("library/busybox:1.28");
    let out = digest_of(&registries_conf_insecure(&[registry.host()]), &reference);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = digest_of(&registries_conf_insecure(&[]), &reference);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        mentions(
            &String::from_utf8_lossy(&out.stderr),
            "server gave HTTP response to HTTPS client"
        ),
        "{}",
        output_text(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fixture_multi_platform_index_is_pushed_whole() {
    let shared = shared();
    let raw = shared.registry.raw_manifest("multi/busybox:1");
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["arm64", "amd64"]);
    for (i, arch) in [(0, "arm64"), (1, "amd64")] {
        let digest = index["manifests"][i]["digest"].as_str().unwrap();
        let mut args = vec!["inspect".to_string(), "--config".into(), "--raw".into()];
        args.extend(shared.registry.skopeo_flags("", false));
        args.push(format!(
            "docker://{}",
            shared
                .registry
                .reference(&format!("multi/busybox@{digest}"))
        ));
        let out = shared
            .registry
            .skopeo(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", output_text(&out));
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["architecture"], arch, "{config}");
    }
    // The layout's arm64 manifest had an uncompressed layer, which skopeo
    // compressed on the way: the registry's digests are its own.
    assert_eq!(shared.multi.arm64.len(), "sha256:".len() + 64);
}

#[test]
fn fixture_tls_registry_needs_its_ca() {
    // The push checks the certificate against the CA (--dest-cert-dir).
    let Pushed {
        registry,
        busybox: digest,
    } = tls();
    let url = format!("docker://{}", registry.reference("library/busybox:1.28"));
    let cert_dir = registry.cert_dir().unwrap();
    let out = registry.skopeo(&[
        "inspect",
        &format!("--cert-dir={}", cert_dir.display()),
        "--format",
        "{{.Digest}}",
        &url,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let out = registry.skopeo(&["inspect", &url]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        mentions(
            &String::from_utf8_lossy(&out.stderr),
            "certificate signed by unknown authority"
        ),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        fs::read_dir(&cert_dir).unwrap().count(),
        1,
        "the cert dir holds only ca.crt"
    );
}

#[test]
fn fixture_basic_auth_registry_needs_the_password() {
    let Pushed {
        registry,
        busybox: digest,
    } = basic();
    assert_eq!(&registry.manifest_digest("library/busybox:1.28"), digest);
    let url = format!("docker://{}", registry.reference("library/busybox:1.28"));
    let out = registry.skopeo(&["inspect", "--tls-verify=false", &url]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        mentions(
            &String::from_utf8_lossy(&out.stderr),
            "authentication required"
        ),
        "{}",
        output_text(&out)
    );
    let user = &registry.credentials().unwrap().user;
    let out = registry.skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("--creds={user}:wrong"),
        &url,
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    // The auth file the pull tests write is one skopeo reads.
    let dir = fresh_dir("registry-basic-auth-file");
    let auth_file = dir.join("auth.json");
    write_private(
        &auth_file,
        &registry.credentials().unwrap().auth_json(registry.host()),
    );
    let out = registry.skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("--authfile={}", auth_file.display()),
        "--format",
        "{{.Digest}}",
        &url,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fixture_token_registry_trusts_its_issuer() {
    // Pushing asks for pull and push; the issuer grants both to the user.
    let Pushed {
        registry,
        busybox: digest,
    } = token();
    let creds = registry.credentials().unwrap().clone();
    let requests = registry.token_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.user.as_deref() == Some(creds.user.as_str())
                && r.status == 200
                && r.service.as_deref() == Some(common::registry::TOKEN_SERVICE)
                && r.granted
                    .iter()
                    .any(|g| g.starts_with("repository:library/busybox:") && g.contains("push"))),
        "{requests:#?}"
    );
    assert_eq!(&registry.manifest_digest("library/busybox:1.28"), digest);

    let before = registry.token_requests().len();
    let url = format!("docker://{}", registry.reference("library/busybox:1.28"));
    let out = registry.skopeo(&["inspect", "--tls-verify=false", &url]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let anonymous = &registry.token_requests()[before..];
    assert!(
        anonymous
            .iter()
            .any(|r| r.user.is_none() && r.status == 200 && r.granted.is_empty()),
        "an anonymous client gets a token that grants nothing: {anonymous:#?}"
    );
    let out = registry.skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("--creds={}:wrong", creds.user),
        &url,
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        registry.token_requests().iter().any(|r| r.status == 401),
        "the issuer refused the wrong password"
    );
}

/// The claims of a JWT, unchecked.
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&json).expect("the claims are JSON")
}

#[test]
fn fixture_token_issuer_grants_what_the_user_asks_for() {
    use base64::Engine as _;
    use common::registry::http::http_request;
    use common::registry::{TOKEN_ISSUER, TOKEN_SERVICE};
    let Pushed { registry, .. } = token();
    let issuer = registry.token_issuer().unwrap();
    let creds = registry.credentials().unwrap();
    let query =
        format!("/token?service={TOKEN_SERVICE}&scope=repository%3Alibrary%2Fbusybox%3Apull");
    let token_of = |body: &str| {
        let reply: serde_json::Value = serde_json::from_str(body).expect("JSON");
        jwt_claims(reply["token"].as_str().expect("a token"))
    };
    // GET with Basic credentials.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds.pair())
    );
    let (status, body) =
        http_request(&issuer, "GET", &query, &[("Authorization", &basic)], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let claims = token_of(&body);
    assert_eq!(claims["iss"], TOKEN_ISSUER);
    assert_eq!(claims["aud"], TOKEN_SERVICE);
    assert_eq!(claims["sub"], creds.user.as_str());
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "library/busybox", "actions": ["pull"]}])
    );
    // Anonymous: a token that grants nothing.
    let (status, body) = http_get(&issuer, &query).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(token_of(&body)["access"], serde_json::json!([]));
    // The OAuth2 password form.
    let form = format!(
        "grant_type=password&username={}&password={}&service={TOKEN_SERVICE}\
         &scope=repository:library/busybox:pull,push&client_id=unipod-e2e",
        creds.user, creds.password
    );
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) =
        http_request(&issuer, "POST", "/token", &form_type, form.as_bytes()).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        token_of(&body)["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    // A wrong password, either way.
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:nope", creds.user))
    );
    let (status, _) =
        http_request(&issuer, "GET", &query, &[("Authorization", &wrong)], b"").unwrap();
    assert_eq!(status, 401);
    let form = form.replace(&creds.password, "nope");
    let (status, _) = http_request(&issuer, "POST", "/token", &form_type, form.as_bytes()).unwrap();
    assert_eq!(status, 401);
}

#[test]
fn fixture_stand_in_serves_an_image_until_told_to_break_it() {
    let policy = fresh_dir("registry-stand-in");
    // The skopeo isolation of a Registry, by hand: the stand-in has none.
    fs::write(
        policy.join("policy.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    fs::write(policy.join("registries.conf"), "").unwrap();
    let copy = |fake: &FakeRegistry, to: &Path| {
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy")
            .arg(policy.join("policy.json"))
            .arg("--registries-conf")
            .arg(policy.join("registries.conf"))
            .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{}", fake.reference()))
            .arg(format!("oci:{}", to.display()));
        run_bounded(cmd, None, common::registry::SKOPEO_TIMEOUT)
    };
    let good = FakeRegistry::start(&busybox_layout(), Fault::None);
    let out = copy(&good, &policy.join("good"));
    assert!(out.status.success(), "{}", output_text(&out));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(policy.join("good/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], good.manifest_digest());

    let mismatch = FakeRegistry::start(&busybox_layout(), Fault::DigestMismatch);
    let out = copy(&mismatch, &policy.join("mismatch"));
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(mentions(&stderr, "digest did not match"), "{stderr}");
    assert!(stderr.contains(mismatch.faulty_blob().unwrap()), "{stderr}");

    let truncated = FakeRegistry::start(&busybox_layout(), Fault::Truncated);
    let out = copy(&truncated, &policy.join("truncated"));
    assert!(!out.status.success(), "{}", output_text(&out));
    let blob = truncated.faulty_blob().unwrap();
    assert!(
        truncated
            .requests()
            .iter()
            .any(|r| r == &format!("GET /v2/broken/busybox/blobs/{blob}")),
        "{:?}",
        truncated.requests()
    );
    fs::remove_dir_all(&policy).unwrap();
}

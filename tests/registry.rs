//! End-to-end tests of `unipod image pull`, `login` and `logout` against a
//! real registry on loopback (Debian's `docker-registry`, the CNCF
//! distribution registry 2.8, started by tests/common/registry.rs) and a
//! stand-in that serves corrupt or truncated layers.
//!
//! The `fixture_*` tests check the fixture itself with skopeo, a client
//! that is known to work: each kind of registry starts, takes a push and
//! refuses what it should, and the stand-in serves an image skopeo can copy
//! until it is told to break it. The other tests run the `unipod` binary;
//! they need no VM, except `a_pod_pulls_its_image_from_the_mirror`, which
//! skips without KVM.
//!
//! Every `unipod` here gets `CONTAINERS_REGISTRIES_CONF` and
//! `REGISTRY_AUTH_FILE` of the test's own, so the host's configuration and
//! credentials are never read or written, and no pull can leave 127.0.0.1.
//! Each kind of registry is started once and shared by the tests that use
//! it ([`shared`], [`tls`], [`basic`], [`token`]).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use common::registry::http::http_get;
use common::registry::layout::{
    multi_platform_layout, registries_conf_docker_io_mirror, registries_conf_insecure,
    write_private, MultiPlatformLayout,
};
use common::registry::stand_in::{FakeRegistry, Fault};
use common::registry::{free_port, fresh_dir, run_bounded, sha256_digest, sha256_hex, Registry};
use common::{guest_artifact, output_text};

/// How long one `unipod` command may take here (a pull of the busybox test
/// image takes about a second).
const UNIPOD_TIMEOUT: Duration = Duration::from_secs(180);

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

/// A `unipod` user with a state dir, a registries.conf and an auth file
/// path of its own, in a fresh temp dir.
struct Client {
    dir: PathBuf,
    state: PathBuf,
    registries_conf: PathBuf,
    /// `REGISTRY_AUTH_FILE`; it does not exist until a test writes it.
    auth_file: PathBuf,
}

impl Client {
    fn new(name: &str, registries_conf: &str) -> Client {
        let dir = fresh_dir(&format!("registry-{name}"));
        let client = Client {
            state: dir.join("state"),
            registries_conf: dir.join("registries.conf"),
            auth_file: dir.join("no-auth.json"),
            dir,
        };
        fs::write(&client.registries_conf, registries_conf).expect("write registries.conf");
        client
    }

    /// `unipod ARGS` with the client's registries.conf and auth file.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = common::unipod_command();
        cmd.args(args)
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("REGISTRY_AUTH_FILE", &self.auth_file);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), None, UNIPOD_TIMEOUT)
    }

    /// `unipod image pull --state-dir STATE ARGS`.
    fn pull(&self, args: &[&str]) -> Output {
        let mut all = vec!["image", "pull", "--state-dir", self.state_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// A pull that must succeed: its `digest:` and `names:` lines.
    fn pull_ok(&self, args: &[&str]) -> Pulled {
        let out = self.pull(args);
        assert!(
            out.status.success(),
            "unipod image pull {args:?} failed:\n{}",
            output_text(&out)
        );
        Pulled::of(&out)
    }

    /// A pull that must fail with exit code 1: its stderr.
    fn pull_fails(&self, args: &[&str]) -> String {
        let out = self.pull(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "unipod image pull {args:?} should fail with 1:\n{}",
            output_text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.trim().is_empty(), "a failed pull says why");
        stderr
    }

    /// `unipod image SUBCOMMAND --state-dir STATE ARGS`, which must succeed:
    /// its stdout.
    fn image_ok(&self, subcommand: &str, args: &[&str]) -> String {
        let mut all = vec!["image", subcommand, "--state-dir", self.state_str()];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "unipod {all:?} failed:\n{}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rows of `unipod image ls` (without its header).
    fn image_rows(&self) -> Vec<String> {
        let ls = self.image_ok("ls", &[]);
        let mut lines = ls.lines();
        let header = lines.next().unwrap_or_default();
        assert!(header.starts_with("NAME"), "image ls has a header:\n{ls}");
        lines.map(String::from).collect()
    }

    /// The `image ls` row of `name`.
    fn row_of(&self, name: &str) -> Option<String> {
        self.image_rows()
            .into_iter()
            .find(|r| r.split_whitespace().next() == Some(name))
    }

    fn state_str(&self) -> &str {
        self.state.to_str().expect("utf-8 temp path")
    }

    /// Writes an auth file with `text`; returns its path.
    fn write_auth(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        write_private(&path, text);
        path
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Kept when the test failed, for a look at the state dir.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a successful pull printed.
#[derive(Debug)]
struct Pulled {
    digest: String,
    names: String,
    rootfs: PathBuf,
    stdout: String,
}

impl Pulled {
    fn of(out: &Output) -> Pulled {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", output_text(out)))
                .to_string()
        };
        let rootfs = line("rootfs:");
        let rootfs = rootfs
            .rsplit_once(" (")
            .map_or(rootfs.as_str(), |(path, _size)| path)
            .into();
        Pulled {
            digest: line("digest:"),
            names: line("names:"),
            rootfs,
            stdout,
        }
    }
}

/// `haystack` contains `needle`, ignoring ASCII case.
fn mentions(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// The 12-digit short form of `sha256:<hex>` that messages and `image ls`
/// may use.
fn short(digest: &str) -> &str {
    &digest["sha256:".len().."sha256:".len() + 12]
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

// ---------------------------------------------------------------------------
// unipod image pull.

#[test]
fn pull_through_an_insecure_mirror_for_docker_io() {
    let shared = shared();
    let dead = format!("127.0.0.1:{}", free_port());
    let client = Client::new(
        "mirror",
        &registries_conf_docker_io_mirror(shared.registry.host(), &dead),
    );
    let pulled = client.pull_ok(&["busybox:1.28"]);
    assert_eq!(pulled.digest, shared.busybox, "{}", pulled.stdout);
    assert!(pulled.names.contains("busybox:1.28"), "{}", pulled.stdout);
    assert!(
        pulled.rootfs.is_file(),
        "{} exists",
        pulled.rootfs.display()
    );
    // docker.io's own location is a dead port: only the mirror has it.
    let row = client
        .row_of("busybox:1.28")
        .unwrap_or_else(|| panic!("busybox:1.28 is listed: {:?}", client.image_rows()));
    assert!(row.contains(short(&shared.busybox)), "{row}");
}

#[test]
fn pull_over_tls_needs_the_ca_from_cert_dir() {
    let Pushed {
        registry,
        busybox: digest,
    } = tls();
    let reference = registry.reference("library/busybox:1.28");
    let client = Client::new("tls", &registries_conf_insecure(&[]));

    let stderr = client.pull_fails(&[&reference]);
    assert!(mentions(&stderr, "certificate"), "{stderr}");
    assert_eq!(client.image_rows(), Vec::<String>::new());

    let cert_dir = registry.cert_dir().unwrap();
    let pulled = client.pull_ok(&["--cert-dir", cert_dir.to_str().unwrap(), &reference]);
    assert_eq!(&pulled.digest, digest);
    assert!(pulled.names.contains(&reference), "{}", pulled.stdout);
    assert!(
        client.row_of(&reference).is_some(),
        "{:?}",
        client.image_rows()
    );
}

#[test]
fn plain_http_needs_insecure_or_tls_verify_false() {
    let shared = shared();
    let reference = shared.registry.reference("library/busybox:1.28");
    let client = Client::new("plain-http", &registries_conf_insecure(&[]));
    let stderr = client.pull_fails(&[&reference]);
    assert!(stderr.contains(shared.registry.host()), "{stderr}");
    assert!(
        mentions(&stderr, "insecure") || mentions(&stderr, "tls-verify"),
        "the error names the fix: {stderr}"
    );
    assert_eq!(client.image_rows(), Vec::<String>::new());

    let pulled = client.pull_ok(&["--tls-verify=false", &reference]);
    assert_eq!(pulled.digest, shared.busybox);

    let insecure = Client::new(
        "plain-http-insecure",
        &registries_conf_insecure(&[shared.registry.host()]),
    );
    assert_eq!(insecure.pull_ok(&[&reference]).digest, shared.busybox);
}

/// The auth-file entry for `host` in the containers-auth.json at `path`.
fn auth_entry(path: &Path, host: &str) -> Option<serde_json::Value> {
    let file: serde_json::Value =
        serde_json::from_slice(&fs::read(path).ok()?).expect("the auth file is JSON");
    file["auths"].get(host).cloned()
}

/// `unipod login` of `user` with `password` on stdin into `auth_file`.
fn login(
    client: &Client,
    registry: &Registry,
    auth_file: &Path,
    user: &str,
    password: &str,
) -> Output {
    run_bounded(
        client.command(&[
            "login",
            "--authfile",
            auth_file.to_str().unwrap(),
            "--tls-verify=false",
            "-u",
            user,
            "--password-stdin",
            registry.host(),
        ]),
        Some(format!("{password}\n").as_bytes()),
        UNIPOD_TIMEOUT,
    )
}

/// The checks the Basic and token registries share: no credentials, wrong
/// ones, an auth file, `$REGISTRY_AUTH_FILE`, login and logout.
fn check_credentials(registry: &Registry, name: &str, digest: &str) {
    let host = registry.host();
    let reference = registry.reference("library/busybox:1.28");
    let creds = registry.credentials().unwrap().clone();
    let conf = registries_conf_insecure(&[host]);

    let client = Client::new(&format!("{name}-none"), &conf);
    let stderr = client.pull_fails(&[&reference]);
    assert!(stderr.contains(host), "names the registry: {stderr}");
    assert!(stderr.contains("unipod login"), "says to log in: {stderr}");
    assert_eq!(client.image_rows(), Vec::<String>::new());

    let wrong = common::registry::Credentials {
        user: creds.user.clone(),
        password: "not-the-password".into(),
    };
    let wrong_file = client.write_auth("wrong.json", &wrong.auth_json(host));
    let stderr = client.pull_fails(&["--authfile", wrong_file.to_str().unwrap(), &reference]);
    assert!(stderr.contains(host), "names the registry: {stderr}");

    let good_file = client.write_auth("good.json", &creds.auth_json(host));
    let pulled = client.pull_ok(&["--authfile", good_file.to_str().unwrap(), &reference]);
    assert_eq!(pulled.digest, digest);
    assert!(
        client.row_of(&reference).is_some(),
        "{:?}",
        client.image_rows()
    );

    // $REGISTRY_AUTH_FILE, in a state dir without the image.
    let mut by_env = Client::new(&format!("{name}-env"), &conf);
    by_env.auth_file = by_env.write_auth("auth.json", &creds.auth_json(host));
    assert_eq!(by_env.pull_ok(&[&reference]).digest, digest);

    // login checks the password before it writes anything.
    let fresh = Client::new(&format!("{name}-login"), &conf);
    let auth_file = fresh.dir.join("login.json");
    let out = login(&fresh, registry, &auth_file, &creds.user, &wrong.password);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        auth_entry(&auth_file, host).is_none(),
        "no entry for a refused login"
    );
    let out = login(&fresh, registry, &auth_file, &creds.user, &creds.password);
    assert!(out.status.success(), "{}", output_text(&out));
    let entry = auth_entry(&auth_file, host).expect("login wrote an entry for the registry");
    assert_eq!(
        entry["auth"].as_str(),
        Some(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, creds.pair())
                .as_str()
        ),
        "{entry}"
    );
    let mode = fs::metadata(&auth_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the auth file is private: {mode:o}");
    let pulled = fresh.pull_ok(&["--authfile", auth_file.to_str().unwrap(), &reference]);
    assert_eq!(pulled.digest, digest);

    let out = run_bounded(
        fresh.command(&["logout", "--authfile", auth_file.to_str().unwrap(), host]),
        None,
        UNIPOD_TIMEOUT,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        auth_entry(&auth_file, host).is_none(),
        "logout removed the entry: {}",
        fs::read_to_string(&auth_file).unwrap_or_default()
    );
    let after = Client::new(&format!("{name}-logged-out"), &conf);
    let stderr = after.pull_fails(&["--authfile", auth_file.to_str().unwrap(), &reference]);
    assert!(stderr.contains("unipod login"), "{stderr}");
}

#[test]
fn basic_auth_pull_login_and_logout() {
    let Pushed { registry, busybox } = basic();
    check_credentials(registry, "basic", busybox);
}

#[test]
fn bearer_token_pull_login_and_logout() {
    let Pushed { registry, busybox } = token();
    let before = registry.token_requests().len();
    check_credentials(registry, "token", busybox);
    let user = registry.credentials().unwrap().user.clone();
    let requests = registry.token_requests()[before..].to_vec();
    assert!(
        requests
            .iter()
            .any(|r| r.user.as_deref() == Some(user.as_str())
                && r.status == 200
                && r.scopes
                    .iter()
                    .any(|s| s == "repository:library/busybox:pull")
                && r.granted
                    .iter()
                    .any(|g| g == "repository:library/busybox:pull")),
        "unipod asked the issuer for a pull token with the user's credentials: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.service.as_deref() == Some(common::registry::TOKEN_SERVICE)),
        "every token request names the registry's service: {requests:#?}"
    );
}

#[test]
fn a_multi_platform_index_pulls_the_amd64_manifest() {
    let shared = shared();
    let raw = shared.registry.raw_manifest("multi/busybox:1");
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let entry = |arch: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .unwrap_or_else(|| panic!("no {arch} in {index}"))
            .to_string()
    };
    let (amd64, arm64) = (entry("amd64"), entry("arm64"));
    let reference = shared.registry.reference("multi/busybox:1");
    let client = Client::new(
        "multi",
        &registries_conf_insecure(&[shared.registry.host()]),
    );
    let pulled = client.pull_ok(&[&reference]);
    assert_eq!(
        pulled.digest,
        amd64,
        "arm64 is {arm64}, the index {}",
        sha256_digest(&raw)
    );
    assert!(pulled.names.contains(&reference), "{}", pulled.stdout);
}

#[test]
fn a_pull_by_digest_gets_that_manifest() {
    let shared = shared();
    let reference = shared
        .registry
        .reference(&format!("library/busybox@{}", shared.busybox));
    let client = Client::new(
        "digest",
        &registries_conf_insecure(&[shared.registry.host()]),
    );
    let pulled = client.pull_ok(&[&reference]);
    assert_eq!(pulled.digest, shared.busybox);
    assert!(
        client
            .image_rows()
            .iter()
            .any(|r| r.contains(short(&shared.busybox))),
        "{:?}",
        client.image_rows()
    );
    let missing = format!("sha256:{}", sha256_hex(b"no such manifest"));
    let stderr = client.pull_fails(&[&shared
        .registry
        .reference(&format!("library/busybox@{missing}"))]);
    assert!(
        stderr.contains(short(&missing)),
        "names the digest: {stderr}"
    );
}

#[test]
fn missing_images_and_refused_connections_fail_clearly() {
    let shared = shared();
    let host = shared.registry.host();
    let dead = format!("127.0.0.1:{}", free_port());
    let client = Client::new(
        "not-found",
        &registries_conf_insecure(&[host, dead.as_str()]),
    );
    for (repo, tag) in [
        ("library/nosuch", "no-such-tag"),
        ("library/busybox", "no-such-tag"),
    ] {
        let stderr = client.pull_fails(&[&format!("{host}/{repo}:{tag}")]);
        assert!(stderr.contains(repo), "names the repository: {stderr}");
        assert!(stderr.contains(tag), "names the tag: {stderr}");
        assert!(mentions(&stderr, "not found"), "{stderr}");
    }
    let stderr = client.pull_fails(&[&format!("{dead}/library/busybox:1.28")]);
    assert!(stderr.contains(&dead), "names the registry: {stderr}");
    assert!(mentions(&stderr, "refused"), "{stderr}");
    assert_eq!(client.image_rows(), Vec::<String>::new());
}

#[test]
fn a_detached_pod_whose_image_cannot_be_pulled_backs_off_and_deletes_cleanly() {
    use common::pod::{run_pod, status, text, unipod, wait_for};
    let shared = shared();
    let dead = format!("127.0.0.1:{}", free_port());
    let client = Client::new(
        "back-off",
        &registries_conf_docker_io_mirror(shared.registry.host(), &dead),
    );
    let pod = "pull-back-off";
    // The docs' first Pod, with an image no registry has.
    let manifest = common::pod::manifest(
        pod,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  containers:\n  \
             - name: nginx\n    image: nginx-nosuch:1.14.2\n    ports:\n    - containerPort: 80\n"
        ),
    );
    // Even a failed test ends the pod: its supervisor would retry forever.
    struct RemoveOnDrop<'a>(&'a Path, &'a str);
    impl Drop for RemoveOnDrop<'_> {
        fn drop(&mut self) {
            let _ = unipod(self.0, "rm", &["-f", self.1]);
        }
    }
    let _cleanup = RemoveOnDrop(&client.state, pod);
    // In the foreground the run fails at once. Its state has no snapshot,
    // so the template VM boots while the image is pulled, and is stopped
    // when the pull fails.
    let mut run = run_pod(&client.state, &manifest, &[]);
    run.env("CONTAINERS_REGISTRIES_CONF", &client.registries_conf)
        .env("REGISTRY_AUTH_FILE", &client.auth_file);
    let out = run_bounded(run, None, UNIPOD_TIMEOUT);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{}", output_text(&out));
    assert!(
        stderr.contains("booting a template VM")
            && stderr.contains("library/nginx-nosuch")
            && mentions(&stderr, "not found"),
        "{stderr}"
    );
    assert_no_template_left(&client.state);
    assert!(!client.state.join("pods").join(pod).exists(), "no pod");
    let mut run = run_pod(&client.state, &manifest, &["--detach"]);
    run.env("CONTAINERS_REGISTRIES_CONF", &client.registries_conf)
        .env("REGISTRY_AUTH_FILE", &client.auth_file);
    let out = run_bounded(run, None, UNIPOD_TIMEOUT);
    let (stdout, stderr) = text(&out);
    // As kubectl apply: the pod is created, and waits.
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(stdout.trim(), pod);
    assert!(
        (stderr.contains("container nginx is waiting: ErrImagePull")
            || stderr.contains("container nginx is waiting: ImagePullBackOff"))
            && stderr.contains("Failed to pull image \"nginx-nosuch:1.14.2\"")
            && stderr.contains("library/nginx-nosuch")
            && mentions(&stderr, "not found"),
        "{stderr}"
    );
    let waiting = |s: &serde_json::Value| {
        s["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let pulls = |s: &serde_json::Value| {
        s["events"]
            .as_array()
            .map(|events| (events.iter()).filter(|e| e["reason"] == "Pulling").count())
            .unwrap_or(0)
    };
    assert_no_template_left(&client.state);
    // The supervisor tries again with back-off (200 ms, doubling, here).
    wait_for(
        &client.state,
        pod,
        "in ImagePullBackOff after a retry",
        |s| waiting(s) == "ImagePullBackOff" && pulls(s) >= 2,
    );
    let now = status(&client.state, pod);
    assert_eq!(now["status"]["phase"], "Pending", "{now:#}");
    let supervisor = now["supervisor"]["pid"]
        .as_i64()
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a supervisor");
    let (get, _) = text(&unipod(&client.state, "get", &[pod]));
    assert!(
        get.contains("ImagePullBackOff") || get.contains("ErrImagePull"),
        "{get}"
    );
    let (described, _) = text(&unipod(&client.state, "describe", &[pod]));
    for event in [
        "Pulling image \"nginx-nosuch:1.14.2\"",
        "Failed to pull image \"nginx-nosuch:1.14.2\"",
        "Error: ErrImagePull",
        "Back-off pulling image \"nginx-nosuch:1.14.2\"",
        "Error: ImagePullBackOff",
    ] {
        assert!(described.contains(event), "{event}:\n{described}");
    }
    // Delete ends the wait and leaves nothing: no pod, no supervisor.
    let out = unipod(&client.state, "delete", &["pod", pod, "--grace-period=1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!client.state.join("pods").join(pod).exists(), "deleted");
    let gone = common::wait_until(Duration::from_secs(10), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_err()
    });
    assert!(gone, "the supervisor {supervisor} ended");
    assert_eq!(client.image_rows(), Vec::<String>::new(), "nothing pulled");
}

/// Asserts that no template VM (one whose command line names `state`'s
/// snapshot cache) runs and that the cache holds no snapshot, finished or
/// half-made.
fn assert_no_template_left(state: &Path) {
    let cache = state.join("snapshots");
    let vmms = Command::new("pgrep")
        .arg("-af")
        .arg(cache.to_str().expect("utf-8 path"))
        .output()
        .expect("pgrep runs");
    assert_eq!(String::from_utf8_lossy(&vmms.stdout), "", "template VMMs");
    let entries: Vec<String> = fs::read_dir(&cache)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".lock") && name != ".hashes")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(entries, Vec::<String>::new(), "in {}", cache.display());
}

/// What a failed pull may not leave in `state`/images/: files or
/// directories whose names say they are temporary or partial, anything
/// named after `bad_blob`, and files named after a sha256 digest whose
/// contents do not have it (a blob stored unverified).
fn leftovers(state: &Path, bad_blob: &str) -> Vec<String> {
    let bad_hex = &bad_blob["sha256:".len()..];
    let mut found = Vec::new();
    let mut dirs = vec![state.join("images")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
            let file_type = entry.file_type().unwrap();
            if ["tmp", "part", "download", "incomplete"]
                .iter()
                .any(|w| name.contains(w))
                || name.contains(bad_hex)
            {
                found.push(format!("{}", path.display()));
            } else if file_type.is_dir() {
                dirs.push(path);
            } else if file_type.is_file() {
                let hex = name
                    .strip_prefix("sha256:")
                    .or_else(|| name.strip_prefix("sha256-"))
                    .unwrap_or(&name);
                if hex.len() == 64
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && sha256_hex(&fs::read(&path).unwrap()) != hex
                {
                    found.push(format!("{} (contents do not match)", path.display()));
                }
            }
        }
    }
    found
}

#[test]
fn corrupt_or_truncated_layers_are_refused_and_leave_nothing() {
    // The stand-in serves a pullable image when nothing is broken, so the
    // failures below come from the fault alone.
    let good = FakeRegistry::start(&busybox_layout(), Fault::None);
    let client = Client::new("stand-in-good", &registries_conf_insecure(&[&good.host()]));
    let pulled = client.pull_ok(&[&good.reference()]);
    assert_eq!(pulled.digest, good.manifest_digest());

    for fault in [Fault::DigestMismatch, Fault::Truncated] {
        let fake = FakeRegistry::start(&busybox_layout(), fault);
        let blob = fake.faulty_blob().unwrap().to_string();
        let client = Client::new(
            &format!("stand-in-{fault:?}"),
            &registries_conf_insecure(&[&fake.host()]),
        );
        let stderr = client.pull_fails(&[&fake.reference()]);
        assert!(
            stderr.contains(short(&blob)),
            "{fault:?}: names the layer {blob}: {stderr}"
        );
        if fault == Fault::DigestMismatch {
            assert!(mentions(&stderr, "digest"), "{stderr}");
        }
        assert!(
            fake.requests()
                .iter()
                .any(|r| r == &format!("GET /v2/broken/busybox/blobs/{blob}")),
            "{fault:?}: the broken layer was fetched: {:?}",
            fake.requests()
        );
        assert_eq!(client.image_rows(), Vec::<String>::new(), "{fault:?}");
        assert_eq!(
            leftovers(&client.state, &blob),
            Vec::<String>::new(),
            "{fault:?}"
        );
    }
}

#[test]
fn rm_and_prune_drop_a_pulled_image_and_its_layers() {
    let shared = shared();
    let reference = shared.registry.reference("library/busybox:1.28");
    let client = Client::new(
        "prune",
        &registries_conf_insecure(&[shared.registry.host()]),
    );
    let pulled = client.pull_ok(&[&reference]);
    client.image_ok("prune", &[]);
    assert!(pulled.rootfs.is_file(), "prune keeps images in use");
    assert!(client.row_of(&reference).is_some());

    client.image_ok("rm", &[&reference]);
    assert_eq!(client.image_rows(), Vec::<String>::new());
    client.image_ok("prune", &[]);
    let bytes = du(&client.state.join("images"));
    assert!(
        bytes < 256 * 1024,
        "{bytes} bytes left in images/ after rm and prune; the layers alone are over 1 MiB"
    );
}

/// Bytes in the regular files under `dir`.
fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    let t = e.file_type().unwrap();
                    if t.is_dir() {
                        du(&e.path())
                    } else if t.is_file() {
                        e.metadata().unwrap().len()
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// A pod.

#[test]
fn a_pod_pulls_its_image_from_the_mirror() {
    use common::pod::{remove, run_pod, text, unipod, wait_for};
    if common::skip_without_kvm("a_pod_pulls_its_image_from_the_mirror") {
        return;
    }
    let shared = shared();
    let state = common::shared_state_dir();
    let pod = "registry-pull";
    remove(&state, pod);
    // Nothing imported by hand: the image must come from the mirror.
    let _ = unipod(&state, "image", &["rm", "busybox:1.28"]);
    let (ls, _) = text(&unipod(&state, "image", &["ls"]));
    assert!(
        !ls.lines().any(|l| l.starts_with("busybox:1.28 ")),
        "busybox:1.28 is not there before the pod:\n{ls}"
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let conf_dir = fresh_dir("registry-pod");
    let conf = conf_dir.join("registries.conf");
    // The private registry is plain HTTP on loopback: insecure.
    let private = basic();
    let private_host = private.registry.host();
    fs::write(
        &conf,
        format!(
            "{}\n[[registry]]\nlocation = \"{private_host}\"\ninsecure = true\n",
            registries_conf_docker_io_mirror(shared.registry.host(), &dead)
        ),
    )
    .unwrap();
    let private_image = format!("{private_host}/library/busybox:1.28");
    let _ = unipod(&state, "image", &["rm", &private_image]);
    // An image the mirror gets only once the pod waits for it.
    let late_image = "late-busybox:1";
    let _ = unipod(&state, "image", &["rm", late_image]);
    // The Kubernetes docs' busybox pod, with a second container whose image
    // needs the credentials of an imagePullSecrets Secret (the docs'
    // "Pull an Image from a Private Registry"), in the same file.
    let docker_config = base64::engine::general_purpose::STANDARD.encode(
        private
            .registry
            .credentials()
            .expect("the Basic auth registry has users")
            .auth_json(private_host),
    );
    let manifest = common::pod::manifest(
        pod,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\n\
             type: kubernetes.io/dockerconfigjson\n\
             data:\n  .dockerconfigjson: {docker_config}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  labels:\n    app: myapp\n\
             spec:\n  containers:\n  - name: myapp-container\n    image: busybox:1.28\n    \
             command: ['sh', '-c', 'echo hello; sleep 3600']\n  \
             - name: private-reg-container\n    image: {private_image}\n    \
             command: ['sleep', '3600']\n  \
             - name: late\n    image: {late_image}\n    command: ['sleep', '3600']\n  \
             imagePullSecrets:\n  - name: regcred\n"
        ),
    );
    let mut run = run_pod(&state, &manifest, &["--detach"]);
    run.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", conf_dir.join("no-auth.json"));
    let out = run_bounded(run, None, UNIPOD_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("container late is waiting: ")
            && output_text(&out).contains("Failed to pull image \"late-busybox:1\""),
        "{}",
        output_text(&out)
    );
    // The pod waits in back-off until the registry has the image, then
    // runs without being told.
    wait_for(&state, pod, "waiting for its late image", |s| {
        s["status"]["containerStatuses"][2]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    shared
        .registry
        .push(&busybox_layout(), &format!("library/{late_image}"));
    wait_for(&state, pod, "Running", |s| {
        s["status"]["phase"] == "Running"
    });
    let logs = || text(&unipod(&state, "logs", &[pod, "-c", "myapp-container"]));
    let logs_say_hello = common::wait_until(Duration::from_secs(60), || logs().0 == "hello\n");
    assert!(logs_say_hello, "logs: {:?}", logs());
    // The kubelet's events: each image pulled, the private one with the
    // Secret's credentials (the auth file the run was given does not exist).
    let (described, _) = text(&unipod(&state, "describe", &[pod]));
    for event in [
        "Pulling image \"busybox:1.28\"".to_string(),
        "Successfully pulled image \"busybox:1.28\"".to_string(),
        format!("Successfully pulled image \"{private_image}\""),
        format!("Back-off pulling image \"{late_image}\""),
        format!("Successfully pulled image \"{late_image}\""),
    ] {
        assert!(described.contains(&event), "{event}:\n{described}");
    }
    let (ls, _) = text(&unipod(&state, "image", &["ls"]));
    let row = ls
        .lines()
        .find(|l| l.starts_with("busybox:1.28 "))
        .unwrap_or_else(|| panic!("busybox:1.28 was pulled:\n{ls}"));
    assert!(row.contains(short(&shared.busybox)), "{row}");
    let out = unipod(&state, "delete", &["pod", pod, "--grace-period=1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!state.join("pods").join(pod).exists(), "deleted");
    let _ = unipod(
        &state,
        "image",
        &["rm", "busybox:1.28", &private_image, late_image],
    );
    let _ = unipod(&state, "delete", &["secret", "regcred"]);
    fs::remove_dir_all(&conf_dir).unwrap();
}

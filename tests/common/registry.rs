//! Container registries on loopback for the tests of `unipod image pull`
//! and `unipod login` (tests/registry.rs): a real one, and a stand-in that
//! misbehaves on purpose.
//!
//! [`Registry`] runs Debian's `docker-registry` (the CNCF distribution
//! registry 2.8) on a free port of 127.0.0.1, with filesystem storage in a
//! temp dir, in one of four forms: plain HTTP, HTTPS with a CA made for the
//! test, htpasswd Basic auth, or Bearer tokens from an issuer the test runs
//! itself ([`Auth::Token`], [`issuer`]). [`Registry::push`] copies an OCI
//! layout into it with `skopeo`. [`stand_in::FakeRegistry`] is a small HTTP
//! server ([`http`]) that serves one image from an OCI layout, optionally
//! with a layer whose bytes do not match its digest or that stops half way.
//! [`layout`] makes a two-platform OCI layout and the registries.conf files
//! the tests give `unipod`.
//!
//! # Design
//! - **Nothing outlives the test process.** The registry is started by a
//!   small `sh` "lifeline" whose stdin is a pipe from the test process. When
//!   that pipe closes (the [`Registry`] is dropped, the test panics and
//!   unwinds, or the process dies, even by SIGKILL, or never drops a
//!   registry kept in a `static`), the shell kills the registry, reaps it and
//!   removes its temp dir. The issuer and stand-in threads die with the
//!   process.
//! - **Ready means answering:** the fixture polls `GET /v2/` (200, or 401
//!   with auth) for at most [`READY_TIMEOUT`]; an HTTPS registry is
//!   probed with plain HTTP, which Go's server answers with 400 "Client sent
//!   an HTTP request to an HTTPS server". A registry that dies first fails
//!   with its log.
//! - **The token issuer** grants what the right user asks for and nothing
//!   to an anonymous client, in ES256 JWTs whose `x5c` certificate is the
//!   registry's `rootcertbundle`; it records each request
//!   ([`Registry::token_requests`]).
//! - skopeo runs with a policy, an empty registries.conf and an auth file
//!   of the fixture's own, so the host's containers configuration never
//!   changes what it does.
//!
//! # Limitations
//! - The port is picked by binding port 0 and closing it; another process
//!   can take it before the registry binds. A start that fails with
//!   "address already in use" is retried on a new port (5 times).
//! - The certificates are valid for two days from their creation.

pub mod http;
pub mod issuer;
pub mod layout;
pub mod stand_in;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use http::http_get;
use issuer::{TokenIssuer, TokenRequest};

/// How long a registry may take to answer its first `GET /v2/`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one skopeo run may take (a push of the busybox test image takes
/// well under a second).
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// The `service` the token registry names, and the `aud` of its tokens.
pub const TOKEN_SERVICE: &str = "unipod-e2e-registry";
/// The `iss` of the issuer's tokens.
pub const TOKEN_ISSUER: &str = "unipod-e2e-token-issuer";

/// How clients authenticate to a [`Registry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may push and pull.
    #[default]
    None,
    /// HTTP Basic against an htpasswd file (bcrypt, made by `htpasswd -B`).
    Basic,
    /// Bearer tokens from the fixture's issuer, which takes HTTP Basic.
    Token,
}

/// What kind of [`Registry`] to start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// HTTPS with a certificate for 127.0.0.1 from a CA made for this
    /// registry ([`Registry::cert_dir`]); plain HTTP when false.
    pub tls: bool,
    /// Who may push and pull.
    pub auth: Auth,
}

/// A user name and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl Credentials {
    /// `user:password`, as `skopeo --creds` takes them.
    pub fn pair(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// A containers-auth.json(5) file holding these credentials for `host`.
    pub fn auth_json(&self, host: &str) -> String {
        let auth = STANDARD.encode(self.pair());
        serde_json::json!({ "auths": { host: { "auth": auth } } }).to_string()
    }
}

/// A `docker-registry` process on 127.0.0.1, stopped and removed with its
/// files on drop.
pub struct Registry {
    host: String,
    options: Options,
    dir: PathBuf,
    credentials: Option<Credentials>,
    issuer: Option<TokenIssuer>,
    lifeline: Lifeline,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn plain() -> Registry {
        Registry::start(Options::default())
    }

    /// An HTTPS registry without auth; its CA is in [`Registry::cert_dir`].
    pub fn tls() -> Registry {
        Registry::start(Options {
            tls: true,
            auth: Auth::None,
        })
    }

    /// A plain-HTTP registry with htpasswd Basic auth.
    pub fn basic_auth() -> Registry {
        Registry::start(Options {
            tls: false,
            auth: Auth::Basic,
        })
    }

    /// A plain-HTTP registry that takes Bearer tokens from the fixture's
    /// issuer.
    pub fn token_auth() -> Registry {
        Registry::start(Options {
            tls: false,
            auth: Auth::Token,
        })
    }

    /// Starts a registry and waits until it answers; panics, with its log,
    /// when it cannot.
    pub fn start(options: Options) -> Registry {
        require_tool("docker-registry", "docker-registry");
        require_tool("skopeo", "skopeo");
        let dir = fresh_dir("registry");
        if options.tls {
            make_tls_files(&dir);
        }
        let credentials = (options.auth != Auth::None).then(|| Credentials {
            user: "unipod-tester".into(),
            password: random_hex(12),
        });
        let issuer = match options.auth {
            Auth::Basic => {
                require_tool("htpasswd", "apache2-utils");
                let creds = credentials.as_ref().expect("auth has credentials");
                let line = run_checked(Command::new("htpasswd").args([
                    "-Bbn",
                    &creds.user,
                    &creds.password,
                ]));
                fs::write(dir.join("htpasswd"), line.trim_end()).expect("write htpasswd");
                None
            }
            Auth::Token => Some(TokenIssuer::start(
                &dir.join("token"),
                credentials.clone().expect("auth has credentials"),
            )),
            Auth::None => None,
        };
        fs::write(dir.join("policy.json"), POLICY).expect("write policy.json");
        fs::write(dir.join("registries.conf"), "").expect("write registries.conf");

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let host = format!("127.0.0.1:{}", free_port());
            let config = dir.join("config.yml");
            fs::write(&config, config_yaml(&dir, &host, &options, issuer.as_ref()))
                .expect("write config.yml");
            let _ = fs::remove_file(dir.join("registry.log"));
            let mut lifeline = Lifeline::spawn(
                &dir,
                Command::new("docker-registry").arg("serve").arg(&config),
            );
            match wait_ready(&lifeline, &host, &options, &dir) {
                Ok(()) => {
                    return Registry {
                        host,
                        options,
                        dir,
                        credentials,
                        issuer,
                        lifeline,
                    }
                }
                Err(log) if log.contains("address already in use") => {
                    // Another process took the port: try another, with the
                    // same files.
                    lifeline.stop(false);
                    last_log = log;
                }
                Err(log) => {
                    lifeline.stop(true);
                    let _ = fs::remove_dir_all(&dir);
                    panic!("docker-registry did not start:\n{log}");
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("docker-registry found no free port in 5 tries:\n{last_log}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `127.0.0.1:PORT/reference`, e.g. for `library/busybox:1.28`.
    pub fn reference(&self, reference: &str) -> String {
        format!("{}/{reference}", self.host)
    }

    /// The `docker-registry` process's pid.
    pub fn pid(&self) -> i32 {
        self.lifeline.pid
    }

    /// The temp dir with its storage, configuration, certificates and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What kind of registry this is.
    pub fn options(&self) -> Options {
        self.options
    }

    /// A directory holding only the CA certificate (`ca.crt`) of an HTTPS
    /// registry: what `--cert-dir` takes.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.join("certs"))
    }

    /// The CA certificate of an HTTPS registry (PEM).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.cert_dir().map(|d| d.join("ca.crt"))
    }

    /// A new empty directory that goes with the registry's files: for
    /// layouts to push into it from a registry kept in a `static`.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join("scratch").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// The user allowed to push and pull, with Basic or token auth.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The registry's log so far: warnings and errors, and an access log
    /// line per request (`"GET /v2/library/busybox/manifests/1.28 ..."`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT` of the token issuer (its realm is
    /// `http://HOST/token`), with [`Auth::Token`].
    pub fn token_issuer(&self) -> Option<String> {
        self.issuer
            .as_ref()
            .map(|i| format!("127.0.0.1:{}", i.server.port))
    }

    /// Every request the token issuer answered so far (none without
    /// [`Auth::Token`]).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.issuer
            .as_ref()
            .map(|i| i.requests.lock().expect("issuer log").clone())
            .unwrap_or_default()
    }

    /// `skopeo ARGS`, isolated from the host's containers configuration:
    /// `--policy` of its own and an empty registries.conf and auth file.
    /// Bounded by [`SKOPEO_TIMEOUT`].
    pub fn skopeo(&self, args: &[&str]) -> Output {
        skopeo_isolated(&self.dir, &self.dir.join("registries.conf"), args)
    }

    /// [`Registry::skopeo`] with the registries.conf `conf`: to check the
    /// configuration files the tests give `unipod` on a client known to
    /// work. An `--authfile` in `args` replaces the empty one.
    pub fn skopeo_with_conf(&self, conf: &Path, args: &[&str]) -> Output {
        skopeo_isolated(&self.dir, conf, args)
    }

    /// The flags that let skopeo reach this registry as `prefix` (`src-`,
    /// `dest-`, or empty for `inspect`): TLS checked against the CA, or
    /// off for plain HTTP; and the credentials when `with_credentials`.
    pub fn skopeo_flags(&self, prefix: &str, with_credentials: bool) -> Vec<String> {
        let mut flags = match self.cert_dir() {
            Some(dir) => vec![format!("--{prefix}cert-dir={}", dir.display())],
            None => vec![format!("--{prefix}tls-verify=false")],
        };
        if let (true, Some(creds)) = (with_credentials, &self.credentials) {
            flags.push(format!("--{prefix}creds={}", creds.pair()));
        }
        flags
    }

    /// Copies the OCI layout `layout` (all its platforms) to `repo_tag`
    /// (`library/busybox:1.28`) with `skopeo copy --all`; returns the digest
    /// of the manifest the registry now serves for it. Panics, with skopeo's
    /// output and the registry's log, when the copy fails.
    pub fn push(&self, layout: &Path, repo_tag: &str) -> String {
        let mut args = vec!["copy".to_string(), "--all".into(), "--quiet".into()];
        args.extend(self.skopeo_flags("dest-", true));
        args.push(format!("oci:{}", layout.display()));
        args.push(format!("docker://{}", self.reference(repo_tag)));
        self.skopeo_ok(&args);
        self.manifest_digest(repo_tag)
    }

    /// Runs skopeo with `args`; panics, with its output and the registry's
    /// log, when it fails.
    fn skopeo_ok(&self, args: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.skopeo(&args);
        assert!(
            out.status.success(),
            "skopeo {args:?} failed:\n{}\nregistry log:\n{}",
            output_text(&out),
            self.log()
        );
        out
    }

    /// The manifest (or index) the registry serves for `reference`
    /// (`repo:tag` or `repo@sha256:...`), as `skopeo inspect --raw` reads it.
    pub fn raw_manifest(&self, reference: &str) -> Vec<u8> {
        let mut args = vec!["inspect".to_string(), "--raw".into()];
        args.extend(self.skopeo_flags("", true));
        args.push(format!("docker://{}", self.reference(reference)));
        self.skopeo_ok(&args).stdout
    }

    /// `sha256:<hex>` of [`Registry::raw_manifest`]: the digest a client
    /// pulling `reference` gets (for an index, the index's own).
    pub fn manifest_digest(&self, reference: &str) -> String {
        sha256_digest(&self.raw_manifest(reference))
    }
}

/// Polls `GET /v2/` until the registry answers as its kind should, for at
/// most [`READY_TIMEOUT`]; the reason and its log when it does not.
fn wait_ready(
    lifeline: &Lifeline,
    host: &str,
    options: &Options,
    dir: &Path,
) -> Result<(), String> {
    let log = || fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    let want: &[u16] = match (options.tls, options.auth) {
        (true, _) => &[400],
        (false, Auth::None) => &[200],
        (false, _) => &[401],
    };
    let mut last;
    loop {
        if !lifeline.registry_alive() {
            return Err(format!("it exited:\n{}", log()));
        }
        match http_get(host, "/v2/") {
            Ok((status, body)) if want.contains(&status) => {
                if !options.tls || body.contains("HTTPS server") {
                    return Ok(());
                }
                last = format!("400 but not from an HTTPS server: {body}");
            }
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "GET /v2/ never answered {want:?} in {READY_TIMEOUT:?} (last: {last}):\n{}",
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.lifeline.stop(true);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// skopeo's trust policy: these tests check digests, not signatures.
const POLICY: &str = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;

/// Runs skopeo with the policy and auth file in `dir` and `registries_conf`.
fn skopeo_isolated(dir: &Path, registries_conf: &Path, args: &[&str]) -> Output {
    let (first, rest) = args.split_first().expect("a skopeo subcommand");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy")
        .arg(dir.join("policy.json"))
        .arg("--registries-conf")
        .arg(registries_conf)
        .arg(first);
    let own_auth_file = rest.iter().any(|a| a.contains("authfile"));
    if matches!(*first, "copy" | "inspect") && !own_auth_file {
        let auth = dir.join("skopeo-auth.json");
        let flag = if *first == "copy" {
            ["--src-authfile", "--dest-authfile"].as_slice()
        } else {
            ["--authfile"].as_slice()
        };
        for f in flag {
            cmd.arg(format!("{f}={}", auth.display()));
        }
    }
    cmd.args(rest);
    run_bounded(cmd, None, SKOPEO_TIMEOUT)
}

/// The registry's configuration (docker-registry 2.8's YAML).
fn config_yaml(dir: &Path, host: &str, options: &Options, issuer: Option<&TokenIssuer>) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {host}\n  secret: {secret}\n",
        storage = dir.join("storage").display(),
        secret = random_hex(16),
    );
    if options.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            dir.join("tls/server.crt").display(),
            dir.join("tls/server.key").display()
        ));
    }
    match options.auth {
        Auth::None => {}
        Auth::Basic => yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: unipod-e2e\n    path: {}\n",
            dir.join("htpasswd").display()
        )),
        Auth::Token => {
            let issuer = issuer.expect("token auth has an issuer");
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                issuer.server.port,
                issuer.cert.display()
            ));
        }
    }
    yaml
}

/// A CA and a server certificate for 127.0.0.1 (IP SAN) signed by it, in
/// `dir/tls/`; the CA certificate alone also in `dir/certs/ca.crt`.
fn make_tls_files(dir: &Path) {
    require_tool("openssl", "openssl");
    let tls = dir.join("tls");
    fs::create_dir_all(&tls).expect("create tls dir");
    fs::write(
        tls.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    let openssl = |args: &str| {
        run_checked(
            Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(&tls),
        );
    };
    openssl(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
         -out ca.crt -days 2 -subj /CN=unipod-e2e-test-CA \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    );
    openssl(
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
         -out server.csr -subj /CN=127.0.0.1",
    );
    openssl(
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 2 -extfile server.ext",
    );
    let certs = dir.join("certs");
    fs::create_dir_all(&certs).expect("create certs dir");
    fs::copy(tls.join("ca.crt"), certs.join("ca.crt")).expect("copy ca.crt");
}

/// `sh` that starts a program in the background, prints its pid, and
/// stops it and removes the directory once its stdin (a pipe from the test
/// process) reaches end of file.
const LIFELINE_SCRIPT: &str = r#"
dir=$1; shift
"$@" </dev/null >>"$dir/registry.log" 2>&1 &
pid=$!
echo "$pid"
read -r line || :
kill -KILL "$pid" 2>/dev/null
wait "$pid"
[ "$(cat "$dir/.keep" 2>/dev/null)" = keep ] || rm -rf "$dir"
"#;

/// A registry process under a lifeline shell.
struct Lifeline {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: i32,
    dir: PathBuf,
}

impl Lifeline {
    fn spawn(dir: &Path, program: &mut Command) -> Lifeline {
        let _ = fs::remove_file(dir.join(".keep"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(LIFELINE_SCRIPT)
            .arg("sh")
            .arg(dir)
            .arg(program.get_program())
            .args(program.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // docker-registry reads REGISTRY_* variables as configuration
        // (REGISTRY_AUTH_FILE, which containers tools use, would be
        // `auth.file`).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let mut shell = cmd.spawn().expect("sh runs");
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the registry's pid");
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the lifeline printed {line:?}, not a pid"));
        let stdin = shell.stdin.take();
        Lifeline {
            shell,
            stdin,
            pid,
            dir: dir.to_path_buf(),
        }
    }

    /// Whether the registry process runs (it stays a zombie, the shell's
    /// child, until the shell reaps it).
    fn registry_alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|stat| !stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')))
    }

    /// Closes the pipe, so the shell stops the registry (and removes the
    /// directory unless told to keep it); kills both when that takes more
    /// than 10 s.
    fn stop(&mut self, remove_dir: bool) {
        let Some(mut stdin) = self.stdin.take() else {
            return;
        };
        if !remove_dir {
            let _ = fs::write(self.dir.join(".keep"), "keep");
        }
        let _ = stdin.flush();
        drop(stdin);
        if wait_child(&mut self.shell, Duration::from_secs(10)).is_none() {
            // The shell has not reaped the registry, so its pid is still
            // the registry's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.shell.kill();
            let _ = self.shell.wait();
        }
        let _ = fs::remove_file(self.dir.join(".keep"));
    }
}

/// Waits at most `limit` for `child` to exit.
fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Runs `cmd` with `stdin` (or none), collecting both outputs; kills it and
/// panics with what it printed when it runs longer than `limit`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot start: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A command that exits without reading gives EPIPE: its exit
        // status tells the test what happened.
        let _ = pipe.write_all(input);
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = match wait_child(&mut child, limit) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!(
                "{cmd:?} ran longer than {limit:?} and was killed:\nstdout:\n{out}\nstderr:\n{err}"
            );
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A process's exit status and both its outputs, for assertion messages.
pub fn output_text(out: &Output) -> String {
    super::output_text(out)
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn run_checked(cmd: &mut Command) -> String {
    super::run_ok(cmd)
}

/// Panics with the package to install when `program` is not on PATH.
pub fn require_tool(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: apt-get install {package} ('make deps' does)"
    );
}

/// A new empty directory under the system temp dir.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("unipod-e2e-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A port on 127.0.0.1 that was free a moment ago (nobody listens on it
/// now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The sha256 of `bytes` in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

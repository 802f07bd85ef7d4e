//! The issuer of Bearer tokens for an [`Auth::Token`](super::Auth::Token)
//! registry: the token flow of the distribution spec, on loopback.
//!
//! It checks HTTP Basic credentials (GET, as Docker and containers/image
//! ask) or a `grant_type=password` form (POST, the OAuth2 form of the
//! spec), grants every action asked for to the right user and nothing to
//! an anonymous one (as Docker Hub does), answers 401 to a wrong password,
//! and signs ES256 JWTs (with `ring`) whose `x5c` header carries its
//! self-signed certificate, which the registry trusts as its
//! `rootcertbundle`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::http::{parse_form, HttpServer, Request, Response};
use super::{random_hex, require_tool, run_checked, Credentials, TOKEN_ISSUER, TOKEN_SERVICE};

/// One request the token issuer answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// GET or POST.
    pub method: String,
    /// The user whose credentials were checked; `None` for an anonymous
    /// request.
    pub user: Option<String>,
    /// The `service` asked for.
    pub service: Option<String>,
    /// The scopes asked for (`repository:library/busybox:pull`).
    pub scopes: Vec<String>,
    /// 200 with a token, 401 for wrong credentials, 400 for a bad request.
    pub status: u16,
    /// The access the token grants, as `type:name:actions` like the scopes.
    pub granted: Vec<String>,
}

/// The issuer of Bearer tokens for an [`Auth::Token`](super::Auth::Token)
/// registry.
pub(super) struct TokenIssuer {
    pub(super) server: HttpServer,
    /// Its self-signed certificate (PEM): the registry's rootcertbundle.
    pub(super) cert: PathBuf,
    pub(super) requests: Arc<Mutex<Vec<TokenRequest>>>,
}

struct IssuerKeys {
    key: EcdsaKeyPair,
    /// The certificate's DER in standard base64, for `x5c`.
    cert_b64: String,
    rng: SystemRandom,
    credentials: Credentials,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenIssuer {
    /// Makes a P-256 key and a self-signed certificate for it in `dir`,
    /// and starts answering `/token`.
    pub(super) fn start(dir: &Path, credentials: Credentials) -> TokenIssuer {
        require_tool("openssl", "openssl");
        fs::create_dir_all(dir).expect("create token dir");
        let openssl = |args: &str| {
            run_checked(
                Command::new("openssl")
                    .args(args.split_whitespace())
                    .current_dir(dir),
            );
        };
        openssl(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout issuer.key \
             -out issuer.crt -days 2 -subj /CN=unipod-e2e-token-issuer",
        );
        openssl("pkcs8 -topk8 -nocrypt -in issuer.key -outform DER -out issuer.pk8");
        openssl("x509 -in issuer.crt -outform DER -out issuer.der");
        let pkcs8 = fs::read(dir.join("issuer.pk8")).expect("read issuer.pk8");
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("openssl's P-256 PKCS#8 key is one ring takes");
        let cert_der = fs::read(dir.join("issuer.der")).expect("read issuer.der");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(IssuerKeys {
            key,
            cert_b64: STANDARD.encode(cert_der),
            rng,
            credentials,
            requests: requests.clone(),
        });
        let server = HttpServer::start(Arc::new(move |req: &Request| keys.answer(req)));
        TokenIssuer {
            server,
            cert: dir.join("issuer.crt"),
            requests,
        }
    }
}

impl IssuerKeys {
    fn answer(&self, req: &Request) -> Response {
        if req.path() != "/token" {
            return Response::error(404, "NOT_FOUND", "the issuer serves /token");
        }
        let mut params = req.query();
        let mut user_pass = None;
        match req.method.as_str() {
            "GET" => {}
            "POST" => {
                let form = parse_form(&String::from_utf8_lossy(&req.body));
                let field =
                    |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                if field("grant_type").as_deref() == Some("password") {
                    user_pass = field("username").zip(field("password"));
                }
                params.extend(form);
            }
            _ => return Response::error(405, "UNSUPPORTED", "GET or POST /token"),
        }
        if user_pass.is_none() {
            if let Some(basic) = req.header("authorization").and_then(|h| {
                h.strip_prefix("Basic ")
                    .or_else(|| h.strip_prefix("basic "))
            }) {
                let decoded = STANDARD.decode(basic.trim()).unwrap_or_default();
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                user_pass = decoded
                    .split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()));
            }
        }
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let mut record = TokenRequest {
            method: req.method.clone(),
            user: user_pass.as_ref().map(|(u, _)| u.clone()),
            service,
            scopes: scopes.clone(),
            status: 200,
            granted: Vec::new(),
        };
        let response = match &user_pass {
            Some((user, pass))
                if *user != self.credentials.user || *pass != self.credentials.password =>
            {
                record.status = 401;
                let mut r = Response::error(401, "UNAUTHORIZED", "wrong user name or password");
                r.headers.push((
                    "WWW-Authenticate".into(),
                    "Basic realm=\"unipod-e2e-issuer\"".into(),
                ));
                r
            }
            _ => {
                // The right user gets what they ask for; an anonymous
                // client a token that grants nothing.
                let access: Vec<serde_json::Value> = if user_pass.is_some() {
                    scopes.iter().filter_map(|s| parse_scope(s)).collect()
                } else {
                    Vec::new()
                };
                record.granted = access
                    .iter()
                    .map(|a| {
                        let actions: Vec<&str> = a["actions"]
                            .as_array()
                            .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        format!(
                            "{}:{}:{}",
                            a["type"].as_str().unwrap_or_default(),
                            a["name"].as_str().unwrap_or_default(),
                            actions.join(",")
                        )
                    })
                    .collect();
                let token = self.sign(record.user.as_deref().unwrap_or(""), &access);
                Response::json(
                    200,
                    &serde_json::json!({
                        "token": token,
                        "access_token": token,
                        "expires_in": 300,
                    }),
                )
            }
        };
        self.requests.lock().expect("issuer log").push(record);
        response
    }

    /// An ES256 JWT for `subject` granting `access`, valid for 5 minutes.
    fn sign(&self, subject: &str, access: &[serde_json::Value]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [self.cert_b64],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now.saturating_sub(60),
            "iat": now,
            "jti": random_hex(16),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ECDSA signing");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// `repository:library/busybox:pull,push` as a JWT `access` entry.
fn parse_scope(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
}

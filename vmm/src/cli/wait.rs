//! `unipod wait`: wait until pods meet a condition, as `kubectl wait`.
//!
//! # Design
//! It polls each pod's `status.json` every [`POLL`] and checks the
//! condition against the same JSON document `unipod get -o json` prints
//! (see [`super::pods::pod_document`]), so a pod whose supervisor died is
//! Unknown and not Ready. Pods are waited for one after the other, all
//! within the one `--timeout`.
//!
//! # Exit codes
//! 0 when every pod met the condition (`pod/NAME condition met` on
//! stdout); 1 when the time ran out (`timed out waiting for the condition
//! on pods/NAME`), a pod does not exist (except for `--for=delete`), or it
//! was removed while waited for; 2 for bad usage.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::jsonpath::{show, Template};
use super::pods::{pod_document, stored_pod_object, PodsError, StateArg};
use crate::pod::start::state_root;
use crate::pod::status::{PodRecord, STATUS_FILE};

/// How often the status is read.
pub const POLL: Duration = Duration::from_millis(200);

/// What a negative `--timeout` means: a week, as kubectl's.
const FOREVER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Help after `unipod wait --help`.
pub const WAIT_AFTER_HELP: &str = "\
Examples: unipod wait --for=condition=Ready web
          unipod wait --for=jsonpath='{.status.phase}'=Succeeded job --timeout=5m
          unipod wait --for=delete pod/web --timeout=60s

Exit codes:
  0  every pod met the condition ('pod/NAME condition met')
  1  timed out ('timed out waiting for the condition on pods/NAME'), or a
     pod does not exist (--for=delete: it counts as deleted) or was removed
     while waited for
  2  bad command-line usage";

/// What to wait for.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// `delete`: the pod is gone.
    Delete,
    /// `condition=NAME[=VALUE]`: `status.conditions` has NAME with status
    /// VALUE (default True), both compared ignoring case.
    Condition {
        /// The condition type.
        name: String,
        /// Its wanted status.
        value: String,
    },
    /// `jsonpath={PATH}[=VALUE]`: PATH has the one value VALUE, or, with no
    /// VALUE, any value.
    JsonPath {
        /// The path.
        path: Template,
        /// The wanted value, as `-o jsonpath` prints it.
        value: Option<String>,
    },
}

impl Condition {
    /// Parses `--for`.
    pub fn parse(text: &str) -> Result<Condition, String> {
        if text == "delete" {
            return Ok(Condition::Delete);
        }
        if let Some(rest) = text.strip_prefix("condition=") {
            let (name, value) = rest.split_once('=').unwrap_or((rest, "True"));
            if name.is_empty() {
                return Err("--for=condition= needs a condition name, e.g. Ready".into());
            }
            return Ok(Condition::Condition {
                name: name.to_string(),
                value: value.to_string(),
            });
        }
        if let Some(rest) = text.strip_prefix("jsonpath=") {
            let (path, value) = match rest.find('}') {
                Some(end) if rest.starts_with('{') => {
                    let (path, tail) = rest.split_at(end + 1);
                    match tail.strip_prefix('=') {
                        Some(v) => (path, Some(v)),
                        None if tail.is_empty() => (path, None),
                        None => return Err(format!("unexpected {tail:?} after {path}")),
                    }
                }
                _ => match rest.split_once('=') {
                    Some((p, v)) => (p, Some(v)),
                    None => (rest, None),
                },
            };
            return Ok(Condition::JsonPath {
                path: Template::parse_relaxed(path)?,
                value: value.map(str::to_string),
            });
        }
        Err(format!(
            "unknown --for {text:?}: give delete, condition=NAME[=VALUE] or jsonpath={{PATH}}[=VALUE]"
        ))
    }

    /// Whether the pod document `doc` meets the condition (never for
    /// `delete`: an existing pod is not deleted).
    pub fn met_by(&self, doc: &Value) -> bool {
        match self {
            Condition::Delete => false,
            Condition::Condition { name, value } => doc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(name))
                })
                .any(|c| {
                    c["status"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(value))
                }),
            Condition::JsonPath { path, value } => match (path.values(doc).as_slice(), value) {
                ([], _) => false,
                (_, None) => true,
                ([one], Some(v)) => show(one) == *v,
                (_, Some(_)) => false,
            },
        }
    }
}

/// Parses a duration as kubectl's flags take it: `30s`, `1m30s`, `500ms`,
/// `2h`, `0`; a negative one means a week.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: give e.g. 30s, 2m, 1h30m, 500ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if negative && total > 0.0 {
        return Ok(FOREVER);
    }
    Duration::try_from_secs_f64(total.min(FOREVER.as_secs_f64())).map_err(|_| bad())
}

/// `unipod wait` arguments.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The pods: NAME or pod/NAME, or 'pods' followed by names.
    #[arg(value_name = "POD", required = true, num_args = 1..)]
    pub pods: Vec<String>,
    /// What to wait for: delete, condition=NAME[=VALUE] (VALUE defaults
    /// to True; e.g. condition=Ready) or jsonpath={PATH}[=VALUE] (e.g.
    /// jsonpath='{.status.phase}'=Running).
    #[arg(long = "for", value_name = "CONDITION", value_parser = Condition::parse)]
    pub condition: Condition,
    /// How long to wait in all: 30s, 5m, 1h; 0 checks once, a negative
    /// value waits a week.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration,
        allow_hyphen_values = true
    )]
    pub timeout: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// The pod names of `words`: `web`, `pod/web`, `pods/web`, or `pods web db`.
fn pod_names(words: &[String]) -> Result<Vec<String>, PodsError> {
    let words = match words.split_first() {
        Some((first, rest))
            if matches!(first.as_str(), "pod" | "pods" | "po") && !rest.is_empty() =>
        {
            rest
        }
        _ => words,
    };
    words
        .iter()
        .map(|w| match w.split_once('/') {
            None => Ok(w.clone()),
            Some(("pod" | "pods" | "po", name)) => Ok(name.to_string()),
            Some(_) => Err(PodsError::Usage(format!(
                "{w:?}: unipod waits for pods only (NAME or pod/NAME)"
            ))),
        })
        .collect()
}

/// The pod's document, or `None` when it has no status (deleted).
fn pod_doc(pods: &Path, name: &str) -> Option<Value> {
    let dir = pods.join(name);
    if name.is_empty() || !dir.join(STATUS_FILE).is_file() {
        return None;
    }
    let record = PodRecord::read(&dir).ok()?;
    Some(pod_document(&record, stored_pod_object(&dir).as_ref()))
}

/// `unipod wait`.
pub fn wait(args: &WaitArgs) -> Result<i32, PodsError> {
    let names = pod_names(&args.pods)?;
    let pods = state_root(args.state.state_dir.as_deref()).join("pods");
    let deadline = Instant::now() + args.timeout;
    for name in &names {
        let mut seen = false;
        loop {
            let met = match (&args.condition, pod_doc(&pods, name)) {
                (Condition::Delete, None) => true,
                (_, None) if seen => {
                    return Err(PodsError::Usage(format!(
                        "pod {name:?} was removed while waiting for the condition"
                    )))
                }
                (_, None) => return Err(PodsError::NotFound(name.clone())),
                (condition, Some(doc)) => {
                    seen = true;
                    condition.met_by(&doc)
                }
            };
            if met {
                println!("pod/{name} condition met");
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PodsError::Usage(format!(
                    "timed out waiting for the condition on pods/{name}"
                )));
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(phase: &str, ready: &str) -> Value {
        json!({
            "metadata": {"name": "web"},
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": ready}
                ]
            }
        })
    }

    #[test]
    fn condition_ready_checks_the_ready_condition_ignoring_case() {
        let ready = Condition::parse("condition=Ready").unwrap();
        assert!(ready.met_by(&doc("Running", "True")));
        assert!(!ready.met_by(&doc("Running", "False")));
        assert!(!ready.met_by(&json!({"status": {"phase": "Pending"}})));
        let not_ready = Condition::parse("condition=ready=false").unwrap();
        assert!(not_ready.met_by(&doc("Running", "False")));
        assert!(!not_ready.met_by(&doc("Running", "True")));
        assert!(Condition::parse("condition=").is_err());
    }

    #[test]
    fn jsonpath_conditions_compare_the_one_value_or_need_any() {
        let running = Condition::parse("jsonpath={.status.phase}=Running").unwrap();
        assert!(running.met_by(&doc("Running", "True")));
        assert!(!running.met_by(&doc("Pending", "False")));
        let relaxed = Condition::parse("jsonpath=.status.phase=Running").unwrap();
        assert_eq!(relaxed, running);
        let exists = Condition::parse("jsonpath={.status.podIP}").unwrap();
        assert!(!exists.met_by(&doc("Running", "True")));
        assert!(exists.met_by(&json!({"status": {"podIP": "10.88.0.2"}})));
        let filtered =
            Condition::parse(r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}=True"#)
                .unwrap();
        assert!(filtered.met_by(&doc("Running", "True")));
        assert!(!filtered.met_by(&doc("Running", "False")));
        let many = Condition::parse("jsonpath={.status.conditions[*].status}=True").unwrap();
        assert!(!many.met_by(&doc("Running", "True")), "two values");
        assert!(Condition::parse("jsonpath={.a}x").is_err());
    }

    #[test]
    fn delete_is_never_met_by_an_existing_pod_and_unknown_kinds_are_refused() {
        assert_eq!(Condition::parse("delete"), Ok(Condition::Delete));
        assert!(!Condition::Delete.met_by(&doc("Running", "True")));
        assert!(Condition::parse("Ready").is_err());
    }

    #[test]
    fn durations_parse_as_kubectls_flags() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("-1s"), Ok(FOREVER));
        for bad in ["", "30", "s", "3x", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pods_are_named_as_kubectl_names_them() {
        let names = |w: &[&str]| pod_names(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(names(&["web"]).unwrap(), ["web"]);
        assert_eq!(names(&["pod/web", "pods/db"]).unwrap(), ["web", "db"]);
        assert_eq!(names(&["pods", "web", "db"]).unwrap(), ["web", "db"]);
        assert!(names(&["deployment/web"]).is_err());
    }

    #[test]
    fn waiting_times_out_on_an_unmet_condition_and_fails_on_a_missing_pod() {
        let state = std::env::temp_dir().join(format!("unipod-wait-test-{}", std::process::id()));
        let dir = state.join("pods").join("web");
        std::fs::create_dir_all(&dir).unwrap();
        // Ready in its last record, but no supervisor: not Ready.
        let status = json!({
            "version": 1, "name": "web", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z",
            "manifest": "pod.yaml",
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        });
        std::fs::write(dir.join(STATUS_FILE), status.to_string()).unwrap();
        let args = |pod: &str, condition: &str| WaitArgs {
            pods: vec![pod.into()],
            condition: Condition::parse(condition).unwrap(),
            timeout: Duration::from_millis(300),
            state: StateArg {
                state_dir: Some(state.clone()),
            },
        };
        let started = Instant::now();
        let err = wait(&args("web", "condition=Ready")).expect_err("not Ready");
        assert_eq!(
            err.to_string(),
            "timed out waiting for the condition on pods/web"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            wait(&args("pod/web", "jsonpath={.status.phase}=Unknown")).unwrap(),
            0
        );
        assert_eq!(
            wait(&args("web", "jsonpath={.metadata.name}=web")).unwrap(),
            0
        );
        assert!(wait(&args("web", "delete")).is_err(), "it exists");
        assert!(matches!(
            wait(&args("absent", "condition=Ready")),
            Err(PodsError::NotFound(_))
        ));
        assert_eq!(
            wait(&args("absent", "delete")).unwrap(),
            0,
            "absent counts as deleted"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }
}

//! The kubectl-like commands on manifest pods: `get`, `describe`, `logs`,
//! `exec`, `stop` and `rm`.
//!
//! # Design
//! They read the pod directory the supervisor keeps (`status.json`,
//! `logs/`, `pod.yaml`) and talk to a live supervisor only through its
//! control socket (see [`crate::pod::control`]); none of them needs the
//! supervisor for reading, so they work on a pod that ended, and `stop`/`rm`
//! also clean up after a supervisor that was killed: the VMM (by pid and
//! start time), the IP lease and the port forwards (by pod name). A killed
//! VMM's tap disappears with its last file descriptor.
//!
//! Exit codes: 0 done, 1 failed (the message says why), 2 bad usage;
//! `exec` exits with the command's exit code, or 125 when unipod could not
//! run it.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::protocol::Stream;

use super::jsonpath::{CustomColumns, Selector, Template};
use super::wait::parse_duration;
use crate::error_chain::error_chain;
use crate::file_error::FileError;
use crate::pod::cleanup::{clean_up_orphan, wait_gone};
use crate::pod::container_log::{self, Render};
use crate::pod::control::{
    self, ClientLine, ControlReply, ControlRequest, ExecRequest, CONTROL_SOCKET,
};
use crate::pod::kubectl::{describe_text, table, table_line, table_widths};
use crate::pod::manifest;
use crate::pod::phase::PodPhase;
use crate::pod::start::state_root;
use crate::pod::status::{
    human_duration, kubectl_ready, kubectl_restarts, kubectl_status, parse_time, unix_now,
    ContainerState, ContainerStatus, PodRecord, StatusError, STATUS_FILE,
};

/// Exit code: the command failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of `exec` when unipod could not run the command.
pub const EXIT_EXEC_ERROR: i32 = 125;

/// Help after the commands' own.
pub const COMMON_AFTER_HELP: &str = "\
Pods live in <state>/pods/NAME/ (status.json, logs/, pod.yaml).

Exit codes:
  0  done
  1  failed: the pod does not exist, or the message says why
  2  bad command-line usage";

/// Help after `unipod logs --help`.
pub const LOGS_AFTER_HELP: &str = "\
Examples:
  unipod logs web --tail=20 --timestamps
  unipod logs web -c app --since=5m -f
  unipod logs web --all-containers --prefix --timestamps

As kubectl's: --since applies first, then --tail; a line reads
[pod/NAME/CONTAINER] TIME CONTENT with --prefix and --timestamps. Without
these two, the lines are the bytes the container wrote. TIME is when the
guest agent read the line's first byte.

Logs live in <state>/pods/NAME/logs/CONTAINER/RESTARTS.log, in the CRI log
format kubelet reads (TIME stdout|stderr F|P CONTENT, a line per record).

Exit codes:
  0  done
  1  failed: the pod does not exist, or the message says why
  2  bad command-line usage";

/// Help after `unipod get --help`.
pub const GET_AFTER_HELP: &str = "\
Columns are kubectl's: READY counts ready containers (running, and their
readiness probe passed if they have one), STATUS is computed as 'kubectl
get pod' does (Init:0/1, PodInitializing, CrashLoopBackOff, Completed,
Error, OOMKilled, Running, Terminating, ...), RESTARTS adds up the
container restarts. A pod whose supervisor is gone shows Unknown.

Exit codes:
  0  done
  1  failed: the pod does not exist, or the message says why
  2  bad command-line usage";

/// Help after `unipod delete --help`.
pub const DELETE_AFTER_HELP: &str = "\
A pod gets SIGTERM, SIGKILL after its grace period, and is removed once its
VM is gone ('pod \"NAME\" deleted').

Examples: unipod delete web
          unipod delete pod web --grace-period=5
          unipod delete web --now             (grace period 1 s)
          unipod delete web --force           (kill the VM at once)
          unipod delete configmap site

Exit codes:
  0  done
  1  failed: no such pod or object, or the message says why
  2  bad command-line usage";

/// Help after `unipod exec --help`.
pub const EXEC_AFTER_HELP: &str = "\
Example: unipod exec -it web -- sh

Exit codes:
  N    the command's exit code (128+N if a signal killed it)
  125  unipod could not run it: no such pod or container, the container is
       not running, or the agent refused
  2    bad command-line usage";

/// `--state-dir`, shared by every pod command.
#[derive(Debug, clap::Args)]
pub struct StateArg {
    /// unipod's state directory. Default: $UNIPOD_STATE_DIR, else
    /// /run/unipod as root, else $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `-o` formats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The table plus the pod IP.
    Wide,
    /// The status documents as JSON.
    Json,
    /// The status documents as YAML.
    Yaml,
    /// `pod/NAME`, one a line.
    Name,
    /// A JSONPath template evaluated against the JSON document.
    JsonPath(String),
    /// A table of the columns given, each a JSONPath into the document.
    CustomColumns(CustomColumns),
}

/// Parses `-o`: wide, json, yaml, name or jsonpath=TEMPLATE.
pub fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        "name" => Ok(Output::Name),
        _ => match text.split_once('=') {
            Some(("jsonpath", template)) => {
                Template::parse(template)?;
                Ok(Output::JsonPath(template.to_string()))
            }
            Some(("custom-columns", spec)) => CustomColumns::parse(spec).map(Output::CustomColumns),
            _ => Err(format!(
                "unknown output format {text:?}: give wide, json, yaml, name, \
                 jsonpath=TEMPLATE or custom-columns=HEADER:PATH,..."
            )),
        },
    }
}

/// `unipod get` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// POD shows one pod; TYPE lists pods, configmaps (cm) or secrets, and
    /// TYPE NAME shows one of them.
    #[arg(value_name = "[TYPE] [NAME]", num_args = 0..=2)]
    pub words: Vec<String>,
    /// Output format (default: a table): wide, json, yaml, name (TYPE/NAME),
    /// jsonpath=TEMPLATE (e.g. jsonpath='{.status.podIP}'), or
    /// custom-columns=HEADER:PATH,... (e.g.
    /// custom-columns=NAME:.metadata.name,IP:.status.podIP); paths go into
    /// the JSON document of -o json.
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = parse_output)]
    pub output: Option<Output>,
    /// Only pods whose labels match: key=value, key==value, key!=value,
    /// key, !key, joined by commas (all must hold).
    #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = Selector::parse)]
    pub selector: Option<Selector>,
    /// Add a LABELS column to the table.
    #[arg(long)]
    pub show_labels: bool,
    /// After the table, print a pod's row again each time it changes,
    /// until interrupted (Ctrl-C), as 'kubectl get -w'. Table output only.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// --watch without the first table: changes only.
    #[arg(long)]
    pub watch_only: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod describe` arguments.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod logs` arguments.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container (an init container too); needed when the pod has
    /// several containers.
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,
    /// Keep printing as the container writes, until it terminates and no
    /// restart follows.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The logs of the container's previous run (before its last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines (-1: all); with --since, the last N of the
    /// lines it keeps.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Only the lines newer than DURATION (e.g. 10s, 5m, 1h30m; 0: all),
    /// by the time the agent read their first byte.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<Duration>,
    /// Begin each line with the time the agent read it, in RFC 3339 with
    /// nanoseconds (2026-12-07T21:00:00.123456789Z), after any --prefix.
    #[arg(long)]
    pub timestamps: bool,
    /// The logs of every container that has started: the init containers,
    /// then the app containers, in the manifest's order.
    #[arg(long, conflicts_with_all = ["container", "follow"])]
    pub all_containers: bool,
    /// Begin each line with its source: [pod/NAME/CONTAINER].
    #[arg(long)]
    pub prefix: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod exec` arguments.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container; needed when the pod has several containers.
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Run the command on a terminal (puts this terminal in raw mode).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod stop` arguments.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod rm` arguments.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// Remove it even if it runs (its VM is killed).
    #[arg(short = 'f', long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// Errors of the pod commands.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// A wrong argument, or a failed object command.
    #[error("{0}")]
    Usage(String),
    /// No such pod.
    #[error("pod {0:?} not found (unipod get lists pods)")]
    NotFound(String),
    /// Its status cannot be read.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// A container must be named.
    #[error(
        "a container name must be specified for pod {pod}, choose one of: [{containers}]{init}"
    )]
    ContainerNeeded {
        /// The pod.
        pod: String,
        /// The app containers.
        containers: String,
        /// ` or one of the init containers: [...]`, if any.
        init: String,
    },
    /// No such container.
    #[error("container {container:?} is not valid for pod {pod:?}; its containers are: {all}")]
    NoContainer {
        /// The pod.
        pod: String,
        /// The name given.
        container: String,
        /// Every container.
        all: String,
    },
    /// No log to show.
    #[error("{0}")]
    NoLogs(String),
    /// The pod runs.
    #[error(
        "pod {0:?} is running; stop it first (unipod stop {0}) or force it (unipod rm -f {0})"
    )]
    Running(String),
    /// The pod does not run.
    #[error("pod {pod:?} is not running (it is {phase}); exec needs a running container")]
    NotRunning {
        /// The pod.
        pod: String,
        /// Its phase.
        phase: PodPhase,
    },
    /// The supervisor refused.
    #[error("pod {pod:?}: {message}")]
    Refused {
        /// The pod.
        pod: String,
        /// What it said.
        message: String,
    },
    /// Talking to the supervisor failed.
    #[error("pod {pod:?}: cannot reach its supervisor at {}", path.display())]
    Control {
        /// The pod.
        pod: String,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// Cleanup failed.
    #[error("pod {pod:?}: cannot remove its network state")]
    Network {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: crate::net::NetError,
    },
    /// The pod did not stop in time.
    #[error("pod {0:?} did not stop in time; 'unipod rm -f {0}' kills it")]
    StopTimeout(String),
}

fn pod_dir(state: &StateArg, pod: &str) -> PathBuf {
    state_root(state.state_dir.as_deref())
        .join("pods")
        .join(pod)
}

fn load(state: &StateArg, pod: &str) -> Result<(PathBuf, PodRecord), PodsError> {
    let dir = pod_dir(state, pod);
    if pod.is_empty() || pod.contains('/') || !dir.join(STATUS_FILE).is_file() {
        return Err(PodsError::NotFound(pod.to_string()));
    }
    let record = PodRecord::read(&dir)?;
    Ok((dir, record))
}

/// Every manifest pod, by name.
fn all_pods(state: &StateArg) -> Vec<PodRecord> {
    let root = state_root(state.state_dir.as_deref()).join("pods");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|n| PodRecord::read(&root.join(n)).ok())
        .collect()
}

/// `unipod get`.
pub fn get(args: &GetArgs) -> Result<i32, PodsError> {
    let watching = args.watch || args.watch_only;
    if watching && !matches!(args.output, None | Some(Output::Wide)) {
        return Err(PodsError::Usage(
            "--watch prints the table (or -o wide) only".into(),
        ));
    }
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let pod = match words[..] {
        [] | ["pods" | "pod" | "po"] => None,
        ["pods" | "pod" | "po", name] => Some(name),
        [_, _] | [_] if watching && about_objects(&words) => {
            return Err(PodsError::Usage("--watch watches pods only".into()))
        }
        [kind, name] => return get_objects(kind, Some(name), args),
        [word] => match super::objects::parse_kind(word) {
            Ok(_) => return get_objects(word, None, args),
            Err(_) => Some(word),
        },
        _ => unreachable!("clap takes at most two words"),
    };
    let pod = pod.map(str::to_owned);
    let root = state_root(args.state.state_dir.as_deref()).join("pods");
    let pods = selected_pods(args, pod.as_deref())?;
    let docs = || {
        pods.iter()
            .map(|(r, _)| pod_document(r, stored_pod_object(&root.join(&r.name)).as_ref()))
    };
    // One pod prints as itself, several as a List, as kubectl does.
    let doc = || match &pod {
        Some(_) => docs().next().unwrap_or_default(),
        None => pod_list(docs().collect()),
    };
    match &args.output {
        Some(Output::Json) => {
            let text = serde_json::to_string_pretty(&doc()).expect("JSON values serialize");
            println!("{text}");
            return Ok(0);
        }
        Some(Output::Yaml) => {
            print!(
                "{}",
                serde_norway::to_string(&doc()).expect("JSON values serialize")
            );
            return Ok(0);
        }
        Some(Output::Name) => {
            for (r, _) in &pods {
                println!("pod/{}", r.name);
            }
            return Ok(0);
        }
        Some(Output::JsonPath(template)) => {
            let template = Template::parse(template).map_err(PodsError::Usage)?;
            print!("{}", template.render(&doc()));
            return Ok(0);
        }
        Some(Output::CustomColumns(columns)) => {
            print_custom_columns(columns, docs());
            return Ok(0);
        }
        Some(Output::Wide) | None => {}
    }
    if watching {
        return watch(args, pod.as_deref(), pods);
    }
    if pods.is_empty() {
        eprintln!("No resources found");
        return Ok(0);
    }
    print!("{}", table(&pod_rows(args, &pods)));
    Ok(0)
}

/// Whether `get WORDS` is about ConfigMaps or Secrets (`get cm`, `get
/// secret NAME`), not pods.
fn about_objects(words: &[&str]) -> bool {
    match words {
        [kind, _] => !matches!(*kind, "pods" | "pod" | "po"),
        [word] => super::objects::parse_kind(word).is_ok(),
        _ => false,
    }
}

/// A pod's record and its labels.
type LabelledPod = (PodRecord, BTreeMap<String, String>);

/// The pods `get` shows: the one named, or all those the selector takes.
fn selected_pods(args: &GetArgs, pod: Option<&str>) -> Result<Vec<LabelledPod>, PodsError> {
    let records = match pod {
        Some(pod) => vec![load(&args.state, pod)?.1],
        None => all_pods(&args.state),
    };
    let root = state_root(args.state.state_dir.as_deref()).join("pods");
    Ok(records
        .into_iter()
        .map(|r| {
            let labels = pod_labels(&root.join(&r.name));
            (r, labels)
        })
        .filter(|(_, labels)| args.selector.as_ref().is_none_or(|s| s.matches(labels)))
        .collect())
}

/// `get --watch`: the table, then a row each time a pod's row changes
/// (its age aside), until interrupted, as `kubectl get -w` prints them.
fn watch(args: &GetArgs, pod: Option<&str>, mut pods: Vec<LabelledPod>) -> Result<i32, PodsError> {
    let rows = pod_rows(args, &pods);
    let mut widths = table_widths(&rows);
    let age = rows[0].iter().position(|h| h == "AGE").expect("a column");
    let without_age = |row: &[String]| {
        let mut row = row.to_vec();
        row.remove(age);
        row
    };
    let mut shown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    let mut print = |line: String| {
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|_| PodsError::Usage("stdout is closed".into()))
    };
    let mut first = true;
    loop {
        let rows = pod_rows(args, &pods);
        let (header, body) = rows.split_first().expect("a header");
        if first && !args.watch_only {
            print(table_line(header, &widths))?;
        }
        for row in body {
            if shown.get(&row[0]) == Some(&without_age(row)) {
                continue;
            }
            shown.insert(row[0].clone(), without_age(row));
            if first && args.watch_only {
                continue;
            }
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
            print(table_line(row, &widths))?;
        }
        first = false;
        std::thread::sleep(Duration::from_millis(500));
        pods = match selected_pods(args, pod) {
            Ok(pods) => pods,
            // The pod watched is gone: nothing more to show.
            Err(_) if pod.is_some() => return Ok(0),
            Err(e) => return Err(e),
        };
    }
}

/// The table `get` prints: a header, then a row per pod.
fn pod_rows(args: &GetArgs, pods: &[LabelledPod]) -> Vec<Vec<String>> {
    let wide = args.output == Some(Output::Wide);
    let now = unix_now();
    let mut rows = vec![vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
    if wide {
        rows[0].push("IP".into());
    }
    if args.show_labels {
        rows[0].push("LABELS".into());
    }
    for (r, labels) in pods {
        let age = parse_time(&r.creation_timestamp)
            .map_or("<unknown>".into(), |t| human_duration(now - t));
        let mut row = vec![
            r.name.clone(),
            kubectl_ready(&r.status, &r.sidecars),
            kubectl_status(&r.status, r.shown_phase(), &r.sidecars),
            kubectl_restarts(&r.status, now, &r.sidecars),
            age,
        ];
        if wide {
            row.push(r.status.pod_ip.clone().unwrap_or("<none>".into()));
        }
        if args.show_labels {
            row.push(labels_column(labels));
        }
        rows.push(row);
    }
    rows
}

/// The table of `-o custom-columns`, a row per document (a header alone
/// when there are none, as kubectl prints it).
pub fn print_custom_columns(
    columns: &CustomColumns,
    docs: impl Iterator<Item = serde_json::Value>,
) {
    let mut rows = vec![columns.headers()];
    rows.extend(docs.map(|doc| columns.row(&doc)));
    print!("{}", table(&rows));
}

/// The LABELS column: `k=v,k2=v2`, or `<none>`.
fn labels_column(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// The pod as kubectl shows it (`get -o json`, `-o jsonpath`, `wait`): a
/// v1 Pod, with the metadata and spec of the manifest it was run from (in
/// `object`, its stored Pod document) and the status the supervisor keeps.
/// A pod whose supervisor is gone shows `Unknown` and is not Ready.
pub fn pod_document(record: &PodRecord, object: Option<&serde_json::Value>) -> serde_json::Value {
    let null = serde_json::Value::Null;
    let object = object.unwrap_or(&null);
    let given = &object["metadata"];
    let mut metadata = serde_json::json!({
        "name": record.name,
        "namespace": given["namespace"].as_str().unwrap_or(manifest::DEFAULT_NAMESPACE),
        "uid": record.uid,
        "creationTimestamp": record.creation_timestamp,
    });
    for key in ["labels", "annotations"] {
        if given[key].as_object().is_some_and(|m| !m.is_empty()) {
            metadata[key] = given[key].clone();
        }
    }
    let spec = match object.get("spec") {
        Some(spec) => spec.clone(),
        // A command pod has no manifest: its containers are all there is.
        None => serde_json::json!({
            "containers": record.status.container_statuses.iter()
                .map(|c| serde_json::json!({"name": c.name, "image": c.image}))
                .collect::<Vec<_>>(),
            "restartPolicy": "Never",
        }),
    };
    let mut status = serde_json::to_value(&record.status).expect("the status serializes");
    let shown = record.shown_phase();
    if shown != record.status.phase {
        status["phase"] = serde_json::json!(shown);
        if let Some(conditions) = status["conditions"].as_array_mut() {
            for c in conditions {
                if matches!(c["type"].as_str(), Some("Ready" | "ContainersReady")) {
                    c["status"] = "False".into();
                }
            }
        }
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    })
}

/// Several pods as kubectl prints them: a v1 List.
fn pod_list(items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// The Pod document of the manifest file the pod was run from (its stored
/// copy, which may hold ConfigMaps and Secrets too), as JSON; `None` for a
/// command pod.
pub(super) fn stored_pod_object(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("pod.yaml")).ok()?;
    let pod = serde_norway::Deserializer::from_str(&text)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .find(|document: &serde_json::Value| document["kind"] == "Pod");
    pod
}

/// `unipod get configmaps|secrets [NAME]`.
fn get_objects(kind: &str, name: Option<&str>, args: &GetArgs) -> Result<i32, PodsError> {
    let kind = super::objects::parse_kind(kind)
        .map_err(|why| PodsError::Usage(format!("{why}, or pods")))?;
    super::objects::get(kind, name, args.output.as_ref(), &args.state)
        .map_err(|e| PodsError::Usage(error_chain(&e, ": ")))
}

/// The pod's manifest, from the copy of the file it came from (which may
/// hold ConfigMaps and Secrets too); `None` for a command pod.
fn stored_manifest(dir: &Path) -> Option<manifest::PodManifest> {
    let documents = manifest::load_documents(&dir.join("pod.yaml")).ok()?;
    documents.pods.into_iter().next().map(|(m, _)| m)
}

/// The pod's `metadata.labels`, from its stored manifest.
pub(super) fn pod_labels(dir: &Path) -> BTreeMap<String, String> {
    stored_manifest(dir).map(|m| m.labels).unwrap_or_default()
}

/// `unipod describe`.
pub fn describe(args: &DescribeArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    let manifest = stored_manifest(&dir);
    print!("{}", describe_text(&record, manifest.as_ref(), unix_now()));
    Ok(0)
}

/// The container a command is about: `-c`, else the pod's only container.
fn pick_container(record: &PodRecord, given: Option<&str>) -> Result<String, PodsError> {
    let names = |list: &[ContainerStatus]| {
        list.iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let s = &record.status;
    match given {
        Some(c) if record.container(c).is_some() => Ok(c.to_string()),
        Some(c) => Err(PodsError::NoContainer {
            pod: record.name.clone(),
            container: c.to_string(),
            all: format!(
                "{} {}",
                names(&s.init_container_statuses),
                names(&s.container_statuses)
            )
            .trim()
            .to_string(),
        }),
        None if s.container_statuses.len() == 1 => Ok(s.container_statuses[0].name.clone()),
        None => Err(PodsError::ContainerNeeded {
            pod: record.name.clone(),
            containers: names(&s.container_statuses),
            init: if s.init_container_statuses.is_empty() {
                String::new()
            } else {
                format!(
                    " or one of the init containers: [{}]",
                    names(&s.init_container_statuses)
                )
            },
        }),
    }
}

/// `unipod logs`.
pub fn logs(args: &LogsArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    if !args.all_containers {
        let container = pick_container(&record, args.container.as_deref())?;
        return container_logs(&dir, &record, &container, args);
    }
    let s = &record.status;
    for c in s
        .init_container_statuses
        .iter()
        .chain(&s.container_statuses)
    {
        let run = if args.previous {
            c.restart_count.checked_sub(1)
        } else {
            Some(c.restart_count)
        };
        let has_log = run.is_some_and(|n| log_file(&dir, &c.name, n).exists());
        if has_log {
            container_logs(&dir, &record, &c.name, args)?;
        }
    }
    Ok(0)
}

/// `<pod dir>/logs/CONTAINER/N.log`: run N of the container.
fn log_file(dir: &Path, container: &str, run: u32) -> PathBuf {
    dir.join("logs").join(container).join(format!("{run}.log"))
}

/// Prints one container's log as `unipod logs` asks.
fn container_logs(
    dir: &Path,
    record: &PodRecord,
    container: &str,
    args: &LogsArgs,
) -> Result<i32, PodsError> {
    let status = record.container(container).expect("picked from the status");
    let mut run = status.restart_count;
    if args.previous {
        if run == 0 {
            return Err(PodsError::NoLogs(format!(
                "previous terminated container {container:?} in pod {:?} not found",
                record.name
            )));
        }
        run -= 1;
    }
    let file = |n: u32| log_file(dir, container, n);
    if !file(run).exists() && !args.follow {
        let state = match &status.state {
            ContainerState::Waiting { reason, .. } => reason.clone(),
            _ => "not started".into(),
        };
        return Err(PodsError::NoLogs(format!(
            "container {container:?} in pod {:?} is waiting to start: {state}",
            record.name
        )));
    }
    let stdout = std::io::stdout().lock();
    let mut out: Box<dyn Write> = if args.prefix {
        Box::new(LinePrefix::new(
            stdout,
            format!("[pod/{}/{container}] ", record.name),
        ))
    } else {
        Box::new(stdout)
    };
    let since = args
        .since
        .filter(|d| !d.is_zero())
        .map(container_log::since_cutoff);
    let tail = u64::try_from(args.tail).ok();
    let mut offset = start_offset(&file(run), since, tail)?;
    let mut render = Render::new(args.timestamps);
    loop {
        let path = file(run);
        offset += print_from(&path, offset, &mut render, &mut out)?;
        if !args.follow || args.previous {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
        let Ok(now) = PodRecord::read(dir) else {
            return Ok(0);
        };
        let Some(c) = now.container(container) else {
            return Ok(0);
        };
        if c.restart_count > run && file(c.restart_count).exists() {
            print_from(&path, offset, &mut render, &mut out)?;
            run = c.restart_count;
            offset = 0;
            continue;
        }
        let ended = matches!(c.state, ContainerState::Terminated { .. });
        if (ended && c.restart_count == run) || !now.supervisor_alive() {
            print_from(&path, offset, &mut render, &mut out)?;
            return Ok(0);
        }
    }
}

/// `--since DURATION`: a duration as kubectl's flags take it, not negative.
fn parse_since(text: &str) -> Result<Duration, String> {
    if text.starts_with('-') {
        return Err(format!("--since={text}: the duration must not be negative"));
    }
    parse_duration(text)
}

/// The offset in the log `path` where `unipod logs` starts: see
/// [`container_log::select_start`]. 0 for a missing file.
fn start_offset(path: &Path, since: Option<u64>, tail: Option<u64>) -> Result<u64, PodsError> {
    if since.is_none() && tail.is_none() {
        return Ok(0);
    }
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(FileError::at("read", path)(source).into()),
    };
    let start = container_log::select_start(&text, since, tail);
    Ok(u64::try_from(start).expect("usize fits in u64"))
}

/// A writer that begins every line with a prefix, across writes.
struct LinePrefix<W: Write> {
    inner: W,
    prefix: String,
    at_line_start: bool,
}

impl<W: Write> LinePrefix<W> {
    fn new(inner: W, prefix: String) -> Self {
        LinePrefix {
            inner,
            prefix,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for LinePrefix<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(self.prefix.as_bytes())?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Prints the complete records of the log `path` from `offset` to `out`;
/// returns the bytes they take (a record still being written is left for
/// the next call).
fn print_from(
    path: &Path,
    offset: u64,
    render: &mut Render,
    out: &mut dyn Write,
) -> Result<u64, PodsError> {
    use std::io::{Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(FileError::at("read", path)(source).into()),
    };
    f.seek(SeekFrom::Start(offset))
        .map_err(FileError::at("read", path))?;
    // By blocks, not the whole log in memory; `text` holds the records
    // not printed yet (the last may continue in the next block).
    let mut block = vec![0; 64 * 1024];
    let mut text = Vec::new();
    let mut used = 0;
    loop {
        let n = f.read(&mut block).map_err(FileError::at("read", path))?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&block[..n]);
        let printed = render
            .write(&text, out)
            .map_err(FileError::at("print", path))?;
        text.drain(..printed);
        used += printed;
    }
    let _ = out.flush();
    Ok(u64::try_from(used).expect("usize fits in u64"))
}

fn connect(dir: &Path, pod: &str) -> Result<UnixStream, PodsError> {
    let path = dir.join(CONTROL_SOCKET);
    UnixStream::connect(&path).map_err(|source| PodsError::Control {
        pod: pod.to_string(),
        path,
        source,
    })
}

/// Restores the terminal on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// `unipod exec`.
pub fn exec(args: &ExecArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    if !record.supervisor_alive() || record.status.phase.is_terminal() {
        return Err(PodsError::NotRunning {
            pod: record.name.clone(),
            phase: record.shown_phase(),
        });
    }
    let container = pick_container(&record, args.container.as_deref())?;
    let mut stream = connect(&dir, &record.name)?;
    let control_err = |source| PodsError::Control {
        pod: record.name.clone(),
        path: dir.join(CONTROL_SOCKET),
        source,
    };
    let request = ControlRequest::Exec(ExecRequest {
        container,
        argv: args.command.clone(),
        stdin: args.stdin,
        tty: args.tty,
    });
    control::write_line(&mut stream, &request).map_err(control_err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(control_err)?);
    match control::read_line::<_, ControlReply>(&mut reader).map_err(control_err)? {
        Some(ControlReply::Started { .. }) => {}
        Some(ControlReply::Error(message)) => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message,
            })
        }
        other => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message: format!("unexpected answer {other:?}"),
            })
        }
    }
    let _raw = if args.tty { RawMode::enter() } else { None };
    if args.stdin {
        let mut writer = stream;
        let _ = std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin().lock();
                loop {
                    let n = stdin.read(&mut buf).unwrap_or(0);
                    let line = ClientLine::Stdin(buf[..n].to_vec());
                    if control::write_line(&mut writer, &line).is_err() || n == 0 {
                        return;
                    }
                }
            });
    }
    loop {
        match control::read_line::<_, ControlReply>(&mut reader) {
            Ok(Some(ControlReply::Output { stream, data })) => {
                let result = match stream {
                    Stream::Stdout => {
                        let mut w = std::io::stdout().lock();
                        w.write_all(&data).and_then(|()| w.flush())
                    }
                    Stream::Stderr => {
                        let mut w = std::io::stderr().lock();
                        w.write_all(&data).and_then(|()| w.flush())
                    }
                };
                if result.is_err() {
                    return Ok(EXIT_EXEC_ERROR);
                }
            }
            Ok(Some(ControlReply::Exit { code, .. })) => return Ok(code),
            Ok(Some(ControlReply::Error(message))) => {
                return Err(PodsError::Refused {
                    pod: record.name.clone(),
                    message,
                })
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(PodsError::Refused {
                    pod: record.name.clone(),
                    message: "the supervisor hung up before the command ended".into(),
                })
            }
            Err(e) => return Err(control_err(e)),
        }
    }
}

/// `unipod stop`.
pub fn stop(args: &StopArgs) -> Result<i32, PodsError> {
    let record = stop_pod(&args.state, &args.pod, None)?;
    println!("pod {:?} stopped ({})", record.name, record.status.phase);
    Ok(0)
}

/// Stops a pod gracefully, within `grace` when given, else its
/// `terminationGracePeriodSeconds`; returns its final record.
fn stop_pod(state: &StateArg, pod: &str, grace: Option<u64>) -> Result<PodRecord, PodsError> {
    let (dir, mut record) = load(state, pod)?;
    if !record.supervisor_alive() {
        if !record.status.phase.is_terminal() || record.vmm.is_some_and(|v| v.alive()) {
            clean_up_orphan(&dir, &mut record).map_err(|source| PodsError::Network {
                pod: pod.to_string(),
                source,
            })?;
        }
        return Ok(record);
    }
    let mut stream = connect(&dir, &record.name)?;
    let control_err = |source| PodsError::Control {
        pod: record.name.clone(),
        path: dir.join(CONTROL_SOCKET),
        source,
    };
    let request = match grace {
        Some(seconds) => ControlRequest::StopWithGrace { seconds },
        None => ControlRequest::Stop,
    };
    control::write_line(&mut stream, &request).map_err(control_err)?;
    let mut reader = BufReader::new(stream);
    match control::read_line::<_, ControlReply>(&mut reader).map_err(control_err)? {
        Some(ControlReply::Ok) => {}
        other => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message: format!("unexpected answer {other:?}"),
            })
        }
    }
    let grace = match grace {
        Some(seconds) => Duration::from_secs(seconds),
        None => stored_manifest(&dir)
            .map(|m| m.termination_grace_period)
            .unwrap_or(manifest::DEFAULT_TERMINATION_GRACE_PERIOD),
    };
    let supervisor = record.supervisor.expect("alive, hence recorded");
    if !wait_gone(|| supervisor.alive(), grace + Duration::from_secs(60)) {
        return Err(PodsError::StopTimeout(record.name.clone()));
    }
    Ok(PodRecord::read(&dir)?)
}

/// `unipod rm`.
pub fn rm(args: &RmArgs) -> Result<i32, PodsError> {
    let name = remove_pod(&args.state, &args.pod, args.force)?;
    println!("pod {name:?} removed");
    Ok(0)
}

/// Removes a pod that does not run, or (with `force`) kills it first;
/// returns its name.
fn remove_pod(state: &StateArg, pod: &str, force: bool) -> Result<String, PodsError> {
    let (dir, mut record) = load(state, pod)?;
    if let Some(supervisor) = record.supervisor.filter(|s| s.alive()) {
        if !force {
            return Err(PodsError::Running(record.name.clone()));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(supervisor.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_gone(|| supervisor.alive(), Duration::from_secs(5));
    }
    clean_up_orphan(&dir, &mut record).map_err(|source| PodsError::Network {
        pod: pod.to_string(),
        source,
    })?;
    std::fs::remove_dir_all(&dir).map_err(FileError::at("remove", &dir))?;
    Ok(record.name)
}

/// How `unipod delete` ends a running pod, from kubectl's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// A graceful stop within this grace period (`None`: the pod's own).
    Graceful(Option<u64>),
    /// `--force --grace-period=0`: kill it at once.
    Immediate,
}

impl Deletion {
    /// kubectl's rules: `--now` is a grace period of 1 and cannot be given
    /// with `--grace-period`; 0 without `--force` becomes 1; `--force` alone
    /// is 0, and `--force` with a period above 0 is refused.
    pub fn from_flags(grace_period: i64, now: bool, force: bool) -> Result<Deletion, String> {
        if force && grace_period > 0 {
            return Err(
                "--force removes the pod at once: give it with --grace-period=0 or none".into(),
            );
        }
        let mut grace = grace_period;
        if now {
            if grace != -1 {
                return Err("--now means --grace-period=1: give one or the other".into());
            }
            grace = 1;
        }
        if grace == 0 && !force {
            grace = 1;
        }
        if force && grace < 0 {
            grace = 0;
        }
        Ok(match grace {
            0 => Deletion::Immediate,
            g => Deletion::Graceful(u64::try_from(g).ok()),
        })
    }
}

/// `unipod delete` arguments.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// POD..., or TYPE NAME...: TYPE is pod (pods, po), configmap (cm) or
    /// secret.
    #[arg(value_name = "[TYPE] NAME", required = true, num_args = 1..)]
    pub words: Vec<String>,
    /// Seconds a pod gets to stop before SIGKILL, in place of its
    /// terminationGracePeriodSeconds (-1: the pod's own). 0 only with
    /// --force; without it 0 means 1.
    #[arg(long, value_name = "SECONDS", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Stop at once: the same as --grace-period=1.
    #[arg(long)]
    pub now: bool,
    /// Remove the pod at once without waiting for its containers to stop
    /// (its VM is killed); with no --grace-period, or --grace-period=0.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod delete`: for pods, a graceful stop (as `unipod stop`, or within
/// --grace-period) and then `unipod rm`; ConfigMaps and Secrets go to
/// [`super::objects::delete`].
pub fn delete(args: &DeleteArgs) -> Result<i32, PodsError> {
    let deletion =
        Deletion::from_flags(args.grace_period, args.now, args.force).map_err(PodsError::Usage)?;
    let (kind, names) = match args.words.split_first() {
        Some((first, rest)) if !rest.is_empty() => (Some(first.as_str()), rest),
        _ => (None, &args.words[..]),
    };
    match kind {
        None | Some("pod" | "pods" | "po") => {}
        Some(kind) => {
            let kind = super::objects::parse_kind(kind)
                .map_err(|why| PodsError::Usage(format!("{why}, or pod")))?;
            for name in names {
                super::objects::delete(kind, name, &args.state)
                    .map_err(|e| PodsError::Usage(error_chain(&e, ": ")))?;
            }
            return Ok(0);
        }
    }
    if deletion == Deletion::Immediate {
        eprintln!("warning: --force --grace-period=0 kills each pod's VM without waiting for its containers to stop");
    }
    for pod in names {
        let force = match deletion {
            Deletion::Immediate => true,
            Deletion::Graceful(grace) => {
                stop_pod(&args.state, pod, grace)?;
                false
            }
        };
        let name = remove_pod(&args.state, pod, force)?;
        println!("pod {name:?} deleted");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::status::ProcessRef;

    #[test]
    fn prefixes_begin_every_line_across_writes() {
        let mut out = LinePrefix::new(Vec::new(), "[pod/p/c] ".into());
        out.write_all(b"a\nb").unwrap();
        out.write_all(b"c\n\nd\n").unwrap();
        assert_eq!(
            String::from_utf8(out.inner).unwrap(),
            "[pod/p/c] a\n[pod/p/c] bc\n[pod/p/c] \n[pod/p/c] d\n"
        );
    }

    #[test]
    fn delete_flags_resolve_as_kubectls() {
        let f = Deletion::from_flags;
        assert_eq!(f(-1, false, false), Ok(Deletion::Graceful(None)));
        assert_eq!(f(5, false, false), Ok(Deletion::Graceful(Some(5))));
        assert_eq!(
            f(0, false, false),
            Ok(Deletion::Graceful(Some(1))),
            "0 is 1"
        );
        assert_eq!(f(-1, true, false), Ok(Deletion::Graceful(Some(1))), "--now");
        assert_eq!(f(0, false, true), Ok(Deletion::Immediate));
        assert_eq!(f(-1, false, true), Ok(Deletion::Immediate), "--force alone");
        assert!(f(3, false, true).is_err(), "--force with a grace period");
        assert!(f(3, true, false).is_err(), "--now with a grace period");
    }

    #[test]
    fn output_formats_parse_and_bad_templates_are_usage_errors() {
        assert_eq!(parse_output("name"), Ok(Output::Name));
        assert_eq!(parse_output("wide"), Ok(Output::Wide));
        assert_eq!(
            parse_output("jsonpath={.status.podIP}"),
            Ok(Output::JsonPath("{.status.podIP}".into()))
        );
        assert!(parse_output("jsonpath={.status").is_err());
        assert!(matches!(
            parse_output("custom-columns=A:.a"),
            Ok(Output::CustomColumns(_))
        ));
        assert!(parse_output("custom-columns=A").is_err());
    }

    fn record(phase: &str, supervisor: Option<ProcessRef>) -> PodRecord {
        let mut doc = serde_json::json!({
            "version": 1, "name": "web", "uid": "u-1",
            "creationTimestamp": "2026-01-01T00:00:00Z", "manifest": "pod.yaml",
            "status": {"phase": phase, "podIP": "10.88.0.2", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        });
        if let Some(s) = supervisor {
            doc["supervisor"] = serde_json::to_value(s).unwrap();
        }
        serde_json::from_value(doc).expect("a status record")
    }

    /// The Pod document of a stored manifest.
    fn pod_object() -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pod.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  \
             labels: {app: web}\n  annotations: {note: hi}\nspec:\n  containers:\n  \
             - name: c\n    image: busybox:1.36\n    ports: [{containerPort: 80}]\n",
        )
        .unwrap();
        stored_pod_object(dir.path()).expect("the Pod document")
    }

    #[test]
    fn get_json_is_a_v1_pod_and_a_list_of_them_as_kubernetes_types_read_them() {
        use k8s_openapi::api::core::v1::Pod;
        let live = record("Running", Some(ProcessRef::current()));
        let doc = pod_document(&live, Some(&pod_object()));
        let pod: Pod = serde_json::from_value(doc.clone()).expect("a v1 Pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("web"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
        assert_eq!(pod.metadata.annotations.unwrap()["note"], "hi");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.containers[0].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
        let status = pod.status.expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.2"));
        // kubectl prints several as a v1 List (not a PodList) of Pods.
        let list = pod_list(vec![doc]);
        assert_eq!(
            (&list["apiVersion"], &list["kind"]),
            (&"v1".into(), &"List".into())
        );
        let items: Vec<Pod> = serde_json::from_value(list["items"].clone()).expect("v1 Pods");
        assert_eq!(items.len(), 1);
        // A command pod has no manifest: its spec lists its containers.
        let command: Pod = serde_json::from_value(pod_document(&live, None)).expect("a v1 Pod");
        assert_eq!(command.metadata.namespace.as_deref(), Some("default"));
        assert!(command.spec.is_some());
    }

    #[test]
    fn the_pod_document_has_metadata_and_the_shown_phase() {
        let live = record("Running", Some(ProcessRef::current()));
        let doc = pod_document(&live, Some(&pod_object()));
        let t = |text: &str| Template::parse(text).unwrap().render(&doc);
        assert_eq!(t("{.metadata.name}/{.metadata.uid}"), "web/u-1");
        assert_eq!(t("{.metadata.labels.app}"), "web");
        assert_eq!(t("{.status.phase} {.status.podIP}"), "Running 10.88.0.2");
        assert_eq!(
            t(r#"{.status.conditions[?(@.type=="Ready")].status}"#),
            "True"
        );
        let orphan = pod_document(&record("Running", None), None);
        let t = |text: &str| Template::parse(text).unwrap().render(&orphan);
        assert_eq!(t("{.status.phase}"), "Unknown", "no supervisor");
        assert_eq!(
            t(r#"{.status.conditions[?(@.type=="Ready")].status}"#),
            "False"
        );
        assert_eq!(t("{.metadata.labels}"), "");
        let done = pod_document(&record("Succeeded", None), None);
        assert_eq!(
            done["status"]["phase"], "Succeeded",
            "a finished pod stays so"
        );
    }

    #[test]
    fn the_labels_column_joins_pairs_or_says_none() {
        let labels: BTreeMap<String, String> = [
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]
        .into();
        assert_eq!(labels_column(&labels), "app=web,tier=front");
        assert_eq!(labels_column(&BTreeMap::new()), "<none>");
    }
}

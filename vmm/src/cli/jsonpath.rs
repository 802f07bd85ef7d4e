//! The subset of kubectl's JSONPath templates that `unipod get -o
//! jsonpath=...` and `unipod wait --for=jsonpath=...` evaluate, and
//! kubectl's equality-based label selectors (`-l`).
//!
//! # Design
//! A template is literal text with `{...}` actions. An action is a path
//! (`.status.podIP`, `.items[*].metadata.name`, `$` for the root, `@` or a
//! leading `.` for the current object), a quoted string (`{"\n"}`), or
//! `{range PATH}...{end}`, which evaluates its body once per result of
//! PATH with that result as the current object. Path steps: `.name`,
//! `['name']`, `[N]` (negative counts from the end), `[*]` and `.*`, and
//! filters `[?(@.path==VALUE)]` / `!=` with a quoted string, number or
//! bool. As with kubectl's default `--allow-missing-template-keys=true`, a
//! missing key prints nothing; several results of one action are joined
//! by a space; strings print bare and anything else as JSON.
//!
//! Hand-written: the JSONPath crates implement RFC 9535 queries, not
//! kubectl's templates (literal text, `{range}...{end}`), and a query
//! language alone would still need this template layer around it.
//!
//! # Limitations
//! No slices (`[a:b]`), recursive descent (`..`), unions (`[a,b]`) or
//! comparison operators other than `==` and `!=`; selectors have no
//! set-based requirements (`in`, `notin`). They are refused with a message,
//! never evaluated wrongly.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Node>);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Path(Path),
    Range(Path, Vec<Node>),
}

/// Where a path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Root,
    Current,
}

#[derive(Clone, Debug, PartialEq)]
struct Path {
    start: Start,
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Path,
        equal: bool,
        value: Value,
    },
}

/// An action of the template.
enum Action {
    Path(Path),
    Text(String),
    Range(Path),
    End,
}

impl Template {
    /// Parses `text`, e.g. `{.status.podIP}` or
    /// `{range .items[*]}{.metadata.name}{"\n"}{end}`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut stack: Vec<(Option<Path>, Vec<Node>)> = vec![(None, Vec::new())];
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push_text(&mut stack, rest);
                break;
            };
            push_text(&mut stack, &rest[..open]);
            let close = action_end(&rest[open..])
                .ok_or_else(|| format!("unclosed action in template {text:?}"))?;
            let inner = &rest[open + 1..open + close];
            rest = &rest[open + close + 1..];
            let top = &mut stack.last_mut().expect("never empty").1;
            match parse_action(inner)? {
                Action::Path(p) => top.push(Node::Path(p)),
                Action::Text(t) => top.push(Node::Text(t)),
                Action::Range(p) => stack.push((Some(p), Vec::new())),
                Action::End => {
                    let (Some(path), body) = stack.pop().expect("never empty") else {
                        return Err(format!("{{end}} without {{range}} in template {text:?}"));
                    };
                    let top = &mut stack.last_mut().expect("range pushed over the root").1;
                    top.push(Node::Range(path, body));
                }
            }
        }
        if stack.len() != 1 {
            return Err(format!("{{range}} without {{end}} in template {text:?}"));
        }
        Ok(Template(stack.pop().expect("one left").1))
    }

    /// Parses kubectl's relaxed form (for `wait --for=jsonpath=`): a path
    /// with or without braces, with or without its leading dot.
    pub fn parse_relaxed(text: &str) -> Result<Template, String> {
        let bare = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let path = if bare.starts_with(['.', '$', '@', '[']) {
            bare.to_string()
        } else {
            format!(".{bare}")
        };
        Template::parse(&format!("{{{path}}}"))
    }

    /// Evaluates the template against `root`.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.0, root, root, &mut out);
        out
    }

    /// The values of the template's only path action (for `wait`).
    pub fn values<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        match self.0.as_slice() {
            [Node::Path(p)] => eval(p, root, root),
            _ => Vec::new(),
        }
    }
}

fn push_text(stack: &mut [(Option<Path>, Vec<Node>)], text: &str) {
    if !text.is_empty() {
        let top = &mut stack.last_mut().expect("never empty").1;
        top.push(Node::Text(text.to_string()));
    }
}

/// The offset of the `}` that closes the action starting at `text[0]`,
/// skipping quoted strings.
fn action_end(text: &str) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            (None, _) => {}
        }
    }
    None
}

fn parse_action(inner: &str) -> Result<Action, String> {
    let inner = inner.trim();
    if inner == "end" {
        return Ok(Action::End);
    }
    if let Some(path) = inner.strip_prefix("range ") {
        return Ok(Action::Range(parse_path(path.trim())?));
    }
    if inner.starts_with('"') || inner.starts_with('\'') {
        let (text, rest) = parse_string(inner)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected {rest:?} after a string in {{{inner}}}"));
        }
        return Ok(Action::Text(text));
    }
    Ok(Action::Path(parse_path(inner)?))
}

/// Parses a quoted string at the start of `text`; returns it and the rest.
fn parse_string(text: &str) -> Result<(String, &str), String> {
    let quote = text.chars().next().ok_or("expected a string")?;
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(c) => out.push(c),
                None => break,
            },
            c if c == quote => return Ok((out, &text[i + 1..])),
            c => out.push(c),
        }
    }
    Err(format!("unterminated string {text:?}"))
}

fn parse_path(text: &str) -> Result<Path, String> {
    let (start, mut rest) = match text.as_bytes().first() {
        Some(b'$') => (Start::Root, &text[1..]),
        Some(b'@') => (Start::Current, &text[1..]),
        Some(b'.' | b'[') => (Start::Current, text),
        _ => {
            return Err(format!(
                "unsupported JSONPath {text:?}: paths start with '.', '$' or '@'"
            ))
        }
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if rest.starts_with("..") {
            return Err(format!(
                "unsupported JSONPath {text:?}: no recursive descent ('..')"
            ));
        }
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            match name {
                "" if end == after.len() => {}
                "" => return Err(format!("empty field name in {text:?}")),
                "*" => steps.push(Step::All),
                _ => steps.push(Step::Field(name.to_string())),
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let (step, after) = parse_bracket(after, text)?;
            steps.push(step);
            rest = after;
        } else {
            return Err(format!("unexpected {rest:?} in JSONPath {text:?}"));
        }
    }
    Ok(Path { start, steps })
}

/// Parses what follows a `[`; returns the step and the rest after `]`.
fn parse_bracket<'a>(after: &'a str, text: &str) -> Result<(Step, &'a str), String> {
    if let Some(filter) = after.strip_prefix("?(") {
        let end = filter
            .find(")]")
            .ok_or_else(|| format!("unclosed filter in {text:?}"))?;
        let (body, rest) = (&filter[..end], &filter[end + 2..]);
        let (lhs, rhs, equal) = match (body.split_once("=="), body.split_once("!=")) {
            (Some((l, r)), None) => (l, r, true),
            (None, Some((l, r))) => (l, r, false),
            _ => {
                return Err(format!(
                    "unsupported filter {body:?} in {text:?}: use @.path==VALUE or !="
                ))
            }
        };
        let path = parse_path(lhs.trim())?;
        let rhs = rhs.trim();
        let value = if rhs.starts_with(['"', '\'']) {
            Value::String(parse_string(rhs)?.0)
        } else {
            serde_json::from_str(rhs).map_err(|_| format!("bad value {rhs:?} in {text:?}"))?
        };
        return Ok((Step::Filter { path, equal, value }, rest));
    }
    if after.starts_with(['"', '\'']) {
        let (name, rest) = parse_string(after)?;
        let rest = rest
            .strip_prefix(']')
            .ok_or_else(|| format!("expected ']' in {text:?}"))?;
        return Ok((Step::Field(name), rest));
    }
    let end = after
        .find(']')
        .ok_or_else(|| format!("unclosed '[' in {text:?}"))?;
    let inside = after[..end].trim();
    let step = if inside == "*" {
        Step::All
    } else if let Ok(n) = inside.parse::<i64>() {
        Step::Index(n)
    } else {
        return Err(format!(
            "unsupported subscript [{inside}] in {text:?}: use [N], [*], ['name'] or [?(...)]"
        ));
    };
    Ok((step, &after[end + 1..]))
}

fn eval<'a>(path: &Path, root: &'a Value, current: &'a Value) -> Vec<&'a Value> {
    let mut values = vec![match path.start {
        Start::Root => root,
        Start::Current => current,
    }];
    for step in &path.steps {
        values = values
            .into_iter()
            .flat_map(|v| apply(step, root, v))
            .collect();
    }
    values
}

fn apply<'a>(step: &Step, root: &'a Value, v: &'a Value) -> Vec<&'a Value> {
    match (step, v) {
        (Step::Field(name), Value::Object(map)) => map.get(name).into_iter().collect(),
        (Step::Index(i), Value::Array(items)) => {
            let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
            let at = if *i < 0 { len + i } else { *i };
            usize::try_from(at)
                .ok()
                .and_then(|at| items.get(at))
                .into_iter()
                .collect()
        }
        (Step::All, Value::Array(items)) => items.iter().collect(),
        (Step::All, Value::Object(map)) => map.values().collect(),
        (Step::Filter { path, equal, value }, Value::Array(items)) => items
            .iter()
            .filter(|item| {
                let found = eval(path, root, item);
                found.contains(&value) == *equal
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn render_nodes(nodes: &[Node], root: &Value, current: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let shown: Vec<String> = eval(p, root, current).into_iter().map(show).collect();
                out.push_str(&shown.join(" "));
            }
            Node::Range(p, body) => {
                for item in eval(p, root, current) {
                    render_nodes(body, root, item, out);
                }
            }
        }
    }
}

/// `-o custom-columns=HEADER:PATH,...`: a table with a column per path
/// (kubectl's relaxed JSONPath, `.metadata.name` or `metadata.name`).
#[derive(Clone, Debug, PartialEq)]
pub struct CustomColumns(Vec<(String, Template)>);

// Templates hold no floats: equality is total.
impl Eq for CustomColumns {}

impl CustomColumns {
    /// Parses the text after `custom-columns=`.
    pub fn parse(spec: &str) -> Result<CustomColumns, String> {
        let columns = spec
            .split(',')
            .map(|column| {
                let (header, path) = column.split_once(':').ok_or_else(|| {
                    format!(
                        "custom-columns: {column:?} is not HEADER:PATH \
                         (e.g. custom-columns=NAME:.metadata.name,IP:.status.podIP)"
                    )
                })?;
                if header.is_empty() || path.is_empty() {
                    return Err(format!(
                        "custom-columns: {column:?} lacks a header or a path"
                    ));
                }
                Ok((header.to_string(), Template::parse_relaxed(path)?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CustomColumns(columns))
    }

    /// The column headers.
    pub fn headers(&self) -> Vec<String> {
        self.0.iter().map(|(h, _)| h.clone()).collect()
    }

    /// The row of `doc`: each path's values joined by commas, `<none>`
    /// where it finds nothing, as kubectl prints them.
    pub fn row(&self, doc: &Value) -> Vec<String> {
        self.0
            .iter()
            .map(|(_, path)| {
                let values = path.values(doc);
                if values.is_empty() || values.iter().all(|v| v.is_null()) {
                    "<none>".to_string()
                } else {
                    values.into_iter().map(show).collect::<Vec<_>>().join(",")
                }
            })
            .collect()
    }
}

/// A value as kubectl prints it: strings bare, anything else as JSON.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// An equality-based label selector: `app=web,tier!=db,env,!debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `text` as kubectl's `-l` does (`=`, `==`, `!=`, `key`,
    /// `!key`, joined by commas).
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim) {
            let bad = || {
                format!(
                    "unsupported label selector {part:?}: use key=value, key!=value, key or !key"
                )
            };
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            let value_ok = |s: &str| s.is_empty() || valid(s);
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let ok = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => valid(k) && value_ok(v),
                Requirement::Exists(k) | Requirement::NotExists(k) => valid(k),
            };
            if !ok {
                return Err(bad());
            }
            out.push(req);
        }
        Ok(Selector(out))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "status": {
                "phase": "Running",
                "podIP": "10.88.0.2",
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "False"}
                ],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0},
                    {"name": "b", "ready": false, "restartCount": 3}
                ]
            }
        })
    }

    fn render(template: &str, doc: &Value) -> String {
        Template::parse(template).expect(template).render(doc)
    }

    #[test]
    fn paths_print_strings_bare_and_other_values_as_json() {
        let p = pod();
        assert_eq!(render("{.status.podIP}", &p), "10.88.0.2");
        assert_eq!(render("{.metadata.name}", &p), "web");
        assert_eq!(render("{$.status.phase}", &p), "Running");
        assert_eq!(render("{.status.containerStatuses[0].ready}", &p), "true");
        assert_eq!(
            render("{.status.containerStatuses[-1].restartCount}", &p),
            "3"
        );
        assert_eq!(render("{.metadata['labels']}", &p), r#"{"app":"web"}"#);
        assert_eq!(render("ip={.status.podIP}!", &p), "ip=10.88.0.2!");
    }

    #[test]
    fn several_results_join_with_a_space_and_missing_keys_print_nothing() {
        let p = pod();
        assert_eq!(render("{.status.containerStatuses[*].name}", &p), "a b");
        assert_eq!(render("{.status.nothing.here}", &p), "");
        assert_eq!(render("{.status.containerStatuses[7].name}", &p), "");
        assert_eq!(render("{.metadata.name.deeper}", &p), "");
    }

    #[test]
    fn filters_select_array_items_by_a_field() {
        let p = pod();
        assert_eq!(
            render(r#"{.status.conditions[?(@.type=="Ready")].status}"#, &p),
            "False"
        );
        assert_eq!(
            render(r#"{.status.conditions[?(@.type!="Ready")].type}"#, &p),
            "Initialized"
        );
        assert_eq!(
            render("{.status.containerStatuses[?(@.ready==true)].name}", &p),
            "a"
        );
    }

    #[test]
    fn range_repeats_its_body_per_item_with_strings_for_separators() {
        let list = json!({"kind": "List", "items": [pod(), {"metadata": {"name": "db"}}]});
        assert_eq!(
            render(
                r#"{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\n"}{end}"#,
                &list
            ),
            "web\tRunning\ndb\t\n"
        );
        assert_eq!(render("{.items[*].metadata.name}", &list), "web db");
    }

    #[test]
    fn malformed_or_unsupported_templates_are_refused() {
        for bad in [
            "{.status.podIP",
            "{range .items[*]}{.x}",
            "{end}",
            "{status}",
            "{..name}",
            "{.items[0:2]}",
            r#"{"open}"#,
            "{.a[?(@.b>1)]}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relaxed_paths_take_braces_or_not_and_yield_values() {
        let p = pod();
        for t in ["{.status.phase}", ".status.phase", "status.phase"] {
            let values = Template::parse_relaxed(t).expect(t).values(&p).len();
            assert_eq!(values, 1, "{t}");
        }
        let t = Template::parse_relaxed("{.status.podIPs}").unwrap();
        assert!(t.values(&p).is_empty());
    }

    #[test]
    fn selectors_match_as_kubectls_equality_requirements() {
        let labels: BTreeMap<String, String> = [
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let matches = |s: &str| Selector::parse(s).expect(s).matches(&labels);
        assert!(matches("app=web"));
        assert!(matches("app==web,tier"));
        assert!(matches("app!=db,!debug"));
        assert!(!matches("app=db"));
        assert!(!matches("app=web,tier!=front"));
        assert!(!matches("debug"));
        assert!(!matches("!app"));
        for bad in ["app in (web)", "", "=web", "a=b c"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod custom_columns_tests {
    use super::*;

    #[test]
    fn custom_columns_take_relaxed_paths_and_show_none_for_missing_values() {
        let columns =
            CustomColumns::parse("NAME:.metadata.name,IP:status.podIP,C:.spec.containers[*].name")
                .unwrap();
        assert_eq!(columns.headers(), ["NAME", "IP", "C"]);
        let doc = serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {}
        });
        assert_eq!(columns.row(&doc), ["web", "<none>", "a,b"]);
        for bad in ["NAME", "NAME:", ":.a"] {
            assert!(CustomColumns::parse(bad).is_err(), "{bad}");
        }
    }
}

//! A runtime spec's `linux.seccomp` (the OCI/libseccomp profile format)
//! compiled to classic BPF with `seccompiler`.
//!
//! # Design
//!
//! **Why seccompiler.** runc links libseccomp (C); a static musl agent
//! would have to carry it. `seccompiler` is the pure-Rust compiler rust-vmm
//! maintains for Firecracker (the VMM's own filters use it, see
//! `vmm/src/seccomp.rs`): no C, no build step, small.
//!
//! **One filter per action.** A seccompiler filter has one action for the
//! syscalls it matches and one for the rest, while a profile gives each
//! group of syscalls its own action. The kernel runs every filter a process
//! has and keeps the most severe result (kill, trap, errno, trace, log,
//! allow, in that order), so a profile becomes a stack:
//! - a *base* filter: every syscall the profile lists (under its group's
//!   argument conditions) is allowed, anything else gets `defaultAction`
//!   (left out when `defaultAction` is allow);
//! - one filter per distinct non-allow action of the groups: its syscalls
//!   (under their conditions) get that action, anything else is allowed.
//!
//! A listed syscall then ends with its group's action, an unlisted one with
//! the default, exactly as in libseccomp's single filter. `errnoRet` and
//! `defaultErrnoRet` default to `EPERM`, as in runc.
//!
//! **Arguments.** Comparisons are 64-bit (libseccomp's). The conditions of a
//! group all hold at once (one rule), except when two name the same
//! argument: libseccomp cannot express that, and runc then gives each
//! condition its own rule (any of them matches); so does this. `SCMP_CMP_MASKED_EQ`
//! is `(arg & value) == valueTwo`.
//!
//! Programs are cached by profile, so a pod's containers with one profile
//! compile it once.
//!
//! # Limitations
//!
//! - The filter is for the x86_64 ABI; `architectures` other than x86_64
//!   add nothing, and a syscall made through another ABI is killed
//!   (seccompiler's architecture check).
//! - Refused, with the field named: `SCMP_ACT_NOTIFY` (it needs a seccomp
//!   agent on a listener socket), the `flags` other than
//!   `SECCOMP_FILTER_FLAG_TSYNC` (the agent is single-threaded, so TSYNC
//!   changes nothing), and argument indexes above 5.
//! - Syscall names x86_64 does not have (`chown32`, ...) are skipped, as
//!   runc skips them.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscalls;
use super::OciError;

/// Syscall number to its rules (`None`: always matches).
type RuleMap = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// The errno of `SCMP_ACT_ERRNO` without `errnoRet`.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// The filters of one profile, to install in order.
pub type Programs = Arc<Vec<BpfProgram>>;

/// Compiled profiles, keyed by their JSON.
#[derive(Debug, Default)]
pub struct Cache {
    programs: HashMap<String, Programs>,
}

impl Cache {
    /// The programs of `profile`, compiled on first use.
    pub fn get(&mut self, profile: &LinuxSeccomp) -> Result<Programs, OciError> {
        let key = serde_json::to_string(profile).unwrap_or_default();
        if let Some(p) = self.programs.get(&key) {
            return Ok(p.clone());
        }
        let programs = Arc::new(compile(profile)?);
        self.programs.insert(key, programs.clone());
        Ok(programs)
    }
}

fn error(field: String, problem: impl Into<String>) -> OciError {
    OciError::Seccomp {
        field,
        problem: problem.into(),
    }
}

/// The seccompiler action of `action` with `errno_ret`.
fn action(
    field: &str,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
) -> Result<SeccompAction, OciError> {
    use LinuxSeccompAction as A;
    Ok(match action {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(errno_ret.unwrap_or(DEFAULT_ERRNO)),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActTrace => SeccompAction::Trace(errno_ret.unwrap_or(0)),
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActNotify => {
            return Err(error(
                field.into(),
                "SCMP_ACT_NOTIFY needs a seccomp agent listening on a socket, which the pod VM does not run",
            ))
        }
    })
}

/// The rules of one syscall group's `args`: `None` matches always.
fn rules(field: &str, args: &[LinuxSeccompArg]) -> Result<Option<Vec<SeccompRule>>, OciError> {
    if args.is_empty() {
        return Ok(None);
    }
    let conditions = args
        .iter()
        .enumerate()
        .map(|(i, a)| condition(&format!("{field}.args[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    indexes.dedup();
    let rule = |c: Vec<SeccompCondition>| {
        SeccompRule::new(c).map_err(|e| error(field.into(), e.to_string()))
    };
    let rules = if indexes.len() == args.len() {
        vec![rule(conditions)?]
    } else {
        conditions
            .into_iter()
            .map(|c| rule(vec![c]))
            .collect::<Result<_, _>>()?
    };
    Ok(Some(rules))
}

fn condition(field: &str, a: &LinuxSeccompArg) -> Result<SeccompCondition, OciError> {
    use LinuxSeccompOperator as O;
    let index = u8::try_from(a.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| {
            error(
                format!("{field}.index"),
                "a syscall has 6 arguments, 0 to 5",
            )
        })?;
    let (op, value) = match a.op() {
        O::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
        O::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
        O::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
        O::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
        O::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
        O::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
        O::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| error(field.into(), e.to_string()))
}

/// Adds `rules` for `nr` to `map`: an unconditional entry absorbs the rest.
fn add(
    map: &mut BTreeMap<i64, Option<Vec<SeccompRule>>>,
    nr: i64,
    rules: Option<Vec<SeccompRule>>,
) {
    match (map.get_mut(&nr), rules) {
        (None, r) => {
            map.insert(nr, r);
        }
        (Some(slot), None) => *slot = None,
        (Some(Some(existing)), Some(more)) => existing.extend(more),
        (Some(None), Some(_)) => {}
    }
}

fn filter(
    map: RuleMap,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, OciError> {
    let rules = map
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|e| error("linux.seccomp".into(), e.to_string()))
}

/// Compiles `profile` into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, OciError> {
    for (i, f) in profile.flags().iter().flatten().enumerate() {
        if *f != LinuxSeccompFilterFlag::SeccompFilterFlagTsync {
            return Err(error(
                format!("linux.seccomp.flags[{i}]"),
                format!("{f:?} is not supported; remove it"),
            ));
        }
    }
    let default = action(
        "linux.seccomp.defaultAction",
        profile.default_action(),
        profile.default_errno_ret(),
    )?;
    let mut base = RuleMap::new();
    let mut by_action: Vec<(SeccompAction, RuleMap)> = Vec::new();
    for (g, group) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{g}]");
        let act = action(
            &format!("{field}.action"),
            group.action(),
            group.errno_ret(),
        )?;
        let rules = rules(&field, group.args().as_deref().unwrap_or(&[]))?;
        for name in group.names() {
            let Some(nr) = syscalls::number(name) else {
                log::debug!("{field}: no x86_64 syscall {name:?}; skipped");
                continue;
            };
            add(&mut base, nr, rules.clone());
            if act == SeccompAction::Allow {
                continue;
            }
            match by_action.iter_mut().find(|(a, _)| *a == act) {
                Some((_, map)) => add(map, nr, rules.clone()),
                None => {
                    let mut map = RuleMap::new();
                    add(&mut map, nr, rules.clone());
                    by_action.push((act.clone(), map));
                }
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(filter(base, default, SeccompAction::Allow)?);
    }
    for (act, map) in by_action {
        programs.push(filter(map, SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn one_filter_per_action_and_one_for_the_default() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["read", "write", "chown32"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }));
        assert_eq!(compile(&p).unwrap().len(), 2);
    }

    #[test]
    fn an_allow_by_default_profile_has_no_base_filter() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert_eq!(compile(&p).unwrap().len(), 1);
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        assert!(compile(&p).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_be_mapped_fails_naming_the_field() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        let err = compile(&p).unwrap_err().to_string();
        assert!(err.contains("linux.seccomp.syscalls[0].action"), "{err}");
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }));
        let err = compile(&p).unwrap_err().to_string();
        assert!(err.contains("args[0].index"), "{err}");
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"]
        }));
        assert!(compile(&p).unwrap_err().to_string().contains("flags[0]"));
    }

    #[test]
    fn conditions_on_one_argument_become_alternatives() {
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(serde_json::json!([
            {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}
        ]))
        .unwrap();
        assert_eq!(rules("f", &args).unwrap().unwrap().len(), 2);
        let args: Vec<LinuxSeccompArg> = serde_json::from_value(serde_json::json!([
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 2, "op": "SCMP_CMP_MASKED_EQ", "valueTwo": 0}
        ]))
        .unwrap();
        assert_eq!(rules("f", &args).unwrap().unwrap().len(), 1);
    }

    #[test]
    fn a_profile_is_compiled_once() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
        }));
        let mut cache = Cache::default();
        let a = cache.get(&p).unwrap();
        let b = cache.get(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}

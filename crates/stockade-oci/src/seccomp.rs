//! The config's own seccomp profile (`linux.seccomp`), installed in
//! addition to stockade's filters (the kernel applies the most
//! restrictive answer of all installed filters).
//!
//! A runtime-spec profile gives each rule its own action; a `seccompiler`
//! filter has one action for its matches and one for the rest. So the
//! profile becomes several stacked filters: one whose default is the
//! profile's default action and which allows every syscall some rule
//! names (with that rule's argument conditions), and, per other action,
//! one that returns that action for its rules and allows the rest. A call
//! no rule matches gets the default; one a rule matches gets that rule's
//! action (or, if several rules with different actions match, the most
//! restrictive of them). Names this architecture does not have are
//! skipped, as libseccomp does.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SeccompProfileError {
    #[error("linux.seccomp is not a runtime-spec seccomp object")]
    Parse(#[source] serde_json::Error),
    #[error("linux.seccomp: action {0:?} is not supported by stockade (use SCMP_ACT_ALLOW, ERRNO, KILL, KILL_PROCESS, KILL_THREAD, TRAP, LOG)")]
    Action(String),
    #[error("linux.seccomp: comparison {0:?} is not supported (use SCMP_CMP_EQ, NE, LT, LE, GT, GE, MASKED_EQ)")]
    Op(String),
    #[error("linux.seccomp could not be compiled: {0}")]
    Compile(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn action(name: &str, errno: Option<u32>) -> Result<Value, SeccompProfileError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => json!("allow"),
        "SCMP_ACT_ERRNO" => json!({"errno": errno.unwrap_or(libc::EPERM as u32)}),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => json!("kill_thread"),
        "SCMP_ACT_KILL_PROCESS" => json!("kill_process"),
        "SCMP_ACT_TRAP" => json!("trap"),
        "SCMP_ACT_LOG" => json!("log"),
        other => return Err(SeccompProfileError::Action(other.into())),
    })
}

/// One rule's conditions as alternatives (`NE` becomes `LT` or `GT`),
/// each a list of seccompiler conditions joined by AND.
fn conditions(args: &[Arg]) -> Result<Vec<Vec<Value>>, SeccompProfileError> {
    let mut alts: Vec<Vec<Value>> = vec![Vec::new()];
    for a in args {
        let cond =
            |op: Value, val: u64| json!({"index": a.index, "type": "qword", "op": op, "val": val});
        let options = match a.op.as_str() {
            "SCMP_CMP_EQ" => vec![cond(json!("eq"), a.value)],
            "SCMP_CMP_LT" => vec![cond(json!("lt"), a.value)],
            "SCMP_CMP_LE" => vec![cond(json!("le"), a.value)],
            "SCMP_CMP_GT" => vec![cond(json!("gt"), a.value)],
            "SCMP_CMP_GE" => vec![cond(json!("ge"), a.value)],
            "SCMP_CMP_NE" => vec![cond(json!("lt"), a.value), cond(json!("gt"), a.value)],
            "SCMP_CMP_MASKED_EQ" => vec![cond(json!({"masked_eq": a.value}), a.value_two)],
            other => return Err(SeccompProfileError::Op(other.into())),
        };
        alts = alts
            .into_iter()
            .flat_map(|alt| {
                options.iter().map(move |o| {
                    let mut v = alt.clone();
                    v.push(o.clone());
                    v
                })
            })
            .collect();
    }
    Ok(alts)
}

fn arch() -> Result<seccompiler::TargetArch, SeccompProfileError> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        SeccompProfileError::Compile(format!("no seccomp support for {}", std::env::consts::ARCH))
    })
}

/// Whether seccompiler knows the syscall on this architecture.
fn known(name: &str, arch: seccompiler::TargetArch) -> bool {
    let probe = json!({"p": {"default_action": "allow", "filter_action": "log",
        "filter": [{"syscall": name}]}});
    seccompiler::compile_from_json(probe.to_string().as_bytes(), arch).is_ok()
}

/// Per syscall name: `None` for an unconditional match, else the
/// alternatives (each a list of conditions joined by AND).
type Rules = BTreeMap<String, Option<Vec<Vec<Value>>>>;

/// Adds `name`'s alternatives to a filter's rule list (an unconditional
/// rule wins over conditional ones).
fn add(rules: &mut Rules, name: &str, alts: Vec<Vec<Value>>) {
    let unconditional = alts.iter().any(|a| a.is_empty());
    let e = rules
        .entry(name.to_string())
        .or_insert_with(|| Some(Vec::new()));
    match (e.as_mut(), unconditional) {
        (_, true) => *e = None,
        (Some(v), false) => v.extend(alts),
        (None, false) => {}
    }
}

fn filter_json(
    default: Value,
    on_match: Value,
    rules: &BTreeMap<String, Option<Vec<Vec<Value>>>>,
) -> Value {
    let mut list = Vec::new();
    for (name, alts) in rules {
        match alts {
            None => list.push(json!({"syscall": name})),
            Some(alts) => {
                for a in alts {
                    list.push(json!({"syscall": name, "args": a}));
                }
            }
        }
    }
    json!({"default_action": default, "filter_action": on_match, "filter": list})
}

/// Compiles the profile into BPF programs, to install in any order.
pub fn compile(profile: &Value) -> Result<Vec<seccompiler::BpfProgram>, SeccompProfileError> {
    let p: Profile = serde_json::from_value(profile.clone()).map_err(SeccompProfileError::Parse)?;
    let arch = arch()?;
    let default = action(&p.default_action, p.default_errno_ret)?;
    let mut all: Rules = BTreeMap::new();
    let mut by_action: BTreeMap<String, (Value, Rules)> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for r in &p.syscalls {
        let act = action(&r.action, r.errno_ret.or(p.default_errno_ret))?;
        let alts = conditions(&r.args)?;
        for name in &r.names {
            let ok = *seen
                .entry(name.clone())
                .or_insert_with(|| known(name, arch));
            if !ok {
                continue;
            }
            add(&mut all, name, alts.clone());
            if act != json!("allow") {
                let entry = by_action
                    .entry(act.to_string())
                    .or_insert_with(|| (act.clone(), BTreeMap::new()));
                add(&mut entry.1, name, alts.clone());
            }
        }
    }
    let mut filters = serde_json::Map::new();
    if default != json!("allow") {
        filters.insert("default".into(), filter_json(default, json!("allow"), &all));
    }
    for (i, (_, (act, rules))) in by_action.iter().enumerate() {
        if !rules.is_empty() {
            filters.insert(
                format!("action{i}"),
                filter_json(json!("allow"), act.clone(), rules),
            );
        }
    }
    let text = Value::Object(filters).to_string();
    let map = seccompiler::compile_from_json(text.as_bytes(), arch)
        .map_err(|e| SeccompProfileError::Compile(e.to_string()))?;
    Ok(map.into_values().collect())
}

/// Installs compiled programs on the calling thread (`no_new_privs` set).
pub fn install(programs: &[seccompiler::BpfProgram]) -> Result<(), SeccompProfileError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SeccompProfileError::Compile(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_like_profile_compiles() {
        let p = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall_here"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_NE"}]}
            ]
        });
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 2);
    }

    #[test]
    fn unknown_actions_are_refused() {
        let p = json!({"defaultAction": "SCMP_ACT_NOTIFY", "syscalls": []});
        assert!(matches!(compile(&p), Err(SeccompProfileError::Action(_))));
    }
}

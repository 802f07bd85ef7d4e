//! A container's user: the runtime spec's `process.user`, or
//! `RunSpec::image_user` resolved against its root file system.
//!
//! # Design
//!
//! `uid` and `uid:gid` are taken as they are (a bare uid gets the primary
//! group of its `/etc/passwd` entry, if any, else gid 0, as runc does); a
//! name, on either side of the `:`, is looked up in the container's own
//! `/etc/passwd` and `/etc/group`, read by the agent before the container
//! starts. The supplementary groups are those `/etc/group` lists the user
//! name in. The child applies the result with `setgroups`, `setgid`, then
//! `setuid`, after its mounts and right before `exec` (see `sandbox.rs`).
//!
//! # Limitations
//!
//! No NSS: only the flat files. The agent reads them through the host's view
//! of the container's root, so an `/etc/passwd` that is an absolute symlink
//! is followed outside it (the result is only ever a number).

#![forbid(unsafe_code)]

use std::path::Path;

use nix::unistd::{Gid, Uid};

/// Why a user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user name is not in the container's `/etc/passwd`.
    #[error("user {name:?} not found in the container's /etc/passwd; give a uid or add the user to the image")]
    NoSuchUser {
        /// The name.
        name: String,
    },
    /// The group name is not in the container's `/etc/group`.
    #[error("group {name:?} not found in the container's /etc/group; give a gid or add the group to the image")]
    NoSuchGroup {
        /// The name.
        name: String,
    },
    /// The spec is empty or malformed.
    #[error("user {0:?} is invalid: give uid, uid:gid, or a user name from the image")]
    Invalid(String),
}

/// The resolved identity a container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: Uid,
    /// The primary group id.
    pub gid: Gid,
    /// Supplementary group ids (the primary one included).
    pub groups: Vec<Gid>,
}

impl User {
    /// Root, with no supplementary groups but its own.
    pub fn root() -> Self {
        Self {
            uid: Uid::from_raw(0),
            gid: Gid::from_raw(0),
            groups: vec![Gid::from_raw(0)],
        }
    }
}

/// One `/etc/passwd` entry: name, uid, gid.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some((name, uid, gid))
    })
}

/// One `/etc/group` entry: name, gid, members.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    group.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some((name, gid, f.next().unwrap_or("")))
    })
}

/// Resolves `spec` (`uid`, `uid:gid`, `name`, `name:group`, ...) against the
/// contents of `/etc/passwd` and `/etc/group` (empty when absent).
pub fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let (uid, name, passwd_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd_entries(passwd).find(|&(_, u, _)| u == uid);
            (uid, entry.map(|e| e.0), entry.map(|e| e.2))
        }
        Err(_) => {
            let (name, uid, gid) = passwd_entries(passwd)
                .find(|&(n, _, _)| n == user_part)
                .ok_or_else(|| UserError::NoSuchUser {
                    name: user_part.to_string(),
                })?;
            (uid, Some(name), Some(gid))
        }
    };
    let gid = match group_part {
        None => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|&(n, _, _)| n == g)
                .map(|e| e.1)
                .ok_or_else(|| UserError::NoSuchGroup {
                    name: g.to_string(),
                })?,
        },
    };
    let mut groups = vec![Gid::from_raw(gid)];
    if let Some(name) = name {
        let member_of = group_entries(group)
            .filter(|(_, _, members)| members.split(',').any(|m| m.trim() == name))
            .map(|e| Gid::from_raw(e.1));
        for g in member_of {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(User {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups,
    })
}

/// The user of a runtime spec: `image_user` (see `RunSpec::image_user`)
/// resolved in `root`, else `process.user`'s uid and gid; either way with
/// `process.user.additionalGids` added to the groups.
pub fn from_spec(
    spec: &oci_spec::runtime::Spec,
    image_user: Option<&str>,
    root: &Path,
) -> Result<User, UserError> {
    let spec_user = spec.process().as_ref().map(|p| p.user());
    let mut user = match image_user {
        Some(u) => resolve(u, root)?,
        None => {
            let (uid, gid) = spec_user.map_or((0, 0), |u| (u.uid(), u.gid()));
            User {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(gid),
                groups: vec![Gid::from_raw(gid)],
            }
        }
    };
    let extra = spec_user.and_then(|u| u.additional_gids().as_ref());
    for g in extra.into_iter().flatten().map(|g| Gid::from_raw(*g)) {
        if !user.groups.contains(&g) {
            user.groups.push(g);
        }
    }
    Ok(user)
}

/// Resolves `spec` against `<root>/etc/passwd` and `<root>/etc/group`.
pub fn resolve(spec: &str, root: &Path) -> Result<User, UserError> {
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
    resolve_in(spec, &read("etc/passwd"), &read("etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534::/:/bin/sh\n\
                          web:x:1000:1001:Web:/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nweb:x:1001:\nwheel:x:10:root,web\nnogroup:x:65534:\n";

    fn ids(u: &User) -> (u32, u32, Vec<u32>) {
        let groups = u.groups.iter().map(|g| g.as_raw()).collect();
        (u.uid.as_raw(), u.gid.as_raw(), groups)
    }

    #[test]
    fn numbers_are_taken_as_they_are() {
        let u = resolve_in("65534", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (65534, 65534, vec![65534]));
        let u = resolve_in("4242:99", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (4242, 99, vec![99]));
        let u = resolve_in("4242", "", "").unwrap();
        assert_eq!(ids(&u), (4242, 0, vec![0]));
    }

    #[test]
    fn names_are_looked_up_with_their_groups() {
        let u = resolve_in("nobody", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (65534, 65534, vec![65534]));
        let u = resolve_in("web", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (1000, 1001, vec![1001, 10]));
        let u = resolve_in("web:nogroup", PASSWD, GROUP).unwrap();
        assert_eq!(ids(&u), (1000, 65534, vec![65534, 10]));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = resolve_in("ghost", PASSWD, GROUP).unwrap_err();
        assert!(err.to_string().contains("\"ghost\""), "{err}");
        let err = resolve_in("web:ghosts", PASSWD, GROUP).unwrap_err();
        assert!(matches!(err, UserError::NoSuchGroup { .. }), "{err}");
        for bad in ["", ":", "1:", ":1"] {
            assert!(matches!(
                resolve_in(bad, PASSWD, GROUP),
                Err(UserError::Invalid(_))
            ));
        }
    }
}

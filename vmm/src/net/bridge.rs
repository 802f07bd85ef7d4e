//! The host bridge of a pod network, and a pod's tap on it.
//!
//! # Design
//! The bridge is made on first use and never removed by unipod: it is the
//! host's pod network, shared by every pod on it (and by other unipod
//! processes starting at the same moment, so "already exists" is success).
//! It carries the gateway address, which is also the host's address on the
//! pod network (and, with `--pod-cidr6`, the IPv6 one).

use std::net::IpAddr;

use unipod_netlink::{Netlink, NetlinkError};

/// Errors while setting up the bridge or attaching a tap.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A netlink request failed.
    #[error("{step}")]
    Netlink {
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// A link vanished while it was being set up.
    #[error("{0}: the link disappeared while it was being set up")]
    Vanished(String),
}

fn step(step: String) -> impl FnOnce(NetlinkError) -> BridgeError {
    move |source| BridgeError::Netlink { step, source }
}

/// Makes sure bridge `name` exists, carries each `gateway/prefix_len` of
/// `gateways` and is up; returns its index.
pub fn ensure_bridge(
    nl: &mut Netlink,
    name: &str,
    gateways: &[(IpAddr, u8)],
) -> Result<u32, BridgeError> {
    let index = match nl
        .link_index(name)
        .map_err(step(format!("look up bridge {name}")))?
    {
        Some(index) => index,
        None => match nl.create_bridge(name) {
            Ok(index) => index,
            // Another unipod created it a moment ago.
            Err(e) if e.is_already_exists() => nl
                .link_index(name)
                .map_err(step(format!("look up bridge {name}")))?
                .ok_or_else(|| BridgeError::Vanished(name.to_string()))?,
            Err(e) => return Err(step(format!("create bridge {name} (needs root)"))(e)),
        },
    };
    for &(gateway, prefix_len) in gateways {
        match nl.add_address(index, gateway, prefix_len) {
            Err(e) if !e.is_already_exists() => {
                return Err(step(format!(
                    "add the gateway {gateway}/{prefix_len} to bridge {name}"
                ))(e))
            }
            _ => {}
        }
    }
    nl.set_up(index)
        .map_err(step(format!("set bridge {name} up")))?;
    Ok(index)
}

/// Puts tap `tap` on the bridge with index `bridge` and sets it up.
pub fn attach(nl: &mut Netlink, tap: &str, bridge: u32) -> Result<(), BridgeError> {
    let index = nl
        .link_index(tap)
        .map_err(step(format!("look up tap {tap}")))?
        .ok_or_else(|| BridgeError::Vanished(tap.to_string()))?;
    nl.set_master(index, bridge)
        .map_err(step(format!("attach tap {tap} to the bridge")))?;
    nl.set_up(index).map_err(step(format!("set tap {tap} up")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a fresh network namespace on its own thread, or skips
    /// loudly without root.
    fn in_netns(name: &'static str, f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("SKIP {name}: needs root to create a network namespace ({e})");
                return;
            }
            f();
        })
        .join()
        .expect("test thread panicked");
    }

    #[test]
    fn bridge_is_created_once_with_the_gateway() {
        in_netns("bridge_is_created_once", || {
            let mut nl = Netlink::open().unwrap();
            let gateways = [
                (IpAddr::from([10, 231, 0, 1]), 24),
                ("fd00:231::1".parse().unwrap(), 64),
            ];
            let first = ensure_bridge(&mut nl, "uptest0", &gateways).unwrap();
            let again = ensure_bridge(&mut nl, "uptest0", &gateways).unwrap();
            assert_eq!(first, again);
            assert_eq!(nl.addresses(first).unwrap(), gateways);
        });
    }

    #[test]
    fn attaching_a_missing_tap_names_it() {
        in_netns("attaching_a_missing_tap", || {
            let mut nl = Netlink::open().unwrap();
            let br = ensure_bridge(&mut nl, "uptest1", &[([10, 231, 1, 1].into(), 24)]).unwrap();
            let err = attach(&mut nl, "upnotthere", br).unwrap_err();
            assert!(err.to_string().contains("upnotthere"), "{err}");
        });
    }
}

//! A pod network that CNI made. Under Kubernetes the CRI plugin creates the
//! pod's network namespace and a CNI plugin puts an interface in it (a veth,
//! for the bridge plugin) holding the pod IP. The pod VM joins that network
//! the way Kata's "tcfilter" model does: a tap in the same namespace, and tc
//! filters that send every frame the interface receives out of the tap and
//! every frame the tap receives out of the interface. The guest's `eth0`
//! takes the interface's MAC, IP, MTU and default route, so to the rest of
//! the cluster the pod is just that interface.
//!
//! # Design
//! - The namespace is entered on a short-lived thread of its own
//!   (`setns` changes only the calling thread), which opens the tap there:
//!   a tap stays in the namespace it was created in, while its fd works
//!   from anywhere, so the VMM (in the host namespace) just inherits it.
//! - The tap is non-persistent, as on the host bridge: it goes when the VMM
//!   and the shim close it. The interface's ingress qdisc (and with it the
//!   filter) is removed on failure; after a successful start it goes with
//!   the interface, which CNI deletes when the pod is torn down.
//! - The interface's addresses stay on it: frames reach the tc filter
//!   before the namespace's IP stack sees them, so it does not answer for
//!   the pod.
//! - A dual-stack CNI result gives the interface an IPv6 address too; the
//!   guest takes it, and the IPv6 default route if there is one whose
//!   gateway is not link-local (the guest's link-local address is not the
//!   interface's, so such a route could not be taken over).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use guest_agent::protocol::{Ipv6Config, NetworkConfig};
use unipod_netlink::{Netlink, NetlinkError};

use super::{NetError, Tap};

/// The tap's name inside the pod's namespace (one per namespace).
pub const CNI_TAP_NAME: &str = "unipod-tap0";

/// Why the pod VM cannot join a CNI-made network.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The namespace file cannot be opened or entered.
    #[error("cannot enter the pod's network namespace {}", .0.display())]
    Enter(PathBuf, #[source] std::io::Error),
    /// No interface other than `lo` has an IPv4 address.
    #[error("the pod's network namespace {} has no interface with an IPv4 address; did the CNI plugin run (see containerd's log)?", .0.display())]
    NoInterface(PathBuf),
    /// The interface has no IPv4 default route.
    #[error("the pod's network namespace {}: {interface} has no IPv4 default route; the CNI configuration needs one (the bridge plugin's isGateway, or a route 0.0.0.0/0 in its IPAM)", .netns.display())]
    NoGateway {
        /// The namespace.
        netns: PathBuf,
        /// The interface.
        interface: String,
    },
    /// A netlink request failed.
    #[error("the pod's network namespace {}", .0.display())]
    Netlink(PathBuf, #[source] NetlinkError),
    /// The tap cannot be created.
    #[error("the pod's network namespace {}", .0.display())]
    Tap(PathBuf, #[source] NetError),
}

/// A tap joined to the CNI interface of a pod's network namespace.
#[derive(Debug)]
pub struct CniTap {
    /// The tap, for the VMM's virtio-net device.
    pub tap: Tap,
    /// What the guest's `eth0` takes over from the CNI interface (without
    /// DNS, which the caller fills in).
    pub guest: NetworkConfig,
    /// The CNI interface's name, for logs.
    pub interface: String,
}

/// Creates the tap in `netns` and redirects it to and from the namespace's
/// interface. On error nothing is left in the namespace.
pub fn join(netns: &Path) -> Result<CniTap, CniError> {
    in_netns(netns, || join_here(netns))
        .unwrap_or_else(|e| Err(CniError::Enter(netns.to_path_buf(), e)))
}

/// Runs `work` in the network namespace `netns`, on a thread of its own:
/// setns moves only the calling thread, and this one ends right after, so
/// no other work ever runs in the pod's namespace. Sockets, taps and child
/// processes made there stay there. `Err`: the namespace cannot be entered.
pub fn in_netns<T: Send>(netns: &Path, work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns)?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(work())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the thread in the namespace panicked",
            ))
        })
    })
}

/// [`join`], on a thread already in the namespace.
fn join_here(netns: &Path) -> Result<CniTap, CniError> {
    let nl_err = |e| CniError::Netlink(netns.to_path_buf(), e);
    let mut nl = Netlink::open().map_err(nl_err)?;
    let (interface, index, address, prefix_len) = pod_interface(&mut nl)
        .map_err(nl_err)?
        .ok_or_else(|| CniError::NoInterface(netns.to_path_buf()))?;
    let routes = nl.routes().map_err(nl_err)?;
    let default_gateways = routes
        .iter()
        .filter(|(dest, prefix, _)| dest.is_none() && *prefix == 0)
        .filter_map(|(_, _, gateway)| *gateway);
    let gateway = default_gateways
        .clone()
        .find_map(|gw| match gw {
            IpAddr::V4(gw) => Some(gw),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| CniError::NoGateway {
            netns: netns.to_path_buf(),
            interface: interface.clone(),
        })?;
    let gateway6 = default_gateways.clone().find_map(|gw| match gw {
        IpAddr::V6(gw) if !gw.is_unicast_link_local() => Some(gw),
        _ => None,
    });
    let ipv6 =
        nl.addresses(index)
            .map_err(nl_err)?
            .into_iter()
            .find_map(|(ip, prefix_len)| match ip {
                IpAddr::V6(address) => Some(Ipv6Config {
                    address,
                    prefix_len,
                    gateway: gateway6,
                }),
                IpAddr::V4(_) => None,
            });
    let (mac, mtu) = nl.link_mac_and_mtu(index).map_err(nl_err)?;

    let tap = Tap::create(CNI_TAP_NAME).map_err(|e| CniError::Tap(netns.to_path_buf(), e))?;
    let tap_index = nl
        .link_index(CNI_TAP_NAME)
        .map_err(nl_err)?
        .ok_or_else(|| {
            nl_err(NetlinkError::Protocol {
                op: format!("look up {CNI_TAP_NAME}"),
                detail: "the new tap vanished".to_owned(),
            })
        })?;
    let wired = (|| {
        nl.set_mtu(tap_index, mtu)?;
        nl.set_up(tap_index)?;
        nl.add_ingress_qdisc(index)?;
        nl.add_ingress_qdisc(tap_index)?;
        nl.redirect_ingress(index, tap_index)?;
        nl.redirect_ingress(tap_index, index)
    })();
    if let Err(e) = wired {
        // The tap, and the qdiscs and filters on it, go with its fd.
        let _ = nl.delete_ingress_qdisc(index);
        return Err(nl_err(e));
    }
    Ok(CniTap {
        tap,
        guest: NetworkConfig {
            mac,
            address,
            prefix_len,
            gateway,
            mtu,
            dns_servers: Vec::new(),
            dns_search: Vec::new(),
            ipv6,
        },
        interface,
    })
}

/// The first interface other than `lo` with an IPv4 address: (name, index,
/// address, prefix length).
fn pod_interface(nl: &mut Netlink) -> Result<Option<(String, u32, Ipv4Addr, u8)>, NetlinkError> {
    for name in nl.link_names()? {
        if name == "lo" || name == CNI_TAP_NAME {
            continue;
        }
        let Some(index) = nl.link_index(&name)? else {
            continue;
        };
        let v4 = nl
            .addresses(index)?
            .into_iter()
            .find_map(|(ip, len)| match ip {
                IpAddr::V4(ip) => Some((ip, len)),
                IpAddr::V6(_) => None,
            });
        if let Some((address, prefix_len)) = v4 {
            return Ok(Some((name, index, address, prefix_len)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    /// A network namespace made with `ip netns`, deleted on drop.
    struct TestNetns(String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// `None`, after a loud SKIP, when not root.
    fn netns(test: &str, name: &str) -> Option<TestNetns> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP {test}: needs root to create a network namespace");
            return None;
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        ip(&["netns", "add", name]);
        Some(TestNetns(name.to_owned()))
    }

    fn tc_filters(ns: &str, dev: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "filter", "show", "dev", dev, "ingress",
            ])
            .output()
            .expect("run tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The tap goes with its fd: at once, or, if another test's child forked
    /// while it was open, when that child execs (a moment later).
    fn assert_tap_gone(ns: &str) {
        let gone = (0..50).any(|_| {
            let links = Command::new("ip")
                .args(["-n", ns, "link"])
                .output()
                .unwrap();
            let gone = !String::from_utf8_lossy(&links.stdout).contains(CNI_TAP_NAME);
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            gone
        });
        assert!(gone, "{CNI_TAP_NAME} outlived its fd by 5 s");
    }

    #[test]
    fn the_tap_takes_over_the_cni_interface() {
        let Some(ns) = netns("the_tap_takes_over_the_cni_interface", "unipod-cni-t1") else {
            return;
        };
        // What the bridge plugin leaves: a veth with the pod IP and a default route.
        ip(&[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&[
            "-n",
            &ns.0,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:0a:58:00:07",
            "mtu",
            "1450",
            "up",
        ]);
        ip(&["-n", &ns.0, "link", "set", "peer0", "up"]);
        ip(&["-n", &ns.0, "addr", "add", "10.88.0.7/16", "dev", "eth0"]);
        ip(&["-n", &ns.0, "route", "add", "default", "via", "10.88.0.1"]);
        // A dual-stack result, as the bridge plugin gives one.
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            "fd00:88::7/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&[
            "-n",
            &ns.0,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:88::1",
        ]);

        let path = PathBuf::from(format!("/run/netns/{}", ns.0));
        let joined = join(&path).expect("join the namespace");
        assert_eq!(joined.interface, "eth0");
        assert_eq!(joined.guest.mac, [0x02, 0, 0x0a, 0x58, 0, 7]);
        assert_eq!(joined.guest.address, Ipv4Addr::new(10, 88, 0, 7));
        assert_eq!(joined.guest.prefix_len, 16);
        assert_eq!(joined.guest.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(joined.guest.mtu, 1450);
        assert_eq!(
            joined.guest.ipv6,
            Some(Ipv6Config {
                address: "fd00:88::7".parse().unwrap(),
                prefix_len: 64,
                gateway: Some("fd00:88::1".parse().unwrap()),
            })
        );
        assert_eq!(joined.tap.name(), CNI_TAP_NAME);
        assert!(tc_filters(&ns.0, "eth0")
            .contains(&format!("Egress Redirect to device {CNI_TAP_NAME}")));
        assert!(tc_filters(&ns.0, CNI_TAP_NAME).contains("Egress Redirect to device eth0"));

        // A second VM cannot take the same namespace; the first keeps it.
        assert!(join(&path).is_err());
        assert!(tc_filters(&ns.0, "eth0").contains(CNI_TAP_NAME));

        drop(joined);
        assert_tap_gone(&ns.0);
    }

    #[test]
    fn a_namespace_without_cni_is_refused_naming_the_cause() {
        let Some(ns) = netns(
            "a_namespace_without_cni_is_refused_naming_the_cause",
            "unipod-cni-t2",
        ) else {
            return;
        };
        let path = PathBuf::from(format!("/run/netns/{}", ns.0));
        let err = join(&path).unwrap_err();
        assert!(matches!(err, CniError::NoInterface(_)), "{err}");
        assert!(err.to_string().contains("did the CNI plugin run"), "{err}");

        ip(&[
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["-n", &ns.0, "addr", "add", "10.88.0.8/16", "dev", "eth0"]);
        let err = join(&path).unwrap_err();
        assert!(matches!(err, CniError::NoGateway { .. }), "{err}");
        assert_tap_gone(&ns.0);

        let err = join(Path::new("/run/netns/unipod-no-such-netns")).unwrap_err();
        assert!(matches!(err, CniError::Enter(..)), "{err}");
    }
}

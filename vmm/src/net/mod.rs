//! Pod networking on the host: IP addresses, taps and NAT.
//!
//! Every pod is a VM whose virtio-net device is backed by a tap; the taps of
//! one pod network are attached to one Linux bridge on the host, and the
//! bridge holds the network's gateway address. This module owns the host
//! side of that picture; the device is in `devices::virtio::net`.
//!
//! # Design
//! - [`attachment`]: one pod's share of all this (lease, tap, forwards),
//!   set up in one call and undone on drop.
//! - [`bridge`]: the bridge (made on first use, never removed) and a tap's
//!   place on it, over rtnetlink (the `unipod-netlink` crate).
//! - [`ipam`]: which pod has which address. One JSON file per bridge,
//!   `<state>/net/<bridge>/leases.json`, changed only under an exclusive
//!   `flock` on `<state>/net/<bridge>/lock` and replaced atomically (temp
//!   file + rename), so concurrent `unipod run`s never hand out one address
//!   twice. A lease records its owner's pid *and* start time, so the lease
//!   of a VMM that died (even if its pid was recycled) is reclaimed by the
//!   next allocation; no daemon is needed to clean up. The pod's MAC
//!   ([`mac_for`]) and tap name ([`tap_name_for`]) are derived from its
//!   address, so they are unique exactly when the address is.
//! - [`tap`]: a tap is created *non-persistent*: it exists only while the VMM
//!   holds its file descriptor, so a killed VMM leaves no tap behind.
//! - [`cni`]: under Kubernetes (the containerd shim) there is no bridge
//!   of ours: CNI made the pod's namespace and interface, and a tap in that
//!   namespace is redirected to and from it with tc.
//! - [`nat`]: optional egress masquerading and hostPort DNAT with nftables.
//!   Every rule unipod adds lives in the table `ip unipod` and carries a
//!   comment naming its pod (`unipod pod=<name>`) or bridge, so
//!   `nft list table ip unipod` shows all of it and `nft delete table ip
//!   unipod` removes all of it.
//!
//! # Limitations
//! IPv6 (`--pod-cidr6`) reaches the bridge and the pods on it, not beyond:
//! no IPv6 masquerading or port forwards. Port forwards of a VMM that was killed stay until
//! [`nat::remove_port_forwards`] runs for that pod name (the pod supervisor
//! calls it before adding a pod's forwards, so a restarted pod recovers its
//! ports).

pub mod attachment;
pub mod bridge;
pub mod cni;
pub mod ipam;
pub mod nat;
pub mod tap;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use attachment::{Attachment, PublishedPort};
pub use ipam::{
    mac_for, tap_name_for, Ipam, Ipv4Cidr, Ipv6Cidr, Lease, LeaseInfo, PodNetwork, DEFAULT_BRIDGE,
    DEFAULT_POD_CIDR,
};
pub use nat::{add_port_forward, enable_egress_nat, remove_port_forwards, Proto};
pub use tap::Tap;

fn describe_cidr6(cidr: &Option<ipam::Ipv6Cidr>) -> String {
    match cidr {
        Some(cidr) => format!("with --pod-cidr6 {cidr}"),
        None => "without --pod-cidr6".to_owned(),
    }
}

/// Linux's `IFNAMSIZ`, including the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// Why a pod network cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The bridge or a tap's place on it.
    #[error("cannot set up the pod network")]
    Bridge(#[from] bridge::BridgeError),
    /// A `--publish` value is malformed.
    #[error("--publish {value:?}: {reason}; expected HOST_PORT:POD_PORT[/tcp|/udp], e.g. 8080:80")]
    InvalidPublish {
        /// The value given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `--pod-cidr` is not a usable IPv4 CIDR.
    #[error("--pod-cidr {value}: {reason}")]
    InvalidCidr {
        /// The value given.
        value: String,
        /// What is wrong with it, and the fix.
        reason: String,
    },
    /// `--pod-cidr6` is not a usable IPv6 CIDR.
    #[error("--pod-cidr6 {value}: {reason}")]
    InvalidCidr6 {
        /// The value given.
        value: String,
        /// What is wrong with it, and the fix.
        reason: String,
    },
    /// `--gateway` is not a host address of the pod CIDR.
    #[error("--gateway {gateway}: {reason}")]
    InvalidGateway {
        /// The gateway given.
        gateway: Ipv4Addr,
        /// What is wrong with it, and the fix.
        reason: String,
    },
    /// `--bridge` is not a usable interface name.
    #[error("--bridge {name:?}: {reason}")]
    InvalidBridge {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pod name cannot be recorded in a lease or an nftables comment.
    #[error("pod name {name:?}: {reason}")]
    InvalidPodName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file or directory of the network state cannot be used.
    #[error("{}: cannot {what}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lease file is not one unipod wrote.
    #[error(
        "{}: not a valid unipod lease file ({reason}); fix it, or stop this bridge's pods \
         and remove it to forget every lease",
        .path.display()
    )]
    CorruptLeases {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The bridge was set up with another subnet or gateway.
    #[error(
        "bridge {bridge} was set up with --pod-cidr {existing_cidr} --gateway {existing_gateway} \
         (recorded in {}), not --pod-cidr {cidr} --gateway {gateway}; pass the recorded values, \
         or pick another --bridge for a new network",
        .file.display()
    )]
    NetworkMismatch {
        /// The bridge.
        bridge: String,
        /// Its lease file.
        file: PathBuf,
        /// The subnet recorded for it.
        existing_cidr: Ipv4Cidr,
        /// The gateway recorded for it.
        existing_gateway: Ipv4Addr,
        /// The subnet asked for.
        cidr: Ipv4Cidr,
        /// The gateway asked for.
        gateway: Ipv4Addr,
    },
    /// The bridge was set up with another IPv6 range, or with none.
    #[error(
        "bridge {bridge} was set up {} (recorded in {}), not {}; pass the recorded value, \
         or pick another --bridge for a new network",
        describe_cidr6(existing), .file.display(), describe_cidr6(asked)
    )]
    Network6Mismatch {
        /// The bridge.
        bridge: String,
        /// Its lease file.
        file: PathBuf,
        /// The IPv6 range recorded for it.
        existing: Option<ipam::Ipv6Cidr>,
        /// The IPv6 range asked for.
        asked: Option<ipam::Ipv6Cidr>,
    },
    /// The pod already holds a lease whose owner is alive.
    #[error("pod {pod} already has IP {ip} (held by pid {owner_pid}); stop it first or pick another pod name")]
    PodHasIp {
        /// The pod.
        pod: String,
        /// Its address.
        ip: Ipv4Addr,
        /// The live owner of that lease.
        owner_pid: i32,
    },
    /// Every host address is leased to a live pod.
    #[error(
        "no free IP in --pod-cidr {cidr}: all {usable} pod addresses are leased to running pods; \
         stop a pod, or use a larger --pod-cidr with another --bridge"
    )]
    Exhausted {
        /// The subnet.
        cidr: Ipv4Cidr,
        /// How many addresses pods can have in it.
        usable: u32,
    },
    /// The process that is to own a lease is not running.
    #[error("lease owner pid {pid} is not a running process")]
    OwnerNotRunning {
        /// The pid.
        pid: i32,
    },
    /// A tap name the kernel would refuse.
    #[error("tap name {name:?}: {reason}")]
    InvalidTapName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` cannot be opened.
    #[error(
        "cannot open /dev/net/tun; load the tun module ('modprobe tun') and run unipod as root"
    )]
    TunOpen(#[source] std::io::Error),
    /// The tap name is taken.
    #[error(
        "tap {name}: the name is in use by another interface or process; remove it \
         ('ip link del {name}') or stop the pod that holds it"
    )]
    TapBusy {
        /// The name.
        name: String,
    },
    /// Creating a tap needs `CAP_NET_ADMIN`.
    #[error(
        "tap {name}: permission denied; creating a tap needs CAP_NET_ADMIN: run unipod as root \
         or 'setcap cap_net_admin+ep' on it"
    )]
    TapPermission {
        /// The name.
        name: String,
    },
    /// A tap ioctl failed for another reason.
    #[error("tap {name}: {what} failed")]
    TapIoctl {
        /// The name.
        name: String,
        /// The ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `nft` cannot be run.
    #[error("cannot run nft; install nftables (Debian: 'apt-get install nftables')")]
    NftSpawn(#[source] std::io::Error),
    /// `nft` refused a command.
    #[error("nft {what} failed: {stderr}")]
    Nft {
        /// What unipod asked of it.
        what: &'static str,
        /// What nft printed.
        stderr: String,
    },
    /// `nft -j` printed something unipod cannot read.
    #[error("cannot parse the JSON of 'nft -j list table ip unipod'")]
    NftJson(#[source] serde_json::Error),
    /// The host port already has a forward.
    #[error(
        "host port {port}/{proto} is already forwarded to pod {pod}; pick another hostPort, \
         or stop pod {pod}"
    )]
    HostPortTaken {
        /// The port.
        port: u16,
        /// The protocol.
        proto: Proto,
        /// The pod it is forwarded to.
        pod: String,
    },
    /// A port forward that cannot work.
    #[error("port forward {host_port}/{proto} to {pod_ip}:{pod_port}: {reason}")]
    InvalidPortForward {
        /// The host port.
        host_port: u16,
        /// The protocol.
        proto: Proto,
        /// The pod address.
        pod_ip: Ipv4Addr,
        /// The pod port.
        pod_port: u16,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why `name` is not an interface name the kernel accepts (its
/// `dev_valid_name`): empty, longer than `IFNAMSIZ - 1` bytes, `.` or `..`,
/// or containing `/`, `:`, whitespace or NUL.
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAMSIZ - 1 {
        Some("longer than 15 bytes (the kernel's IFNAMSIZ limit)")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("contains '/', ':', whitespace or NUL")
    } else {
        None
    }
}

/// Longest pod name accepted; `unipod pod=<name>` must fit nftables' 128-byte
/// comments.
pub const MAX_POD_NAME: usize = 100;

/// Checks that `name` can go in a lease and, unquoted, in an nftables
/// comment: 1 to [`MAX_POD_NAME`] ASCII letters, digits, `-`, `_` or `.`.
pub fn validate_pod_name(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_POD_NAME {
        Some("longer than 100 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("use only ASCII letters, digits, '-', '_' and '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidPodName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules_match_the_kernel() {
        assert_eq!(ifname_problem("eth0"), None);
        assert_eq!(ifname_problem("a23456789012345"), None);
        assert!(ifname_problem("a234567890123456").is_some());
        assert!(ifname_problem("").is_some());
        assert!(ifname_problem("..").is_some());
        assert!(ifname_problem("a/b").is_some());
        assert!(ifname_problem("a b").is_some());
        assert!(ifname_problem("a:1").is_some());
    }

    #[test]
    fn pod_names_are_restricted_to_comment_safe_characters() {
        assert!(validate_pod_name("web-1.default_x").is_ok());
        assert!(validate_pod_name("").is_err());
        assert!(validate_pod_name("a\"; flush ruleset").is_err());
        assert!(validate_pod_name(&"a".repeat(MAX_POD_NAME)).is_ok());
        assert!(validate_pod_name(&"a".repeat(MAX_POD_NAME + 1)).is_err());
    }
}

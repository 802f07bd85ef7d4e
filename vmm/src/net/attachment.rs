//! One pod's place on the pod network: its lease, its tap on the bridge and
//! its published ports, set up together and undone together.
//!
//! # Design
//! [`Attachment::create`] takes the lease first and undoes every step that
//! succeeded if a later one fails, so a failed start leaves nothing. Drop
//! removes the forwards and releases the lease; the tap goes with the last
//! fd on it (this one and the VMM's copy), so even a SIGKILLed supervisor
//! leaks no tap, and its lease is reclaimed by the next allocation.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::str::FromStr;

use guest_agent::protocol::NetworkConfig;
use unipod_netlink::Netlink;

use super::bridge::{attach, ensure_bridge, BridgeError};
use super::ipam::{Ipam, Lease, PodNetwork};
use super::nat::{self, Proto};
use super::tap::Tap;
use super::NetError;

/// The MTU of the bridge's taps and of the guest's `eth0`.
pub const POD_MTU: u32 = 1500;

/// A `--publish HOST_PORT:POD_PORT[/PROTO]` (a manifest's `hostPort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    /// The port on every host address.
    pub host_port: u16,
    /// The port in the pod.
    pub pod_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl FromStr for PublishedPort {
    type Err = NetError;

    fn from_str(value: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::InvalidPublish {
            value: value.to_string(),
            reason,
        };
        let (ports, proto) = match value.split_once('/') {
            Some((ports, "tcp")) => (ports, Proto::Tcp),
            Some((ports, "udp")) => (ports, Proto::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (value, Proto::Tcp),
        };
        let (host, pod) = ports
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between the ports"))?;
        let port = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("ports are numbers from 1 to 65535"))
        };
        Ok(PublishedPort {
            host_port: port(host)?,
            pod_port: port(pod)?,
            proto,
        })
    }
}

/// What a pod asks of the pod network.
#[derive(Clone, Debug)]
pub struct AttachRequest<'a> {
    /// unipod's state dir (the IPAM files live under `net/`).
    pub state_dir: &'a Path,
    /// The bridge and CIDR.
    pub network: &'a PodNetwork,
    /// The pod's name (the lease and the forwards are recorded under it).
    pub pod: &'a str,
    /// The ports to forward to the pod.
    pub ports: &'a [PublishedPort],
    /// Turn on egress masquerading for the pod network.
    pub egress_nat: bool,
}

/// A pod attached to the pod network.
pub struct Attachment {
    ipam: Ipam,
    pod: String,
    lease: Lease,
    tap: Tap,
    forwards: bool,
}

impl Attachment {
    /// Leases an IP, makes sure the bridge exists, creates and attaches the
    /// pod's tap, then adds NAT and forwards; all or nothing.
    pub fn create(req: &AttachRequest) -> Result<Attachment, NetError> {
        req.network.validate()?;
        let ipam = Ipam::open(req.state_dir, req.network)?;
        let owner = i32::try_from(std::process::id()).expect("pids fit in i32");
        let lease = ipam.allocate(req.pod, owner)?;
        let tap = match plug_tap(req, &lease) {
            Ok(tap) => tap,
            Err(e) => {
                let _ = ipam.release(req.pod);
                return Err(e);
            }
        };
        // From here on, Drop undoes what was done.
        let mut attachment = Attachment {
            ipam,
            pod: req.pod.to_string(),
            lease,
            tap,
            forwards: false,
        };
        if req.egress_nat {
            nat::enable_egress_nat(req.network)?;
        }
        if !req.ports.is_empty() {
            // A killed supervisor of a pod with this name may have left some.
            attachment.forwards = true;
            nat::remove_port_forwards(req.pod)?;
            for p in req.ports {
                nat::add_port_forward(
                    req.network,
                    req.pod,
                    p.host_port,
                    attachment.lease.ip,
                    p.pod_port,
                    p.proto,
                )?;
            }
        }
        Ok(attachment)
    }

    /// The pod's address, gateway and MAC.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The tap's name on the host.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The tap fd the VMM child inherits.
    pub fn tap_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }

    /// What the guest agent needs to set up `eth0`.
    pub fn guest_config(
        &self,
        dns_servers: Vec<Ipv4Addr>,
        dns_search: Vec<String>,
    ) -> NetworkConfig {
        NetworkConfig {
            mac: self.lease.mac,
            address: self.lease.ip,
            prefix_len: self.lease.prefix_len,
            gateway: self.lease.gateway,
            mtu: POD_MTU,
            dns_servers,
            dns_search,
            ipv6: self.lease.ipv6,
        }
    }
}

/// Creates the pod's tap and puts it on the (possibly new) bridge.
fn plug_tap(req: &AttachRequest, lease: &Lease) -> Result<Tap, NetError> {
    let tap = Tap::create(&lease.tap_name())?;
    let mut nl = Netlink::open().map_err(|source| BridgeError::Netlink {
        step: "open a netlink socket".into(),
        source,
    })?;
    let net = req.network;
    let mut gateways = vec![(net.gateway.into(), net.subnet.prefix_len())];
    if let (Some(net6), Some(gateway6)) = (net.subnet6, net.ipv6_of(net.gateway)) {
        gateways.push((gateway6.into(), net6.prefix_len()));
    }
    let bridge = ensure_bridge(&mut nl, &net.bridge, &gateways)?;
    attach(&mut nl, tap.name(), bridge)?;
    Ok(tap)
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.forwards {
            if let Err(e) = nat::remove_port_forwards(&self.pod) {
                log::warn!("pod {}: cannot remove its port forwards: {e}", self.pod);
            }
        }
        if let Err(e) = self.ipam.release(&self.pod) {
            log::warn!("pod {}: cannot release IP {}: {e}", self.pod, self.lease.ip);
        }
    }
}

/// The `nameserver`s of a resolv.conf that a pod can reach: IPv4 and not
/// loopback (a host's local resolver is not the pod's), at most 3.
pub fn resolv_conf_servers(text: &str) -> Vec<Ipv4Addr> {
    resolv_conf_values(text, "nameserver")
        .filter_map(|v| v.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .take(3)
        .collect()
}

/// The `search` domains of a resolv.conf (the last `search` line wins, as
/// in the resolver), at most 6.
pub fn resolv_conf_search(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .rfind(|rest| rest.starts_with([' ', '\t']))
        .map(|rest| rest.split_whitespace().take(6).map(String::from).collect())
        .unwrap_or_default()
}

fn resolv_conf_values<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> {
    text.lines().filter_map(move |line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key)).then(|| words.next()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_resolv_conf_gives_reachable_servers_and_search() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n\
                    nameserver ::1\nsearch a.example b.example\noptions edns0\n\
                    nameserver 10.0.0.3\nnameserver 10.0.0.4\nnameserver 10.0.0.5\n";
        assert_eq!(
            resolv_conf_servers(text),
            [[10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]].map(Ipv4Addr::from)
        );
        assert_eq!(resolv_conf_search(text), ["a.example", "b.example"]);
        assert!(resolv_conf_search("searchdomain x\n").is_empty());
    }

    #[test]
    fn publish_parses_ports_and_protocol() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PublishedPort {
                host_port: 8080,
                pod_port: 80,
                proto: Proto::Tcp
            }
        );
        let p: PublishedPort = "53:5353/udp".parse().unwrap();
        assert_eq!((p.host_port, p.pod_port, p.proto), (53, 5353, Proto::Udp));
        for bad in ["80", "0:80", "80:0", "x:80", "80:70000", "80:80/sctp", ""] {
            let err = bad.parse::<PublishedPort>().unwrap_err().to_string();
            assert!(err.starts_with("--publish"), "{bad:?}: {err}");
        }
    }
}

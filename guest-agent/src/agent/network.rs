//! The pod's network, as a `Configure` request gives it: `lo` and `eth0`
//! (the virtio-net device) over rtnetlink, then `/etc/hosts` and
//! `/etc/resolv.conf`.
//!
//! # Design
//!
//! As in [`super::identity`], [`validate`] checks everything first, so an
//! invalid request changes nothing; [`configure_interface`] then runs the steps in order and
//! stops at the first failure, whose error names the step.
//!
//! `eth0` is configured while it is down: the MAC first (a guest restored from
//! a snapshot still has the template's MAC; with no control queue, virtio-net
//! takes the new one in software, which is all a tap needs), then the MTU and
//! the address, then the link goes up and the default route goes via the
//! gateway (a route needs its link up). Netlink comes from the
//! `unipod-netlink` crate, the same client the host uses for bridges and taps,
//! rather than busybox `ip`: the agent must not depend on the rootfs' tools.
//!
//! The files follow the kubelet's shape: `/etc/hosts` maps `localhost` and the
//! pod's hostname to its IP; `/etc/resolv.conf` lists the nameservers and
//! search domains; `/etc/hostname` holds the hostname. Each is replaced
//! atomically. Containers without an image share the guest's root file
//! system and see them directly; the others get them bind-mounted over their
//! image's (`rootfs.rs`).
//!
//! IPv6: the kernel gives `lo` its `::1` when `lo` goes up, so `[::1]` and
//! dual-stack `[::]` sockets work in every pod. On `eth0` the agent turns
//! IPv6 off at start ([`ipv6_off_on_pod_interface`]), before a warm-start
//! snapshot is taken and before the link goes up: otherwise every pod would
//! pay, in emulated guest-kernel time, for a link-local address, its
//! duplicate address detection, router solicitations (retried for as long as
//! no router answers) and MLD reports, for an address nothing uses. A pod
//! whose network has an IPv6 range gets IPv6 back on `eth0`, with its address
//! (no DAD: the host's plan hands it out once) and a default route, but
//! still without router solicitations, SLAAC or DAD of the link-local
//! address: the host says everything the pod needs.
//!
//! # Limitations
//!
//! One interface, named `eth0`; at most one IPv6 address.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use guest_agent::protocol::{Ipv6Config, NetworkConfig};
use unipod_netlink::{Netlink, NetlinkError};

use super::identity::write_atomic;

/// The virtio-net interface in the guest.
pub const POD_INTERFACE: &str = "eth0";
/// Accepted prefix lengths of the pod network.
pub const PREFIX_LEN: std::ops::RangeInclusive<u8> = 8..=30;
/// Accepted MTUs (IPv4's minimum to the largest a tap carries).
pub const MTU: std::ops::RangeInclusive<u32> = 68..=65535;
/// `nameserver` lines the resolver reads (glibc's and musl's MAXNS).
pub const MAX_DNS_SERVERS: usize = 3;
/// `search` domains the resolver reads (glibc's MAXDNSRCH).
pub const MAX_DNS_SEARCH: usize = 6;

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A field of the request is out of range; nothing was applied.
    #[error("invalid network.{field}: {problem}")]
    Invalid {
        /// The [`NetworkConfig`] field.
        field: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The guest has no such interface (for `eth0`: no virtio-net device).
    #[error("no interface {0} in the guest")]
    NoInterface(&'static str),
    /// A netlink step failed.
    #[error("{step}")]
    Netlink {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// `/etc/hosts` or `/etc/resolv.conf` could not be written.
    #[error("write {}", .path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: &'static str, problem: String) -> NetworkError {
    NetworkError::Invalid { field, problem }
}

/// Checks every field of `config`, with no side effects.
pub fn validate(config: &NetworkConfig) -> Result<(), NetworkError> {
    let mac = config.mac;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(invalid(
            "mac",
            format!("{} is not a unicast address", format_mac(mac)),
        ));
    }
    if !PREFIX_LEN.contains(&config.prefix_len) {
        return Err(invalid(
            "prefix_len",
            format!(
                "/{} is outside /{} to /{}",
                config.prefix_len,
                PREFIX_LEN.start(),
                PREFIX_LEN.end()
            ),
        ));
    }
    let host = |field, ip: Ipv4Addr| {
        let mask = u32::MAX << (32 - config.prefix_len);
        let bits = u32::from(ip);
        if bits & mask != u32::from(config.address) & mask {
            return Err(invalid(field, format!("{ip} is outside the pod network")));
        }
        if bits & !mask == 0 || bits & !mask == !mask {
            return Err(invalid(
                field,
                format!("{ip} is the network or broadcast address"),
            ));
        }
        Ok(())
    };
    host("address", config.address)?;
    host("gateway", config.gateway)?;
    if config.gateway == config.address {
        return Err(invalid("gateway", "equals the pod address".into()));
    }
    if !MTU.contains(&config.mtu) {
        return Err(invalid(
            "mtu",
            format!("{} is outside {} to {}", config.mtu, MTU.start(), MTU.end()),
        ));
    }
    if config.dns_servers.len() > MAX_DNS_SERVERS {
        return Err(invalid(
            "dns_servers",
            format!(
                "{} given; the resolver reads at most {MAX_DNS_SERVERS}",
                config.dns_servers.len()
            ),
        ));
    }
    if config.dns_search.len() > MAX_DNS_SEARCH {
        return Err(invalid(
            "dns_search",
            format!(
                "{} given; the resolver reads at most {MAX_DNS_SEARCH}",
                config.dns_search.len()
            ),
        ));
    }
    if let Some(bad) = config.dns_search.iter().find(|d| !is_domain(d)) {
        return Err(invalid(
            "dns_search",
            format!("{bad:?} is not a domain name (dot-separated labels of [A-Za-z0-9-])"),
        ));
    }
    config.ipv6.as_ref().map_or(Ok(()), validate_ipv6)
}

fn validate_ipv6(v6: &Ipv6Config) -> Result<(), NetworkError> {
    let unusable = |ip: Ipv6Addr| {
        ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local()
    };
    if unusable(v6.address) {
        return Err(invalid(
            "ipv6.address",
            format!(
                "{} is not a global or unique local unicast address",
                v6.address
            ),
        ));
    }
    if !(1..=128).contains(&v6.prefix_len) {
        return Err(invalid(
            "ipv6.prefix_len",
            format!("/{} is outside /1 to /128", v6.prefix_len),
        ));
    }
    match v6.gateway {
        Some(gw) if gw == v6.address => Err(invalid(
            "ipv6.gateway",
            "equals the pod's IPv6 address".into(),
        )),
        Some(gw) if unusable(gw) => Err(invalid(
            "ipv6.gateway",
            format!("{gw} is not a global or unique local unicast address"),
        )),
        _ => Ok(()),
    }
}

fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The pod interface's IPv6 sysctls.
const POD_INTERFACE_IPV6_CONF: &str = "/proc/sys/net/ipv6/conf/eth0";

/// Turns IPv6 off on `eth0` (no link-local address, DAD, router
/// solicitations or MLD). Only as PID 1 (needs `/proc`); without IPv6 in the
/// kernel or without `eth0` there is nothing to do.
pub fn ipv6_off_on_pod_interface() {
    if let Err(e) = set_pod_interface_sysctls(&[("disable_ipv6", "1")]) {
        match e {
            NetworkError::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                log::debug!("{POD_INTERFACE_IPV6_CONF}: absent (no IPv6 or no eth0)");
            }
            e => log::warn!("cannot turn IPv6 off on eth0: {e}"),
        }
    }
}

/// Turns IPv6 on for `eth0`, for a host-given address only: no router
/// solicitations or SLAAC, no DAD.
fn ipv6_on_without_autoconfiguration() -> Result<(), NetworkError> {
    set_pod_interface_sysctls(&[
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("accept_dad", "0"),
        ("router_solicitations", "0"),
        ("disable_ipv6", "0"),
    ])
}

fn set_pod_interface_sysctls(settings: &[(&str, &str)]) -> Result<(), NetworkError> {
    for (name, value) in settings {
        let path = Path::new(POD_INTERFACE_IPV6_CONF).join(name);
        std::fs::write(&path, value).map_err(|source| NetworkError::File { path, source })?;
    }
    Ok(())
}

/// Brings `lo` up; every pod has it, with or without a network.
pub fn loopback_up() -> Result<(), NetworkError> {
    let step = |step| move |source| NetworkError::Netlink { step, source };
    let mut nl = Netlink::open().map_err(step("open a netlink socket"))?;
    let lo = nl
        .link_index("lo")
        .map_err(step("find lo"))?
        .ok_or(NetworkError::NoInterface("lo"))?;
    nl.set_up(lo).map_err(step("set lo up"))
}

/// [`validate`]s `config`, then configures `eth0` and the default route.
pub fn configure_interface(config: &NetworkConfig) -> Result<(), NetworkError> {
    validate(config)?;
    let step = |step| move |source| NetworkError::Netlink { step, source };
    let mut nl = Netlink::open().map_err(step("open a netlink socket"))?;
    let eth0 = nl
        .link_index(POD_INTERFACE)
        .map_err(step("find eth0"))?
        .ok_or(NetworkError::NoInterface(POD_INTERFACE))?;
    nl.set_mac(eth0, config.mac)
        .map_err(step("set the MAC of eth0"))?;
    nl.set_mtu(eth0, config.mtu)
        .map_err(step("set the MTU of eth0"))?;
    let exists_ok = |result: Result<(), NetlinkError>, what| match result {
        Err(e) if !e.is_already_exists() => Err(step(what)(e)),
        _ => Ok(()),
    };
    exists_ok(
        nl.add_address(eth0, config.address.into(), config.prefix_len),
        "add the pod IP to eth0",
    )?;
    if let Some(v6) = &config.ipv6 {
        ipv6_on_without_autoconfiguration()?;
        exists_ok(
            nl.add_address(eth0, v6.address.into(), v6.prefix_len),
            "add the pod's IPv6 address to eth0",
        )?;
    }
    nl.set_up(eth0).map_err(step("set eth0 up"))?;
    exists_ok(
        nl.add_route(Ipv4Addr::UNSPECIFIED.into(), 0, config.gateway.into()),
        "add the default route",
    )?;
    match config.ipv6.and_then(|v6| v6.gateway) {
        Some(gateway) => exists_ok(
            nl.add_route(Ipv6Addr::UNSPECIFIED.into(), 0, gateway.into()),
            "add the IPv6 default route",
        ),
        None => Ok(()),
    }
}

/// The `/etc/hosts` of a pod, in the kubelet's shape: `localhost` and the
/// IPv6 names, then the hostname on each pod IP (on 127.0.1.1 without a
/// network, as Debian does).
pub fn hosts_file(hostname: &str, config: Option<&NetworkConfig>) -> String {
    let mut out = String::from(
        "# Managed by unipod.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let ips: Vec<IpAddr> = match config {
        Some(c) => std::iter::once(c.address.into())
            .chain(c.ipv6.map(|v6| v6.address.into()))
            .collect(),
        None => vec![Ipv4Addr::new(127, 0, 1, 1).into()],
    };
    for ip in ips {
        let _ = writeln!(out, "{ip}\t{hostname}");
    }
    out
}

/// The `/etc/resolv.conf` of a pod, or `None` when there is nothing to say.
pub fn resolv_conf(config: &NetworkConfig) -> Option<String> {
    if config.dns_servers.is_empty() && config.dns_search.is_empty() {
        return None;
    }
    let mut out = String::from("# Managed by unipod.\n");
    for server in &config.dns_servers {
        let _ = writeln!(out, "nameserver {server}");
    }
    if !config.dns_search.is_empty() {
        let _ = writeln!(out, "search {}", config.dns_search.join(" "));
    }
    Some(out)
}

/// Writes `<etc>/hosts`, `<etc>/hostname` and, when there is DNS to
/// configure, `<etc>/resolv.conf`.
pub fn write_files(
    etc: &Path,
    hostname: &str,
    config: Option<&NetworkConfig>,
) -> Result<(), NetworkError> {
    let write = |name: &str, contents: &str| {
        let path = etc.join(name);
        write_atomic(&path, contents).map_err(|source| NetworkError::File { path, source })
    };
    write("hosts", &hosts_file(hostname, config))?;
    write("hostname", &format!("{hostname}\n"))?;
    if let Some(resolv) = config.and_then(resolv_conf) {
        write("resolv.conf", &resolv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NetworkConfig {
        NetworkConfig {
            mac: [0x02, 0x75, 10, 211, 0, 2],
            address: Ipv4Addr::new(10, 211, 0, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 211, 0, 1),
            mtu: 1500,
            dns_servers: vec![Ipv4Addr::new(10, 0, 0, 53)],
            dns_search: vec!["default.svc.cluster.local".into()],
            ipv6: Some(Ipv6Config {
                address: "fd00:211::2".parse().unwrap(),
                prefix_len: 64,
                gateway: Some("fd00:211::1".parse().unwrap()),
            }),
        }
    }

    fn with_ipv6(change: impl FnOnce(&mut Ipv6Config)) -> NetworkConfig {
        let mut c = config();
        change(c.ipv6.as_mut().unwrap());
        c
    }

    fn rejected_field(config: &NetworkConfig) -> Option<&'static str> {
        match validate(config) {
            Ok(()) => None,
            Err(NetworkError::Invalid { field, .. }) => Some(field),
            Err(e) => panic!("validate must only return Invalid, got {e:?}"),
        }
    }

    #[test]
    fn a_typical_config_is_valid() {
        assert_eq!(rejected_field(&config()), None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let ip = Ipv4Addr::new;
        let cases: Vec<(&str, NetworkConfig)> = vec![
            (
                "mac",
                NetworkConfig {
                    mac: [0x01, 0, 0, 0, 0, 1],
                    ..config()
                },
            ),
            (
                "mac",
                NetworkConfig {
                    mac: [0; 6],
                    ..config()
                },
            ),
            (
                "prefix_len",
                NetworkConfig {
                    prefix_len: 31,
                    ..config()
                },
            ),
            (
                "prefix_len",
                NetworkConfig {
                    prefix_len: 7,
                    ..config()
                },
            ),
            (
                "address",
                NetworkConfig {
                    address: ip(10, 211, 0, 0),
                    ..config()
                },
            ),
            (
                "address",
                NetworkConfig {
                    address: ip(10, 211, 255, 255),
                    ..config()
                },
            ),
            (
                "gateway",
                NetworkConfig {
                    gateway: ip(10, 212, 0, 1),
                    ..config()
                },
            ),
            (
                "gateway",
                NetworkConfig {
                    gateway: ip(10, 211, 0, 2),
                    ..config()
                },
            ),
            (
                "mtu",
                NetworkConfig {
                    mtu: 67,
                    ..config()
                },
            ),
            (
                "dns_servers",
                NetworkConfig {
                    dns_servers: vec![ip(1, 1, 1, 1); 4],
                    ..config()
                },
            ),
            (
                "dns_search",
                NetworkConfig {
                    dns_search: vec!["a..b".into()],
                    ..config()
                },
            ),
            (
                "dns_search",
                NetworkConfig {
                    dns_search: vec!["a".into(); 7],
                    ..config()
                },
            ),
            (
                "ipv6.address",
                with_ipv6(|v6| v6.address = "fe80::2".parse().unwrap()),
            ),
            (
                "ipv6.address",
                with_ipv6(|v6| v6.address = Ipv6Addr::UNSPECIFIED),
            ),
            ("ipv6.prefix_len", with_ipv6(|v6| v6.prefix_len = 129)),
            ("ipv6.prefix_len", with_ipv6(|v6| v6.prefix_len = 0)),
            (
                "ipv6.gateway",
                with_ipv6(|v6| v6.gateway = Some(v6.address)),
            ),
            (
                "ipv6.gateway",
                with_ipv6(|v6| v6.gateway = Some("ff02::1".parse().unwrap())),
            ),
        ];
        assert_eq!(rejected_field(&with_ipv6(|v6| v6.gateway = None)), None);
        for (field, cfg) in cases {
            assert_eq!(rejected_field(&cfg), Some(field), "{cfg:?}");
        }
    }

    #[test]
    fn hosts_maps_the_hostname_to_each_pod_ip() {
        let hosts = hosts_file("web-0", Some(&config()));
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.contains("::1\tlocalhost ip6-localhost"), "{hosts}");
        assert!(
            hosts.ends_with("10.211.0.2\tweb-0\nfd00:211::2\tweb-0\n"),
            "{hosts}"
        );
        let v4_only = NetworkConfig {
            ipv6: None,
            ..config()
        };
        assert!(hosts_file("web-0", Some(&v4_only))
            .ends_with("fe00::2\tip6-allrouters\n10.211.0.2\tweb-0\n"));
        assert!(hosts_file("web-0", None).ends_with("\n127.0.1.1\tweb-0\n"));
    }

    #[test]
    fn resolv_conf_lists_servers_then_search() {
        let resolv = resolv_conf(&config()).unwrap();
        assert_eq!(
            resolv,
            "# Managed by unipod.\nnameserver 10.0.0.53\nsearch default.svc.cluster.local\n"
        );
        let none = NetworkConfig {
            dns_servers: vec![],
            dns_search: vec![],
            ..config()
        };
        assert_eq!(resolv_conf(&none), None);
    }

    #[test]
    fn files_are_written_into_etc() {
        let etc = std::env::temp_dir().join(format!("unipod-agent-net-{}", std::process::id()));
        std::fs::create_dir_all(&etc).unwrap();
        write_files(&etc, "web-0", Some(&config())).unwrap();
        let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap();
        assert!(hosts.contains("10.211.0.2\tweb-0"), "{hosts}");
        let hostname = std::fs::read_to_string(etc.join("hostname")).unwrap();
        assert_eq!(hostname, "web-0\n");
        let resolv = std::fs::read_to_string(etc.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 10.0.0.53"), "{resolv}");
        std::fs::remove_dir_all(&etc).unwrap();
    }

    #[test]
    fn mac_is_printed_as_colon_hex() {
        assert_eq!(
            format_mac([0x02, 0x75, 0x0a, 0xd3, 0, 0xff]),
            "02:75:0a:d3:00:ff"
        );
    }
}

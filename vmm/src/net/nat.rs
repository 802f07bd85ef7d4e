//! Egress NAT and hostPort forwarding for pods, with nftables.
//!
//! # Design
//! Everything unipod adds lives in one table, `ip unipod`:
//! - chain `postrouting` (nat, srcnat): per bridge, `ip saddr <pod CIDR>
//!   oifname != <bridge> masquerade`, only when egress NAT is enabled
//!   ([`enable_egress_nat`]);
//! - chains `prerouting` and `output` (nat, priority -100, "dstnat"): per
//!   hostPort, `fib daddr type local <proto> dport <port> dnat to <pod
//!   ip>:<port>`, for traffic that arrives from outside and traffic the host
//!   itself sends;
//! - set `hostports` (`inet_proto . inet_service`): one element per
//!   forwarded host port, and set `egress` (`ifname`): one element per
//!   masqueraded bridge.
//!
//! Each rule and element carries a comment, `unipod pod=<name>` or `unipod
//! bridge=<name>`, so [`remove_port_forwards`] finds a pod's rules (by
//! handle, from `nft -j list table ip unipod`) and a person reading `nft
//! list ruleset` sees who added what.
//!
//! A change is one `nft -f -` transaction that starts by (idempotently)
//! declaring the table, chains and sets, then `create`s the set element and
//! adds the rules. `create element` fails if the element exists, and then
//! the whole transaction is rolled back: the kernel itself refuses a second
//! forward of a host port or a second masquerade rule for a bridge, even
//! between concurrent `unipod run`s, with no lock file.
//!
//! Rules are generated as nft's text syntax rather than with the `nftables`
//! crate's typed JSON: the five lines of text above are what an operator
//! reads in `nft list`, the crate would add about ten dependencies (schemars,
//! strum and their proc macros) to say the same thing more verbosely, and
//! every value interpolated into the text is typed (addresses, ports) or
//! checked to be quote-free ([`super::validate_pod_name`],
//! [`PodNetwork::validate`]). The listing is read as JSON with `serde_json`.
//!
//! Forwarding or NAT also needs `net.ipv4.ip_forward=1`, which
//! [`enable_ip_forwarding`] sets.
//!
//! # Limitations
//! - Host processes reaching a hostPort through `127.0.0.1` are not
//!   forwarded (that needs `route_localnet`); use a non-loopback address.
//! - A pod reaching its own hostPort through the host (hairpin) is not
//!   masqueraded back.
//! - A host filter that drops forwarded traffic (for example a `FORWARD`
//!   policy of `DROP`) still drops pod traffic: unipod adds no filter rules.
//! - The forwards of a VMM that was killed stay until
//!   [`remove_port_forwards`] runs for its pod name.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{validate_pod_name, NetError, PodNetwork};

/// The nftables table (family `ip`) that holds every unipod rule.
pub const TABLE: &str = "unipod";
/// The sysctl that lets the host route between the bridge and its uplinks.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Declares the table, its chains and sets; `add` of an existing object with
/// the same definition is a no-op, so every transaction starts with it.
const SKELETON: &str = "\
add table ip unipod
add chain ip unipod prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip unipod output { type nat hook output priority -100; policy accept; }
add chain ip unipod postrouting { type nat hook postrouting priority srcnat; policy accept; }
add set ip unipod hostports { type inet_proto . inet_service; comment \"host ports forwarded to pods\"; }
add set ip unipod egress { type ifname; comment \"bridges whose pods are masqueraded\"; }
";

/// A transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Proto, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("protocol {s:?}: use tcp or udp")),
        }
    }
}

/// The comment on a pod's rules and set elements.
fn pod_tag(pod: &str) -> String {
    format!("unipod pod={pod}")
}

/// The comment on a bridge's masquerade rule.
fn bridge_tag(bridge: &str) -> String {
    format!("unipod bridge={bridge}")
}

/// Sets `net.ipv4.ip_forward=1` in the caller's network namespace, unless it
/// is already set.
pub fn enable_ip_forwarding() -> Result<(), NetError> {
    if std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(|source| NetError::Io {
        path: IP_FORWARD.into(),
        what: "enable IPv4 forwarding (needs root)",
        source,
    })
}

/// Masquerades traffic from `net`'s pods that leaves through any interface
/// other than its bridge, and enables IPv4 forwarding. Idempotent.
pub fn enable_egress_nat(net: &PodNetwork) -> Result<(), NetError> {
    net.validate()?;
    enable_ip_forwarding()?;
    let bridge = &net.bridge;
    let script = format!(
        "{SKELETON}\
         create element ip unipod egress {{ \"{bridge}\" }}\n\
         add rule ip unipod postrouting ip saddr {} oifname != \"{bridge}\" masquerade \
         comment \"{}\"\n",
        net.subnet,
        bridge_tag(bridge)
    );
    match nft_apply(&script, "enable egress NAT") {
        // Refused as a whole: if the bridge's element exists, NAT was already
        // enabled (perhaps by a concurrent run a moment ago).
        Err(e @ NetError::Nft { .. }) => match list()? {
            Some(listing) if listing.egress.iter().any(|b| b == bridge) => Ok(()),
            _ => Err(e),
        },
        result => result,
    }
}

/// Forwards `host_port`/`proto` on every host address to `pod_ip:pod_port`,
/// for pod `pod` of `net`, and enables IPv4 forwarding. A host port already
/// forwarded (to any pod) is refused with [`NetError::HostPortTaken`].
pub fn add_port_forward(
    net: &PodNetwork,
    pod: &str,
    host_port: u16,
    pod_ip: Ipv4Addr,
    pod_port: u16,
    proto: Proto,
) -> Result<(), NetError> {
    validate_pod_name(pod)?;
    net.validate()?;
    let invalid = |reason: String| NetError::InvalidPortForward {
        host_port,
        proto,
        pod_ip,
        pod_port,
        reason,
    };
    if host_port == 0 || pod_port == 0 {
        return Err(invalid("port 0 cannot be forwarded".into()));
    }
    if !net.subnet.is_host(pod_ip) || pod_ip == net.gateway {
        return Err(invalid(format!(
            "{pod_ip} is not a pod address of --pod-cidr {} (gateway {})",
            net.subnet, net.gateway
        )));
    }
    enable_ip_forwarding()?;
    let tag = pod_tag(pod);
    let dnat = format!(
        "fib daddr type local {proto} dport {host_port} dnat to {pod_ip}:{pod_port} \
         comment \"{tag}\""
    );
    let script = format!(
        "{SKELETON}\
         create element ip unipod hostports {{ {proto} . {host_port} comment \"{tag}\" }}\n\
         add rule ip unipod prerouting {dnat}\n\
         add rule ip unipod output {dnat}\n"
    );
    match nft_apply(&script, "add a port forward") {
        Err(e @ NetError::Nft { .. }) => {
            let owner = list()?.and_then(|listing| {
                listing
                    .hostports
                    .into_iter()
                    .find(|h| h.proto == proto && h.port == host_port)
            });
            match owner {
                Some(owner) => Err(NetError::HostPortTaken {
                    port: host_port,
                    proto,
                    pod: owner
                        .comment
                        .as_deref()
                        .and_then(|c| c.strip_prefix("unipod pod="))
                        .unwrap_or("(unknown: the element has no unipod comment)")
                        .to_owned(),
                }),
                None => Err(e),
            }
        }
        result => result,
    }
}

/// Removes every port forward of `pod` and returns how many host ports were
/// freed. A pod without forwards (or a host without the table) is not an
/// error.
pub fn remove_port_forwards(pod: &str) -> Result<usize, NetError> {
    validate_pod_name(pod)?;
    let Some(listing) = list()? else {
        return Ok(0);
    };
    let tag = pod_tag(pod);
    let mut script = String::new();
    for rule in listing.rules.iter().filter(|r| r.comment == tag) {
        script += &format!(
            "delete rule ip unipod {} handle {}\n",
            rule.chain, rule.handle
        );
    }
    let mut freed = 0;
    for port in listing
        .hostports
        .iter()
        .filter(|h| h.comment.as_deref() == Some(tag.as_str()))
    {
        script += &format!(
            "delete element ip unipod hostports {{ {} . {} }}\n",
            port.proto, port.port
        );
        freed += 1;
    }
    if !script.is_empty() {
        nft_apply(&script, "remove port forwards")?;
    }
    Ok(freed)
}

/// Runs `nft -f -` on `script`, one transaction.
fn nft_apply(script: &str, what: &'static str) -> Result<(), NetError> {
    let mut child = nft()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::NftSpawn)?;
    // The script is a few hundred bytes, well within the pipe's buffer, so
    // writing it all before reading stderr cannot deadlock.
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(NetError::NftSpawn)?;
    if !out.status.success() {
        return Err(NetError::Nft {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    written.map_err(NetError::NftSpawn)
}

/// `nft`, with its messages in English so they can be matched.
fn nft() -> Command {
    let mut cmd = Command::new("nft");
    cmd.env("LC_ALL", "C");
    cmd
}

/// A rule of the table, as the listing shows it.
#[derive(Debug)]
struct RuleRef {
    chain: String,
    handle: u64,
    comment: String,
}

/// An element of the `hostports` set.
#[derive(Debug)]
struct HostPort {
    proto: Proto,
    port: u16,
    comment: Option<String>,
}

/// What `nft -j list table ip unipod` shows.
#[derive(Debug, Default)]
struct Listing {
    rules: Vec<RuleRef>,
    hostports: Vec<HostPort>,
    egress: Vec<String>,
}

/// The table's rules and set elements, or `None` if there is no table.
fn list() -> Result<Option<Listing>, NetError> {
    let out = nft()
        .args(["-j", "list", "table", "ip", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(NetError::NftSpawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NetError::Nft {
            what: "list table ip unipod",
            stderr: stderr.trim().to_owned(),
        });
    }
    let json: Value = serde_json::from_slice(&out.stdout).map_err(NetError::NftJson)?;
    Ok(Some(parse_listing(&json)))
}

/// Reads the parts of a `nft -j` listing that unipod uses; anything else,
/// or anything of another shape, is skipped.
fn parse_listing(json: &Value) -> Listing {
    let mut listing = Listing::default();
    let objects = json["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for object in objects {
        if let Some(rule) = object.get("rule") {
            if rule["family"] != "ip" || rule["table"] != TABLE {
                continue;
            }
            if let (Some(chain), Some(handle), Some(comment)) = (
                rule["chain"].as_str(),
                rule["handle"].as_u64(),
                rule["comment"].as_str(),
            ) {
                listing.rules.push(RuleRef {
                    chain: chain.to_owned(),
                    handle,
                    comment: comment.to_owned(),
                });
            }
        } else if let Some(set) = object.get("set") {
            if set["family"] != "ip" || set["table"] != TABLE {
                continue;
            }
            let elems = set["elem"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for elem in elems {
                // An element with a comment is `{"elem": {"val": V,
                // "comment": C}}`; one without is just `V`.
                let (val, comment) = match elem.get("elem") {
                    Some(e) => (&e["val"], e["comment"].as_str().map(str::to_owned)),
                    None => (elem, None),
                };
                match set["name"].as_str() {
                    Some("hostports") => {
                        if let Some(port) = parse_hostport(val, comment) {
                            listing.hostports.push(port);
                        }
                    }
                    Some("egress") => {
                        if let Some(bridge) = val.as_str() {
                            listing.egress.push(bridge.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    listing
}

/// A `hostports` element: `{"concat": ["tcp", 8080]}`.
fn parse_hostport(val: &Value, comment: Option<String>) -> Option<HostPort> {
    let [proto, port] = val["concat"].as_array()?.as_slice() else {
        return None;
    };
    let port = match port {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some(HostPort {
        proto: proto.as_str()?.parse().ok()?,
        port,
        comment,
    })
}

#[cfg(test)]
mod tests {
    use nix::sched::{unshare, CloneFlags};

    use super::*;

    fn net() -> PodNetwork {
        PodNetwork::new("ubr-nat", "10.99.0.0/24".parse().unwrap())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Runs `test` in a new thread inside a private network namespace, where
    /// `nft` (a child of that thread) sees an empty ruleset; skips loudly if
    /// that cannot be set up. Never runs `test` in the host's namespace.
    fn in_private_netns(name: &str, test: impl FnOnce() + Send + 'static) {
        let name = name.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                eprintln!("SKIP {name}: unshare(CLONE_NEWNET): {e}; needs root");
                return;
            }
            // /proc/self is the main thread, still in the host's namespace.
            let host = std::fs::read_link("/proc/self/ns/net").unwrap();
            let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            assert_ne!(host, ours, "refusing to touch the host's ruleset");
            match nft().arg("--version").output() {
                Ok(out) if out.status.success() => {}
                _ => {
                    eprintln!("SKIP {name}: nft not installed (apt-get install nftables)");
                    return;
                }
            }
            assert!(list().unwrap().is_none(), "a new namespace has no table");
            test();
        })
        .join()
        .unwrap();
    }

    /// `nft list table ip unipod`, as text.
    fn table_text() -> String {
        let out = nft().args(["list", "table", "ip", TABLE]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    fn rules_of(tag: &str) -> usize {
        let listing = list().unwrap().unwrap_or_default();
        listing.rules.iter().filter(|r| r.comment == tag).count()
    }

    fn host_ip_forward() -> String {
        // A fresh thread is in the process's (host's) namespace.
        std::thread::spawn(|| std::fs::read_to_string(IP_FORWARD).unwrap())
            .join()
            .unwrap()
    }

    #[test]
    fn invalid_forwards_are_refused_before_nft_runs() {
        let n = net();
        let cases = [
            ("web", 0, ip("10.99.0.2"), 80, "port 0"),
            ("web", 8080, ip("10.99.0.2"), 0, "port 0"),
            ("web", 8080, ip("10.98.0.2"), 80, "not a pod address"),
            ("web", 8080, ip("10.99.0.1"), 80, "not a pod address"),
            ("web", 8080, ip("10.99.0.255"), 80, "not a pod address"),
            ("we\"b", 8080, ip("10.99.0.2"), 80, "pod name"),
        ];
        for (pod, host_port, pod_ip, pod_port, expected) in cases {
            let err = add_port_forward(&n, pod, host_port, pod_ip, pod_port, Proto::Tcp)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(matches!(
            remove_port_forwards("a b"),
            Err(NetError::InvalidPodName { .. })
        ));
    }

    #[test]
    fn proto_parses_and_prints() {
        assert_eq!("TCP".parse::<Proto>(), Ok(Proto::Tcp));
        assert_eq!("udp".parse::<Proto>(), Ok(Proto::Udp));
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!(Proto::Udp.to_string(), "udp");
    }

    #[test]
    fn listing_parser_reads_rules_and_elements() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "ip", "table": "unipod", "name": "hostports", "elem": [
                {"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "unipod pod=web"}},
                {"concat": ["udp", "53"]}
            ]}},
            {"set": {"family": "ip", "table": "unipod", "name": "egress",
                     "elem": ["br0", {"elem": {"val": "br1", "comment": "x"}}]}},
            {"rule": {"family": "ip", "table": "unipod", "chain": "output", "handle": 7,
                      "comment": "unipod pod=web", "expr": []}},
            {"rule": {"family": "ip", "table": "other", "chain": "output", "handle": 8,
                      "comment": "unipod pod=web", "expr": []}}
        ]});
        let listing = parse_listing(&json);
        assert_eq!(listing.rules.len(), 1);
        assert_eq!(
            (listing.rules[0].chain.as_str(), listing.rules[0].handle),
            ("output", 7)
        );
        assert_eq!(listing.hostports.len(), 2);
        assert_eq!(
            listing.hostports[0].comment.as_deref(),
            Some("unipod pod=web")
        );
        assert_eq!(
            (listing.hostports[1].proto, listing.hostports[1].port),
            (Proto::Udp, 53)
        );
        assert_eq!(listing.egress, ["br0", "br1"]);
    }

    #[test]
    fn port_forwards_are_added_refused_and_removed_per_pod() {
        let before = host_ip_forward();
        in_private_netns(
            "port_forwards_are_added_refused_and_removed_per_pod",
            || {
                let n = net();
                add_port_forward(&n, "web", 8080, ip("10.99.0.2"), 80, Proto::Tcp).unwrap();
                let text = table_text();
                let rule = "tcp dport 8080 dnat to 10.99.0.2:80 comment \"unipod pod=web\"";
                assert_eq!(
                    text.matches(rule).count(),
                    2,
                    "prerouting and output:\n{text}"
                );
                assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap(), "1\n");

                // Another pod on the same host port: refused, and nothing added.
                let err = add_port_forward(&n, "db", 8080, ip("10.99.0.3"), 5432, Proto::Tcp)
                    .unwrap_err();
                assert!(
                    matches!(&err, NetError::HostPortTaken { pod, .. } if pod == "web"),
                    "{err}"
                );
                assert_eq!(
                    err.to_string(),
                    "host port 8080/tcp is already forwarded to pod web; pick another hostPort, \
                 or stop pod web"
                );
                assert_eq!(rules_of("unipod pod=db"), 0);

                // The same port number over another protocol is another port.
                add_port_forward(&n, "db", 8080, ip("10.99.0.3"), 53, Proto::Udp).unwrap();
                add_port_forward(&n, "web", 8443, ip("10.99.0.2"), 443, Proto::Tcp).unwrap();
                assert_eq!(rules_of("unipod pod=web"), 4);
                assert_eq!(rules_of("unipod pod=db"), 2);

                assert_eq!(remove_port_forwards("db").unwrap(), 1);
                assert_eq!(rules_of("unipod pod=db"), 0);
                assert_eq!(rules_of("unipod pod=web"), 4, "only db's rules go");
                assert!(!table_text().contains("pod=db"));

                assert_eq!(remove_port_forwards("web").unwrap(), 2);
                assert_eq!(remove_port_forwards("web").unwrap(), 0);
                let listing = list().unwrap().unwrap();
                assert!(listing.rules.is_empty() && listing.hostports.is_empty());

                // A freed host port can be forwarded again.
                add_port_forward(&n, "db", 8080, ip("10.99.0.3"), 5432, Proto::Tcp).unwrap();
                assert_eq!(rules_of("unipod pod=db"), 2);
            },
        );
        assert_eq!(host_ip_forward(), before, "the host's sysctl was changed");
    }

    #[test]
    fn egress_nat_is_idempotent() {
        in_private_netns("egress_nat_is_idempotent", || {
            let n = net();
            enable_egress_nat(&n).unwrap();
            enable_egress_nat(&n).unwrap();
            assert_eq!(rules_of("unipod bridge=ubr-nat"), 1);
            let text = table_text();
            assert!(
                text.contains("ip saddr 10.99.0.0/24 oifname != \"ubr-nat\" masquerade"),
                "{text}"
            );

            let other = PodNetwork::new("ubr-other", "10.98.0.0/24".parse().unwrap());
            enable_egress_nat(&other).unwrap();
            assert_eq!(rules_of("unipod bridge=ubr-other"), 1);
            assert_eq!(rules_of("unipod bridge=ubr-nat"), 1);
            assert_eq!(list().unwrap().unwrap().egress.len(), 2);
            assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap(), "1\n");
        });
    }
}

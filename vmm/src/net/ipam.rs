//! Pod IP allocation: which pod of a bridge has which IPv4 address.
//!
//! # Design
//! A pod network is a bridge, an IPv4 subnet and a gateway address on the
//! bridge ([`PodNetwork`]). Its leases live in one JSON file,
//! `<state>/net/<bridge>/leases.json`, that also records the subnet and
//! gateway it was created with, so a later run that names the same bridge
//! with another `--pod-cidr` is refused instead of handing out addresses
//! from two plans.
//!
//! Every change is a read-modify-write under an exclusive `flock` on
//! `<state>/net/<bridge>/lock`, and the file is replaced by rename, so
//! concurrent `unipod run`s (separate processes) never lease one address
//! twice and a crash never leaves a half-written file.
//!
//! A lease names its owner (the VMM process) by pid *and* start time
//! (`/proc/<pid>/stat` field 22). There is no daemon: a lease whose owner has
//! exited, or whose pid now belongs to another process, is reclaimed by the
//! next allocation.
//!
//! The pod's MAC ([`mac_for`]) and tap name ([`tap_name_for`]) are pure
//! functions of its address, so they are unique per network exactly when
//! addresses are.
//!
//! The CIDR types are our own ([`Ipv4Cidr`], [`Ipv6Cidr`], about 60 lines
//! each) rather than the `ipnet` crate: we need only parsing, a mask and an
//! offset, and our own types refuse host bits (`10.211.0.5/16`) with a
//! message that names the flag and the fix, which `ipnet` would silently
//! truncate.
//!
//! IPv6 (`--pod-cidr6`) needs no leases of its own: a pod's IPv6 address is
//! its IPv4 address's offset in `--pod-cidr` placed in `--pod-cidr6`
//! (10.211.0.7 in 10.211.0.0/16 is fd00:211::7 in fd00:211::/64), and so is
//! the gateway's. It is unique exactly when the IPv4 address is, and a pod's
//! two addresses are easy to tell from each other.
//!
//! # Limitations
//! Every pod has an IPv4 address; IPv6 comes only beside it. Owners are pids of this host's (this pid namespace's)
//! processes; a state dir shared between pid namespaces would see every
//! foreign lease as stale.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use guest_agent::protocol::Ipv6Config;

use super::{ifname_problem, validate_pod_name, NetError};

/// The bridge used when none is given.
pub const DEFAULT_BRIDGE: &str = "unipod0";
/// The pod subnet used when none is given.
pub const DEFAULT_POD_CIDR: &str = "10.211.0.0/16";
/// Shortest prefix accepted: a /8 already has 16 million addresses.
const MIN_PREFIX: u8 = 8;
/// Longest prefix accepted: a /30 leaves one pod address beside the gateway.
const MAX_PREFIX: u8 = 30;
/// The lease file inside a bridge's state directory.
pub const LEASES_FILE: &str = "leases.json";
/// The lock file inside a bridge's state directory.
pub const LOCK_FILE: &str = "lock";
/// Bumped whenever the lease file changes shape or meaning.
const FORMAT_VERSION: u32 = 1;

/// An IPv4 network: a base address with its host bits clear, and a prefix
/// length. Parses from and prints as `10.211.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// The network `network/prefix_len`; refused if the prefix is over 32 or
    /// `network` has host bits set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr, NetError> {
        let invalid = |reason: String| NetError::InvalidCidr {
            value: format!("{network}/{prefix_len}"),
            reason,
        };
        if prefix_len > 32 {
            return Err(invalid("the prefix length must be at most 32".into()));
        }
        let base = Ipv4Addr::from(u32::from(network) & mask(prefix_len));
        if base != network {
            return Err(invalid(format!(
                "host bits are set; did you mean {base}/{prefix_len}?"
            )));
        }
        Ok(Ipv4Cidr {
            network,
            prefix_len,
        })
    }

    /// The base (network) address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The broadcast (last) address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether `ip` is in this network and neither its network nor its
    /// broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }

    /// The first host address (`.1` of a /24).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }
}

/// The netmask of a prefix length of at most 32.
fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Ipv4Cidr, NetError> {
        let invalid = |reason: &str| NetError::InvalidCidr {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected an IPv4 network such as 10.211.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| invalid("the address is not IPv4 dotted-quad, as in 10.211.0.0/16"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length must be a number from 0 to 32"))?;
        Ipv4Cidr::new(addr, prefix_len)
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = NetError;

    fn try_from(s: String) -> Result<Ipv4Cidr, NetError> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// An IPv6 network: a base address with its host bits clear, and a prefix
/// length. Parses from and prints as `fd00:211::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Cidr {
    network: Ipv6Addr,
    prefix_len: u8,
}

impl Ipv6Cidr {
    /// The network `network/prefix_len`; refused if the prefix is over 128,
    /// `network` has host bits set or is not a unicast network.
    pub fn new(network: Ipv6Addr, prefix_len: u8) -> Result<Ipv6Cidr, NetError> {
        let invalid = |reason: String| NetError::InvalidCidr6 {
            value: format!("{network}/{prefix_len}"),
            reason,
        };
        if prefix_len > 128 {
            return Err(invalid("the prefix length must be at most 128".into()));
        }
        let base = Ipv6Addr::from(u128::from(network) & mask6(prefix_len));
        if base != network {
            return Err(invalid(format!(
                "host bits are set; did you mean {base}/{prefix_len}?"
            )));
        }
        if network.is_multicast() || network.is_loopback() || network.is_unicast_link_local() {
            return Err(invalid(
                "not a global or unique local range; use one such as fd00:211::/64".into(),
            ));
        }
        Ok(Ipv6Cidr {
            network,
            prefix_len,
        })
    }

    /// The base (network) address.
    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The address `offset` after the base one.
    pub fn nth(&self, offset: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) | u128::from(offset))
    }
}

/// The netmask of a prefix length of at most 128.
fn mask6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Ipv6Cidr, NetError> {
        let invalid = |reason: &str| NetError::InvalidCidr6 {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected an IPv6 network such as fd00:211::/64"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| invalid("the address is not IPv6, as in fd00:211::/64"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length must be a number from 0 to 128"))?;
        Ipv6Cidr::new(addr, prefix_len)
    }
}

impl TryFrom<String> for Ipv6Cidr {
    type Error = NetError;

    fn try_from(s: String) -> Result<Ipv6Cidr, NetError> {
        s.parse()
    }
}

impl From<Ipv6Cidr> for String {
    fn from(cidr: Ipv6Cidr) -> String {
        cidr.to_string()
    }
}

/// A pod network: a bridge, the subnet of its pods, and the gateway address
/// the bridge holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {
    /// The host bridge the pods' taps join (`--bridge`).
    pub bridge: String,
    /// The pods' subnet (`--pod-cidr`).
    pub subnet: Ipv4Cidr,
    /// The bridge's address and the pods' default route (`--gateway`).
    pub gateway: Ipv4Addr,
    /// The pods' IPv6 range (`--pod-cidr6`), if they get IPv6 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Cidr>,
}

impl PodNetwork {
    /// The network of `subnet` on `bridge`, with the subnet's first host
    /// address as gateway.
    pub fn new(bridge: impl Into<String>, subnet: Ipv4Cidr) -> PodNetwork {
        PodNetwork {
            bridge: bridge.into(),
            gateway: subnet.first_host(),
            subnet,
            subnet6: None,
        }
    }

    /// The IPv6 address that goes with `ip` of this network: the same offset
    /// in [`PodNetwork::subnet6`].
    pub fn ipv6_of(&self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        let offset = u32::from(ip) - u32::from(self.subnet.network());
        self.subnet6.map(|net6| net6.nth(offset))
    }

    /// Checks the network without I/O: a prefix from /8 to /30, a gateway
    /// that is a host address of the subnet, and a bridge name the kernel
    /// accepts and nftables rules can quote.
    pub fn validate(&self) -> Result<(), NetError> {
        if let Some(reason) = ifname_problem(&self.bridge).or_else(|| {
            (!self
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
            .then_some("use only ASCII letters, digits, '-', '_' and '.'")
        }) {
            return Err(NetError::InvalidBridge {
                name: self.bridge.clone(),
                reason,
            });
        }
        let prefix = self.subnet.prefix_len();
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(NetError::InvalidCidr {
                value: self.subnet.to_string(),
                reason: format!(
                    "the prefix length must be from /{MIN_PREFIX} to /{MAX_PREFIX} \
                     (a /30 has room for one pod)"
                ),
            });
        }
        if !self.subnet.contains(self.gateway) {
            return Err(NetError::InvalidGateway {
                gateway: self.gateway,
                reason: format!(
                    "not inside --pod-cidr {}; use an address such as {}",
                    self.subnet,
                    self.subnet.first_host()
                ),
            });
        }
        if !self.subnet.is_host(self.gateway) {
            return Err(NetError::InvalidGateway {
                gateway: self.gateway,
                reason: format!(
                    "the network or broadcast address of --pod-cidr {}; use a host address \
                     such as {}",
                    self.subnet,
                    self.subnet.first_host()
                ),
            });
        }
        if let Some(net6) = self.subnet6 {
            let host_bits6 = 128 - u32::from(net6.prefix_len());
            let host_bits4 = 32 - u32::from(prefix);
            if host_bits6 < host_bits4 {
                return Err(NetError::InvalidCidr6 {
                    value: net6.to_string(),
                    reason: format!(
                        "too small for --pod-cidr {}: pods take the same offset in both, so \
                         use a prefix length of at most /{}",
                        self.subnet,
                        128 - host_bits4
                    ),
                });
            }
        }
        Ok(())
    }

    /// How many pods the network has room for: its host addresses less the
    /// gateway. Assumes a validated network.
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - u32::from(self.subnet.prefix_len()))) - 3
    }
}

impl Default for PodNetwork {
    fn default() -> PodNetwork {
        PodNetwork::new(
            DEFAULT_BRIDGE,
            DEFAULT_POD_CIDR
                .parse()
                .expect("DEFAULT_POD_CIDR is a valid CIDR"),
        )
    }
}

/// The MAC of the pod with address `ip`: `02:75:` and the four address
/// bytes. `0x02` marks it locally administered and unicast; `0x75` ('u')
/// keeps it apart from other tools' locally administered ranges.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x75, a, b, c, d]
}

/// The host tap name of the pod with address `ip`: `up` and the address as 8
/// lowercase hex digits (10 bytes, within `IFNAMSIZ - 1`).
pub fn tap_name_for(ip: Ipv4Addr) -> String {
    format!("up{:08x}", u32::from(ip))
}

/// What a pod gets from [`Ipam::allocate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default route.
    pub gateway: Ipv4Addr,
    /// The MAC of the pod's virtio-net device ([`mac_for`]).
    pub mac: [u8; 6],
    /// The pod's IPv6 address, prefix length and gateway, if the network
    /// has an IPv6 range.
    pub ipv6: Option<Ipv6Config>,
}

impl Lease {
    /// The host tap name for this lease ([`tap_name_for`]).
    pub fn tap_name(&self) -> String {
        tap_name_for(self.ip)
    }
}

/// One lease, as [`Ipam::leases`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The address.
    pub ip: Ipv4Addr,
    /// The pod holding it.
    pub pod: String,
    /// The owning process.
    pub owner_pid: i32,
    /// Whether the owner still runs; a stale lease is reclaimed by the next
    /// allocation.
    pub live: bool,
}

/// The lease file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet6: Option<Ipv6Cidr>,
    leases: BTreeMap<Ipv4Addr, LeaseRecord>,
}

/// One lease in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRecord {
    pod: String,
    owner_pid: i32,
    /// The owner's start time, in clock ticks after boot.
    owner_start: u64,
}

impl LeaseRecord {
    fn is_live(&self) -> bool {
        process_start(self.owner_pid) == Some(self.owner_start)
    }
}

/// The start time of running process `pid` (`/proc/<pid>/stat` field 22, in
/// clock ticks after boot), or `None` if there is no such process or it has
/// exited (a zombie).
pub fn process_start(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may hold anything,
    // including ')' and spaces: the fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // Field 3: the state.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    // Fields 4 to 21, then 22.
    fields.nth(18)?.parse().ok()
}

/// The leases of one pod network.
#[derive(Debug)]
pub struct Ipam {
    net: PodNetwork,
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating it on first use) the lease file of `net.bridge` under
    /// `state_dir`. Refused if `net` is invalid or the bridge was set up with
    /// another subnet or gateway.
    pub fn open(state_dir: &Path, net: &PodNetwork) -> Result<Ipam, NetError> {
        net.validate()?;
        let dir = state_dir.join("net").join(&net.bridge);
        std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
            path: dir.clone(),
            what: "create the network state directory",
            source,
        })?;
        let ipam = Ipam {
            net: net.clone(),
            dir,
        };
        ipam.transact(|_| Ok(((), false)))?;
        Ok(ipam)
    }

    /// The network this allocates from.
    pub fn network(&self) -> &PodNetwork {
        &self.net
    }

    /// The lease file.
    pub fn leases_path(&self) -> PathBuf {
        self.dir.join(LEASES_FILE)
    }

    /// Leases the first free address to `pod`, owned by the running process
    /// `owner_pid`. Leases of exited owners are reclaimed first; a live lease
    /// already held by `pod` is an error, a stale one is replaced.
    pub fn allocate(&self, pod: &str, owner_pid: i32) -> Result<Lease, NetError> {
        validate_pod_name(pod)?;
        let owner_start =
            process_start(owner_pid).ok_or(NetError::OwnerNotRunning { pid: owner_pid })?;
        self.transact(|file| {
            file.leases.retain(|ip, lease| {
                let live = lease.is_live();
                if !live {
                    log::info!(
                        "reclaiming IP {ip} of pod {}: its owner pid {} has exited",
                        lease.pod,
                        lease.owner_pid
                    );
                }
                live
            });
            if let Some((ip, lease)) = file.leases.iter().find(|(_, lease)| lease.pod == pod) {
                return Err(NetError::PodHasIp {
                    pod: pod.to_owned(),
                    ip: *ip,
                    owner_pid: lease.owner_pid,
                });
            }
            let subnet = self.net.subnet;
            let ip = (u32::from(subnet.network()) + 1..u32::from(subnet.broadcast()))
                .map(Ipv4Addr::from)
                .find(|ip| *ip != self.net.gateway && !file.leases.contains_key(ip))
                .ok_or(NetError::Exhausted {
                    cidr: subnet,
                    usable: self.net.capacity(),
                })?;
            file.leases.insert(
                ip,
                LeaseRecord {
                    pod: pod.to_owned(),
                    owner_pid,
                    owner_start,
                },
            );
            let ipv6 = self.net.subnet6.map(|net6| Ipv6Config {
                address: self.net.ipv6_of(ip).expect("the network has IPv6"),
                prefix_len: net6.prefix_len(),
                gateway: self.net.ipv6_of(self.net.gateway),
            });
            let lease = Lease {
                ip,
                prefix_len: subnet.prefix_len(),
                gateway: self.net.gateway,
                mac: mac_for(ip),
                ipv6,
            };
            Ok((lease, true))
        })
    }

    /// Gives up the lease of `pod`, if it has one, and returns its address.
    /// Releasing a pod without a lease is not an error.
    pub fn release(&self, pod: &str) -> Result<Option<Ipv4Addr>, NetError> {
        self.transact(|file| {
            let ip = file
                .leases
                .iter()
                .find(|(_, lease)| lease.pod == pod)
                .map(|(ip, _)| *ip);
            if let Some(ip) = ip {
                file.leases.remove(&ip);
            }
            Ok((ip, ip.is_some()))
        })
    }

    /// Every lease, by address, with whether its owner still runs.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, NetError> {
        self.transact(|file| {
            let leases = file
                .leases
                .iter()
                .map(|(ip, lease)| LeaseInfo {
                    ip: *ip,
                    pod: lease.pod.clone(),
                    owner_pid: lease.owner_pid,
                    live: lease.is_live(),
                })
                .collect();
            Ok((leases, false))
        })
    }

    /// Runs `change` on the lease file under the bridge's lock and writes
    /// the file back if `change` says it changed it (or it is new).
    fn transact<T>(
        &self,
        change: impl FnOnce(&mut LeaseFile) -> Result<(T, bool), NetError>,
    ) -> Result<T, NetError> {
        let _lock = self.lock()?;
        let (mut file, new) = match self.load()? {
            Some(file) => (file, false),
            None => (
                LeaseFile {
                    version: FORMAT_VERSION,
                    subnet: self.net.subnet,
                    gateway: self.net.gateway,
                    subnet6: self.net.subnet6,
                    leases: BTreeMap::new(),
                },
                true,
            ),
        };
        if file.subnet != self.net.subnet || file.gateway != self.net.gateway {
            return Err(NetError::NetworkMismatch {
                bridge: self.net.bridge.clone(),
                file: self.leases_path(),
                existing_cidr: file.subnet,
                existing_gateway: file.gateway,
                cidr: self.net.subnet,
                gateway: self.net.gateway,
            });
        }
        if file.subnet6 != self.net.subnet6 {
            return Err(NetError::Network6Mismatch {
                bridge: self.net.bridge.clone(),
                file: self.leases_path(),
                existing: file.subnet6,
                asked: self.net.subnet6,
            });
        }
        let (value, changed) = change(&mut file)?;
        if new || changed {
            self.store(&file)?;
        }
        Ok(value)
    }

    /// Waits for and takes the bridge's lock; released on drop.
    fn lock(&self) -> Result<Flock<File>, NetError> {
        let path = self.dir.join(LOCK_FILE);
        let io_error = |what, source| NetError::Io {
            path: path.clone(),
            what,
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open the lock file", e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_error("lock the lock file", errno.into()))
    }

    /// The lease file, or `None` if there is none yet.
    fn load(&self) -> Result<Option<LeaseFile>, NetError> {
        let path = self.leases_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetError::Io {
                    path,
                    what: "read the lease file",
                    source,
                })
            }
        };
        let corrupt = |reason: String| NetError::CorruptLeases {
            path: path.clone(),
            reason,
        };
        let file: LeaseFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {}, this unipod reads version {FORMAT_VERSION}",
                file.version
            )));
        }
        if let Some(ip) = file
            .leases
            .keys()
            .find(|ip| !file.subnet.is_host(**ip) || **ip == file.gateway)
        {
            return Err(corrupt(format!(
                "lease {ip} is not a pod address of {} with gateway {}",
                file.subnet, file.gateway
            )));
        }
        Ok(Some(file))
    }

    /// Replaces the lease file atomically: a temporary file, synced, renamed
    /// over it. Hold the lock.
    fn store(&self, file: &LeaseFile) -> Result<(), NetError> {
        let path = self.leases_path();
        let tmp = self.dir.join(format!(".{LEASES_FILE}.tmp"));
        let io_error = |path: &Path, what, source| NetError::Io {
            path: path.to_owned(),
            what,
            source,
        };
        let json = serde_json::to_vec_pretty(file).expect("lease files serialize to JSON");
        let mut out = File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
        out.write_all(&json)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.sync_all())
            .map_err(|e| io_error(&tmp, "write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, "replace", e))?;
        // Make the rename itself durable.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error(&self.dir, "sync", e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::process::{Command, Stdio};

    use super::*;

    /// Set in the children of `concurrent_processes_never_share_an_ip`: the
    /// state dir to allocate in.
    const CHILD_ENV: &str = "UNIPOD_IPAM_CHILD";
    /// Set with `CHILD_ENV`: the pid to own the children's leases.
    const OWNER_ENV: &str = "UNIPOD_IPAM_OWNER";
    /// Precedes each address a child prints (libtest may print its own text
    /// earlier on the same line).
    const CHILD_MARK: &str = "ipam-child-leased ";
    /// Allocations per child.
    const PER_CHILD: usize = 20;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("unipod-ipam-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn net(cidr: &str) -> PodNetwork {
        PodNetwork::new("ubr-test", cidr.parse().unwrap())
    }

    fn me() -> i32 {
        i32::try_from(std::process::id()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn allocate_all(ipam: &Ipam, prefix: &str, n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| ipam.allocate(&format!("{prefix}{i}"), me()).unwrap().ip)
            .collect()
    }

    #[test]
    fn cidr_parses_and_prints() {
        let cidr: Ipv4Cidr = "10.211.0.0/16".parse().unwrap();
        assert_eq!(cidr.network(), ip("10.211.0.0"));
        assert_eq!(cidr.prefix_len(), 16);
        assert_eq!(cidr.broadcast(), ip("10.211.255.255"));
        assert_eq!(cidr.first_host(), ip("10.211.0.1"));
        assert!(cidr.contains(ip("10.211.7.9")));
        assert!(!cidr.contains(ip("10.212.0.1")));
        assert_eq!(cidr.to_string(), "10.211.0.0/16");
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().broadcast(),
            Ipv4Addr::BROADCAST
        );
    }

    #[test]
    fn cidr_errors_name_the_flag_and_the_fix() {
        for bad in [
            "10.211.0.0",
            "10.211.0/16",
            "10.211.0.0/33",
            "10.211.0.0/x",
            "::1/64",
        ] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("--pod-cidr {bad}: ")), "{err}");
        }
        let err = "10.211.0.5/16".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(err.contains("did you mean 10.211.0.0/16?"), "{err}");
    }

    #[test]
    fn validate_refuses_bad_prefix_gateway_and_bridge() {
        assert!(PodNetwork::default().validate().is_ok());
        assert_eq!(PodNetwork::default().gateway, ip("10.211.0.1"));

        for cidr in ["10.0.0.0/7", "10.0.0.0/31", "10.0.0.0/32"] {
            let err = net(cidr).validate().unwrap_err().to_string();
            assert!(
                err.starts_with("--pod-cidr ") && err.contains("/8 to /30"),
                "{err}"
            );
        }
        for gateway in ["10.1.0.1", "10.0.0.0", "10.0.0.255"] {
            let mut n = net("10.0.0.0/24");
            n.gateway = ip(gateway);
            let err = n.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("--gateway {gateway}: ")), "{err}");
        }
        for bridge in ["", "br/0", "br 0", "a234567890123456", "br\"0"] {
            let mut n = net("10.0.0.0/24");
            n.bridge = bridge.into();
            let err = n.validate().unwrap_err().to_string();
            assert!(err.starts_with("--bridge "), "{err}");
        }
    }

    #[test]
    fn mac_and_tap_name_derive_from_the_ip() {
        assert_eq!(mac_for(ip("10.211.0.2")), [0x02, 0x75, 10, 211, 0, 2]);
        assert_eq!(mac_for(ip("10.211.0.2"))[0] & 0x03, 0x02, "local, unicast");
        assert_eq!(tap_name_for(ip("10.211.0.2")), "up0ad30002");
        assert_eq!(tap_name_for(ip("255.255.255.255")), "upffffffff");
        assert_ne!(
            tap_name_for(ip("10.211.0.2")),
            tap_name_for(ip("10.211.2.0"))
        );
    }

    #[test]
    fn allocates_in_order_after_the_gateway() {
        let dir = TempDir::new("order");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let lease = ipam.allocate("a", me()).unwrap();
        assert_eq!(
            lease,
            Lease {
                ip: ip("10.99.0.2"),
                prefix_len: 24,
                gateway: ip("10.99.0.1"),
                mac: [0x02, 0x75, 10, 99, 0, 2],
                ipv6: None,
            }
        );
        assert_eq!(lease.tap_name(), "up0a630002");
        assert_eq!(
            allocate_all(&ipam, "b", 2),
            [ip("10.99.0.3"), ip("10.99.0.4")]
        );
        let leases = ipam.leases().unwrap();
        assert_eq!(leases.len(), 3);
        assert!(leases.iter().all(|l| l.live && l.owner_pid == me()));
        assert_eq!(leases[0].pod, "a");
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let dir = TempDir::new("skip");
        let mut n = net("10.99.0.0/29");
        n.gateway = ip("10.99.0.3");
        let ipam = Ipam::open(&dir.0, &n).unwrap();
        assert_eq!(
            allocate_all(&ipam, "p", 5),
            [
                "10.99.0.1",
                "10.99.0.2",
                "10.99.0.4",
                "10.99.0.5",
                "10.99.0.6"
            ]
            .map(ip)
        );
        assert!(matches!(
            ipam.allocate("full", me()),
            Err(NetError::Exhausted { usable: 5, .. })
        ));
    }

    #[test]
    fn slash_30_has_room_for_one_pod() {
        let dir = TempDir::new("slash30");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.4/30")).unwrap();
        assert_eq!(ipam.network().capacity(), 1);
        assert_eq!(ipam.allocate("only", me()).unwrap().ip, ip("10.99.0.6"));
        let err = ipam.allocate("second", me()).unwrap_err().to_string();
        assert!(
            err.contains("no free IP in --pod-cidr 10.99.0.4/30")
                && err.contains("all 1 pod addresses")
                && err.contains("larger --pod-cidr with another --bridge"),
            "{err}"
        );
    }

    #[test]
    fn slash_29_has_room_for_five_pods() {
        let dir = TempDir::new("slash29");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.8/29")).unwrap();
        let ips = allocate_all(&ipam, "p", 5);
        assert_eq!(ips.first(), Some(&ip("10.99.0.10")));
        assert_eq!(ips.last(), Some(&ip("10.99.0.14")));
        let err = ipam.allocate("sixth", me()).unwrap_err().to_string();
        assert!(
            err.contains("no free IP in --pod-cidr 10.99.0.8/29"),
            "{err}"
        );
    }

    #[test]
    fn released_ip_is_reused_and_release_is_idempotent() {
        let dir = TempDir::new("release");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let ips = allocate_all(&ipam, "p", 3);
        assert_eq!(ipam.release("p1").unwrap(), Some(ips[1]));
        assert_eq!(ipam.release("p1").unwrap(), None);
        assert_eq!(ipam.release("never").unwrap(), None);
        assert_eq!(ipam.allocate("q", me()).unwrap().ip, ips[1]);
        assert_eq!(ipam.leases().unwrap().len(), 3);
    }

    #[test]
    fn lease_of_an_exited_owner_is_reclaimed() {
        let dir = TempDir::new("dead");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let first = ipam.allocate("doomed", child_pid).unwrap().ip;
        assert!(ipam.leases().unwrap()[0].live);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!ipam.leases().unwrap()[0].live);
        // The pod's own name is free again too: its lease was stale.
        assert_eq!(ipam.allocate("doomed", me()).unwrap().ip, first);
        let leases = ipam.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].owner_pid, me());
    }

    #[test]
    fn lease_of_a_recycled_pid_is_reclaimed() {
        let dir = TempDir::new("recycled");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let ours = ipam.allocate("ours", me()).unwrap().ip;
        // Same pid as a live process, but another start time: the pid was
        // reused after the owner exited.
        let path = ipam.leases_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let start = &mut json["leases"][ours.to_string()]["owner_start"];
        *start = serde_json::json!(start.as_u64().unwrap() + 1);
        std::fs::write(&path, json.to_string()).unwrap();

        assert!(!ipam.leases().unwrap()[0].live);
        assert_eq!(ipam.allocate("new", me()).unwrap().ip, ours);
    }

    #[test]
    fn owner_must_be_running() {
        let dir = TempDir::new("owner");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert!(matches!(
            ipam.allocate("p", pid),
            Err(NetError::OwnerNotRunning { pid: p }) if p == pid
        ));
        assert!(ipam.leases().unwrap().is_empty());
    }

    #[test]
    fn pod_with_a_live_lease_is_refused() {
        let dir = TempDir::new("dup");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        ipam.allocate("web", me()).unwrap();
        let err = ipam.allocate("web", me()).unwrap_err().to_string();
        assert!(err.starts_with("pod web already has IP 10.99.0.2"), "{err}");
        assert_eq!(ipam.leases().unwrap().len(), 1);
    }

    #[test]
    fn cidr6_parses_and_refuses_host_bits_and_odd_ranges() {
        let net6: Ipv6Cidr = "fd00:211::/64".parse().unwrap();
        assert_eq!(net6.to_string(), "fd00:211::/64");
        assert_eq!(net6.nth(7), "fd00:211::7".parse::<Ipv6Addr>().unwrap());
        let err = |s: &str| s.parse::<Ipv6Cidr>().unwrap_err().to_string();
        assert!(err("fd00:211::5/64").contains("did you mean fd00:211::/64"));
        assert!(err("fe80::/64").contains("not a global or unique local"));
        assert!(err("fd00::/129").contains("at most 128"));
        assert!(err("10.0.0.0/8").starts_with("--pod-cidr6 10.0.0.0/8: the address is not IPv6"));
    }

    #[test]
    fn the_ipv6_address_takes_the_offset_of_the_ipv4_one() {
        let dir = TempDir::new("ipv6");
        let mut dual = net("10.99.0.0/24");
        dual.subnet6 = Some("fd00:99::/64".parse().unwrap());
        let ipam = Ipam::open(&dir.0, &dual).unwrap();
        ipam.allocate("a", me()).unwrap();
        let lease = ipam.allocate("b", me()).unwrap();
        assert_eq!(lease.ip, ip("10.99.0.3"));
        assert_eq!(
            lease.ipv6,
            Some(Ipv6Config {
                address: "fd00:99::3".parse().unwrap(),
                prefix_len: 64,
                gateway: Some("fd00:99::1".parse().unwrap()),
            })
        );

        // The same bridge without IPv6, or with another range, is refused.
        let err = Ipam::open(&dir.0, &net("10.99.0.0/24"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("set up with --pod-cidr6 fd00:99::/64")
                && err.contains("not without --pod-cidr6"),
            "{err}"
        );

        // The IPv6 range must have room for every IPv4 offset.
        let mut small = net("10.99.0.0/16");
        small.subnet6 = Some("fd00:99::/120".parse().unwrap());
        let err = small.validate().unwrap_err().to_string();
        assert!(err.contains("at most /112"), "{err}");
    }

    #[test]
    fn another_cidr_for_the_same_bridge_is_refused() {
        let dir = TempDir::new("mismatch");
        Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let err = Ipam::open(&dir.0, &net("10.98.0.0/16")).unwrap_err();
        assert!(matches!(err, NetError::NetworkMismatch { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("bridge ubr-test was set up with --pod-cidr 10.99.0.0/24")
                && msg.contains("not --pod-cidr 10.98.0.0/16"),
            "{msg}"
        );
        let mut other_gateway = net("10.99.0.0/24");
        other_gateway.gateway = ip("10.99.0.254");
        assert!(matches!(
            Ipam::open(&dir.0, &other_gateway),
            Err(NetError::NetworkMismatch { .. })
        ));
        // Another bridge may use any CIDR.
        let mut other_bridge = net("10.98.0.0/16");
        other_bridge.bridge = "ubr-other".into();
        Ipam::open(&dir.0, &other_bridge).unwrap();
    }

    #[test]
    fn corrupted_lease_file_is_a_clear_error() {
        let dir = TempDir::new("corrupt");
        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let path = ipam.leases_path();
        let valid = std::fs::read_to_string(&path).unwrap();

        std::fs::write(&path, "{\"version\": 1, \"subn").unwrap();
        let err = ipam.allocate("p", me()).unwrap_err();
        assert!(matches!(err, NetError::CorruptLeases { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: not a valid unipod lease file",
                path.display()
            )),
            "{msg}"
        );
        assert!(matches!(
            Ipam::open(&dir.0, &net("10.99.0.0/24")),
            Err(NetError::CorruptLeases { .. })
        ));

        let outside = valid.replace(
            "\"leases\": {}",
            "\"leases\": {\"10.1.0.2\": {\"pod\": \"x\", \"owner_pid\": 1, \"owner_start\": 0}}",
        );
        assert_ne!(outside, valid);
        std::fs::write(&path, outside).unwrap();
        let msg = ipam.leases().unwrap_err().to_string();
        assert!(msg.contains("lease 10.1.0.2 is not a pod address"), "{msg}");
    }

    /// The child half of `concurrent_processes_never_share_an_ip`; does
    /// nothing unless run by it.
    #[test]
    fn child_allocates() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let owner: i32 = std::env::var(OWNER_ENV).unwrap().parse().unwrap();
        let ipam = Ipam::open(Path::new(&dir), &net("10.99.0.0/24")).unwrap();
        for i in 0..PER_CHILD {
            let lease = ipam
                .allocate(&format!("child{}-{i}", std::process::id()), owner)
                .unwrap();
            println!("{CHILD_MARK}{}", lease.ip);
        }
    }

    #[test]
    fn concurrent_processes_never_share_an_ip() {
        let dir = TempDir::new("concurrent");
        let exe = std::env::current_exe().unwrap();
        let spawn = || {
            Command::new(&exe)
                .args([
                    "--exact",
                    "net::ipam::tests::child_allocates",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, &dir.0)
                .env(OWNER_ENV, me().to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let children = [spawn(), spawn()];
        let mut ips = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "child failed: {:?}", out.status);
            let stdout = String::from_utf8(out.stdout).unwrap();
            ips.extend(
                stdout
                    .lines()
                    .filter_map(|line| line.split_once(CHILD_MARK))
                    .map(|(_, ip)| ip)
                    .map(ip),
            );
        }
        assert_eq!(ips.len(), 2 * PER_CHILD, "each child prints its IPs");
        let distinct: HashSet<_> = ips.iter().collect();
        assert_eq!(
            distinct.len(),
            2 * PER_CHILD,
            "an IP was leased twice: {ips:?}"
        );

        let ipam = Ipam::open(&dir.0, &net("10.99.0.0/24")).unwrap();
        let leases = ipam.leases().unwrap();
        assert_eq!(leases.len(), 2 * PER_CHILD);
        assert!(leases.iter().all(|l| l.live && distinct.contains(&l.ip)));
    }
}

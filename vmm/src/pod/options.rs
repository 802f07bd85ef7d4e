//! What a pod run is asked for: the options of `unipod run`, as plain data
//! the engine reads, whichever front end filled them in.
//!
//! # Design
//! The command line ([`RunOptions`] from `unipod run`'s flags) and the
//! engine ([`super::run`], [`super::supervisor`]) meet here, so the engine
//! does not depend on how its options were spelled.

use std::path::PathBuf;
use std::time::Duration;

use crate::net::{Ipv4Cidr, Ipv6Cidr, PublishedPort};

/// The options of one `unipod run`: a command (`-- CMD`) or a manifest pod.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pod name: a DNS label (lowercase letters, digits and '-', at most 63).
    pub name: String,
    /// Guest kernel. Default: guest/vmlinux next to unipod's build directory
    /// (target/guest/vmlinux, built by 'make kernel').
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with the agent as /init. Default:
    /// target/guest/initramfs.cpio (built by 'make images').
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB [default: 128].
    pub mem_mib: Option<u32>,
    /// Environment for the container, KEY=VALUE; repeatable. Nothing else is
    /// inherited except PATH=/usr/local/bin:/usr/bin:/bin.
    pub env: Vec<String>,
    /// Working directory of the container.
    pub workdir: Option<String>,
    /// How long the guest may take to boot and answer, in seconds.
    pub agent_timeout_secs: u64,
    /// Agent heartbeat period in milliseconds. The pod becomes Unknown after
    /// three missed heartbeats plus a second. Each heartbeat wakes the
    /// guest, which costs host CPU; a shorter period notices a hung guest
    /// sooner.
    pub heartbeat_ms: u64,
    /// How long the pod may stay Unknown before unipod gives up on it,
    /// stops the VM and reports Failed.
    pub unknown_timeout_secs: u64,
    /// Boot the guest from scratch instead of restoring the warm-start
    /// snapshot.
    pub cold: bool,
    /// unipod's state: pods/NAME/ (vsock socket, logs) and snapshots/.
    /// Default: $UNIPOD_STATE_DIR, else /run/unipod as root, else
    /// $XDG_RUNTIME_DIR/unipod.
    pub state_dir: Option<PathBuf>,
    /// The pod's network: "bridge" gives it an IP on --pod-cidr and a tap on
    /// --bridge (created if missing); "none" leaves it only loopback.
    pub network: NetworkMode,
    /// The host bridge of the pod network; its address is the pods'
    /// gateway.
    pub bridge: String,
    /// The pod network. Every pod on one bridge must use the same one.
    pub pod_cidr: Ipv4Cidr,
    /// The gateway (the bridge's address). Default: the CIDR's first address.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The pod network's IPv6 range, if pods get IPv6 addresses.
    pub pod_cidr6: Option<Ipv6Cidr>,
    /// Forward a host port to the pod (nftables DNAT), as a manifest's
    /// hostPort does: HOST_PORT:POD_PORT[/tcp|/udp]; repeatable.
    pub publish: Vec<PublishedPort>,
    /// Masquerade the pod network's traffic to the outside (off by default:
    /// pods reach the host and each other only). The rule stays for the
    /// bridge; 'nft delete table ip unipod' removes it.
    pub nat: bool,
    /// A DNS server for the pod's /etc/resolv.conf; repeatable (at most 3).
    /// Default: the host's non-loopback nameservers.
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Another container in the pod, started before the main one:
    /// NAME=COMMAND, where COMMAND runs under /bin/sh -c; repeatable. It
    /// shares the pod's network (localhost), env and working directory; the
    /// pod ends when the main container (CMD) does.
    pub sidecar: Vec<Sidecar>,
    /// Debug: a fault for the agent to inject once the first container
    /// runs (an agent built with its `test-hooks` feature obeys; others
    /// refuse).
    #[cfg(feature = "test-hooks")]
    pub debug_agent: Option<guest_agent::protocol::DebugCommand>,
    /// The container's command and arguments (the words after `--`); set by
    /// the front end.
    pub command: Vec<String>,
}

impl RunOptions {
    /// The agent's silence after which the pod is Unknown: three missed
    /// heartbeats and a second.
    pub fn unknown_after(&self) -> Duration {
        3 * Duration::from_millis(self.heartbeat_ms) + Duration::from_secs(1)
    }

    /// How long the pod may stay Unknown before it is Failed.
    pub fn give_up_after(&self) -> Duration {
        Duration::from_secs(self.unknown_timeout_secs)
    }
}

/// A `--sidecar NAME=COMMAND`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    /// The container name (a DNS label).
    pub name: String,
    /// The shell command it runs.
    pub command: String,
}

impl std::str::FromStr for Sidecar {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (name, command) = value
            .split_once('=')
            .ok_or("expected NAME=COMMAND, e.g. web='nc -l -p 80 -e echo hi'")?;
        if !is_dns_label(name) {
            return Err(format!(
                "{name:?}: a container name is a DNS label: 1-63 lowercase letters, digits or '-'"
            ));
        }
        if command.trim().is_empty() {
            return Err(format!("{name}: the command is empty"));
        }
        Ok(Sidecar {
            name: name.to_string(),
            command: command.to_string(),
        })
    }
}

/// `--network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// A tap on the host bridge, and a pod IP.
    Bridge,
    /// Loopback only.
    None,
}

/// Whether `name` is a DNS label (a pod or container name).
pub(crate) fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

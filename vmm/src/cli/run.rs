//! `unipod run`'s arguments, and the step from them to the pod engine
//! ([`crate::pod::run`] turns `-- CMD` into a pod, and
//! [`crate::pod::supervisor`] runs it, as it runs a manifest's).

use std::path::PathBuf;

use crate::net::{Ipv4Cidr, Ipv6Cidr, PublishedPort, DEFAULT_BRIDGE, DEFAULT_POD_CIDR};
use crate::pod::options::{NetworkMode, RunOptions, Sidecar};

/// `--debug-agent`: the faults a test can have the agent inject.
#[cfg(feature = "test-hooks")]
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DebugFault {
    /// The agent stops its heartbeats (a hung agent).
    StopHeartbeat,
    /// The guest kernel panics.
    Panic,
}

/// `unipod run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pod name: a DNS label (lowercase letters, digits and '-', at most 63).
    #[arg(long, value_name = "NAME", default_value = "pod")]
    pub name: String,
    /// Guest kernel. Default: guest/vmlinux next to unipod's build directory
    /// (target/guest/vmlinux, built by 'make kernel').
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with the agent as /init. Default:
    /// target/guest/initramfs.cpio (built by 'make images').
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "N")]
    pub mem_mib: Option<u32>,
    /// Environment for the container, KEY=VALUE; repeatable. Nothing else is
    /// inherited except PATH=/usr/local/bin:/usr/bin:/bin.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the container.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// How long the guest may take to boot and answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub agent_timeout_secs: u64,
    /// Agent heartbeat period in milliseconds. The pod becomes Unknown after
    /// three missed heartbeats plus a second. Each heartbeat wakes the
    /// guest, which costs host CPU; a shorter period notices a hung guest
    /// sooner.
    #[arg(long, value_name = "MS", default_value_t = guest_agent::protocol::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// How long the pod may stay Unknown before unipod gives up on it,
    /// stops the VM and reports Failed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        env = "UNIPOD_UNKNOWN_TIMEOUT_SECS"
    )]
    pub unknown_timeout_secs: u64,
    /// Boot the guest from scratch instead of restoring the warm-start
    /// snapshot.
    #[arg(long)]
    pub cold: bool,
    /// unipod's state: pods/NAME/ (vsock socket, logs) and snapshots/.
    /// Default: $UNIPOD_STATE_DIR, else /run/unipod as root, else
    /// $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The pod's network: "bridge" gives it an IP on --pod-cidr and a tap on
    /// --bridge (created if missing); "none" leaves it only loopback.
    #[arg(long, value_enum, default_value_t = NetworkMode::Bridge)]
    pub network: NetworkMode,
    /// The host bridge of the pod network; its address is the pods'
    /// gateway.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The pod network. Every pod on one bridge must use the same one.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_POD_CIDR)]
    pub pod_cidr: Ipv4Cidr,
    /// The gateway (the bridge's address). Default: the CIDR's first address.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Give pods IPv6 addresses from this range too (for example
    /// fd00:211::/64), beside their IPv4 ones: a pod's IPv6 address has the
    /// same offset in it as its IPv4 address in --pod-cidr, and the bridge
    /// takes the gateway's. IPv6 reaches the host and the bridge's pods,
    /// with no masquerading or port forwards. Every pod on one bridge must
    /// use the same one.
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr6: Option<Ipv6Cidr>,
    /// Forward a host port to the pod (nftables DNAT), as a manifest's
    /// hostPort does: HOST_PORT:POD_PORT[/tcp|/udp]; repeatable.
    #[arg(long, short = 'p', value_name = "HOST:POD")]
    pub publish: Vec<PublishedPort>,
    /// Masquerade the pod network's traffic to the outside (off by default:
    /// pods reach the host and each other only). The rule stays for the
    /// bridge; 'nft delete table ip unipod' removes it.
    #[arg(long)]
    pub nat: bool,
    /// A DNS server for the pod's /etc/resolv.conf; repeatable (at most 3).
    /// Default: the host's non-loopback nameservers.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Another container in the pod, started before the main one:
    /// NAME=COMMAND, where COMMAND runs under /bin/sh -c; repeatable. It
    /// shares the pod's network (localhost), env and working directory; the
    /// pod ends when the main container (CMD) does.
    #[arg(long, value_name = "NAME=COMMAND")]
    pub sidecar: Vec<Sidecar>,
    /// Debug: a fault the agent injects once the first container runs (in
    /// the pod's first VM only): stop-heartbeat (a hung agent, for the
    /// Unknown phase) or panic (the guest kernel panics).
    /// (Only in builds with the `test-hooks` feature, and only an agent
    /// built with it obeys: target/guest/initramfs-test-hooks.cpio.)
    #[cfg(feature = "test-hooks")]
    #[arg(long, value_name = "FAULT")]
    pub debug_agent: Option<DebugFault>,
    /// MANIFEST, or `--` then the container's command and arguments.
    ///
    /// MANIFEST is a Kubernetes Pod manifest (.yaml, .yml or .json) to run
    /// instead of a command: its init containers, containers, images,
    /// volumes, ports (hostPort), restartPolicy and limits. The VM is sized
    /// from the limits; the pod directory stays after the pod ends, until
    /// 'unipod rm NAME'.
    #[arg(value_name = "MANIFEST | -- CMD")]
    pub words: Vec<String>,
    /// A manifest file, as kubectl apply -f takes it; repeatable. The files
    /// (and their '---'-separated documents) hold exactly one Pod, and any
    /// ConfigMaps and Secrets it uses, which are stored first, as
    /// 'unipod apply' stores them.
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The container's command and arguments (the words after `--`); set by
    /// [`RunArgs::split_manifest`].
    #[arg(skip)]
    pub command: Vec<String>,
    /// The manifest files: a word before any `--`, then each `-f`; set by
    /// [`RunArgs::split_manifest`].
    #[arg(skip)]
    pub manifests: Vec<PathBuf>,
    /// With MANIFEST: run the pod in the background, wait until it runs
    /// (or fails), print its name and exit. 'unipod logs/exec/stop/rm' reach
    /// it; its supervisor logs to STATE_DIR/pods/NAME/supervisor.log.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// With MANIFEST: check the manifests and every image, ConfigMap and
    /// Secret they name, print each problem and warning with its field path
    /// and what would run, and start nothing. Exit 0 when the pod would
    /// run, 125 when not; a missing image is only noted.
    #[arg(long)]
    pub dry_run: bool,
    /// Internal: be the supervisor of a pod whose directory 'unipod run
    /// --detach' made.
    #[arg(long, hide = true)]
    pub supervisor: bool,
}

impl RunArgs {
    /// Splits the positional words (`raw` is the process's arguments): the
    /// words after `--` are the command, a word before it the manifest. Then
    /// checks that MANIFEST and the flags of the command form are not mixed.
    /// `Err` is a usage error.
    pub fn split_manifest(&mut self, raw: &[std::ffi::OsString]) -> Result<(), String> {
        let after_dashes = raw
            .iter()
            .position(|a| a == "--")
            .map_or(0, |i| raw.len() - i - 1)
            .min(self.words.len());
        let before = self.words.len() - after_dashes;
        self.command = self.words[before..].to_vec();
        self.manifests = match &self.words[..before] {
            [] => Vec::new(),
            [one] => vec![PathBuf::from(one)],
            [_, second, ..] => {
                return Err(format!(
                    "unexpected argument {second:?}: give one MANIFEST (more with -f), or a command after '--'"
                ))
            }
        };
        self.manifests.extend(self.files.iter().cloned());
        if self.manifests.is_empty() && self.command.is_empty() {
            return Err(
                "give a MANIFEST (unipod run pod.yaml) or a command after '--' \
                        (unipod run -- CMD...)"
                    .into(),
            );
        }
        if self.manifests.is_empty() {
            return match (self.detach, self.supervisor) {
                (false, false) if !self.dry_run => Ok(()),
                (false, false) => {
                    Err("--dry-run needs a MANIFEST (unipod run --dry-run pod.yaml)".into())
                }
                _ => Err("--detach needs a MANIFEST (unipod run --detach pod.yaml)".into()),
            };
        }
        let mixed = [
            (!self.command.is_empty(), "-- CMD"),
            (
                self.name != "pod",
                "--name (the manifest's metadata.name names the pod)",
            ),
            (!self.env.is_empty(), "--env (use the containers' env)"),
            (
                self.workdir.is_some(),
                "--workdir (use the containers' workingDir)",
            ),
            (
                !self.sidecar.is_empty(),
                "--sidecar (list the containers in the manifest)",
            ),
            (
                !self.publish.is_empty(),
                "--publish (use the ports' hostPort)",
            ),
            (
                self.mem_mib.is_some(),
                "--mem-mib (the VM is sized from the limits)",
            ),
        ];
        match mixed.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(format!("{flag} cannot be used with a MANIFEST")),
            None => Ok(()),
        }
    }
}

impl From<&RunArgs> for RunOptions {
    fn from(args: &RunArgs) -> RunOptions {
        RunOptions {
            name: args.name.clone(),
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            mem_mib: args.mem_mib,
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            agent_timeout_secs: args.agent_timeout_secs,
            heartbeat_ms: args.heartbeat_ms,
            unknown_timeout_secs: args.unknown_timeout_secs,
            cold: args.cold,
            state_dir: args.state_dir.clone(),
            network: args.network,
            bridge: args.bridge.clone(),
            pod_cidr: args.pod_cidr,
            pod_cidr6: args.pod_cidr6,
            gateway: args.gateway,
            publish: args.publish.clone(),
            nat: args.nat,
            dns: args.dns.clone(),
            sidecar: args.sidecar.clone(),
            #[cfg(feature = "test-hooks")]
            debug_agent: args.debug_agent.map(|f| match f {
                DebugFault::StopHeartbeat => guest_agent::protocol::DebugCommand::StopHeartbeat,
                DebugFault::Panic => guest_agent::protocol::DebugCommand::Panic,
            }),
            command: args.command.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_unknown_threshold_follows_the_heartbeat() {
        use clap::Parser;
        let args = |extra: &[&str]| {
            let argv = [&["unipod", "run"], extra, &["--", "true"]].concat();
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Run(args) => args,
                _ => unreachable!("a run command"),
            }
        };
        let default = args(&[]);
        assert_eq!(
            RunOptions::from(&default).unknown_after(),
            Duration::from_secs(31)
        );
        let fast = args(&["--heartbeat-ms", "500", "--unknown-timeout-secs", "7"]);
        assert_eq!(
            RunOptions::from(&fast).unknown_after(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            RunOptions::from(&fast).give_up_after(),
            Duration::from_secs(7)
        );
    }
}

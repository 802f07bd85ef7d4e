//! Port forwarding into a pod VM: the host end. [`connect`] opens a byte
//! stream to a TCP port on the pod's loopback through the VMM's
//! hybrid-vsock socket; the guest end is the agent's
//! (`guest-agent/src/agent/port_forward.rs`).
//!
//! [`serve_in_netns`] is what containerd's CRI `PortForward` needs: it dials
//! `localhost:PORT` inside the pod's network namespace on the host, where
//! nothing listens, since the pod IP's interface there only redirects frames
//! to the guest. So an nftables rule in that namespace redirects every TCP
//! connection to 127.0.0.1 to one listener of ours, which reads each one's
//! original port (`SO_ORIGINAL_DST`) and forwards it into the VM.
//!
//! # Design
//! - The namespace's loopback has no other user: the pod's processes run in
//!   the guest. Redirecting all of its TCP is therefore safe, and needs no
//!   list of ports (CRI's request names none ahead of time).
//! - The listener is made in the namespace by [`crate::net::cni::in_netns`],
//!   as the tap is: a socket stays in the namespace it was made in, so the
//!   accepting thread runs anywhere. The `nft` child is spawned from that
//!   thread and so runs in the namespace.
//! - The rule goes with the namespace, which CNI deletes with the pod.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::protocol::PORT_FORWARD_VSOCK_PORT;
use guest_agent::relay::relay;

use crate::pod::agent_client::{read_line, try_connect};

/// How long the guest has to take a forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The nftables table made in a pod's network namespace.
pub const NETNS_TABLE: &str = "unipod_port_forward";

/// Why a port cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// The VMM's socket refused or dropped the connection.
    #[error("cannot reach the pod VM's vsock socket {}", .0.display())]
    Vsock(PathBuf, #[source] std::io::Error),
    /// The guest did not take the connection.
    #[error("the pod VM did not take the port-forward connection (is its agent running?)")]
    NotListening,
    /// The guest agent could not connect to the port.
    #[error("port {port}: {reason}")]
    Refused {
        /// The port.
        port: u16,
        /// The agent's answer.
        reason: String,
    },
    /// The pod's network namespace cannot be entered or set up.
    #[error("port forwarding in the pod's network namespace {}: {what}", .netns.display())]
    Netns {
        /// The namespace.
        netns: PathBuf,
        /// What failed.
        what: String,
    },
}

/// A stream to TCP `port` on the pod's loopback, through the VMM at
/// `vsock_uds`.
pub fn connect(vsock_uds: &Path, port: u16) -> Result<UnixStream, PortForwardError> {
    let vsock_err = |e| PortForwardError::Vsock(vsock_uds.to_path_buf(), e);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut stream = try_connect(vsock_uds, PORT_FORWARD_VSOCK_PORT, deadline)
        .map_err(vsock_err)?
        .ok_or(PortForwardError::NotListening)?;
    stream
        .write_all(format!("{port}\n").as_bytes())
        .map_err(vsock_err)?;
    let wait = deadline.saturating_duration_since(Instant::now());
    let answer = read_line(&mut stream, wait)
        .map_err(vsock_err)?
        .ok_or(PortForwardError::NotListening)?;
    match answer.trim_end() {
        "OK" => {
            stream.set_read_timeout(None).map_err(vsock_err)?;
            Ok(stream)
        }
        other => Err(PortForwardError::Refused {
            port,
            reason: other.strip_prefix("ERR ").unwrap_or(other).to_string(),
        }),
    }
}

/// Forwards every TCP connection to 127.0.0.1 inside `netns` into the pod
/// VM at `vsock_uds`, from a thread that lives as long as the process.
pub fn serve_in_netns(netns: &Path, vsock_uds: PathBuf) -> Result<(), PortForwardError> {
    let fail = |what: String| PortForwardError::Netns {
        netns: netns.to_path_buf(),
        what,
    };
    let listener = crate::net::cni::in_netns(netns, listen_and_redirect)
        .map_err(|e| fail(format!("cannot enter it: {e}")))?
        .map_err(fail)?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || accept_loop(&listener, &vsock_uds))
        .map_err(|e| fail(format!("cannot start the listener thread: {e}")))?;
    log::info!(
        "port forward: loopback TCP in {} goes into the pod VM (through 127.0.0.1:{port}, nft table ip {NETNS_TABLE})",
        netns.display()
    );
    Ok(())
}

/// In the pod's namespace: a listener on an ephemeral loopback port and the
/// rule that sends all loopback TCP to it.
fn listen_and_redirect() -> Result<TcpListener, String> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("listen on 127.0.0.1 (is lo up?): {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    // -100 is dstnat's number; Debian 12's nft takes the name only in
    // prerouting.
    let rules = format!(
        "table ip {NETNS_TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr 127.0.0.1 tcp dport != {port} redirect to :{port}\n\
         \t}}\n\
         }}\n"
    );
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    nft.stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let out = nft.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the redirect: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(listener)
}

fn accept_loop(listener: &TcpListener, vsock_uds: &Path) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                log::warn!("port forward: accept: {e}");
                continue;
            }
        };
        let uds = vsock_uds.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("port-forward-conn".into())
            .spawn(move || forward(client, &uds));
        if let Err(e) = spawned {
            log::warn!("port forward: cannot start a relay: {e}");
        }
    }
}

/// One redirected connection: into the VM at the port it was made to.
fn forward(client: TcpStream, vsock_uds: &Path) {
    let port = match nix::sys::socket::getsockopt(&client, nix::sys::socket::sockopt::OriginalDst) {
        Ok(addr) => u16::from_be(addr.sin_port),
        Err(e) => {
            log::warn!("port forward: no original destination: {e}");
            return;
        }
    };
    match connect(vsock_uds, port) {
        Ok(guest) => {
            log::debug!("port forward: a connection to port {port}");
            if let Err(e) = relay(client, guest) {
                log::debug!("port forward to {port}: {e}");
            }
        }
        // Dropping the client resets it, as a closed port would.
        Err(e) => log::info!(
            "port forward: {}",
            crate::error_chain::error_chain(&e, ": ")
        ),
    }
}

//! Port forwarding into the pod: the guest end.
//!
//! The host connects to vsock port [`PORT_FORWARD_VSOCK_PORT`] and names a
//! TCP port in one line (see the protocol's docs); the agent connects to that
//! port on the guest's loopback, answers `OK` or `ERR reason`, then relays
//! bytes both ways until each side has closed. The pod's containers share
//! the guest's network namespace, so loopback reaches a listener in any of
//! them, as `localhost` in a pod's network namespace does under runc.
//!
//! # Design
//! Threads, not the agent's poll loop: a relay is two blocking copies, and
//! keeping them apart from the loop means a slow client never delays the
//! host link or container output. The listener thread is started after the
//! agent blocks its signals, so relay threads never take SIGCHLD.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use guest_agent::protocol::{parse_port_forward_request, PORT_FORWARD_VSOCK_PORT};
use guest_agent::relay::relay;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use super::logger::Chain;

/// Starts the listener thread.
pub fn spawn() -> std::io::Result<()> {
    let listener = bind_vsock(PORT_FORWARD_VSOCK_PORT)?;
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || loop {
            match accept4(&listener, SockFlag::SOCK_CLOEXEC) {
                Ok(conn) => {
                    let spawned = std::thread::Builder::new()
                        .name("port-forward-conn".into())
                        .spawn(move || serve(conn));
                    if let Err(e) = spawned {
                        log::warn!("port forward: cannot start a relay: {e}");
                    }
                }
                Err(e) => log::warn!("port forward: accept: {e}"),
            }
        })?;
    Ok(())
}

fn bind_vsock(port: u32) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// One forwarded connection. `UnixStream` serves only as std's typed
/// owner of a connected stream socket (read, write, shutdown and try_clone
/// are the same calls on a vsock socket).
fn serve(conn: OwnedFd) {
    let mut host = UnixStream::from(conn);
    let port = match read_request(&mut host) {
        Ok(port) => port,
        Err(e) => return answer(&host, &format!("ERR {e}\n")),
    };
    let target = match connect_loopback(port) {
        Ok(t) => t,
        Err(e) => {
            return answer(
                &host,
                &format!("ERR nothing accepts port {port} in the pod: {e}\n"),
            )
        }
    };
    answer(&host, "OK\n");
    if let Err(e) = relay(host, target) {
        log::debug!("port forward to {port}: {}", Chain(&e));
    }
}

/// Reads the request line a byte at a time, so that nothing after it is
/// taken from the stream.
fn read_request(host: &mut UnixStream) -> Result<u16, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 8 {
        match host.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    parse_port_forward_request(&String::from_utf8_lossy(&line))
}

/// IPv4 first, then IPv6, as containerd dials `localhost` in a pod's
/// network namespace.
fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .or_else(|_| TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))))
}

fn answer(mut host: &UnixStream, text: &str) {
    if let Err(e) = host.write_all(text.as_bytes()) {
        log::debug!("port forward: answering the host: {e}");
    }
}

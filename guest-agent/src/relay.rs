//! A byte relay between two connected stream sockets, for port forwarding:
//! the agent relays vsock to a pod's TCP port, the host relays a client's
//! TCP connection to vsock.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// A connected stream socket that can be split in two and half-closed.
pub trait Duplex: Read + Write + Send + Sized + 'static {
    /// A second handle on the same socket.
    fn try_clone(&self) -> std::io::Result<Self>;
    /// Tells the peer that nothing more will be written.
    fn shutdown_write(&self);
}

impl Duplex for TcpStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Also any other stream socket held as a `UnixStream` (a vsock socket in
/// the agent: the calls are the same).
impl Duplex for UnixStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended; each
/// end is passed on as a half-close, so request-then-response protocols see
/// their EOFs. Returns the bytes copied (a to b, b to a).
pub fn relay<A: Duplex, B: Duplex>(a: A, b: B) -> std::io::Result<(u64, u64)> {
    let (mut a_in, mut b_in) = (a.try_clone()?, b.try_clone()?);
    let forward = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let mut b_out = b;
            let copied = std::io::copy(&mut a_in, &mut b_out).unwrap_or(0);
            b_out.shutdown_write();
            copied
        })?;
    let mut a_out = a;
    let back = std::io::copy(&mut b_in, &mut a_out).unwrap_or(0);
    a_out.shutdown_write();
    let forth = forward.join().unwrap_or(0);
    Ok((forth, back))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_arrive_and_each_end_is_passed_on() {
        let (client, a) = UnixStream::pair().unwrap();
        let (b, server) = UnixStream::pair().unwrap();
        let relayed = std::thread::spawn(move || relay(a, b).unwrap());
        let mut client = client;
        let mut server = server;
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ping", "the client's bytes, then its EOF");
        server.write_all(b"pong!").unwrap();
        drop(server);
        let mut back = String::new();
        client.read_to_string(&mut back).unwrap();
        assert_eq!(back, "pong!");
        assert_eq!(relayed.join().unwrap(), (4, 5));
    }
}

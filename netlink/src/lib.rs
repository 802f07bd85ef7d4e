//! A small, blocking rtnetlink client: look up, create, configure and delete
//! links, add IPv4 and IPv6 addresses and routes, and redirect one link's
//! frames to another with tc.
//!
//! The host side uses it to build the pod bridge and attach tap devices to it;
//! the guest agent uses it to bring up `lo` and `eth0`.
//!
//! # Design
//!
//! - **Synchronous.** Both callers configure a handful of links at setup time,
//!   one step after another, and the guest agent is a static musl binary that
//!   should stay small. A blocking socket with one request in flight at a
//!   time needs no async runtime, and every error belongs to the call that
//!   caused it. The `rtnetlink` crate would pull in tokio; this crate uses
//!   only its sync building blocks (`netlink-sys`'s `Socket` and the
//!   `netlink-packet-*` codecs).
//! - **Its own crate,** because it has two consumers built for different
//!   targets: `vmm` (host, glibc) and `guest-agent` (guest, musl).
//! - **Every request asks for an ack** (`NLM_F_REQUEST | NLM_F_ACK`). Replies
//!   are matched by sequence number, and dumps are read until `NLMSG_DONE`. A
//!   kernel error keeps its errno, so callers can treat `EEXIST` or `ENODEV`
//!   as success ([`NetlinkError::is_already_exists`],
//!   [`NetlinkError::is_not_found`]). Where the kernel explains a refusal
//!   (extended ack), the explanation is part of the message.
//!
//! # Limitations
//!
//! - IPv6 addresses are added without duplicate address detection
//!   (`IFA_F_NODAD`): both callers hand out addresses from a plan of their
//!   own, and DAD would hold an address back for a second or more.
//! - Needs Linux 4.20 or later: [`Netlink::open`] turns on
//!   `NETLINK_GET_STRICT_CHK`, so dumps are filtered in the kernel and a dump
//!   for a missing link fails instead of returning nothing.
//! - No timeout: a call blocks until the kernel answers, which it always
//!   does when asked for an ack.
//! - A [`Netlink`] works on the network namespace that the opening thread was
//!   in when [`Netlink::open`] ran.

#![forbid(unsafe_code)]

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A route: (destination, prefix length, gateway); the destination is
/// `None` for a default route, whose family the gateway tells.
pub type IpRoute = (Option<IpAddr>, u8, Option<IpAddr>);

/// Every Ethernet protocol, for a tc filter.
const ETH_P_ALL: u16 = 0x0003;

/// Flags for requests that create an object and must not replace one.
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

/// Errors from [`Netlink`].
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The `NETLINK_ROUTE` socket could not be opened or set up.
    #[error("cannot open a NETLINK_ROUTE socket")]
    Open(#[source] io::Error),
    /// Sending a request or receiving its reply failed.
    #[error("{op}: netlink socket I/O failed")]
    Io {
        /// What was being done, e.g. `set MTU 1400 on link index 3`.
        op: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request; `source` carries its errno.
    #[error("{op}: the kernel refused the request{}", reason_suffix(.reason))]
    Kernel {
        /// What was being done.
        op: String,
        /// The kernel's own explanation (extended ack), when it gave one.
        reason: Option<String>,
        /// The errno, as an OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply did not make sense.
    #[error("{op}: unexpected reply from the kernel: {detail}")]
    Protocol {
        /// What was being done.
        op: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl NetlinkError {
    /// The errno of a request the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object to create already exists (`EEXIST`).
    pub fn is_already_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The link, address or route does not exist (`ENODEV`, `ENOENT`, `ESRCH`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH)
        )
    }
}

/// Why an exchange failed, before [`Netlink::request`] names the operation.
enum Failure {
    Io(io::Error),
    Kernel { errno: i32, reason: Option<String> },
    Protocol(String),
}

impl Failure {
    fn into_error(self, op: String) -> NetlinkError {
        match self {
            Self::Io(source) => NetlinkError::Io { op, source },
            Self::Kernel { errno, reason } => NetlinkError::Kernel {
                op,
                reason,
                source: io::Error::from_raw_os_error(errno),
            },
            Self::Protocol(detail) => NetlinkError::Protocol { op, detail },
        }
    }
}

/// A `NETLINK_ROUTE` socket in the opening thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket, bound to a kernel-chosen port and connected to the kernel.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        // Error acks echo only the request header, plus the kernel's reason.
        socket.set_cap_ack(true).map_err(NetlinkError::Open)?;
        socket.set_ext_ack(true).map_err(NetlinkError::Open)?;
        // Filter dumps in the kernel, and fail them for a missing link.
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(NetlinkError::Open)?;
        Ok(Self { socket, seq: 0 })
    }

    /// The index of the link called `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let link = link_message(0, vec![LinkAttribute::IfName(name.to_owned())]);
        match self.get_link(format!("look up link {name:?}"), link) {
            Ok(link) => Ok(Some(link.header.index)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The names of all links, e.g. to check that none leaked.
    pub fn link_names(&mut self) -> Result<Vec<String>, NetlinkError> {
        let replies = self.request(
            "list links".to_owned(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => {
                    link.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The index of the bridge that link `index` is attached to, if any.
    pub fn link_master(&mut self, index: u32) -> Result<Option<u32>, NetlinkError> {
        let link = self.get_link(
            format!("look up link index {index}"),
            link_message(index, vec![]),
        )?;
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(master) => Some(*master),
            _ => None,
        }))
    }

    /// Creates a bridge called `name` (down) and returns its index. Fails with
    /// [`NetlinkError::is_already_exists`] if a link of that name exists.
    pub fn create_bridge(&mut self, name: &str) -> Result<u32, NetlinkError> {
        let op = format!("create bridge {name:?}");
        let attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        let link = RouteNetlinkMessage::NewLink(link_message(0, attributes));
        self.request(op.clone(), link, CREATE)?;
        self.link_index(name)?
            .ok_or_else(|| NetlinkError::Protocol {
                op,
                detail: "the new bridge vanished before its index was read".to_owned(),
            })
    }

    /// Deletes link `index` (for a veth, both ends).
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let link = RouteNetlinkMessage::DelLink(link_message(index, vec![]));
        self.request(format!("delete link index {index}"), link, 0)
            .map(drop)
    }

    /// Sets link `index` administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut link = link_message(index, vec![]);
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.set_link(format!("set link index {index} up"), link)
    }

    /// Attaches link `index` to the bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let link = link_message(index, vec![LinkAttribute::Controller(master)]);
        self.set_link(
            format!("attach link index {index} to bridge index {master}"),
            link,
        )
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let link = link_message(index, vec![LinkAttribute::Mtu(mtu)]);
        self.set_link(format!("set MTU {mtu} on link index {index}"), link)
    }

    /// Sets the MAC address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let link = link_message(index, vec![LinkAttribute::Address(mac.to_vec())]);
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        self.set_link(format!("set MAC {mac} on link index {index}"), link)
    }

    /// Adds `addr/prefix_len` to link `index` (an IPv6 one without duplicate
    /// address detection). Fails with [`NetlinkError::is_already_exists`] if
    /// the link already has it.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        match addr {
            IpAddr::V4(v4) if prefix_len < 31 => {
                let broadcast =
                    u32::from(v4) | u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
                msg.attributes
                    .push(AddressAttribute::Broadcast(broadcast.into()));
            }
            IpAddr::V4(_) => {}
            IpAddr::V6(_) => {
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        let op = format!("add address {addr}/{prefix_len} to link index {index}");
        self.request(op, RouteNetlinkMessage::NewAddress(msg), CREATE)
            .map(drop)
    }

    /// The IPv4 and IPv6 addresses of link `index` (IPv6 link-local ones
    /// left out), with their prefix lengths, IPv4 first.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = AddressMessage::default();
            msg.header.family = family;
            msg.header.index = index;
            let op = format!("list addresses of link index {index}");
            let replies = self.request(op, RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
            all.extend(replies.into_iter().filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix_len = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some((ip, prefix_len)),
                        AddressAttribute::Address(ip @ IpAddr::V6(v6))
                            if !v6.is_unicast_link_local() =>
                        {
                            Some((ip, prefix_len))
                        }
                        _ => None,
                    })
                }
                _ => None,
            }));
        }
        Ok(all)
    }

    /// Adds a route to `dest/prefix_len` via `gateway` (both of one family),
    /// which must be reachable on a connected subnet. `prefix_len` 0 is the
    /// default route. Fails with [`NetlinkError::is_already_exists`] if the
    /// route exists.
    pub fn add_route(
        &mut self,
        dest: IpAddr,
        prefix_len: u8,
        gateway: IpAddr,
    ) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(gateway);
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // What `ip route add` sends.
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        if prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dest)));
        }
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        let op = format!("add route {dest}/{prefix_len} via {gateway}");
        self.request(op, RouteNetlinkMessage::NewRoute(msg), CREATE)
            .map(drop)
    }

    /// Every IPv4 and IPv6 route of the main table.
    pub fn routes(&mut self) -> Result<Vec<IpRoute>, NetlinkError> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let dump = RouteNetlinkMessage::GetRoute(msg);
            for reply in self.request("list routes".to_owned(), dump, NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(route) = reply else {
                    continue;
                };
                if route.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let (mut dest, mut gateway) = (None, None);
                for attribute in route.attributes {
                    match attribute {
                        RouteAttribute::Destination(a) => dest = ip_of(a),
                        RouteAttribute::Gateway(a) => gateway = ip_of(a),
                        _ => {}
                    }
                }
                routes.push((dest, route.header.destination_prefix_length, gateway));
            }
        }
        Ok(routes)
    }

    /// The MAC address and MTU of link `index`.
    pub fn link_mac_and_mtu(&mut self, index: u32) -> Result<([u8; 6], u32), NetlinkError> {
        let op = format!("read the MAC and MTU of link index {index}");
        let link = self.get_link(op.clone(), link_message(index, vec![]))?;
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        });
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        match (mac, mtu) {
            (Some(mac), Some(mtu)) => Ok((mac, mtu)),
            _ => Err(NetlinkError::Protocol {
                op,
                detail: "the link has no Ethernet address or no MTU".to_owned(),
            }),
        }
    }

    /// Gives link `index` an ingress qdisc, as `tc qdisc add dev X ingress`
    /// does, so that filters can act on the frames it receives.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut qdisc = TcMessage::with_index(tc_index(index));
        qdisc.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc
            .attributes
            .push(TcAttribute::Kind("ingress".to_owned()));
        let op = format!("add an ingress qdisc to link index {index}");
        self.request(op, RouteNetlinkMessage::NewQueueDiscipline(qdisc), CREATE)
            .map(drop)
    }

    /// Removes link `index`'s ingress qdisc, and with it its filters.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut qdisc = TcMessage::with_index(tc_index(index));
        qdisc.header.parent = TcHandle::INGRESS;
        let op = format!("delete the ingress qdisc of link index {index}");
        self.request(op, RouteNetlinkMessage::DelQueueDiscipline(qdisc), 0)
            .map(drop)
    }

    /// Sends every frame that link `from` receives out of link `to`, as
    /// `tc filter add dev FROM ingress protocol all u32 match u32 0 0 action
    /// mirred egress redirect dev TO` does. `from` needs an ingress qdisc.
    /// u32 rather than matchall: hosts without `CONFIG_NET_CLS_MATCHALL`
    /// (this CI's) still have u32.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".to_owned()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let mut filter = TcMessage::with_index(tc_index(from));
        filter.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        // Priority 1, and every protocol (ETH_P_ALL, in network byte order).
        filter.header.info = (1 << 16) | u32::from(ETH_P_ALL.to_be());
        // One key that matches any frame: 0 under mask 0.
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        filter.attributes = vec![
            TcAttribute::Kind("u32".to_owned()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        let op = format!("redirect what link index {from} receives to link index {to}");
        self.request(op, RouteNetlinkMessage::NewTrafficFilter(filter), CREATE)
            .map(drop)
    }

    fn set_link(&mut self, op: String, link: LinkMessage) -> Result<(), NetlinkError> {
        self.request(op, RouteNetlinkMessage::SetLink(link), 0)
            .map(drop)
    }

    /// Sends `RTM_GETLINK` for one link (by index or `IfName`) and returns it.
    fn get_link(&mut self, op: String, link: LinkMessage) -> Result<LinkMessage, NetlinkError> {
        let replies = self.request(op.clone(), RouteNetlinkMessage::GetLink(link), 0)?;
        replies
            .into_iter()
            .find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::Protocol {
                op,
                detail: "no link in the reply".to_owned(),
            })
    }

    /// Sends one request and collects its replies until the ack, the error or
    /// (for a dump) `NLMSG_DONE`. `op` names the request in errors.
    fn request(
        &mut self,
        op: String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(msg, flags)
            .map_err(|failure| failure.into_error(op))
    }

    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = NetlinkMessage::from(msg);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        request.header.sequence_number = self.seq;
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0).map_err(Failure::Io)?;
        if sent != buf.len() {
            return Err(Failure::Protocol(format!(
                "sent {sent} of {} bytes",
                buf.len()
            )));
        }

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(Failure::Io)?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| Failure::Protocol(e.to_string()))?;
                // deserialize() checked 16 <= length <= rest.len(); NLMSG_ALIGN.
                let aligned = (reply.header.length as usize + 3) & !3;
                rest = rest.get(aligned..).unwrap_or_default();
                if reply.header.sequence_number != self.seq {
                    // Left over from an earlier request that failed half-way.
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Noop => {}
                    NetlinkPayload::Done(done) if done.code == 0 => return Ok(replies),
                    NetlinkPayload::Done(done) => {
                        return Err(Failure::Kernel {
                            errno: done.code.abs(),
                            reason: None,
                        });
                    }
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            let reason = ext_ack_reason(reply.header.flags, &e.header);
                            return Err(Failure::Kernel {
                                errno: code.get().abs(),
                                reason,
                            });
                        }
                    },
                    NetlinkPayload::Overrun(_) => {
                        return Err(Failure::Protocol("NLMSG_OVERRUN".to_owned()))
                    }
                    other => return Err(Failure::Protocol(format!("unknown payload {other:?}"))),
                }
            }
        }
    }
}

/// A tc message's interface index (`i32` in the kernel's `struct tcmsg`);
/// link indices fit.
fn tc_index(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

fn link_message(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes = attributes;
    link
}

/// The kernel's text for a refused request (`NLMSGERR_ATTR_MSG`), e.g.
/// "Invalid prefix for given prefix length". `payload` is what follows the
/// error code: the echoed request header (capped, see [`Netlink::open`]),
/// then the extended-ack attributes.
fn ext_ack_reason(flags: u16, payload: &[u8]) -> Option<String> {
    const NLMSG_HDRLEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_CAPPED == 0 || flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    NlasIterator::new(payload.get(NLMSG_HDRLEN..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_owned()
        })
}

/// The address family of `ip`.
fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The IP in a route attribute, if it holds one.
fn ip_of(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(ip.into()),
        RouteAddress::Inet6(ip) => Some(ip.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{InfoData, InfoVeth};
    use nix::errno::Errno;
    use nix::sched::{unshare, CloneFlags};
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// Moves this test's thread (libtest runs each test on its own thread)
    /// into a new, empty network namespace and opens a socket there. `None`,
    /// after a loud SKIP, when not root.
    fn fresh_netns(test: &str) -> Option<Netlink> {
        match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => Some(Netlink::open().expect("open netlink in the new namespace")),
            Err(Errno::EPERM) => {
                // Straight to fd 2: libtest would swallow eprintln! of a passing test.
                let msg = format!(
                    "SKIP {test}: needs root (CAP_SYS_ADMIN) to create a network namespace\n"
                );
                std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes()).ok();
                None
            }
            Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
        }
    }

    fn link_attributes(nl: &mut Netlink, index: u32) -> Vec<LinkAttribute> {
        nl.get_link("test".to_owned(), link_message(index, vec![]))
            .unwrap()
            .attributes
    }

    #[test]
    fn loopback_comes_up_with_its_address() {
        let Some(mut nl) = fresh_netns("loopback_comes_up_with_its_address") else {
            return;
        };
        let lo = nl
            .link_index("lo")
            .unwrap()
            .expect("a new namespace has lo");
        assert_eq!(nl.link_names().unwrap(), ["lo"]);
        assert_eq!(nl.addresses(lo).unwrap(), []);
        nl.set_up(lo).unwrap();
        // The kernel gives lo 127.0.0.1/8 and ::1/128 when it comes up.
        assert_eq!(
            nl.addresses(lo).unwrap(),
            [
                (Ipv4Addr::LOCALHOST.into(), 8),
                (Ipv6Addr::LOCALHOST.into(), 128)
            ]
        );
    }

    #[test]
    fn bridge_takes_mtu_mac_and_address() {
        let Some(mut nl) = fresh_netns("bridge_takes_mtu_mac_and_address") else {
            return;
        };
        let br = nl.create_bridge("br0").unwrap();
        assert_eq!(nl.link_index("br0").unwrap(), Some(br));
        assert!(nl.create_bridge("br0").unwrap_err().is_already_exists());
        assert!(nl.link_names().unwrap().contains(&"br0".to_owned()));

        let mac = [0x02, 0x00, 0x00, 0x0a, 0x09, 0x01];
        nl.set_mtu(br, 1400).unwrap();
        nl.set_mac(br, mac).unwrap();
        nl.set_up(br).unwrap();
        let attributes = link_attributes(&mut nl, br);
        assert!(
            attributes.contains(&LinkAttribute::Mtu(1400)),
            "{attributes:?}"
        );
        assert!(
            attributes.contains(&LinkAttribute::Address(mac.to_vec())),
            "{attributes:?}"
        );

        let addr = IpAddr::from([10, 9, 0, 1]);
        nl.add_address(br, addr, 24).unwrap();
        let again = nl.add_address(br, addr, 24).unwrap_err();
        assert!(again.is_already_exists(), "{again}");
        let addr6 = IpAddr::from(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1));
        nl.add_address(br, addr6, 64).unwrap();
        // Link-local addresses are left out.
        assert_eq!(nl.addresses(br).unwrap(), [(addr, 24), (addr6, 64)]);
    }

    #[test]
    fn routes_via_an_on_link_gateway_are_installed() {
        let Some(mut nl) = fresh_netns("routes_via_an_on_link_gateway_are_installed") else {
            return;
        };
        let br = nl.create_bridge("br0").unwrap();
        nl.add_address(br, [10, 9, 0, 1].into(), 24).unwrap();
        let v6 = |last| IpAddr::from(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, last));
        nl.add_address(br, v6(1), 64).unwrap();
        nl.set_up(br).unwrap();

        let (net, gateway) = (IpAddr::from([10, 10, 0, 0]), IpAddr::from([10, 9, 0, 2]));
        nl.add_route(net, 16, gateway).unwrap();
        assert!(nl
            .add_route(net, 16, gateway)
            .unwrap_err()
            .is_already_exists());
        nl.add_route(Ipv4Addr::UNSPECIFIED.into(), 0, gateway)
            .unwrap();
        nl.add_route(Ipv6Addr::UNSPECIFIED.into(), 0, v6(2))
            .unwrap();
        let routes = nl.routes().unwrap();
        assert!(
            routes.contains(&(Some(net), 16, Some(gateway))),
            "{routes:?}"
        );
        assert!(routes.contains(&(None, 0, Some(gateway))), "{routes:?}");
        assert!(routes.contains(&(None, 0, Some(v6(2)))), "{routes:?}");

        // A gateway on no connected subnet is refused, and the kernel says why.
        let err = nl.add_route(net, 24, [192, 0, 2, 1].into()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        assert!(
            matches!(
                &err,
                NetlinkError::Kernel {
                    reason: Some(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("add route 10.10.0.0/24 via 192.0.2.1: "),
            "{err}"
        );
    }

    #[test]
    fn set_master_attaches_a_veth_to_a_bridge() {
        let Some(mut nl) = fresh_netns("set_master_attaches_a_veth_to_a_bridge") else {
            return;
        };
        let br = nl.create_bridge("br0").unwrap();
        let peer = link_message(0, vec![LinkAttribute::IfName("veth1".to_owned())]);
        let info = vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ];
        let veth = link_message(
            0,
            vec![
                LinkAttribute::IfName("veth0".to_owned()),
                LinkAttribute::LinkInfo(info),
            ],
        );
        nl.request(
            "create veth".to_owned(),
            RouteNetlinkMessage::NewLink(veth),
            CREATE,
        )
        .unwrap();
        let veth = nl
            .link_index("veth0")
            .unwrap()
            .expect("veth0 was just created");

        assert_eq!(nl.link_master(veth).unwrap(), None);
        nl.set_master(veth, br).unwrap();
        assert_eq!(nl.link_master(veth).unwrap(), Some(br));
        assert_eq!(nl.link_master(br).unwrap(), None);
    }

    #[test]
    fn deleted_links_are_gone_and_not_found() {
        let Some(mut nl) = fresh_netns("deleted_links_are_gone_and_not_found") else {
            return;
        };
        let br = nl.create_bridge("br0").unwrap();
        nl.delete_link(br).unwrap();
        assert_eq!(nl.link_index("br0").unwrap(), None);
        assert_eq!(nl.link_names().unwrap(), ["lo"]);

        let errors = [
            nl.delete_link(br).unwrap_err(),
            nl.set_up(br).unwrap_err(),
            nl.set_mtu(br, 1400).unwrap_err(),
            nl.link_master(br).unwrap_err(),
            nl.add_address(br, [10, 9, 0, 1].into(), 24).unwrap_err(),
            nl.addresses(br).unwrap_err(),
        ];
        for err in errors {
            assert!(err.is_not_found(), "{err}");
            assert!(!err.is_already_exists(), "{err}");
            assert!(
                err.to_string().contains(&format!("link index {br}")),
                "{err}"
            );
        }
    }
    #[test]
    fn ingress_frames_are_redirected_to_another_link() {
        let Some(mut nl) = fresh_netns("ingress_frames_are_redirected_to_another_link") else {
            return;
        };
        let from = nl.create_bridge("br0").unwrap();
        let to = nl.create_bridge("br1").unwrap();
        let err = nl.redirect_ingress(from, to).unwrap_err();
        assert!(err.errno().is_some(), "no ingress qdisc yet: {err}");
        nl.add_ingress_qdisc(from).unwrap();
        assert!(nl.add_ingress_qdisc(from).unwrap_err().is_already_exists());
        nl.redirect_ingress(from, to).unwrap();

        let mut dump = TcMessage::with_index(tc_index(from));
        dump.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        let replies = nl
            .request(
                "list filters".to_owned(),
                RouteNetlinkMessage::GetTrafficFilter(dump),
                NLM_F_DUMP,
            )
            .unwrap();
        let targets: Vec<u32> = replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(&f.attributes),
                _ => None,
            })
            .flatten()
            .filter_map(|a| match a {
                TcAttribute::Options(options) => Some(options),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcOption::U32(TcFilterU32Option::Action(actions)) => Some(actions),
                _ => None,
            })
            .flatten()
            .flat_map(|action| &action.attributes)
            .filter_map(|a| match a {
                TcActionAttribute::Options(options) => Some(options),
                _ => None,
            })
            .flatten()
            .filter_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(m))
                    if m.eaction == TcMirrorActionType::EgressRedir =>
                {
                    Some(m.ifindex)
                }
                _ => None,
            })
            .collect();
        assert_eq!(targets, [to]);

        nl.delete_ingress_qdisc(from).unwrap();
        assert!(nl.delete_ingress_qdisc(from).is_err());
        nl.add_ingress_qdisc(from).unwrap();
    }

    #[test]
    fn a_links_mac_and_mtu_are_read_back() {
        let Some(mut nl) = fresh_netns("a_links_mac_and_mtu_are_read_back") else {
            return;
        };
        let br = nl.create_bridge("br0").unwrap();
        let mac = [0x02, 0, 0, 0, 0x12, 0x34];
        nl.set_mac(br, mac).unwrap();
        nl.set_mtu(br, 1400).unwrap();
        assert_eq!(nl.link_mac_and_mtu(br).unwrap(), (mac, 1400));
    }
}

//! Nexthop objects (`ip nexthop`, RTM_NEWNEXTHOP, Linux 5.3+). netlink-packet-route 0.34 has no
//! message for them, so this module encodes and decodes the few fields the data plane uses
//! (`struct nhmsg`, `NHA_ID`, `NHA_OIF`, `NHA_GATEWAY`, the onlink flag and the protocol) and
//! sends them over a netlink-proto connection of its own, which numbers, pipelines and
//! acknowledges requests like rtnetlink's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::proto::{new_connection, ConnectionHandle};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, AsyncSocket, SocketAddr};

use crate::desired::Nexthop;
use crate::error::NetlinkError;
use crate::ROUTE_PROTOCOL;

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_FDB: u16 = 11;
/// The multicast group of nexthop changes (`RTNLGRP_NEXTHOP`).
const RTNLGRP_NEXTHOP: u32 = 32;
/// `RTNH_F_ONLINK` in `nh_flags`.
const RTNH_F_ONLINK: u32 = 4;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;
/// Where `nh_protocol` is in a nexthop message: after the 16-byte netlink header, the third
/// byte of `struct nhmsg`.
const NH_PROTOCOL_OFFSET: u32 = 16 + 2;

/// A nexthop object as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelNexthop {
    pub id: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    /// A group, blackhole or FDB nexthop: never one of ours.
    pub special: bool,
}

impl KernelNexthop {
    /// How the kernel reports `nexthop` once we created it.
    pub fn ours(nexthop: &Nexthop) -> KernelNexthop {
        KernelNexthop {
            id: nexthop.id,
            gateway: Some(nexthop.gateway),
            oif: Some(nexthop.oif),
            onlink: nexthop.onlink,
            protocol: ROUTE_PROTOCOL,
            special: false,
        }
    }

    /// Whether the object carries our protocol tag.
    pub fn is_ours(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL && !self.special
    }

    /// Whether the object is exactly `nexthop` (id, gateway, device, onlink), tagged ours.
    pub fn matches(&self, nexthop: &Nexthop) -> bool {
        *self == KernelNexthop::ours(nexthop)
    }
}

/// One nexthop netlink message: `RTM_NEWNEXTHOP`, `RTM_DELNEXTHOP` or `RTM_GETNEXTHOP` (the
/// kernel answers a dump with `RTM_NEWNEXTHOP`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NexthopMessage {
    kind: u16,
    body: KernelNexthop,
}

impl NexthopMessage {
    fn attributes(&self) -> Vec<(u16, Vec<u8>)> {
        let b = &self.body;
        let mut attrs = Vec::with_capacity(3);
        if b.id != 0 {
            attrs.push((NHA_ID, b.id.to_ne_bytes().to_vec()));
        }
        if let Some(oif) = b.oif {
            attrs.push((NHA_OIF, oif.to_ne_bytes().to_vec()));
        }
        match b.gateway {
            Some(IpAddr::V4(v4)) => attrs.push((NHA_GATEWAY, v4.octets().to_vec())),
            Some(IpAddr::V6(v6)) => attrs.push((NHA_GATEWAY, v6.octets().to_vec())),
            None => {}
        }
        attrs
    }

    fn family(&self) -> u8 {
        match self.body.gateway {
            Some(IpAddr::V4(_)) => AF_INET,
            Some(IpAddr::V6(_)) => AF_INET6,
            None => AF_UNSPEC,
        }
    }
}

/// The padded length of an attribute with `len` bytes of payload.
fn attr_space(len: usize) -> usize {
    (4 + len + 3) & !3
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        NHMSG_LEN
            + self
                .attributes()
                .iter()
                .map(|(_, v)| attr_space(v.len()))
                .sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.fill(0);
        buffer[0] = self.family();
        buffer[2] = self.body.protocol;
        let flags = if self.body.onlink { RTNH_F_ONLINK } else { 0 };
        buffer[4..8].copy_from_slice(&flags.to_ne_bytes());
        let mut at = NHMSG_LEN;
        for (kind, value) in self.attributes() {
            let len = 4 + value.len();
            buffer[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
            buffer[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
            buffer[at + 4..at + len].copy_from_slice(&value);
            at += attr_space(value.len());
        }
    }
}

/// A nexthop message the kernel sent that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed nexthop message: {0}")]
pub(crate) struct Malformed(&'static str);

impl NetlinkDeserializable for NexthopMessage {
    type Error = Malformed;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Malformed> {
        if payload.len() < NHMSG_LEN {
            return Err(Malformed("shorter than struct nhmsg"));
        }
        let flags = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
        let mut body = KernelNexthop {
            id: 0,
            gateway: None,
            oif: None,
            onlink: flags & RTNH_F_ONLINK != 0,
            protocol: payload[2],
            special: false,
        };
        let mut rest = &payload[NHMSG_LEN..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            let value = rest.get(4..len).ok_or(Malformed("attribute overruns"))?;
            decode_attribute(&mut body, kind, value)?;
            rest = rest
                .get(attr_space(len - 4).min(rest.len())..)
                .unwrap_or_default();
        }
        Ok(NexthopMessage {
            kind: header.message_type,
            body,
        })
    }
}

fn decode_attribute(body: &mut KernelNexthop, kind: u16, value: &[u8]) -> Result<(), Malformed> {
    let u32_of = |v: &[u8]| {
        <[u8; 4]>::try_from(v)
            .map(u32::from_ne_bytes)
            .map_err(|_| Malformed("u32 attribute of another size"))
    };
    match kind {
        NHA_ID => body.id = u32_of(value)?,
        NHA_OIF => body.oif = Some(u32_of(value)?),
        NHA_GATEWAY => {
            let v4 = <[u8; 4]>::try_from(value).map(|a| IpAddr::V4(Ipv4Addr::from(a)));
            let v6 = <[u8; 16]>::try_from(value).map(|a| IpAddr::V6(Ipv6Addr::from(a)));
            let gateway = v4
                .or(v6)
                .map_err(|_| Malformed("gateway of another size"))?;
            body.gateway = Some(gateway);
        }
        NHA_GROUP | NHA_BLACKHOLE | NHA_FDB => body.special = true,
        _ => {}
    }
    Ok(())
}

/// A connection for nexthop requests (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct NexthopSocket {
    handle: ConnectionHandle<NexthopMessage>,
}

impl NexthopSocket {
    /// Opens a connection in the calling thread's network namespace; its driver task runs on
    /// the current tokio runtime.
    pub fn connect() -> Result<NexthopSocket, NetlinkError> {
        Ok(NexthopSocket::open()?.0)
    }

    fn open() -> Result<(NexthopSocket, tokio::task::JoinHandle<()>), NetlinkError> {
        let (conn, handle, _) = new_connection::<NexthopMessage>(NETLINK_ROUTE)?;
        Ok((NexthopSocket { handle }, tokio::spawn(conn)))
    }

    /// Every nexthop object of the namespace, read on a connection of its own that is closed
    /// afterwards (netlink-proto keeps the queue a dump of thousands grew to for the life of
    /// its connection).
    pub async fn dump() -> Result<Vec<KernelNexthop>, NetlinkError> {
        let (socket, driver) = NexthopSocket::open()?;
        let request = NexthopMessage {
            kind: RTM_GETNEXTHOP,
            body: empty_body(0),
        };
        let found: Result<Vec<KernelNexthop>, NetlinkError> = async {
            socket
                .request(request, NLM_F_REQUEST | NLM_F_DUMP)?
                .try_filter_map(|m| {
                    std::future::ready(Ok((m.kind == RTM_NEWNEXTHOP).then_some(m.body)))
                })
                .try_collect()
                .await
        }
        .await;
        driver.abort();
        found
    }

    /// Creates `nexthop` tagged ours (failing if its id is taken), or with `replace` replaces
    /// the object with its id (routes pointing to it follow at once).
    pub async fn set(&self, nexthop: &Nexthop, replace: bool) -> Result<(), NetlinkError> {
        let request = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            body: KernelNexthop::ours(nexthop),
        };
        let exclusive = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | exclusive;
        self.request(request, flags)?
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Deletes nexthop `id` (the kernel deletes the routes pointing to it too).
    pub async fn del(&self, id: u32) -> Result<(), NetlinkError> {
        let request = NexthopMessage {
            kind: RTM_DELNEXTHOP,
            body: empty_body(id),
        };
        self.request(request, NLM_F_REQUEST | NLM_F_ACK)?
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Sends `message` and streams the kernel's answers; an error answer ends the stream with
    /// its errno.
    fn request(
        &self,
        message: NexthopMessage,
        flags: u16,
    ) -> Result<impl Stream<Item = Result<NexthopMessage, NetlinkError>>, NetlinkError> {
        let mut req = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(message),
        );
        req.header.flags = flags;
        req.finalize();
        let answers = self
            .handle
            .request(req, SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError {
                errno: None,
                message: format!("nexthop request not sent: {e}"),
            })?;
        Ok(answers.filter_map(|m| {
            std::future::ready(match m.payload {
                NetlinkPayload::InnerMessage(msg) => Some(Ok(msg)),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    Some(Err(rtnetlink::Error::NetlinkError(e).into()))
                }
                _ => None,
            })
        }))
    }
}

/// A subscription to the removal of our nexthop objects (by hand, or flushed with their
/// device: the kernel removes the routes that use one without a route notification), and to
/// objects of other protocols that may have replaced ours.
#[derive(Debug)]
pub(crate) struct NexthopChanges {
    messages: UnboundedReceiver<(NetlinkMessage<NexthopMessage>, SocketAddr)>,
}

impl NexthopChanges {
    /// Subscribes in the calling thread's network namespace; only `RTM_DELNEXTHOP` and the
    /// `RTM_NEWNEXTHOP` of other protocols pass the socket's filter (our own thousands of
    /// creations do not). Spawns the socket's driver on the current tokio runtime.
    pub fn subscribe() -> Result<NexthopChanges, NetlinkError> {
        let (mut conn, _, messages) = new_connection::<NexthopMessage>(NETLINK_ROUTE)?;
        let socket = conn.socket_mut().socket_mut();
        socket.bind(&SocketAddr::new(0, 0))?;
        socket.add_membership(RTNLGRP_NEXTHOP)?;
        let foreign = (RTM_NEWNEXTHOP, NH_PROTOCOL_OFFSET);
        crate::sockfilter::keep_wanted_and_foreign(socket.as_raw_fd(), &[RTM_DELNEXTHOP], foreign)?;
        tokio::spawn(conn);
        Ok(NexthopChanges { messages })
    }

    /// The id of the next removed object tagged ours, or of another protocol's new object;
    /// `None` when the socket closed. Cancel-safe.
    pub async fn next(&mut self) -> Option<u32> {
        loop {
            let (msg, _) = self.messages.next().await?;
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                let ours = m.body.is_ours();
                let lost =
                    (m.kind == RTM_DELNEXTHOP && ours) || (m.kind == RTM_NEWNEXTHOP && !ours);
                if lost {
                    return Some(m.body.id);
                }
            }
        }
    }
}

/// A body with only an id (0: none), as dump and delete requests carry.
fn empty_body(id: u32) -> KernelNexthop {
    KernelNexthop {
        id,
        gateway: None,
        oif: None,
        onlink: false,
        protocol: 0,
        special: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(message: &NexthopMessage) -> Vec<u8> {
        let mut buffer = vec![0xff; message.buffer_len()];
        message.serialize(&mut buffer);
        buffer
    }

    #[test]
    fn a_nexthop_is_encoded_as_ip_nexthop_add_would_and_decodes_back() {
        let nexthop = Nexthop {
            id: 0xc0a8_0102,
            gateway: "192.168.1.2".parse().unwrap(),
            oif: 7,
            onlink: true,
        };
        let message = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            body: KernelNexthop::ours(&nexthop),
        };
        let bytes = encoded(&message);
        assert_eq!(bytes.len(), 8 + 8 + 8 + 8);
        assert_eq!(&bytes[..4], &[AF_INET, 0, ROUTE_PROTOCOL, 0]);
        assert_eq!(&bytes[4..8], &RTNH_F_ONLINK.to_ne_bytes());
        assert_eq!(&bytes[24..32], &[8, 0, 6, 0, 192, 168, 1, 2][..]);
        let mut header = NetlinkHeader::default();
        header.message_type = RTM_NEWNEXTHOP;
        let back = NexthopMessage::deserialize(&header, &bytes).unwrap();
        assert_eq!(back, message);
        assert!(back.body.matches(&nexthop) && back.body.is_ours());
    }

    #[test]
    fn groups_and_blackholes_are_never_ours_and_bad_attributes_are_refused() {
        let header = NetlinkHeader::default();
        let mut group = vec![0, 0, ROUTE_PROTOCOL, 0, 0, 0, 0, 0];
        group.extend([8, 0, 1, 0, 9, 0, 0, 0, 4, 0, 4, 0]);
        let decoded = NexthopMessage::deserialize(&header, &group).unwrap();
        assert_eq!(decoded.body.id, 9);
        assert!(!decoded.body.is_ours());
        let mut short_gateway = vec![AF_INET, 0, ROUTE_PROTOCOL, 0, 0, 0, 0, 0];
        short_gateway.extend([7, 0, 6, 0, 10, 0, 0, 0]);
        assert!(NexthopMessage::deserialize(&header, &short_gateway).is_err());
        let overrun = [AF_INET, 0, 0, 0, 0, 0, 0, 0, 40, 0, 1, 0, 1, 0, 0, 0];
        assert!(NexthopMessage::deserialize(&header, &overrun).is_err());
        assert!(NexthopMessage::deserialize(&header, &[0, 0]).is_err());
    }
}

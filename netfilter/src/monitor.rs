//! Whether the nf_tables ruleset may have changed since the last look, from the kernel's own
//! change notifications (netlink group `NFNLGRP_NFTABLES`), so that a periodic rule check can
//! skip running `iptables-save` while nothing changed. Only the nft flavour has such
//! notifications; iptables-legacy changes are invisible here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: libc::c_int = 12;
/// `NFNLGRP_NFTABLES`: every committed nf_tables change (tables, chains, rules, generations).
const NFNLGRP_NFTABLES: u32 = 7;

/// A subscription to nf_tables change notifications in the calling thread's network namespace.
#[derive(Debug)]
pub struct NftChanges {
    fd: OwnedFd,
}

impl NftChanges {
    /// Subscribes; fails where the kernel has no nf_tables (or forbids the subscription).
    pub fn subscribe() -> io::Result<NftChanges> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Bound with the group in the mask: an unbound socket (port 0) would not be sent the
        // kernel's own notifications, which also come from port 0.
        // SAFETY: an all-zero sockaddr_nl is valid; bind(2) on our own socket with its size.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NftChanges { fd })
    }

    /// Whether a change was notified since the last call, or notifications may have been lost
    /// (socket overflow or error). Drains what is queued; never blocks.
    pub fn take(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let mut changed = false;
        loop {
            // SAFETY: recv into our own buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                changed = true;
                continue;
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) if n < 0 => changed,
                Some(libc::EINTR) if n < 0 => continue,
                _ => true,
            };
        }
    }
}

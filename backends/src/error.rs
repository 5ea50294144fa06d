//! The backends' errors: [`Error`], what a backend could not build or set up, and
//! [`NetlinkError`], one failed kernel request with its errno.

use std::net::IpAddr;

use crate::{DeviceChange, Mac};

/// Why a backend could not be built or set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `Backend.Type` names a backend flanneld-rs does not implement.
    #[error("unknown backend type: {0:?}; supported backend types are \"host-gw\" and \"vxlan\"")]
    UnknownType(String),
    /// host-gw cannot work when peers must reach us at an address that is not ours.
    #[error("your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend (PublicIP {public_ip}, interface {iface} has {iface_ip}); use the vxlan backend, or drop --public-ip")]
    PublicIpDiffers {
        /// The advertised address (PublicIP or PublicIPv6).
        public_ip: IpAddr,
        /// The external interface's name.
        iface: String,
        /// The external interface's address of that family.
        iface_ip: IpAddr,
    },
    /// A key of the `Backend` object has a bad value.
    #[error("Backend key {key:?}: {problem}")]
    Config {
        /// The key, as Go flanneld spells it.
        key: &'static str,
        /// What is wrong and what would be valid.
        problem: String,
    },
    /// The external interface or the vxlan device does not exist (any more); run
    /// [`Backend::init`] again once it is back.
    #[error("interface {0:?} does not exist (any more)")]
    NoInterface(String),
    /// A kernel request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What we were doing, e.g. "create vxlan device flannel.1".
        what: String,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },
    /// The vxlan device changed in a way only a new device repairs; run [`Backend::init`] again.
    #[error("vxlan device {device} changed under us ({change}); it must be set up again")]
    DeviceChanged {
        /// The device name.
        device: String,
        /// What changed.
        change: DeviceChange,
    },
    /// The kernel cannot create VXLAN devices (no `vxlan` module).
    #[error("create vxlan device {device}: {source}: this kernel cannot create VXLAN devices (the vxlan module, Linux 3.7 or later; 3.12 for an IPv6 underlay): load it with `modprobe vxlan`, or use the host-gw backend")]
    NoVxlanSupport {
        /// The device name.
        device: String,
        /// The kernel's answer (`EOPNOTSUPP`).
        #[source]
        source: NetlinkError,
    },
    /// The vxlan device does not keep the MAC we published (e.g. udev MACAddressPolicy).
    #[error("vxlan device {device} has MAC {found} although {expected} was set; check udev's MACAddressPolicy for it (e.g. a .link file with MACAddressPolicy=none)")]
    MacMismatch {
        /// The device name.
        device: String,
        /// The MAC we set and published.
        expected: Mac,
        /// The MAC the kernel reports.
        found: Mac,
    },
}

impl Error {
    /// Wraps a netlink error with what we were doing.
    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> Error {
        let what = what.into();
        move |source| Error::Netlink { what, source }
    }
}

/// A failed netlink request: the kernel's errno (when it sent one) and a readable message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct NetlinkError {
    /// The positive errno the kernel answered with, e.g. `libc::ENETUNREACH` (101).
    pub errno: Option<i32>,
    /// What went wrong, e.g. "Network is unreachable (os error 101)".
    pub message: String,
}

/// `ENOENT`: deleting a neighbour or FDB entry that is not there.
pub(crate) const ENOENT: i32 = 2;
/// `ESRCH`: deleting a route that is not there.
pub(crate) const ESRCH: i32 = 3;
/// `ENODEV`: looking up a link that does not exist.
pub(crate) const ENODEV: i32 = 19;
/// `ENETUNREACH`: adding a route whose gateway is not on-link.
pub(crate) const ENETUNREACH: i32 = 101;

impl From<rtnetlink::Error> for NetlinkError {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) => NetlinkError {
                errno: msg.code.map(|c| c.get().abs()),
                message: msg.to_string(),
            },
            other => NetlinkError {
                errno: None,
                message: other.to_string(),
            },
        }
    }
}

impl From<std::io::Error> for NetlinkError {
    fn from(e: std::io::Error) -> Self {
        NetlinkError {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_keep_their_errno() {
        let e = NetlinkError::from(std::io::Error::from_raw_os_error(ENETUNREACH));
        assert_eq!(e.errno, Some(ENETUNREACH));
        assert!(e.to_string().contains("unreachable"), "{e}");
    }
}

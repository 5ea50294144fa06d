//! Typed differences between the kernel and what [`crate::Backend::init`] and
//! [`crate::Backend::configure`] set up: the external interface and the vxlan device. The same
//! values drive the repair (`configure` applies a device's [`DeviceChange`]s) and the log line
//! that says why setup runs again.

use std::fmt;

use ipnet::IpNet;

use crate::mac::Mac;

/// One way the kernel differs from the backend's setup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The external interface is gone.
    InterfaceGone {
        /// Its name.
        name: String,
    },
    /// The external interface was deleted and created again (new index).
    InterfaceRecreated {
        /// Its name.
        name: String,
    },
    /// The external interface's MTU changed (the vxlan MTU follows it).
    InterfaceMtu {
        /// Its name.
        name: String,
        /// The MTU now.
        found: u32,
        /// The MTU at setup.
        was: u32,
    },
    /// The vxlan device was never set up, or its last setup failed.
    DeviceNotSetUp {
        /// The device name.
        name: String,
    },
    /// The vxlan device differs from its desired state.
    Device {
        /// The device name.
        name: String,
        /// How.
        change: DeviceChange,
    },
    /// The subnets on-link through the external interface changed (DirectRouting).
    OnLinkSubnetsChanged {
        /// The external interface.
        iface: String,
    },
    /// The kernel could not be asked; counts as a difference.
    LookupFailed(String),
}

/// One way the vxlan device differs from its desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// The device does not exist.
    Gone,
    /// The device was deleted and created again (new index).
    Recreated,
    /// An attribute that can only be set at creation differs.
    Incompatible(Mismatch),
    /// The device is down.
    Down,
    /// The MAC differs from the published VtepMAC.
    Mac {
        /// The MAC the device has, if any.
        found: Option<Mac>,
        /// The published VtepMAC.
        want: Mac,
    },
    /// The MTU differs.
    Mtu {
        /// The MTU the device has.
        found: u32,
        /// The MTU it should have.
        want: u32,
    },
    /// The address `<own subnet>.0/32` is missing.
    AddressMissing(IpNet),
    /// An address inside the cluster network that is not ours for this lease.
    ForeignAddress(IpNet),
}

/// A creation-time vxlan attribute (VNI, dev, local, dstport, gbp, group, l2miss, kind) that
/// differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The attribute.
    pub attribute: &'static str,
    /// What the device has (`unset` when absent).
    pub found: String,
    /// What it should have.
    pub want: String,
}

impl DeviceChange {
    /// Whether only deleting and creating the device again repairs this change.
    pub fn needs_new_device(&self) -> bool {
        matches!(
            self,
            DeviceChange::Gone | DeviceChange::Recreated | DeviceChange::Incompatible(_)
        )
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attribute == "kind" {
            return f.write_str("it is not a vxlan device");
        }
        write!(
            f,
            "{} is {}, want {}",
            self.attribute, self.found, self.want
        )
    }
}

impl fmt::Display for DeviceChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChange::Gone => f.write_str("is gone"),
            DeviceChange::Recreated => f.write_str("was recreated"),
            DeviceChange::Incompatible(m) => write!(f, "{m}"),
            DeviceChange::Down => f.write_str("it is down"),
            DeviceChange::Mac { found, want } => match found {
                Some(found) => write!(f, "MAC is {found}, want {want}"),
                None => write!(f, "MAC is unset, want {want}"),
            },
            DeviceChange::Mtu { found, want } => write!(f, "MTU is {found}, want {want}"),
            DeviceChange::AddressMissing(a) => write!(f, "address {a} is missing"),
            DeviceChange::ForeignAddress(a) => write!(f, "it has address {a}"),
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::InterfaceGone { name } => write!(f, "interface {name} is gone"),
            Drift::InterfaceRecreated { name } => write!(f, "interface {name} was recreated"),
            Drift::InterfaceMtu { name, found, was } => {
                write!(f, "interface {name} has MTU {found}, was {was}")
            }
            Drift::DeviceNotSetUp { name } => write!(f, "{name} is not set up"),
            Drift::Device { name, change } if change.needs_new_device() => match change {
                DeviceChange::Incompatible(m) => write!(f, "{name}: {m}"),
                _ => write!(f, "{name} {change}"),
            },
            Drift::Device { name, change } => write!(f, "{name}: {change}"),
            Drift::OnLinkSubnetsChanged { iface } => {
                write!(f, "the on-link subnets of {iface} changed (DirectRouting)")
            }
            Drift::LookupFailed(why) => f.write_str(why),
        }
    }
}

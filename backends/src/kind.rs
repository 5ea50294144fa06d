//! The backend type names, as the network config's `Backend.Type` and the leases'
//! `BackendType` spell them: one leaf both backends read, so each can recognise the other's peers
//! during a switch ([`crate::mixed`]) without importing it.

/// host-gw: routes via the peers' public addresses.
pub(crate) const HOST_GW: &str = "host-gw";
/// vxlan: the kernel's VXLAN device, with DirectRouting where a peer shares the LAN.
pub(crate) const VXLAN: &str = "vxlan";

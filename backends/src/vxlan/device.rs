//! The vxlan device `flannel.<VNI>`: create or reuse it, give it its address, bring it up and
//! make sure it keeps the MAC we publish.

use ipnet::IpNet;

use crate::drift::{DeviceChange, Mismatch};
use crate::error::NetlinkError;
use crate::mac::Mac;
use crate::netlink::{Link, VxlanSpec};
use crate::{Error, Netlink};

/// The kernel's VXLAN UDP port when none is configured.
const KERNEL_DEFAULT_PORT: u16 = 8472;

/// Why an existing device cannot be reused for `spec`; empty when it can.
pub(crate) fn incompatibilities(spec: &VxlanSpec, link: &Link) -> Vec<Mismatch> {
    let Some(vx) = &link.vxlan else {
        return vec![mismatch("kind", "other".into(), "vxlan".into())];
    };
    let want_port = if spec.port > 0 {
        spec.port
    } else {
        KERNEL_DEFAULT_PORT
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
    [
        mismatch(
            "VNI",
            show(vx.vni.map(|v| v.to_string())),
            spec.vni.to_string(),
        ),
        mismatch(
            "dev",
            show(vx.link.map(|v| format!("#{v}"))),
            format!("#{}", spec.dev),
        ),
        mismatch(
            "local",
            show(vx.local.map(|v| v.to_string())),
            spec.local.to_string(),
        ),
        mismatch(
            "dstport",
            show(vx.port.map(|v| v.to_string())),
            want_port.to_string(),
        ),
        mismatch("gbp", vx.gbp.to_string(), spec.gbp.to_string()),
        mismatch(
            "group",
            show(vx.group.map(|v| v.to_string())),
            "unset".into(),
        ),
        mismatch("l2miss", vx.l2miss.to_string(), "false".into()),
    ]
    .into_iter()
    .filter(|m| m.found != m.want)
    .collect()
}

fn mismatch(attribute: &'static str, found: String, want: String) -> Mismatch {
    Mismatch {
        attribute,
        found,
        want,
    }
}

/// Why creating device `name` failed: a kernel without VXLAN (`EOPNOTSUPP`, as the kernel
/// answers an unknown link kind) is named as such, with the fix.
fn creation_error(name: &str, source: NetlinkError) -> Error {
    if source.errno == Some(libc::EOPNOTSUPP) {
        Error::NoVxlanSupport {
            device: name.to_string(),
            source,
        }
    } else {
        Error::netlink(format!("create vxlan device {name}"))(source)
    }
}

/// The device `name` if it exists (read only).
pub(crate) async fn lookup(nl: &Netlink, name: &str) -> Result<Option<Link>, Error> {
    nl.link_by_name(name)
        .await
        .map_err(Error::netlink(format!("look up {name}")))
}

/// Creates the device, or reuses a compatible existing one (fixing only its MTU). `mac` is the
/// VtepMAC already published, if any. Returns the device's index and the MAC it must have:
/// `mac`, else (at first start) the reused device's own MAC, else for a new device the MAC of
/// the incompatible device it replaces or a fresh random one. A reused device whose MAC was
/// changed under us is set back by [`configure`], so peers never hold a stale VtepMAC.
pub(crate) async fn ensure(
    nl: &Netlink,
    spec: &VxlanSpec,
    mut mac: Option<Mac>,
) -> Result<(u32, Mac), Error> {
    let name = &spec.name;
    if let Some(link) = lookup(nl, name).await? {
        let problems = incompatibilities(spec, &link);
        match link.mac {
            Some(existing) if problems.is_empty() => {
                if link.mtu != spec.mtu {
                    nl.set_mtu(link.index, spec.mtu)
                        .await
                        .map_err(Error::netlink(format!("set MTU {} on {name}", spec.mtu)))?;
                }
                let mac = match mac {
                    Some(published) if published != existing => {
                        tracing::warn!("{name} has MAC {existing} instead of the published VtepMAC {published}; setting it back");
                        published
                    }
                    _ => {
                        tracing::info!("reusing existing vxlan device {name} (MAC {existing})");
                        existing
                    }
                };
                return Ok((link.index, mac));
            }
            _ => {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    "existing {name} is incompatible ({}); recreating it",
                    problems.join(", ")
                );
                nl.del_link(link.index)
                    .await
                    .map_err(Error::netlink(format!("delete incompatible {name}")))?;
                // Keep the published VtepMAC stable across the recreation.
                mac = mac.or(link.mac);
            }
        }
    }
    let mac = mac.unwrap_or_else(Mac::random_local);
    nl.create_vxlan(spec, mac)
        .await
        .map_err(|source| creation_error(name, source))?;
    let link = lookup(nl, name)
        .await?
        .ok_or_else(|| Error::NoInterface(name.clone()))?;
    tracing::info!("created vxlan device {name} (VNI {}, MAC {mac})", spec.vni);
    Ok((link.index, mac))
}

/// The device's address for the own subnet `own`: its network address as a host address
/// (`10.5.34.0/32`, `fd00:5:34::/128`).
fn own_address(own: IpNet) -> IpNet {
    IpNet::from(own.network())
}

/// The addresses of `addrs` inside the cluster `network` other than `want`: they must go.
fn foreign(addrs: &[IpNet], want: IpNet, network: IpNet) -> impl Iterator<Item = &IpNet> {
    addrs
        .iter()
        .filter(move |a| **a != want && network.contains(&a.addr()))
}

async fn addresses(nl: &Netlink, name: &str, index: u32) -> Result<Vec<IpNet>, Error> {
    nl.addresses(index)
        .await
        .map_err(Error::netlink(format!("list addresses of {name}")))
}

/// The vxlan device as setup wants it: created by [`ensure`] with `spec` as device `index`,
/// with the published `mac` and the address for the own subnet `own` inside `network`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WantedDevice<'a> {
    pub spec: &'a VxlanSpec,
    pub index: u32,
    pub mac: Mac,
    pub own: IpNet,
    pub network: IpNet,
}

/// The device as the kernel has it.
#[derive(Clone, Debug)]
pub(crate) struct FoundDevice {
    pub link: Link,
    pub addrs: Vec<IpNet>,
}

/// How the kernel's device differs from `want` (pure): [`DeviceChange::Gone`] or
/// [`DeviceChange::Recreated`] alone, else every difference in a fixed order.
pub(crate) fn diff(want: &WantedDevice, found: Option<&FoundDevice>) -> Vec<DeviceChange> {
    let Some(FoundDevice { link, addrs }) = found else {
        return vec![DeviceChange::Gone];
    };
    if link.index != want.index {
        return vec![DeviceChange::Recreated];
    }
    let mut changes: Vec<DeviceChange> = incompatibilities(want.spec, link)
        .into_iter()
        .map(DeviceChange::Incompatible)
        .collect();
    if !link.up {
        changes.push(DeviceChange::Down);
    }
    if link.mac != Some(want.mac) {
        changes.push(DeviceChange::Mac {
            found: link.mac,
            want: want.mac,
        });
    }
    if link.mtu != want.spec.mtu {
        changes.push(DeviceChange::Mtu {
            found: link.mtu,
            want: want.spec.mtu,
        });
    }
    let address = own_address(want.own);
    if !addrs.contains(&address) {
        changes.push(DeviceChange::AddressMissing(address));
    }
    let foreign = foreign(addrs, address, want.network).copied();
    changes.extend(foreign.map(DeviceChange::ForeignAddress));
    changes
}

/// Reads the device `name` from the kernel.
async fn read(nl: &Netlink, name: &str) -> Result<Option<FoundDevice>, Error> {
    let Some(link) = lookup(nl, name).await? else {
        return Ok(None);
    };
    let addrs = addresses(nl, name, link.index).await?;
    Ok(Some(FoundDevice { link, addrs }))
}

/// How the kernel's device differs from `want` now.
pub(crate) async fn drift(
    nl: &Netlink,
    want: &WantedDevice<'_>,
) -> Result<Vec<DeviceChange>, Error> {
    Ok(diff(want, read(nl, &want.spec.name).await?.as_ref()))
}

/// Makes the device match `want` by applying [`diff`]'s changes (nothing when none), then
/// checks the MAC once the link is up. A change only a new device repairs is an error: setup
/// runs [`ensure`] again.
pub(crate) async fn configure(nl: &Netlink, want: &WantedDevice<'_>) -> Result<(), Error> {
    let name = &want.spec.name;
    for change in drift(nl, want).await? {
        if change.needs_new_device() {
            return Err(Error::DeviceChanged {
                device: name.clone(),
                change,
            });
        }
        apply(nl, want, &change).await?;
    }
    verify_mac(nl, name, want.index, want.mac).await
}

/// Applies one repairable change (the MAC is left to [`verify_mac`], after the link is up).
async fn apply(nl: &Netlink, want: &WantedDevice<'_>, change: &DeviceChange) -> Result<(), Error> {
    let (name, index) = (&want.spec.name, want.index);
    let result = match change {
        DeviceChange::ForeignAddress(addr) => nl.del_address(index, *addr).await,
        DeviceChange::AddressMissing(addr) => nl.add_address(index, *addr).await,
        DeviceChange::Down => nl.set_up(index).await,
        DeviceChange::Mtu { want, .. } => nl.set_mtu(index, *want).await,
        _ => return Ok(()),
    };
    result.map_err(Error::netlink(format!("{name}: repair: {change}")))
}

/// Checks the MAC after the link is up; sets it back once if something (udev) changed it.
async fn verify_mac(nl: &Netlink, name: &str, index: u32, mac: Mac) -> Result<(), Error> {
    let found = |link: Option<Link>| link.and_then(|l| l.mac);
    if found(lookup(nl, name).await?) == Some(mac) {
        return Ok(());
    }
    nl.set_mac(index, mac)
        .await
        .map_err(Error::netlink(format!("set MAC {mac} on {name}")))?;
    match found(lookup(nl, name).await?) {
        Some(now) if now == mac => Ok(()),
        now => Err(Error::MacMismatch {
            device: name.into(),
            expected: mac,
            found: now.unwrap_or(Mac([0; 6])),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::VxlanAttrs;
    use std::net::Ipv4Addr;

    #[test]
    fn a_kernel_without_vxlan_is_named_with_the_fix() {
        let unsupported = NetlinkError {
            errno: Some(libc::EOPNOTSUPP),
            message: "Operation not supported (os error 95)".into(),
        };
        let text = creation_error("flannel.1", unsupported).to_string();
        assert!(
            text.starts_with("create vxlan device flannel.1: Operation not supported")
                && text.contains("modprobe vxlan")
                && text.contains("host-gw backend"),
            "{text}"
        );
        let exists = NetlinkError {
            errno: Some(libc::EEXIST),
            message: "File exists (os error 17)".into(),
        };
        assert_eq!(
            creation_error("flannel.1", exists).to_string(),
            "create vxlan device flannel.1: File exists (os error 17)"
        );
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: Ipv4Addr::new(192, 168, 1, 1).into(),
            dev: 2,
            port: 0,
            gbp: false,
            learning: false,
            mtu: 1450,
        }
    }

    fn link(vx: Option<VxlanAttrs>) -> Link {
        Link {
            index: 7,
            mtu: 1400,
            mac: None,
            up: true,
            vxlan: vx,
        }
    }

    fn matching() -> VxlanAttrs {
        VxlanAttrs {
            vni: Some(1),
            link: Some(2),
            local: Some(Ipv4Addr::new(192, 168, 1, 1).into()),
            group: None,
            port: Some(8472),
            gbp: false,
            l2miss: false,
        }
    }

    #[test]
    fn compatible_device_is_reused_whatever_its_mtu() {
        assert!(incompatibilities(&spec(), &link(Some(matching()))).is_empty());
    }

    #[test]
    fn real_mismatches_are_named() {
        let shown = |problems: Vec<Mismatch>| -> Vec<String> {
            problems.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            shown(incompatibilities(&spec(), &link(None))),
            vec!["it is not a vxlan device"]
        );
        let mut other = matching();
        other.vni = Some(2);
        other.port = Some(4789);
        other.gbp = true;
        let problems = incompatibilities(&spec(), &link(Some(other)));
        assert_eq!(
            problems,
            vec![
                mismatch("VNI", "2".into(), "1".into()),
                mismatch("dstport", "4789".into(), "8472".into()),
                mismatch("gbp", "true".into(), "false".into()),
            ]
        );
        assert_eq!(
            shown(problems),
            vec![
                "VNI is 2, want 1",
                "dstport is 4789, want 8472",
                "gbp is true, want false"
            ]
        );
        let mut moved = matching();
        moved.local = Some(Ipv4Addr::new(10, 0, 0, 1).into());
        moved.link = Some(3);
        assert_eq!(incompatibilities(&spec(), &link(Some(moved))).len(), 2);
    }

    fn wanted(spec: &VxlanSpec) -> WantedDevice<'_> {
        WantedDevice {
            spec,
            index: 7,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            own: "10.5.1.0/24".parse().unwrap(),
            network: "10.5.0.0/16".parse().unwrap(),
        }
    }

    fn as_set_up(spec: &VxlanSpec) -> FoundDevice {
        let mut link = link(Some(matching()));
        link.mtu = spec.mtu;
        link.mac = Some(Mac([2, 0, 0, 0, 0, 1]));
        FoundDevice {
            link,
            addrs: vec!["10.5.1.0/32".parse().unwrap()],
        }
    }

    #[test]
    fn a_device_as_set_up_has_no_changes_so_configure_writes_nothing() {
        let spec = spec();
        assert_eq!(diff(&wanted(&spec), Some(&as_set_up(&spec))), vec![]);
        let mut outside = as_set_up(&spec);
        outside.addrs.push("192.168.7.1/24".parse().unwrap());
        assert_eq!(
            diff(&wanted(&spec), Some(&outside)),
            vec![],
            "addresses outside the cluster network are not ours"
        );
    }

    #[test]
    fn every_difference_is_a_typed_change_in_a_fixed_order() {
        let spec = spec();
        let want = wanted(&spec);
        assert_eq!(diff(&want, None), vec![DeviceChange::Gone]);
        let mut moved = as_set_up(&spec);
        moved.link.index = 8;
        assert_eq!(diff(&want, Some(&moved)), vec![DeviceChange::Recreated]);

        let mut changed = as_set_up(&spec);
        changed.link.up = false;
        changed.link.mac = None;
        changed.link.mtu = 1400;
        changed.link.vxlan.as_mut().unwrap().l2miss = true;
        changed.addrs = vec!["10.5.9.1/24".parse().unwrap()];
        let changes = diff(&want, Some(&changed));
        assert_eq!(
            changes,
            vec![
                DeviceChange::Incompatible(mismatch("l2miss", "true".into(), "false".into())),
                DeviceChange::Down,
                DeviceChange::Mac {
                    found: None,
                    want: want.mac
                },
                DeviceChange::Mtu {
                    found: 1400,
                    want: 1450
                },
                DeviceChange::AddressMissing("10.5.1.0/32".parse().unwrap()),
                DeviceChange::ForeignAddress("10.5.9.1/24".parse().unwrap()),
            ]
        );
        let needs_new: Vec<bool> = changes.iter().map(DeviceChange::needs_new_device).collect();
        assert_eq!(needs_new, [true, false, false, false, false, false]);
    }
}

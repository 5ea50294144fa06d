//! The vxlan device `flannel.<VNI>`: create or reuse it, give it its address, bring it up and
//! make sure it keeps the MAC we publish.

use ipnet::Ipv4Net;

use crate::mac::Mac;
use crate::netlink::{Link, VxlanSpec};
use crate::{Error, Netlink};

/// The kernel's VXLAN UDP port when none is configured.
const KERNEL_DEFAULT_PORT: u16 = 8472;

/// Why an existing device cannot be reused for `spec`; empty when it can.
pub(crate) fn incompatibilities(spec: &VxlanSpec, link: &Link) -> Vec<String> {
    let Some(vx) = &link.vxlan else {
        return vec!["it is not a vxlan device".into()];
    };
    let want_port = if spec.port > 0 {
        spec.port
    } else {
        KERNEL_DEFAULT_PORT
    };
    let mut problems = Vec::new();
    let mut differs = |what: &str, have: String, want: String| {
        if have != want {
            problems.push(format!("{what} is {have}, want {want}"));
        }
    };
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
    differs(
        "VNI",
        show(vx.vni.map(|v| v.to_string())),
        spec.vni.to_string(),
    );
    differs(
        "dev",
        show(vx.link.map(|v| format!("#{v}"))),
        format!("#{}", spec.dev),
    );
    differs(
        "local",
        show(vx.local.map(|v| v.to_string())),
        spec.local.to_string(),
    );
    differs(
        "dstport",
        show(vx.port.map(|v| v.to_string())),
        want_port.to_string(),
    );
    differs("gbp", vx.gbp.to_string(), spec.gbp.to_string());
    differs(
        "group",
        show(vx.group.map(|v| v.to_string())),
        "unset".into(),
    );
    differs("l2miss", vx.l2miss.to_string(), "false".into());
    problems
}

async fn lookup(nl: &Netlink, name: &str) -> Result<Option<Link>, Error> {
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
        .map_err(Error::netlink(format!("create vxlan device {name}")))?;
    let link = lookup(nl, name)
        .await?
        .ok_or_else(|| Error::NoInterface(name.clone()))?;
    tracing::info!("created vxlan device {name} (VNI {}, MAC {mac})", spec.vni);
    Ok((link.index, mac))
}

/// The device's address for the own subnet `own`: `<own network>.0/32`.
fn own_address(own: Ipv4Net) -> Ipv4Net {
    Ipv4Net::from(own.network())
}

/// The addresses of `addrs` inside the cluster `network` other than `want`: they must go.
fn foreign(addrs: &[Ipv4Net], want: Ipv4Net, network: Ipv4Net) -> impl Iterator<Item = &Ipv4Net> {
    addrs
        .iter()
        .filter(move |a| **a != want && network.contains(&a.addr()))
}

async fn addresses(nl: &Netlink, name: &str, index: u32) -> Result<Vec<Ipv4Net>, Error> {
    nl.addresses(index)
        .await
        .map_err(Error::netlink(format!("list addresses of {name}")))
}

/// How device `index` differs from what [`ensure`] and [`configure`] set up for `spec`, `mac`,
/// the own subnet `own` and the cluster `network`; empty when it does not.
pub(crate) async fn drift(
    nl: &Netlink,
    spec: &VxlanSpec,
    index: u32,
    mac: Mac,
    own: Ipv4Net,
    network: Ipv4Net,
) -> Result<Vec<String>, Error> {
    let name = &spec.name;
    let link = match lookup(nl, name).await? {
        None => return Ok(vec![format!("{name} is gone")]),
        Some(link) if link.index != index => return Ok(vec![format!("{name} was recreated")]),
        Some(link) => link,
    };
    let mut problems = incompatibilities(spec, &link);
    if !link.up {
        problems.push("it is down".into());
    }
    if link.mac != Some(mac) {
        let found = link.mac.map_or("unset".into(), |m| m.to_string());
        problems.push(format!("MAC is {found}, want {mac}"));
    }
    if link.mtu != spec.mtu {
        problems.push(format!("MTU is {}, want {}", link.mtu, spec.mtu));
    }
    let addrs = addresses(nl, name, index).await?;
    let want = own_address(own);
    if !addrs.contains(&want) {
        problems.push(format!("address {want} is missing"));
    }
    problems.extend(foreign(&addrs, want, network).map(|a| format!("it has address {a}")));
    Ok(problems
        .into_iter()
        .map(|p| format!("{name}: {p}"))
        .collect())
}

/// Gives device `index` the address `<own network>.0/32` (removing other addresses inside the
/// cluster `network`), sets it up and makes sure it has `mac`.
pub(crate) async fn configure(
    nl: &Netlink,
    name: &str,
    index: u32,
    mac: Mac,
    own: Ipv4Net,
    network: Ipv4Net,
) -> Result<(), Error> {
    let want = own_address(own);
    let addrs = addresses(nl, name, index).await?;
    for addr in foreign(&addrs, want, network) {
        nl.del_address(index, *addr)
            .await
            .map_err(Error::netlink(format!("remove address {addr} from {name}")))?;
    }
    if !addrs.contains(&want) {
        nl.add_address(index, want)
            .await
            .map_err(Error::netlink(format!("add address {want} to {name}")))?;
    }
    let link = lookup(nl, name)
        .await?
        .ok_or_else(|| Error::NoInterface(name.into()))?;
    if !link.up {
        nl.set_up(index)
            .await
            .map_err(Error::netlink(format!("set {name} up")))?;
    }
    verify_mac(nl, name, index, mac).await
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

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: Ipv4Addr::new(192, 168, 1, 1),
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
            local: Some(Ipv4Addr::new(192, 168, 1, 1)),
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
        assert_eq!(
            incompatibilities(&spec(), &link(None)),
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
                "VNI is 2, want 1",
                "dstport is 4789, want 8472",
                "gbp is true, want false"
            ]
        );
        let mut moved = matching();
        moved.local = Some(Ipv4Addr::new(10, 0, 0, 1));
        moved.link = Some(3);
        assert_eq!(incompatibilities(&spec(), &link(Some(moved))).len(), 2);
    }
}

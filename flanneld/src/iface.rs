//! Choosing the external interface and the public IP (reference §9): `--iface` by name or IP in
//! order, then `--iface-regex` (addresses first, then names), then `--iface-can-reach`, else the
//! interface of the default route. `--public-ip` overrides the advertised address; alone, it
//! selects the interface that owns it. The decision is returned with the reason, for the log.
//! On an IPv6-only network the interface needs no IPv4 address (`0.0.0.0` then stands for
//! none), `--iface-regex` also matches IPv6 addresses, and the IPv6 default route comes first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use backends::{HostInterface, HostView};

use crate::cli::values::{IfaceRegex, IfaceSpec};

/// The selection options (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Selection<'a> {
    /// `--iface` values.
    pub iface: &'a [IfaceSpec],
    /// `--iface-regex` values.
    pub iface_regex: &'a [IfaceRegex],
    /// `--iface-can-reach`.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`.
    pub public_ip: Option<Ipv4Addr>,
    /// The network is IPv6-only (`EnableIPv4: false`).
    pub ipv6_only: bool,
}

/// The chosen interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedInterface {
    /// The interface.
    pub iface: HostInterface,
    /// Its IPv4 address used for inter-host traffic (`0.0.0.0` on an IPv6-only network when it
    /// has none).
    pub iface_addr: Ipv4Addr,
    /// The address advertised to peers (`--public-ip` or `iface_addr`).
    pub public_ip: Ipv4Addr,
    /// On a dual-stack network: the interface's IPv6 address and the PublicIPv6 (see
    /// [`ipv6_side`]).
    pub ipv6: Option<(Option<Ipv6Addr>, Ipv6Addr)>,
    /// Why this interface and address were chosen.
    pub reason: String,
}

/// Why no interface could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// Nothing matched.
    #[error("{0}")]
    NotFound(String),
}

fn with_addr(
    iface: &HostInterface,
    addr: Ipv4Addr,
    public: Option<Ipv4Addr>,
    reason: String,
) -> Result<SelectedInterface, IfaceError> {
    if iface.mtu == 0 {
        return Err(IfaceError::NotFound(format!(
            "interface {} has MTU 0",
            iface.name
        )));
    }
    Ok(SelectedInterface {
        iface: iface.clone(),
        iface_addr: addr,
        public_ip: public.unwrap_or(addr),
        ipv6: None,
        reason: match public {
            Some(p) if p != addr => format!("{reason}; advertising --public-ip {p}"),
            _ => reason,
        },
    })
}

/// The interface's first IPv4 address; on an IPv6-only network, `0.0.0.0` when it has none.
fn first_addr(iface: &HostInterface, what: &str, sel: &Selection) -> Result<Ipv4Addr, IfaceError> {
    match iface.addrs.first() {
        Some(addr) => Ok(*addr),
        None if sel.ipv6_only => Ok(Ipv4Addr::UNSPECIFIED),
        None => Err(IfaceError::NotFound(format!(
            "{what} {} has no IPv4 address (for a network without IPv4, set \"EnableIPv4\": false in the network config)",
            iface.name
        ))),
    }
}

/// `addr` for the log, or on an interface without IPv4 its first IPv6 address.
fn shown(iface: &HostInterface, addr: Ipv4Addr) -> String {
    match iface.addrs6.first() {
        Some(v6) if addr.is_unspecified() => v6.to_string(),
        _ => addr.to_string(),
    }
}

/// The interface with kernel index `index`; `what` names who pointed at it, for the error.
fn by_index<'a>(
    view: &'a HostView,
    index: u32,
    what: &str,
) -> Result<&'a HostInterface, IfaceError> {
    view.interfaces
        .iter()
        .find(|i| i.index == index)
        .ok_or_else(|| IfaceError::NotFound(format!("{what} uses unknown interface index {index}")))
}

/// The chosen interface's IPv6 side on a dual-stack network: its first global IPv6 address and
/// the address advertised as PublicIPv6 (`--public-ipv6`, else that address).
pub fn ipv6_side(
    selected: &SelectedInterface,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<(Option<Ipv6Addr>, Ipv6Addr), IfaceError> {
    let iface_addr6 = selected.iface.addrs6.first().copied();
    let public = public_ipv6.or(iface_addr6).ok_or_else(|| {
        IfaceError::NotFound(format!(
            "the network config enables IPv6 but interface {} has no global IPv6 address; \
             add one (ip -6 addr add ... dev {}), choose another --iface, or pass --public-ipv6",
            selected.iface.name, selected.iface.name
        ))
    })?;
    Ok((iface_addr6, public))
}

/// Chooses the external interface from a view of the host (pure; see the module docs for order).
pub fn select(view: &HostView, sel: &Selection) -> Result<SelectedInterface, IfaceError> {
    if let Some(found) = by_iface(view, sel)? {
        return Ok(found);
    }
    if let Some(found) = by_regex(view, sel)? {
        return Ok(found);
    }
    if !sel.iface.is_empty() || !sel.iface_regex.is_empty() {
        return Err(IfaceError::NotFound(format!(
            "no interface matches --iface [{}] / --iface-regex [{}]; check `ip -4 addr` for the right name or address",
            joined(sel.iface),
            joined(sel.iface_regex)
        )));
    }
    if let Some(target) = sel.can_reach {
        return by_can_reach(view, target, sel);
    }
    if let Some(ip) = sel.public_ip {
        if let Some(i) = view.interfaces.iter().find(|i| i.addrs.contains(&ip)) {
            let reason = format!("--public-ip {ip} is assigned to {}", i.name);
            return with_addr(i, ip, None, reason);
        }
    }
    by_default_route(view, sel)
}

/// The values of a repeated flag, comma separated.
fn joined<T: std::fmt::Display>(values: &[T]) -> String {
    let texts: Vec<String> = values
        .iter()
        .map(|v| format!("{v:?}", v = v.to_string()))
        .collect();
    texts.join(", ")
}

/// `--iface` values in order: an address some interface owns, or an interface name.
fn by_iface(view: &HostView, sel: &Selection) -> Result<Option<SelectedInterface>, IfaceError> {
    for value in sel.iface {
        let found = match value {
            IfaceSpec::Addr(ip) => view
                .interfaces
                .iter()
                .find(|i| i.addrs.contains(ip))
                .map(|i| {
                    (
                        i,
                        *ip,
                        format!("--iface {ip}: interface {} owns this address", i.name),
                    )
                }),
            IfaceSpec::Addr6(ip) => match view.interfaces.iter().find(|i| i.addrs6.contains(ip)) {
                Some(i) => {
                    let i = preferring(i, *ip);
                    let addr = first_addr(&i, "--iface interface", sel)?;
                    let reason = format!(
                        "--iface {ip}: interface {} owns this address, using its address {}",
                        i.name,
                        shown(&i, addr)
                    );
                    return with_addr(&i, addr, sel.public_ip, reason).map(Some);
                }
                None => None,
            },
            IfaceSpec::Name(name) => match view.interfaces.iter().find(|i| &i.name == name) {
                Some(i) => {
                    let addr = first_addr(i, "--iface interface", sel)?;
                    let shown = shown(i, addr);
                    let reason =
                        format!("--iface {name}: matched by name, using its address {shown}");
                    Some((i, addr, reason))
                }
                None => None,
            },
        };
        if let Some((i, addr, reason)) = found {
            return with_addr(i, addr, sel.public_ip, reason).map(Some);
        }
    }
    Ok(None)
}

/// `--iface-regex` patterns in order: each tried against every address first, then every name.
fn by_regex(view: &HostView, sel: &Selection) -> Result<Option<SelectedInterface>, IfaceError> {
    for re in sel.iface_regex {
        for i in &view.interfaces {
            if let Some(addr) = i.addrs.iter().find(|a| re.is_match(&a.to_string())) {
                let reason = format!(
                    "--iface-regex {:?} matched address {addr} of {}",
                    re.to_string(),
                    i.name
                );
                return with_addr(i, *addr, sel.public_ip, reason).map(Some);
            }
        }
        if let Some(found) = by_regex_on_ipv6(view, sel, re)? {
            return Ok(Some(found));
        }
        if let Some(i) = view.interfaces.iter().find(|i| re.is_match(&i.name)) {
            let addr = first_addr(i, "--iface-regex interface", sel)?;
            let reason = format!(
                "--iface-regex {:?} matched interface name {}",
                re.to_string(),
                i.name
            );
            return with_addr(i, addr, sel.public_ip, reason).map(Some);
        }
    }
    Ok(None)
}

/// On an IPv6-only network, an `--iface-regex` pattern tried against every IPv6 address.
fn by_regex_on_ipv6(
    view: &HostView,
    sel: &Selection,
    re: &IfaceRegex,
) -> Result<Option<SelectedInterface>, IfaceError> {
    if !sel.ipv6_only {
        return Ok(None);
    }
    for i in &view.interfaces {
        if let Some(v6) = i.addrs6.iter().find(|a| re.is_match(&a.to_string())) {
            let i = preferring(i, *v6);
            let addr = first_addr(&i, "--iface-regex interface", sel)?;
            let reason = format!(
                "--iface-regex {:?} matched address {v6} of {}",
                re.to_string(),
                i.name
            );
            return with_addr(&i, addr, sel.public_ip, reason).map(Some);
        }
    }
    Ok(None)
}

/// `--iface-can-reach`: the interface and source address of the kernel's route to `target`.
fn by_can_reach(
    view: &HostView,
    target: IpAddr,
    sel: &Selection,
) -> Result<SelectedInterface, IfaceError> {
    let (index, src) = view.can_reach.ok_or_else(|| {
        IfaceError::NotFound(format!(
            "--iface-can-reach {target}: the kernel has no route to it"
        ))
    })?;
    let i = by_index(view, index, &format!("--iface-can-reach {target}: route"))?;
    let what = "--iface-can-reach interface";
    let (addr, i) = match src {
        Some(IpAddr::V4(a)) => (a, i.clone()),
        Some(IpAddr::V6(a)) => (first_addr(i, what, sel)?, preferring(i, a)),
        None => (first_addr(i, what, sel)?, i.clone()),
    };
    let via = src.map_or(String::new(), |s| format!(" from {s}"));
    let reason = format!(
        "--iface-can-reach {target}: the kernel routes it via {}{via}; using its address {}",
        i.name,
        shown(&i, addr)
    );
    with_addr(&i, addr, sel.public_ip, reason)
}

/// The interface with `v6` first among its IPv6 addresses (the one it was chosen by).
fn preferring(iface: &HostInterface, v6: Ipv6Addr) -> HostInterface {
    let mut iface = iface.clone();
    iface.addrs6.retain(|a| *a != v6);
    iface.addrs6.insert(0, v6);
    iface
}

/// The interface of the default route (on an IPv6-only network the IPv6 one first), when
/// nothing else chose one.
fn by_default_route(view: &HostView, sel: &Selection) -> Result<SelectedInterface, IfaceError> {
    let index = match sel.ipv6_only {
        true => view.default_route6_index.or(view.default_route_index),
        false => view.default_route_index,
    };
    let index = index.ok_or_else(|| {
        IfaceError::NotFound(
            "no default route and no --iface given; use --iface=<name or IP>".into(),
        )
    })?;
    let i = by_index(view, index, "default route")?;
    let addr = first_addr(i, "default-route interface", sel)?;
    let public = sel.public_ip;
    let reason = match public {
        Some(p) => format!(
            "interface of the default route ({}); --public-ip {p} is not assigned locally (NAT?)",
            i.name
        ),
        None => format!("interface of the default route ({})", i.name),
    };
    with_addr(i, addr, public, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, mtu: u32, addrs: &[[u8; 4]]) -> HostInterface {
        HostInterface {
            name: name.into(),
            index,
            mtu,
            addrs: addrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            addrs6: Vec::new(),
            master: None,
        }
    }

    #[test]
    fn an_ipv6_address_selects_its_interface_and_becomes_its_ipv6_side() {
        let mut host = view();
        host.interfaces[2].addrs6 = vec!["fd00::9".parse().unwrap(), "fd00::10".parse().unwrap()];
        let by_iface = Selection {
            iface: &["fd00::10".parse().unwrap()],
            ..Selection::default()
        };
        let selected = select(&host, &by_iface).unwrap();
        assert_eq!(selected.iface.name, "eth1");
        assert_eq!(selected.iface_addr, Ipv4Addr::new(192, 168, 9, 5));
        let want: Ipv6Addr = "fd00::10".parse().unwrap();
        assert_eq!(ipv6_side(&selected, None).unwrap(), (Some(want), want));
        host.can_reach = Some((3, Some(want.into())));
        let by_route = Selection {
            can_reach: Some("fd00:99::1".parse().unwrap()),
            ..Selection::default()
        };
        let selected = select(&host, &by_route).unwrap();
        assert!(
            selected.reason.contains("from fd00::10"),
            "{}",
            selected.reason
        );
        assert_eq!(ipv6_side(&selected, None).unwrap(), (Some(want), want));
    }

    #[test]
    fn the_ipv6_side_is_the_interface_address_or_public_ipv6() {
        let mut selected = select(&view(), &Selection::default()).unwrap();
        let err = ipv6_side(&selected, None).unwrap_err().to_string();
        assert!(err.contains("has no global IPv6 address"), "{err}");
        let flag: Ipv6Addr = "fd00::99".parse().unwrap();
        assert_eq!(ipv6_side(&selected, Some(flag)).unwrap(), (None, flag));
        let own: Ipv6Addr = "fd00::21".parse().unwrap();
        selected.iface.addrs6 = vec![own];
        assert_eq!(ipv6_side(&selected, None).unwrap(), (Some(own), own));
    }

    fn view() -> HostView {
        HostView {
            interfaces: vec![
                iface("lo", 1, 65536, &[[127, 0, 0, 1]]),
                iface("eth0", 2, 1500, &[[10, 4, 7, 21]]),
                iface("eth1", 3, 9000, &[[192, 168, 9, 5], [192, 168, 10, 5]]),
                iface("empty0", 4, 1500, &[]),
            ],
            default_route_index: Some(2),
            default_route6_index: None,
            can_reach: Some((3, Some(Ipv4Addr::new(192, 168, 10, 5).into()))),
        }
    }

    #[test]
    fn on_an_ipv6_only_network_an_interface_without_ipv4_can_be_chosen() {
        let mut host = view();
        let v6: Ipv6Addr = "fd00:200::11".parse().unwrap();
        host.interfaces[3].addrs6 = vec![v6];
        host.default_route6_index = Some(4);
        let by_name = ["empty0".parse().unwrap()];
        let by_addr = [IfaceSpec::Addr6(v6)];
        let by_regex = ["^fd00:200:".parse().unwrap()];
        let name = Selection {
            iface: &by_name,
            ..Selection::default()
        };
        let addr = Selection {
            iface: &by_addr,
            ..Selection::default()
        };
        let regex = Selection {
            iface_regex: &by_regex,
            ..Selection::default()
        };
        for sel in [&name, &addr, &regex, &Selection::default()] {
            let v6_only = Selection {
                ipv6_only: true,
                ..sel.clone()
            };
            let selected = select(&host, &v6_only).unwrap();
            assert_eq!(selected.iface.name, "empty0", "{}", selected.reason);
            assert_eq!(selected.iface_addr, Ipv4Addr::UNSPECIFIED);
            assert_eq!(ipv6_side(&selected, None).unwrap(), (Some(v6), v6));
        }
        // On a network with IPv4 the interface needs an IPv4 address, and the error says what
        // to set otherwise; the regex looks at IPv4 addresses and names only; the IPv4 default
        // route chooses.
        for sel in [&name, &addr] {
            let err = select(&host, sel).unwrap_err().to_string();
            assert!(err.contains(r#"set "EnableIPv4": false"#), "{err}");
        }
        let err = select(&host, &regex).unwrap_err().to_string();
        assert!(err.starts_with("no interface matches"), "{err}");
        assert_eq!(
            select(&host, &Selection::default()).unwrap().iface.name,
            "eth0"
        );
    }

    /// Selects with `--iface`/`--iface-regex` values, `--iface-can-reach` and `--public-ip`.
    fn pick(
        ifaces: &[&str],
        regexes: &[&str],
        can_reach: &str,
        public_ip: &str,
    ) -> Result<SelectedInterface, IfaceError> {
        let iface: Vec<IfaceSpec> = ifaces.iter().map(|s| s.parse().unwrap()).collect();
        let iface_regex: Vec<IfaceRegex> = regexes.iter().map(|s| s.parse().unwrap()).collect();
        let sel = Selection {
            iface: &iface,
            iface_regex: &iface_regex,
            can_reach: (!can_reach.is_empty()).then(|| can_reach.parse().unwrap()),
            public_ip: (!public_ip.is_empty()).then(|| ip(public_ip)),
            ipv6_only: false,
        };
        select(&view(), &sel)
    }

    /// The chosen interface name, interface address and public IP.
    fn chosen(e: SelectedInterface) -> (String, Ipv4Addr, Ipv4Addr) {
        (e.iface.name, e.iface_addr, e.public_ip)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_route_interface_when_nothing_given() {
        let e = pick(&[], &[], "", "").unwrap();
        assert!(e.reason.contains("default route"), "{}", e.reason);
        assert_eq!(chosen(e), ("eth0".into(), ip("10.4.7.21"), ip("10.4.7.21")));
    }

    #[test]
    fn iface_by_name_or_ip_in_order() {
        let e = pick(&["nope", "192.168.10.5", "eth0"], &[], "", "").unwrap();
        assert_eq!(
            chosen(e),
            ("eth1".into(), ip("192.168.10.5"), ip("192.168.10.5"))
        );
        let e = pick(&["eth1"], &[], "", "").unwrap();
        assert_eq!(e.iface_addr, ip("192.168.9.5"), "first (preferred) address");
        assert!(pick(&["empty0"], &[], "", "").is_err());
        let err = pick(&["nope"], &[], "", "").unwrap_err();
        assert!(err.to_string().contains("no interface matches"), "{err}");
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        let e = pick(&[], &[r"^192\.168\.10\."], "", "").unwrap();
        assert_eq!(e.iface_addr, ip("192.168.10.5"));
        let e = pick(&[], &["^eth1$"], "", "").unwrap();
        assert_eq!(e.iface.name, "eth1");
    }

    #[test]
    fn public_ip_overrides_or_selects() {
        let e = pick(&["eth0"], &[], "", "1.2.3.4").unwrap();
        assert_eq!(chosen(e), ("eth0".into(), ip("10.4.7.21"), ip("1.2.3.4")));
        let e = pick(&[], &[], "", "192.168.9.5").unwrap();
        assert_eq!(
            chosen(e),
            ("eth1".into(), ip("192.168.9.5"), ip("192.168.9.5"))
        );
        let e = pick(&[], &[], "", "1.2.3.4").unwrap();
        assert!(e.reason.contains("not assigned locally"), "{}", e.reason);
        assert_eq!(chosen(e), ("eth0".into(), ip("10.4.7.21"), ip("1.2.3.4")));
    }

    #[test]
    fn can_reach_uses_the_kernel_route() {
        let e = pick(&[], &[], "192.168.10.1", "").unwrap();
        assert_eq!(
            chosen(e),
            ("eth1".into(), ip("192.168.10.5"), ip("192.168.10.5"))
        );
    }
}

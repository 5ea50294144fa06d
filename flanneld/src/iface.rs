//! Choosing the external interface and the public IP (reference §9): `--iface` by name or IP in
//! order, then `--iface-regex` (addresses first, then names), then `--iface-can-reach`, else the
//! interface of the default route. `--public-ip` overrides the advertised address; alone, it
//! selects the interface that owns it. The decision is returned with the reason, for the log.

use std::net::Ipv4Addr;

pub use backends::{HostInterface, HostView};
use regex_lite::Regex;

/// The selection options (from the command line).
#[derive(Clone, Debug, Default)]
pub struct Selection<'a> {
    /// `--iface` values.
    pub iface: &'a [String],
    /// `--iface-regex` values.
    pub iface_regex: &'a [String],
    /// `--iface-can-reach` (empty when unset).
    pub can_reach: &'a str,
    /// `--public-ip` (empty when unset).
    pub public_ip: &'a str,
}

/// The chosen interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedInterface {
    /// The interface.
    pub iface: HostInterface,
    /// Its address used for inter-host traffic.
    pub iface_addr: Ipv4Addr,
    /// The address advertised to peers (`--public-ip` or `iface_addr`).
    pub public_ip: Ipv4Addr,
    /// Why this interface and address were chosen.
    pub reason: String,
}

/// Why no interface could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// A flag value does not parse.
    #[error("invalid {flag} value {value:?}: {problem}")]
    BadFlag {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        problem: String,
    },
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
        reason: match public {
            Some(p) if p != addr => format!("{reason}; advertising --public-ip {p}"),
            _ => reason,
        },
    })
}

fn first_addr(iface: &HostInterface, what: &str) -> Result<Ipv4Addr, IfaceError> {
    iface
        .addrs
        .first()
        .copied()
        .ok_or_else(|| IfaceError::NotFound(format!("{what} {} has no IPv4 address", iface.name)))
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

/// Chooses the external interface from a view of the host (pure; see the module docs for order).
pub fn select(view: &HostView, sel: &Selection) -> Result<SelectedInterface, IfaceError> {
    let public = match sel.public_ip {
        "" => None,
        s => Some(s.parse::<Ipv4Addr>().map_err(|_| IfaceError::BadFlag {
            flag: "--public-ip",
            value: s.into(),
            problem: "expected an IPv4 address such as 10.4.7.21".into(),
        })?),
    };
    let owner_of = |ip: Ipv4Addr| view.interfaces.iter().find(|i| i.addrs.contains(&ip));

    for value in sel.iface {
        if let Ok(ip) = value.parse::<Ipv4Addr>() {
            if let Some(i) = owner_of(ip) {
                return with_addr(
                    i,
                    ip,
                    public,
                    format!("--iface {value}: interface {} owns this address", i.name),
                );
            }
        } else if let Some(i) = view.interfaces.iter().find(|i| &i.name == value) {
            let addr = first_addr(i, "--iface interface")?;
            return with_addr(
                i,
                addr,
                public,
                format!("--iface {value}: matched by name, using its address {addr}"),
            );
        }
    }
    for pattern in sel.iface_regex {
        let re = Regex::new(pattern).map_err(|e| IfaceError::BadFlag {
            flag: "--iface-regex",
            value: pattern.clone(),
            problem: e.to_string(),
        })?;
        for i in &view.interfaces {
            if let Some(addr) = i.addrs.iter().find(|a| re.is_match(&a.to_string())) {
                return with_addr(
                    i,
                    *addr,
                    public,
                    format!(
                        "--iface-regex {pattern:?} matched address {addr} of {}",
                        i.name
                    ),
                );
            }
        }
        for i in &view.interfaces {
            if re.is_match(&i.name) {
                let addr = first_addr(i, "--iface-regex interface")?;
                return with_addr(
                    i,
                    addr,
                    public,
                    format!(
                        "--iface-regex {pattern:?} matched interface name {}",
                        i.name
                    ),
                );
            }
        }
    }
    if !sel.iface.is_empty() || !sel.iface_regex.is_empty() {
        return Err(IfaceError::NotFound(format!(
            "no interface matches --iface {:?} / --iface-regex {:?}; check `ip -4 addr` for the right name or address",
            sel.iface, sel.iface_regex
        )));
    }
    if !sel.can_reach.is_empty() {
        let (index, src) = view.can_reach.ok_or_else(|| {
            IfaceError::NotFound(format!(
                "--iface-can-reach {}: the kernel has no route to it",
                sel.can_reach
            ))
        })?;
        let i = by_index(
            view,
            index,
            &format!("--iface-can-reach {}: route", sel.can_reach),
        )?;
        let addr = match src {
            Some(a) => a,
            None => first_addr(i, "--iface-can-reach interface")?,
        };
        return with_addr(
            i,
            addr,
            public,
            format!(
                "--iface-can-reach {}: the kernel routes it via {} from {addr}",
                sel.can_reach, i.name
            ),
        );
    }
    if let Some(ip) = public {
        if let Some(i) = owner_of(ip) {
            return with_addr(
                i,
                ip,
                None,
                format!("--public-ip {ip} is assigned to {}", i.name),
            );
        }
    }
    let index = view.default_route_index.ok_or_else(|| {
        IfaceError::NotFound(
            "no default route and no --iface given; use --iface=<name or IP>".into(),
        )
    })?;
    let i = by_index(view, index, "default route")?;
    let addr = first_addr(i, "default-route interface")?;
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
        }
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
            can_reach: Some((3, Some(Ipv4Addr::new(192, 168, 10, 5)))),
        }
    }

    /// Selects with `--iface`/`--iface-regex` values, `--iface-can-reach` and `--public-ip`.
    fn pick(
        ifaces: &[&str],
        regexes: &[&str],
        can_reach: &str,
        public_ip: &str,
    ) -> Result<SelectedInterface, IfaceError> {
        let iface: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        let iface_regex: Vec<String> = regexes.iter().map(|s| s.to_string()).collect();
        let sel = Selection {
            iface: &iface,
            iface_regex: &iface_regex,
            can_reach,
            public_ip,
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
        assert!(matches!(
            pick(&[], &["("], "", ""),
            Err(IfaceError::BadFlag { .. })
        ));
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
        assert!(pick(&[], &[], "", "x").is_err());
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

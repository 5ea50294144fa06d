//! The typed values of the flags and the parsers clap calls for them. Each parser accepts exactly
//! the spellings Go flanneld's `flag` package accepts and says what a valid value looks like.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use regex_lite::Regex;

/// Go's `strconv.ParseBool`: the only spellings a Go boolean flag accepts.
pub fn go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("use true or false".into()),
    }
}

/// A whole number, as Go's integer flags take it.
fn whole_number(value: &str) -> Result<i64, String> {
    value.parse().map_err(|_| "use a whole number".to_string())
}

/// `-v`: the glog verbosity level.
pub fn verbosity(value: &str) -> Result<i32, String> {
    let level = whole_number(value)?;
    i32::try_from(level).map_err(|_| "use a level such as 0, 2 or 5".into())
}

/// `--subnet-lease-renew-margin`: whole minutes from 1 to 1439, as Go flanneld requires.
pub fn renew_margin(value: &str) -> Result<Duration, String> {
    let minutes = whole_number(value)?;
    match u64::try_from(minutes) {
        Ok(m @ 1..=1439) => Ok(Duration::from_secs(m * 60)),
        _ => Err("use whole minutes between 1 and 1439, such as 60".into()),
    }
}

/// `--iptables-resync`: whole seconds; like today, anything below 1 means 1 second.
pub fn resync_period(value: &str) -> Result<Duration, String> {
    let seconds = whole_number(value)?;
    Ok(Duration::from_secs(seconds.max(1).unsigned_abs()))
}

/// `--healthz-port`: a TCP port, 0 to disable the health server.
pub fn port(value: &str) -> Result<u16, String> {
    let number = whole_number(value)?;
    u16::try_from(number).map_err(|_| "use a port from 0 (disabled) to 65535, such as 2401".into())
}

/// `--route-style`: `classic` or `nexthop`.
pub fn route_style(value: &str) -> Result<backends::RouteStyle, String> {
    match value {
        "classic" => Ok(backends::RouteStyle::Classic),
        "nexthop" => Ok(backends::RouteStyle::Nexthop),
        _ => Err("use classic or nexthop".into()),
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("use text or json".into()),
        }
    }
}

/// One etcd endpoint: an `http://` or `https://` URL naming a host (and usually a port), or a
/// bare `host:port` as the v3 client accepts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdEndpoint(String);

impl FromStr for EtcdEndpoint {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let hint =
            || format!("{value:?} is not an etcd URL; use one such as https://10.4.7.21:2379");
        // `host:port` without a scheme is accepted, as the v3 client takes it (plain http).
        let url = match value.contains("://") {
            true => value.to_string(),
            false => format!("http://{value}"),
        };
        let uri: http::Uri = url.parse().map_err(|_| hint())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let host_ok = uri.host().is_some_and(|h| !h.is_empty());
        if !scheme_ok || !host_ok || value.is_empty() {
            return Err(hint());
        }
        Ok(EtcdEndpoint(value.to_string()))
    }
}

/// `--etcd-endpoints`: one or more endpoints separated by `,` (one flag value, as in Go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdEndpoints(pub Vec<EtcdEndpoint>);

impl FromStr for EtcdEndpoints {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        value
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(EtcdEndpoints)
    }
}

impl EtcdEndpoints {
    /// The URLs as strings, for the etcd clients.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|e| e.0.clone()).collect()
    }
}

/// One `--iface` value: an address the interface owns, or an interface name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfaceSpec {
    /// Chooses the interface that owns this IPv4 address.
    Addr(Ipv4Addr),
    /// Chooses the interface that owns this IPv6 address (used as its IPv6 address).
    Addr6(Ipv6Addr),
    /// Chooses the interface with this name.
    Name(String),
}

impl FromStr for IfaceSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("use an interface name such as eth0 or one of its addresses".into());
        }
        Ok(match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => IfaceSpec::Addr(ip),
            Ok(IpAddr::V6(ip)) => IfaceSpec::Addr6(ip),
            Err(_) => IfaceSpec::Name(value.to_string()),
        })
    }
}

impl fmt::Display for IfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfaceSpec::Addr(ip) => write!(f, "{ip}"),
            IfaceSpec::Addr6(ip) => write!(f, "{ip}"),
            IfaceSpec::Name(name) => f.write_str(name),
        }
    }
}

/// One `--iface-regex` value, compiled once.
#[derive(Clone, Debug)]
pub struct IfaceRegex(Regex);

impl IfaceRegex {
    /// Whether the pattern matches `text` (an address or an interface name).
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for IfaceRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for IfaceRegex {}

impl fmt::Display for IfaceRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl FromStr for IfaceRegex {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Regex::new(value)
            .map(IfaceRegex)
            .map_err(|e| format!("not a regular expression ({e}); use one such as ^eth[0-9]$"))
    }
}

/// A flag whose empty value means "not set", as in Go (`--public-ip=${PUBLIC_IP}` in a unit file
/// with the variable unset). An alias rather than `Option<T>`, so clap takes `""` as a value.
pub type Unset<T> = Option<T>;

/// An IPv4 address flag (`--public-ip`); empty means unset.
pub fn ipv4(value: &str) -> Result<Unset<Ipv4Addr>, String> {
    address(value, "use an IPv4 address such as 10.4.7.21")
}

/// An IPv4 or IPv6 address flag (`--iface-can-reach`); empty means unset.
pub fn ip(value: &str) -> Result<Unset<IpAddr>, String> {
    address(value, "use an IPv4 or IPv6 address such as 10.4.7.1")
}

/// An IPv6 address flag (`--public-ipv6`); empty means unset.
pub fn ipv6(value: &str) -> Result<Unset<Ipv6Addr>, String> {
    address(value, "use an IPv6 address such as fd00:4:7::21")
}

/// An address of type `A`, or unset when empty; `hint` is the error.
fn address<A: FromStr>(value: &str, hint: &str) -> Result<Unset<A>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| hint.to_string())
}

/// A file flag (`--etcd-cafile`, ...); empty means unset.
pub fn path(value: &str) -> Result<Unset<PathBuf>, String> {
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

/// A text flag (`--etcd-username`, ...); empty means unset.
pub fn text(value: &str) -> Result<Unset<String>, String> {
    Ok((!value.is_empty()).then(|| value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_host_and_an_http_scheme_if_any() {
        let ok: EtcdEndpoints = "https://10.4.7.21:2379,http://[::1]:2379".parse().unwrap();
        assert_eq!(ok.0.len(), 2);
        assert!(
            "10.4.7.21:2379".parse::<EtcdEndpoints>().is_ok(),
            "host:port as before"
        );
        for bad in ["a b:1", "ftp://x:1", "https://", "", "https://a:1,"] {
            let err = bad.parse::<EtcdEndpoints>().unwrap_err();
            assert!(err.contains("https://10.4.7.21:2379"), "{bad}: {err}");
        }
    }

    #[test]
    fn numbers_keep_go_ranges() {
        assert_eq!(renew_margin("60"), Ok(Duration::from_secs(3600)));
        assert!(renew_margin("0").is_err());
        assert!(renew_margin("1440").is_err());
        assert_eq!(resync_period("0"), Ok(Duration::from_secs(1)));
        assert_eq!(port("2401"), Ok(2401));
        assert!(port("65536").is_err());
        assert!(port("-1").is_err());
        assert!(verbosity("x").is_err());
    }

    #[test]
    fn iface_values_are_addresses_or_names() {
        assert_eq!(
            "10.4.7.21".parse::<IfaceSpec>(),
            Ok(IfaceSpec::Addr(Ipv4Addr::new(10, 4, 7, 21)))
        );
        assert_eq!(
            "eth0".parse::<IfaceSpec>(),
            Ok(IfaceSpec::Name("eth0".into()))
        );
        assert!("(".parse::<IfaceRegex>().is_err());
        assert!(ipv4("x").is_err());
        assert_eq!(ipv4(""), Ok(None));
    }
}

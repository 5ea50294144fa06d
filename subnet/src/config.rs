//! The network config stored at `<prefix>/config`: parsing and validation.
//!
//! Decoding follows Go flanneld (HEAD `CheckNetworkConfig`): keys are case-insensitive, unknown keys
//! are ignored, CIDRs are normalised, defaults are derived for the subnet length and range, and the
//! checks run in the same order so the same config fails on the same rule. Every error names the
//! key, the value and what would be valid.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::family::Subnet;
use crate::json::Fields;

/// Why a network config was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The document is not a JSON object.
    #[error("network config is not a JSON object: {0}")]
    NotJson(String),
    /// A key holds a value of the wrong type or syntax.
    #[error("network config key {key:?}: {problem}")]
    BadValue {
        /// The config key.
        key: &'static str,
        /// What is wrong and what would be valid.
        problem: String,
    },
    /// A family is enabled but its network is missing or `/0`.
    #[error("please define a correct {key} parameter in the flannel config (got {value}); e.g. \"{key}\": \"{example}\"")]
    MissingNetwork {
        /// `Network` or `IPv6Network`.
        key: &'static str,
        /// What was found.
        value: String,
        /// An example of a valid value.
        example: &'static str,
    },
    /// The subnet length is longer than the family allows.
    #[error("{key} must be less than /{limit} (got /{value}); use at most /{max}")]
    SubnetLenTooLong {
        /// `SubnetLen` or `IPv6SubnetLen`.
        key: &'static str,
        /// The configured length.
        value: u8,
        /// The exclusive limit Go flanneld names (31 or 127).
        limit: u8,
        /// The longest valid length.
        max: u8,
    },
    /// The subnet length leaves room for fewer than four subnets.
    #[error("network must be able to accommodate at least four subnets: {key} /{value} in a /{network_len} network; use {key} /{min} or longer")]
    TooFewSubnets {
        /// `SubnetLen` or `IPv6SubnetLen`.
        key: &'static str,
        /// The configured length.
        value: u8,
        /// The network prefix length.
        network_len: u8,
        /// The shortest valid subnet length (network prefix + 2).
        min: u8,
    },
    /// The network is too small to derive a subnet length.
    #[error("{key} is too small. Minimum useful network prefix is /{max} (got {value}); use a larger network or set the subnet length explicitly")]
    NetworkTooSmall {
        /// `Network` or `IPv6Network`.
        key: &'static str,
        /// The network.
        value: String,
        /// The longest useful prefix (28 or 124).
        max: u8,
    },
    /// SubnetMin/SubnetMax lies outside the network.
    #[error("{key} is not in the range of the {network_key} ({value} is outside {network})")]
    OutOfRange {
        /// The bound's key.
        key: &'static str,
        /// `Network` or `IPv6Network`.
        network_key: &'static str,
        /// The bound.
        value: String,
        /// The network.
        network: String,
    },
    /// SubnetMin/SubnetMax is not the first address of a subnet.
    #[error("{key} is not on a SubnetLen boundary: {value} (use a multiple of /{subnet_len}, e.g. {suggestion})")]
    NotAligned {
        /// The bound's key.
        key: &'static str,
        /// The bound.
        value: String,
        /// The subnet length.
        subnet_len: u8,
        /// The aligned address below the value.
        suggestion: String,
    },
    /// SubnetMin is above SubnetMax, so no subnet could ever be leased.
    #[error("{min_key} {min} is above {max_key} {max}: no subnet could be leased; swap them or widen the range")]
    EmptyRange {
        /// `SubnetMin` or `IPv6SubnetMin`.
        min_key: &'static str,
        /// Its value.
        min: String,
        /// `SubnetMax` or `IPv6SubnetMax`.
        max_key: &'static str,
        /// Its value.
        max: String,
    },
}

/// The backend section of the config.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// `Backend.Type`, lower-cased; `udp` when the `Backend` key is absent (as in Go flanneld).
    pub backend_type: String,
    /// The whole `Backend` object, for the backend to decode its own keys.
    pub raw: Value,
}

/// The subnet range of one address family, after defaults were applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetRange<N, A> {
    /// The cluster network (host bits cleared).
    pub network: N,
    /// The prefix length of each host's subnet.
    pub subnet_len: u8,
    /// The first subnet that may be leased.
    pub subnet_min: A,
    /// The last subnet that may be leased.
    pub subnet_max: A,
}

/// The IPv4 subnet range.
pub type Ipv4Range = SubnetRange<Ipv4Net, Ipv4Addr>;
/// The IPv6 subnet range.
pub type Ipv6Range = SubnetRange<Ipv6Net, Ipv6Addr>;

impl<N: Subnet> SubnetRange<N, N::Addr> {
    /// Whether `subnet` may be leased under this config: right length, aligned, within
    /// [SubnetMin, SubnetMax].
    pub fn allows(&self, subnet: N) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.address() == subnet.network_addr()
            && subnet.address() >= self.subnet_min
            && subnet.address() <= self.subnet_max
    }

    /// Whether `subnet` is one this config could have handed out: SubnetLen, aligned, inside
    /// the Network (SubnetMin/Max aside: they may have been narrowed since).
    pub fn in_shape(&self, subnet: N) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.truncated() == subnet
            && self.network.covers(&subnet)
    }

    /// `a /24 inside the Network 10.3.0.0/16`, for messages.
    pub fn shape(&self) -> String {
        format!("a /{} inside the Network {}", self.subnet_len, self.network)
    }

    /// `a /24 in 10.3.1.0..10.3.255.0`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "a /{} in {}..{}",
            self.subnet_len, self.subnet_min, self.subnet_max
        )
    }
}

/// A validated network config.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// The IPv4 range; `None` when `EnableIPv4` is false.
    pub ipv4: Option<Ipv4Range>,
    /// The IPv6 range; `Some` only when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6Range>,
    /// `EnableNFTables`.
    pub enable_nftables: bool,
    /// The backend section.
    pub backend: BackendConfig,
}

/// The family-specific names and limits used by [`derive_range`], and the key names of a
/// family's range in messages.
pub(crate) struct Family {
    bits: u8,
    pub(crate) network_key: &'static str,
    pub(crate) len_key: &'static str,
    pub(crate) min_key: &'static str,
    pub(crate) max_key: &'static str,
    /// Longest useful network prefix when the subnet length is derived.
    max_network_len: u8,
    /// Networks with a prefix up to this get the default subnet length.
    default_threshold: u8,
    default_len: u8,
    example: &'static str,
}

const V4: Family = Family {
    bits: 32,
    network_key: "Network",
    len_key: "SubnetLen",
    min_key: "SubnetMin",
    max_key: "SubnetMax",
    max_network_len: 28,
    default_threshold: 22,
    default_len: 24,
    example: "10.244.0.0/16",
};

const V6: Family = Family {
    bits: 128,
    network_key: "IPv6Network",
    len_key: "IPv6SubnetLen",
    min_key: "IPv6SubnetMin",
    max_key: "IPv6SubnetMax",
    max_network_len: 124,
    default_threshold: 62,
    default_len: 64,
    example: "fd00:10:244::/56",
};

/// The names and limits of the family with `bits`-bit addresses (32 or 128).
pub(crate) fn family_of_bits(bits: u8) -> &'static Family {
    if bits == V4.bits {
        &V4
    } else {
        &V6
    }
}

/// One family's raw inputs as integers: network address, prefix, optional length/min/max.
struct RawRange {
    network: u128,
    prefix: u8,
    subnet_len: Option<u8>,
    min: Option<u128>,
    max: Option<u128>,
}

/// Applies defaults and checks in Go flanneld's order; returns (subnet_len, min, max).
fn derive_range(
    fam: &Family,
    raw: &RawRange,
    show: &dyn Fn(u128) -> String,
) -> Result<(u8, u128, u128), ConfigError> {
    let bits = fam.bits;
    let mask = |len: u8| -> u128 {
        if len == 0 {
            0
        } else {
            (u128::MAX << (128 - len)) >> (128 - bits)
        }
    };
    let network_str = format!("{}/{}", show(raw.network), raw.prefix);
    let subnet_len = subnet_len_of(fam, raw, &network_str)?;
    let size: u128 = 1u128 << (bits - subnet_len);
    let net_mask = mask(raw.prefix);
    let contains = |a: u128| a & net_mask == raw.network;
    let check = |key: &'static str, v: Option<u128>, default: u128| match v {
        None | Some(0) => Ok(default),
        Some(a) if contains(a) => Ok(a),
        Some(a) => Err(ConfigError::OutOfRange {
            key,
            network_key: fam.network_key,
            value: show(a),
            network: network_str.clone(),
        }),
    };
    let min = check(fam.min_key, raw.min, raw.network + size)?;
    let broadcast = raw.network | !net_mask & mask(bits);
    let max = check(
        fam.max_key,
        raw.max,
        broadcast.wrapping_add(1).wrapping_sub(size) & mask(bits),
    )?;
    for (key, v) in [(fam.min_key, min), (fam.max_key, max)] {
        if v & (size - 1) != 0 {
            return Err(ConfigError::NotAligned {
                key,
                value: show(v),
                subnet_len,
                suggestion: show(v & !(size - 1)),
            });
        }
    }
    if min > max {
        return Err(ConfigError::EmptyRange {
            min_key: fam.min_key,
            min: show(min),
            max_key: fam.max_key,
            max: show(max),
        });
    }
    Ok((subnet_len, min, max))
}

/// The subnet length: `SubnetLen` when set (at most `bits - 2`, at least the network's prefix
/// + 2), else the family's default for a large network or the network's prefix + 2.
fn subnet_len_of(fam: &Family, raw: &RawRange, network_str: &str) -> Result<u8, ConfigError> {
    let bits = fam.bits;
    match raw.subnet_len {
        Some(len) if len > 0 => {
            if len > bits - 2 {
                return Err(ConfigError::SubnetLenTooLong {
                    key: fam.len_key,
                    value: len,
                    limit: bits - 1,
                    max: bits - 2,
                });
            }
            if len < raw.prefix + 2 {
                return Err(ConfigError::TooFewSubnets {
                    key: fam.len_key,
                    value: len,
                    network_len: raw.prefix,
                    min: raw.prefix + 2,
                });
            }
            Ok(len)
        }
        _ => {
            if raw.prefix > fam.max_network_len {
                return Err(ConfigError::NetworkTooSmall {
                    key: fam.network_key,
                    value: network_str.to_string(),
                    max: fam.max_network_len,
                });
            }
            if raw.prefix <= fam.default_threshold {
                Ok(fam.default_len)
            } else {
                Ok(raw.prefix + 2)
            }
        }
    }
}

/// The network at `fam.network_key` and the subnet range of its family.
fn parse_range<N>(f: &Fields, fam: &Family) -> Result<SubnetRange<N, N::Addr>, ConfigError>
where
    N: Subnet + std::str::FromStr,
    N::Addr: std::str::FromStr,
{
    let network: N = get_network(f, fam)?;
    let raw = RawRange {
        network: N::bits_of(network.network_addr()),
        prefix: network.prefix(),
        subnet_len: get_len(f, fam.len_key)?,
        min: get_addr::<N::Addr>(f, fam.min_key, N::FAMILY)?.map(N::bits_of),
        max: get_addr::<N::Addr>(f, fam.max_key, N::FAMILY)?.map(N::bits_of),
    };
    let show = |a: u128| N::addr_of(a).to_string();
    let (subnet_len, min, max) = derive_range(fam, &raw, &show)?;
    Ok(SubnetRange {
        network,
        subnet_len,
        subnet_min: N::addr_of(min),
        subnet_max: N::addr_of(max),
    })
}

/// The network at `fam.network_key`, truncated to its prefix; refused when missing, not a
/// CIDR of the family, or `/0`.
fn get_network<N: Subnet + std::str::FromStr>(f: &Fields, fam: &Family) -> Result<N, ConfigError> {
    let label = N::FAMILY;
    let invalid = |s: &str| {
        let example = fam.example;
        bad(
            fam.network_key,
            format!("invalid {label} CIDR format: {s:?}; e.g. \"{example}\""),
        )
    };
    let parsed = get_str(f, fam.network_key)?
        .map(|s| s.parse::<N>().map_err(|_| invalid(s)))
        .transpose()?;
    match parsed {
        Some(n) if n.prefix() > 0 => Ok(n.truncated()),
        other => Err(ConfigError::MissingNetwork {
            key: fam.network_key,
            value: other.map_or("nothing".into(), |n| n.to_string()),
            example: fam.example,
        }),
    }
}

/// The `Backend` section: its `Type` (lower case) and the whole object; `udp` when absent, as
/// Go flanneld defaults.
fn parse_backend(f: &Fields) -> Result<BackendConfig, ConfigError> {
    match f.get("Backend") {
        None => Ok(BackendConfig {
            backend_type: "udp".into(),
            raw: Value::Null,
        }),
        Some(b @ Value::Object(_)) => {
            let bf = Fields::new(b).ok_or_else(|| bad("Backend", "expected an object"))?;
            let backend_type = get_str(&bf, "Type")
                .map_err(|_| {
                    bad(
                        "Backend",
                        "\"Type\" must be a string such as \"host-gw\" or \"vxlan\"",
                    )
                })?
                .unwrap_or("")
                .to_ascii_lowercase();
            Ok(BackendConfig {
                backend_type,
                raw: b.clone(),
            })
        }
        Some(v) => Err(bad(
            "Backend",
            format!("expected an object such as {{\"Type\":\"vxlan\"}}, got {v}"),
        )),
    }
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key,
        problem: problem.into(),
    }
}

fn get_bool(f: &Fields, key: &'static str, default: bool) -> Result<bool, ConfigError> {
    match f.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(key, format!("expected true or false, got {v}"))),
    }
}

fn get_len(f: &Fields, key: &'static str) -> Result<Option<u8>, ConfigError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(key, format!("expected a prefix length such as 24, got {v}"))),
    }
}

fn get_str<'a>(f: &Fields<'a>, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(key, format!("expected a string, got {v}"))),
    }
}

fn get_addr<A: std::str::FromStr>(
    f: &Fields,
    key: &'static str,
    family: &str,
) -> Result<Option<A>, ConfigError> {
    get_str(f, key)?
        .map(|s| {
            s.parse()
                .map_err(|_| bad(key, format!("invalid {family} address format: {s:?}")))
        })
        .transpose()
}

impl NetworkConfig {
    /// Parses and validates the JSON stored at `<prefix>/config`.
    pub fn parse(raw: &[u8]) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_slice(raw).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let f = Fields::new(&value).ok_or_else(|| ConfigError::NotJson(format!("got {value}")))?;
        let enable_ipv4 = get_bool(&f, "EnableIPv4", true)?;
        let enable_ipv6 = get_bool(&f, "EnableIPv6", false)?;
        let enable_nftables = get_bool(&f, "EnableNFTables", false)?;
        let ipv4 = enable_ipv4.then(|| parse_range(&f, &V4)).transpose()?;
        let ipv6 = enable_ipv6.then(|| parse_range(&f, &V6)).transpose()?;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(bad(
                "EnableIPv4",
                "both EnableIPv4 and EnableIPv6 are false; enable at least one family",
            ));
        }
        Ok(NetworkConfig {
            ipv4,
            ipv6,
            enable_nftables,
            backend: parse_backend(&f)?,
        })
    }

    /// The IPv4 range; `None` on an IPv6-only network (`EnableIPv4: false`).
    pub fn v4(&self) -> Option<&Ipv4Range> {
        self.ipv4.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(json: &str) -> Ipv4Range {
        NetworkConfig::parse(json.as_bytes()).unwrap().ipv4.unwrap()
    }

    fn err(json: &str) -> ConfigError {
        NetworkConfig::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let r = v4(r#"{"network":"10.3.0.0/16"}"#);
        assert_eq!(r.network, "10.3.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(r.subnet_len, 24);
        assert_eq!(r.subnet_min, Ipv4Addr::new(10, 3, 1, 0));
        assert_eq!(r.subnet_max, Ipv4Addr::new(10, 3, 255, 0));
    }

    #[test]
    fn host_bits_are_dropped_and_keys_case_insensitive() {
        let r = v4(r#"{"NETWORK":"172.7.3.9/16","subnetlen":26}"#);
        assert_eq!(r.network.to_string(), "172.7.0.0/16");
        assert_eq!(r.subnet_len, 26);
        assert_eq!(r.subnet_min, Ipv4Addr::new(172, 7, 0, 64));
        assert_eq!(r.subnet_max, Ipv4Addr::new(172, 7, 255, 192));
    }

    #[test]
    fn derived_length_for_small_networks() {
        assert_eq!(v4(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
        assert_eq!(v4(r#"{"Network":"10.0.0.0/23"}"#).subnet_len, 25);
        assert_eq!(v4(r#"{"Network":"10.0.0.0/28"}"#).subnet_len, 30);
        assert!(matches!(
            err(r#"{"Network":"10.0.0.0/29"}"#),
            ConfigError::NetworkTooSmall {
                key: "Network",
                max: 28,
                ..
            }
        ));
    }

    #[test]
    fn overrides_are_honoured() {
        let r = v4(
            r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.5.0","SubnetMax":"10.3.8.0","SubnetLen":28}"#,
        );
        assert_eq!(
            (r.subnet_len, r.subnet_min, r.subnet_max),
            (28, Ipv4Addr::new(10, 3, 5, 0), Ipv4Addr::new(10, 3, 8, 0))
        );
        assert_eq!(
            v4(r#"{"Network":"10.3.0.0/16","SubnetLen":28}"#).subnet_len,
            28
        );
    }

    #[test]
    fn subnet_len_limits() {
        assert!(matches!(
            err(r#"{"Network":"10.3.0.0/16","SubnetLen":31}"#),
            ConfigError::SubnetLenTooLong {
                value: 31,
                limit: 31,
                max: 30,
                ..
            }
        ));
        let e = err(r#"{"Network":"10.3.0.0/16","SubnetLen":17}"#);
        assert!(matches!(
            e,
            ConfigError::TooFewSubnets {
                value: 17,
                min: 18,
                ..
            }
        ));
        assert!(e.to_string().contains("at least four subnets"), "{e}");
        assert_eq!(
            v4(r#"{"Network":"10.3.0.0/16","SubnetLen":18}"#).subnet_len,
            18
        );
    }

    #[test]
    fn range_bounds_must_be_inside_and_aligned() {
        let e = err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.4.0.0"}"#);
        assert!(
            matches!(
                e,
                ConfigError::OutOfRange {
                    key: "SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("10.4.0.0"));
        let e = err(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.2.0.0"}"#);
        assert!(
            matches!(
                e,
                ConfigError::OutOfRange {
                    key: "SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.7"}"#);
        assert_eq!(e.to_string(), "SubnetMin is not on a SubnetLen boundary: 10.3.1.7 (use a multiple of /24, e.g. 10.3.1.0)");
        assert!(matches!(
            err(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.3.1.7"}"#),
            ConfigError::NotAligned {
                key: "SubnetMax",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.9.0","SubnetMax":"10.3.5.0"}"#),
            ConfigError::EmptyRange { .. }
        ));
    }

    #[test]
    fn missing_or_bad_network() {
        assert!(matches!(
            err(r#"{}"#),
            ConfigError::MissingNetwork { key: "Network", .. }
        ));
        assert!(matches!(
            err(r#"{"Network":"0.0.0.0/0"}"#),
            ConfigError::MissingNetwork { .. }
        ));
        let e = err(r#"{"Network":"fd00::/48"}"#);
        assert!(e.to_string().contains("invalid IPv4 CIDR format"), "{e}");
        let e = err(r#"{"Network":"10.0.0.0/16","SubnetMin":"banana"}"#);
        assert!(e.to_string().contains("invalid IPv4 address format"), "{e}");
        assert!(matches!(
            err(r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#),
            ConfigError::BadValue {
                key: "SubnetLen",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#),
            ConfigError::BadValue {
                key: "SubnetLen",
                ..
            }
        ));
        assert!(matches!(err(r#"[]"#), ConfigError::NotJson(_)));
        assert!(matches!(err(r#"{"Network":"#), ConfigError::NotJson(_)));
        assert!(matches!(
            err(r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes"}"#),
            ConfigError::BadValue {
                key: "EnableIPv4",
                ..
            }
        ));
    }

    #[test]
    fn backend_defaults_and_lowercasing() {
        let c = NetworkConfig::parse(br#"{"Network":"10.0.0.0/16"}"#).unwrap();
        assert_eq!(c.backend.backend_type, "udp");
        let c = NetworkConfig::parse(br#"{"Network":"10.0.0.0/16","Backend":{"Type":"Host-GW"}}"#)
            .unwrap();
        assert_eq!(c.backend.backend_type, "host-gw");
        let c = NetworkConfig::parse(
            br#"{"Network":"10.0.0.0/16","backend":{"type":"vxlan","VNI":4}}"#,
        )
        .unwrap();
        assert_eq!(c.backend.backend_type, "vxlan");
        assert_eq!(c.backend.raw["VNI"], 4);
        let c = NetworkConfig::parse(br#"{"Network":"10.0.0.0/16","Backend":{}}"#).unwrap();
        assert_eq!(c.backend.backend_type, "");
        assert!(matches!(
            err(r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#),
            ConfigError::BadValue { key: "Backend", .. }
        ));
    }

    #[test]
    fn ipv6_defaults_and_checks() {
        let c = NetworkConfig::parse(
            br#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        )
        .unwrap();
        let r = c.ipv6.unwrap();
        assert!(c.ipv4.is_none());
        assert_eq!(r.subnet_len, 64);
        assert_eq!(r.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.subnet_max, "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap());
        let c = NetworkConfig::parse(br#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetLen":124}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().subnet_len, 124);
        assert!(matches!(
            err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}"#),
            ConfigError::NetworkTooSmall {
                key: "IPv6Network",
                max: 124,
                ..
            }
        ));
        assert!(matches!(
            err(
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#
            ),
            ConfigError::SubnetLenTooLong { limit: 127, .. }
        ));
        assert!(matches!(
            err(r#"{"EnableIPv4":false,"EnableIPv6":true}"#),
            ConfigError::MissingNetwork {
                key: "IPv6Network",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"EnableIPv4":false}"#),
            ConfigError::BadValue {
                key: "EnableIPv4",
                ..
            }
        ));
    }

    #[test]
    fn allows_checks_length_alignment_and_bounds() {
        let r = v4(r#"{"Network":"10.3.0.0/16"}"#);
        assert!(r.allows("10.3.7.0/24".parse().unwrap()));
        assert!(!r.allows("10.3.0.0/24".parse().unwrap()));
        assert!(!r.allows("10.3.7.0/25".parse().unwrap()));
        assert!(!r.allows("10.4.7.0/24".parse().unwrap()));
    }
}

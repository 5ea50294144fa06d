//! Lease keys and values, byte-compatible with Go flanneld.
//!
//! A lease lives at `<prefix>/subnets/<key>`; the key is `A.B.C.D-LEN` (dual stack:
//! `A.B.C.D-LEN&<ipv6>-LEN6`) and the value is the compact JSON of [`LeaseAttrs`] in Go's field
//! order, e.g. `{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}`.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use crate::json::Fields;

/// Why a lease key or value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// The key under `subnets/` is not of the form `A.B.C.D-LEN[&IPV6-LEN6]`.
    #[error("not a subnet key: {0:?} (expected A.B.C.D-LEN, e.g. 10.5.34.0-24)")]
    BadKey(String),
    /// The value is not a JSON object.
    #[error("lease value is not a JSON object: {0}")]
    NotAnObject(String),
    /// A field holds a value of the wrong type or format.
    #[error("lease field {field}: {problem}")]
    BadField {
        /// The JSON field name, as Go flanneld writes it.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The IPv4 half of the key of an IPv6-only lease (`0.0.0.0-0&fd00::-64`), as Go writes it.
pub const NO_IPV4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0) {
    Ok(net) => net,
    Err(_) => panic!("0.0.0.0/0 is a valid network"),
};

/// The subnet(s) a lease is for; its string form is the last path element of the etcd key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet.
    pub ipv4: Ipv4Net,
    /// The IPv6 subnet of a dual-stack lease.
    pub ipv6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// A key for an IPv4-only lease.
    pub fn v4(ipv4: Ipv4Net) -> Self {
        SubnetKey { ipv4, ipv6: None }
    }

    /// Whether the key has an IPv4 half (IPv6-only leases have `0.0.0.0-0` instead).
    pub fn has_ipv4(&self) -> bool {
        self.ipv4.prefix_len() > 0
    }

    /// The subnet that names the lease: see [`Lease::id`].
    pub fn id(&self) -> IpNet {
        match self.ipv6 {
            Some(v6) if !self.has_ipv4() => v6.into(),
            _ => self.ipv4.into(),
        }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ipv4.addr(), self.ipv4.prefix_len())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LeaseError::BadKey(s.to_string());
        let (v4, v6) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (ip, len) = v4.rsplit_once('-').ok_or_else(bad)?;
        let ip: Ipv4Addr = parse_dotted_quad(ip).ok_or_else(bad)?;
        let len = parse_prefix(len, 31).ok_or_else(bad)?;
        let ipv4 = Ipv4Net::new(ip, len).map_err(|_| bad())?;
        let ipv6 = match v6 {
            None => None,
            Some(v6) => {
                let (ip, len) = v6.rsplit_once('-').ok_or_else(bad)?;
                if ip.is_empty() || !ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return Err(bad());
                }
                let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
                let len = parse_prefix(len, 127).ok_or_else(bad)?;
                Some(Ipv6Net::new(ip, len).map_err(|_| bad())?)
            }
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

/// Parses `A.B.C.D` with decimal octets only (no leading sign or spaces).
fn parse_dotted_quad(s: &str) -> Option<Ipv4Addr> {
    if s.split('.').count() != 4 || !s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    s.parse().ok()
}

/// Parses a decimal prefix length no larger than `max` (Go parses it into 5 or 7 bits).
fn parse_prefix(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|l| *l <= max)
}

/// The expiration of a lease key without a TTL (a reservation): far enough ahead never to pass.
pub fn never() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 40)
}

/// A lease's backend data (`BackendData`, `BackendV6Data`): a JSON object only the backend that
/// wrote it reads (vxlan: `{"VNI":1,"VtepMAC":"..."}`). Kept as its compact JSON text: a few
/// dozen bytes per lease, where the parsed map held a few hundred in allocations, for data the
/// agent reads once per reconcile of a peer. Two are equal when their texts are.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendData(Box<str>);

impl BackendData {
    /// The data of `value`, as compact JSON.
    pub fn new(value: &Value) -> BackendData {
        BackendData(value.to_string().into_boxed_str())
    }

    /// The data as a JSON value (`null` would mean a text that does not parse, which
    /// [`BackendData::new`] never makes).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JSON value stored at a lease key: who holds the subnet and how to reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseAttrs {
    /// The address peers send traffic to (`PublicIP`).
    pub public_ip: Ipv4Addr,
    /// The IPv6 public address (`PublicIPv6`), written as `null` when absent.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The backend that published the lease (`BackendType`), e.g. `host-gw` or `vxlan`; the
    /// names flanneld knows are shared, not allocated for each lease.
    pub backend_type: Cow<'static, str>,
    /// Backend-specific data (`BackendData`), e.g. `{"VNI":1,"VtepMAC":"..."}` for vxlan.
    pub backend_data: Option<BackendData>,
    /// Backend-specific data for IPv6 (`BackendV6Data`).
    pub backend_v6_data: Option<BackendData>,
}

impl LeaseAttrs {
    /// Attributes for an IPv4-only lease without backend data (host-gw).
    pub fn new(public_ip: Ipv4Addr, backend_type: &str) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type_of(backend_type),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Encodes the attributes exactly as Go flanneld (HEAD) does: compact JSON, fields in Go's
    /// order, `PublicIPv6` always present, empty `BackendType`/`BackendData` omitted.
    pub fn to_json(&self) -> String {
        let mut map = Map::new();
        map.insert("PublicIP".into(), Value::String(self.public_ip.to_string()));
        map.insert(
            "PublicIPv6".into(),
            self.public_ipv6
                .map_or(Value::Null, |ip| Value::String(ip.to_string())),
        );
        if !self.backend_type.is_empty() {
            map.insert(
                "BackendType".into(),
                Value::String(self.backend_type.to_string()),
            );
        }
        if let Some(data) = &self.backend_data {
            map.insert("BackendData".into(), data.value());
        }
        if let Some(data) = &self.backend_v6_data {
            map.insert("BackendV6Data".into(), data.value());
        }
        Value::Object(map).to_string()
    }

    /// The attributes as flanneld v0.11 keeps them in the etcd v2 keyspace: no `PublicIPv6` or
    /// `BackendV6Data`, and no `VNI` in `BackendData` (v0.11's vxlan data is only `VtepMAC`).
    /// Decoding [`LeaseAttrs::to_json_v011`] yields exactly this.
    pub fn v011(&self) -> LeaseAttrs {
        let backend_data = match self.backend_data.as_ref().map(BackendData::value) {
            Some(Value::Object(data)) => {
                let data: Map<String, Value> = data
                    .into_iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("VNI"))
                    .collect();
                (!data.is_empty()).then(|| BackendData::new(&Value::Object(data)))
            }
            _ => self.backend_data.clone(),
        };
        LeaseAttrs {
            public_ip: self.public_ip,
            public_ipv6: None,
            backend_type: self.backend_type.clone(),
            backend_data,
            backend_v6_data: None,
        }
    }

    /// Encodes the attributes exactly as flanneld v0.11 does (see [`LeaseAttrs::v011`]), e.g.
    /// `{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}`:
    /// compact, Go's field order, empty `BackendType`/`BackendData` omitted.
    pub fn to_json_v011(&self) -> String {
        let attrs = self.v011();
        let mut map = Map::new();
        map.insert(
            "PublicIP".into(),
            Value::String(attrs.public_ip.to_string()),
        );
        if !attrs.backend_type.is_empty() {
            map.insert(
                "BackendType".into(),
                Value::String(attrs.backend_type.into_owned()),
            );
        }
        if let Some(data) = attrs.backend_data {
            map.insert("BackendData".into(), data.value());
        }
        Value::Object(map).to_string()
    }

    /// Decodes a lease value written by any flanneld version (v0.11 without `PublicIPv6`, HEAD
    /// with `null` or a string). Field names match case-insensitively, as in Go.
    ///
    /// A value spelled exactly as flanneld writes it (every lease of a listing, in practice) is
    /// decoded straight into its fields; anything else (other spellings or casing, duplicate or
    /// unknown fields, a value that does not parse) takes the general path, which decides what
    /// it means or what is wrong with it.
    pub fn from_json(raw: &[u8]) -> Result<Self, LeaseError> {
        // serde would also fill the struct from a JSON array, which is no lease.
        let object = raw.trim_ascii_start().first() == Some(&b'{');
        match serde_json::from_slice::<Spelled>(raw) {
            Ok(spelled) if object => spelled.attrs().map_or_else(|| Self::from_any_json(raw), Ok),
            _ => Self::from_any_json(raw),
        }
    }

    /// [`LeaseAttrs::from_json`]'s general path: any spelling Go's `encoding/json` accepts.
    fn from_any_json(raw: &[u8]) -> Result<Self, LeaseError> {
        let value: Value = serde_json::from_slice(raw).map_err(|e| {
            LeaseError::NotAnObject(format!("{e}: {}", String::from_utf8_lossy(raw)))
        })?;
        let fields = Fields::new(&value)
            .ok_or_else(|| LeaseError::NotAnObject(String::from_utf8_lossy(raw).into_owned()))?;
        let public_ip = match fields.get("PublicIP") {
            Some(v) => parse_ip_field::<Ipv4Addr>("PublicIP", v)?,
            None => Ipv4Addr::UNSPECIFIED,
        };
        let public_ipv6 = fields
            .get("PublicIPv6")
            .map(|v| parse_ip_field::<Ipv6Addr>("PublicIPv6", v))
            .transpose()?;
        let backend_type = match fields.get("BackendType") {
            None => Cow::Borrowed(""),
            Some(Value::String(s)) => backend_type_of(s),
            Some(other) => {
                return Err(LeaseError::BadField {
                    field: "BackendType",
                    problem: format!("expected a string, got {other}"),
                })
            }
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: fields.get("BackendData").map(BackendData::new),
            backend_v6_data: fields.get("BackendV6Data").map(BackendData::new),
        })
    }
}

/// The backend types flanneld versions write; a lease naming one of them shares the name.
const KNOWN_BACKEND_TYPES: [&str; 8] = [
    "",
    "host-gw",
    "vxlan",
    "udp",
    "ipip",
    "wireguard",
    "alloc",
    "extension",
];

/// `name` as a lease's backend type: borrowed from [`KNOWN_BACKEND_TYPES`] when it is one of
/// them (no allocation for each of thousands of leases), else owned.
pub(crate) fn backend_type_of(name: &str) -> Cow<'static, str> {
    KNOWN_BACKEND_TYPES
        .iter()
        .find(|known| **known == name)
        .map_or_else(
            || Cow::Owned(name.to_string()),
            |known| Cow::Borrowed(*known),
        )
}

/// A lease value in the exact spelling flanneld writes; `null` counts as absent, as in Go.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Spelled<'a> {
    #[serde(rename = "PublicIP", borrow, default)]
    public_ip: Option<&'a str>,
    #[serde(rename = "PublicIPv6", borrow, default)]
    public_ipv6: Option<&'a str>,
    #[serde(rename = "BackendType", borrow, default)]
    backend_type: Option<&'a str>,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<Box<Value>>,
    #[serde(rename = "BackendV6Data", default)]
    backend_v6_data: Option<Box<Value>>,
}

impl Spelled<'_> {
    /// The attributes, or `None` when an address does not parse (the general path then says
    /// why).
    fn attrs(self) -> Option<LeaseAttrs> {
        let public_ip = match self.public_ip {
            Some(ip) => ip.parse().ok()?,
            None => Ipv4Addr::UNSPECIFIED,
        };
        let public_ipv6 = match self.public_ipv6 {
            Some(ip) => Some(ip.parse().ok()?),
            None => None,
        };
        Some(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: backend_type_of(self.backend_type.unwrap_or_default()),
            backend_data: self.backend_data.as_deref().map(BackendData::new),
            backend_v6_data: self.backend_v6_data.as_deref().map(BackendData::new),
        })
    }
}

fn parse_ip_field<T: FromStr>(field: &'static str, v: &Value) -> Result<T, LeaseError> {
    let s = v.as_str().ok_or_else(|| LeaseError::BadField {
        field,
        problem: format!("expected an IP address string, got {v}"),
    })?;
    s.parse().map_err(|_| LeaseError::BadField {
        field,
        problem: format!("{s:?} is not a valid address"),
    })
}

/// A subnet lease: the key, its attributes and when it expires.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The subnet(s) leased.
    pub key: SubnetKey,
    /// Who holds it.
    pub attrs: LeaseAttrs,
    /// When the registry will drop it; `None` when unknown or never.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// The leased IPv4 subnet (`0.0.0.0/0` on an IPv6-only network).
    pub fn subnet(&self) -> Ipv4Net {
        self.key.ipv4
    }

    /// The subnet that names the lease: its IPv4 subnet, or on an IPv6-only network (whose
    /// keys all have the IPv4 half `0.0.0.0-0`) its IPv6 subnet.
    pub fn id(&self) -> IpNet {
        self.key.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_backend_types_are_shared_and_others_kept_as_written() {
        let hostgw = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.1","BackendType":"host-gw"}"#);
        assert!(matches!(
            hostgw.unwrap().backend_type,
            Cow::Borrowed("host-gw")
        ));
        let general = LeaseAttrs::from_json(br#"{"publicip":"10.0.0.1","backendtype":"vxlan"}"#);
        assert!(matches!(
            general.unwrap().backend_type,
            Cow::Borrowed("vxlan")
        ));
        let other = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.1","BackendType":"gre"}"#);
        assert!(matches!(other.unwrap().backend_type, Cow::Owned(ref s) if s == "gre"));
        assert!(matches!(
            LeaseAttrs::new(Ipv4Addr::LOCALHOST, "udp").backend_type,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_exact_spelling_decodes_as_the_general_path_does() {
        let values = [
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}"#,
            r#" {"PublicIP":"10.0.0.1","BackendType":null,"BackendData":null}"#,
            r#"{}"#,
            // Taken by the general path: other casing, duplicates, unknown fields, escapes,
            // bad addresses and types, no object.
            r#"{"publicip":"10.0.0.2","backendtype":"host-gw"}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIP":"10.0.0.3"}"#,
            r#"{"PublicIP":"10.0.0.1","Extra":1}"#,
            r#"{"PublicIP":"10.0.0.\u0031"}"#,
            r#"{"PublicIP":"10.0.0.256"}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"nope"}"#,
            r#"{"PublicIP":7}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":3}"#,
            r#"["10.0.0.1"]"#,
            r#"{"PublicIP":"#,
        ];
        for raw in values {
            assert_eq!(
                LeaseAttrs::from_json(raw.as_bytes()),
                LeaseAttrs::from_any_json(raw.as_bytes()),
                "{raw}"
            );
        }
        let escaped = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.\u0031"}"#).unwrap();
        assert_eq!(escaped.public_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert!(LeaseAttrs::from_json(br#"["10.0.0.1"]"#).is_err());
    }

    #[test]
    fn key_round_trip_v4_and_dual_stack() {
        for s in ["10.5.34.0-24", "10.12.13.0-24&fd00:12:13::-56", "0.0.0.0-0"] {
            let key: SubnetKey = s.parse().unwrap();
            assert_eq!(key.to_string(), s);
        }
        let key: SubnetKey = "10.5.34.0-24".parse().unwrap();
        assert_eq!(key.ipv4, "10.5.34.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn invalid_keys_are_rejected() {
        for s in [
            "10.12.13.0-24hi",
            "10.12.13.300-24",
            "&2001::-56",
            "10.12.13.0-33",
            "10.12.13.0-32",
            "10.12.13-24",
            "10.12.13.0",
            "10.12.13.0-",
            "10.12.13.0-24&2001::-128",
            "10.12.13.0-24&2001::-x",
            "10.12.13.0-24&zz::-64",
            "",
        ] {
            assert!(s.parse::<SubnetKey>().is_err(), "{s} should be invalid");
        }
    }

    #[test]
    fn head_and_v011_values_round_trip() {
        let head_vxlan = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let attrs = LeaseAttrs::from_json(head_vxlan.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(attrs.to_json(), head_vxlan);

        let head_hostgw = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#;
        let attrs = LeaseAttrs::from_json(head_hostgw.as_bytes()).unwrap();
        assert_eq!(
            attrs,
            LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 5), "host-gw")
        );
        assert_eq!(attrs.to_json(), head_hostgw);

        let v011 = r#"{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#;
        let attrs = LeaseAttrs::from_json(v011.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, None);
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"10.37.7.195","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#
        );

        let dual = r#"{"PublicIP":"10.0.0.5","PublicIPv6":"fd00::5","BackendType":"host-gw"}"#;
        let attrs = LeaseAttrs::from_json(dual.as_bytes()).unwrap();
        assert_eq!(attrs.public_ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(attrs.to_json(), dual);

        // Go HEAD's dual-stack vxlan lease: one VTEP per family.
        let dual_vxlan = r#"{"PublicIP":"10.0.0.5","PublicIPv6":"fd00:12::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"2e:4c:05:1a:9b:01"}}"#;
        let attrs = LeaseAttrs::from_json(dual_vxlan.as_bytes()).unwrap();
        assert!(attrs.backend_v6_data.is_some());
        assert_eq!(attrs.to_json(), dual_vxlan);
    }

    #[test]
    fn v011_encoding_is_byte_for_byte_what_v011_writes_and_reads_back_as_v011() {
        let ours = LeaseAttrs::from_json(
            br#"{"PublicIP":"10.37.7.195","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:4b:b6:2f:54:4e"},"BackendV6Data":{"VNI":1}}"#,
        )
        .unwrap();
        let v011 = r#"{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#;
        assert_eq!(ours.to_json_v011(), v011);
        assert_eq!(LeaseAttrs::from_json(v011.as_bytes()).unwrap(), ours.v011());

        let hostgw = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 5), "host-gw");
        assert_eq!(
            hostgw.to_json_v011(),
            r#"{"PublicIP":"10.0.0.5","BackendType":"host-gw"}"#
        );
        assert_eq!(hostgw.v011(), hostgw);
        let only_vni = LeaseAttrs {
            backend_data: Some(BackendData::new(&serde_json::json!({"VNI": 7}))),
            ..hostgw.clone()
        };
        assert_eq!(only_vni.v011(), hostgw, "an emptied BackendData is omitted");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.300"}"#).unwrap_err();
        assert!(err.to_string().contains("PublicIP"), "{err}");
        assert!(LeaseAttrs::from_json(b"[1]").is_err());
        assert!(LeaseAttrs::from_json(b"not json").is_err());
        let err = LeaseAttrs::from_json(br#"{"PublicIP":"10.0.0.1","BackendType":7}"#).unwrap_err();
        assert!(err.to_string().contains("BackendType"), "{err}");
    }

    #[test]
    fn field_names_are_case_insensitive() {
        let attrs =
            LeaseAttrs::from_json(br#"{"publicip":"10.0.0.1","backendtype":"host-gw"}"#).unwrap();
        assert_eq!(
            attrs,
            LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1), "host-gw")
        );
    }
}

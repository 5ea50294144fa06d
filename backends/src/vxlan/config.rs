//! The vxlan keys of the `Backend` object, decoded case-insensitively like Go flanneld.

use serde_json::Value;
use subnet::Fields;

use crate::Error;

/// The largest VXLAN network identifier (24 bits).
const MAX_VNI: u64 = (1 << 24) - 1;
/// The VXLAN + outer UDP/IPv4 + inner Ethernet overhead.
pub(crate) const OVERHEAD: u32 = 50;
/// The smallest IPv4 MTU (RFC 791) the device must keep after the overhead.
const MIN_DEVICE_MTU: u32 = 68;

/// The decoded vxlan backend settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VxlanConfig {
    /// `VNI`, default 1; the device is `flannel.<VNI>`.
    pub vni: u32,
    /// `Port`; 0 leaves the kernel default 8472.
    pub port: u16,
    /// `GBP`: VXLAN group policy extension.
    pub gbp: bool,
    /// `DirectRouting`: plain routes to on-link peers.
    pub direct_routing: bool,
    /// `MTU`: the underlay MTU; `None` means the external interface's.
    pub mtu: Option<u32>,
    /// `Learning`: kernel FDB learning on the device.
    pub learning: bool,
}

impl VxlanConfig {
    /// Decodes `raw` (the whole `Backend` object; `Type` and unknown keys are ignored).
    pub(crate) fn parse(raw: &Value) -> Result<VxlanConfig, Error> {
        let empty = Value::Object(Default::default());
        let fields = Fields::new(raw).or_else(|| Fields::new(&empty));
        let get = |key| fields.as_ref().and_then(|f| f.get(key));
        let vni = uint(get("VNI"), "VNI", 0, MAX_VNI)?.unwrap_or(1);
        let port = uint(get("Port"), "Port", 0, u64::from(u16::MAX))?.unwrap_or(0);
        let mtu = uint(
            get("MTU"),
            "MTU",
            u64::from(MIN_DEVICE_MTU + OVERHEAD),
            u64::from(u32::MAX),
        )?;
        Ok(VxlanConfig {
            vni: vni as u32,
            port: port as u16,
            gbp: boolean(get("GBP"), "GBP")?,
            direct_routing: boolean(get("DirectRouting"), "DirectRouting")?,
            mtu: mtu.map(|m| m as u32),
            learning: boolean(get("Learning"), "Learning")?,
        })
    }
}

fn uint(v: Option<&Value>, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, Error> {
    let Some(v) = v else { return Ok(None) };
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(Error::Config {
            key,
            problem: format!("{v} is not valid; expected an integer from {min} to {max}"),
        }),
    }
}

fn boolean(v: Option<&Value>, key: &'static str) -> Result<bool, Error> {
    match v {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::Config {
            key,
            problem: format!("{other} is not valid; expected true or false"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        let cfg = VxlanConfig::parse(&json!({"Type": "vxlan"})).unwrap();
        assert_eq!(
            cfg,
            VxlanConfig {
                vni: 1,
                port: 0,
                gbp: false,
                direct_routing: false,
                mtu: None,
                learning: false
            }
        );
        assert_eq!(VxlanConfig::parse(&Value::Null).unwrap().vni, 1);
    }

    #[test]
    fn all_keys_case_insensitively() {
        let cfg = VxlanConfig::parse(&json!({
            "type": "vxlan", "vni": 42, "PORT": 4789, "gbp": true,
            "directrouting": true, "Mtu": 9000, "learning": true
        }))
        .unwrap();
        assert_eq!(
            cfg,
            VxlanConfig {
                vni: 42,
                port: 4789,
                gbp: true,
                direct_routing: true,
                mtu: Some(9000),
                learning: true
            }
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_range() {
        for (raw, key) in [
            (json!({"VNI": 16777216}), "VNI"),
            (json!({"VNI": -1}), "VNI"),
            (json!({"VNI": "1"}), "VNI"),
            (json!({"Port": 70000}), "Port"),
            (json!({"MTU": 100}), "MTU"),
            (json!({"DirectRouting": "yes"}), "DirectRouting"),
            (json!({"GBP": 1}), "GBP"),
        ] {
            let err = VxlanConfig::parse(&raw).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(key), "{raw}: {msg}");
            assert!(msg.contains("expected"), "{raw}: {msg}");
        }
    }
}

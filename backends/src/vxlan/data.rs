//! The vxlan `BackendData` of a lease: `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}` (HEAD) or
//! `{"VtepMAC":"..."}` (v0.11).

use serde_json::{Map, Value};
use subnet::{BackendData, Fields};

use crate::mac::Mac;

/// A peer's (or our) VTEP as published in the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VtepData {
    /// `VNI`; absent in leases written by flanneld v0.11.
    pub vni: Option<u32>,
    /// `VtepMAC`: the MAC of the peer's vxlan device.
    pub mac: Mac,
}

impl VtepData {
    /// The lease's `BackendData`, exactly as Go flanneld HEAD writes it (VNI first).
    pub(crate) fn to_data(self) -> BackendData {
        BackendData::new(&self.to_json())
    }

    /// The JSON value exactly as Go flanneld HEAD writes it (VNI first).
    fn to_json(self) -> Value {
        let mut map = Map::new();
        if let Some(vni) = self.vni {
            map.insert("VNI".into(), Value::from(vni));
        }
        map.insert("VtepMAC".into(), Value::String(self.mac.to_string()));
        Value::Object(map)
    }

    /// Decodes a lease's `BackendData`; the error says what is wrong.
    pub(crate) fn from_data(data: Option<&BackendData>) -> Result<VtepData, String> {
        let data = data.ok_or("its lease has no BackendData")?.value();
        let data = &data;
        let fields =
            Fields::new(data).ok_or_else(|| format!("BackendData {data} is not an object"))?;
        let mac: Mac = fields
            .get("VtepMAC")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("BackendData {data} has no VtepMAC string"))?
            .parse()
            .map_err(|e| format!("BackendData VtepMAC: {e}"))?;
        if mac.is_zero() || mac.is_group() {
            // The all-zero FDB key floods every peer; a group address is no VTEP's.
            return Err(format!(
                "BackendData VtepMAC {mac} is not a unicast MAC address"
            ));
        }
        let vni = match fields.get("VNI") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("BackendData VNI {v} is not a number"))?,
            ),
        };
        Ok(VtepData { vni, mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use subnet::LeaseAttrs;

    #[test]
    fn encodes_exactly_like_go() {
        let data = VtepData {
            vni: Some(1),
            mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
        };
        let mut attrs = LeaseAttrs::new("192.168.64.3".parse().unwrap(), "vxlan");
        attrs.backend_data = Some(data.to_data());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(VtepData::from_data(Some(&data.to_data())), Ok(data));
    }

    #[test]
    fn accepts_v011_and_rejects_garbage() {
        let v011 = LeaseAttrs::from_json(
            br#"{"PublicIP":"10.37.7.195","BackendType":"vxlan","BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}"#,
        )
        .unwrap();
        let data = VtepData::from_data(v011.backend_data.as_ref()).unwrap();
        assert_eq!(data.vni, None);
        assert_eq!(data.mac.to_string(), "82:4b:b6:2f:54:4e");
        let lower = serde_json::json!({"vni": 3, "vtepmac": "82:4b:b6:2f:54:4e"});
        let decode = |v: &serde_json::Value| VtepData::from_data(Some(&BackendData::new(v)));
        assert_eq!(decode(&lower).unwrap().vni, Some(3));
        for bad in [
            serde_json::json!({"VNI": 1}),
            serde_json::json!({"VtepMAC": "nope"}),
            serde_json::json!({"VtepMAC": 7}),
            serde_json::json!({"VNI": "x", "VtepMAC": "82:4b:b6:2f:54:4e"}),
            serde_json::json!([1]),
            serde_json::json!({"VtepMAC": "00:00:00:00:00:00"}),
            serde_json::json!({"VtepMAC": "ff:ff:ff:ff:ff:ff"}),
            serde_json::json!({"VtepMAC": "01:00:5e:00:00:01"}),
        ] {
            assert!(decode(&bad).is_err(), "{bad}");
        }
        assert!(VtepData::from_data(None).is_err());
    }
}

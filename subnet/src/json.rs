//! Go `encoding/json` compatible field lookup.
//!
//! Go decodes JSON object keys case-insensitively into struct fields (an exact match wins, then the
//! first case-insensitive one). Network configs written by hand rely on it (`"network"` works), so
//! every decoder in this crate looks fields up through [`Fields`].

use serde_json::{Map, Value};

/// A JSON object whose fields are looked up the way Go's `encoding/json` does.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Wraps `value` if it is a JSON object; `None` for any other JSON type.
    pub fn new(value: &'a Value) -> Option<Self> {
        value.as_object().map(|map| Fields { map })
    }

    /// The value of field `name`: an exact key match first, else the first key equal to `name`
    /// ignoring ASCII case. A JSON `null` counts as absent, as in Go.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map
            .get(name)
            .or_else(|| {
                self.map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .filter(|v| !v.is_null())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_wins_over_case_insensitive() {
        let v: Value = serde_json::json!({"network": "a", "Network": "b"});
        assert_eq!(Fields::new(&v).unwrap().get("Network").unwrap(), "b");
        let v: Value = serde_json::json!({"NETWORK": "a"});
        assert_eq!(Fields::new(&v).unwrap().get("Network").unwrap(), "a");
    }

    #[test]
    fn null_is_absent_and_non_objects_are_rejected() {
        let v: Value = serde_json::json!({"Network": null});
        assert!(Fields::new(&v).unwrap().get("Network").is_none());
        assert!(Fields::new(&Value::from(3)).is_none());
    }
}

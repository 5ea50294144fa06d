//! `--etcd-api`: which etcd keyspace holds the network — v3 (flanneld ≥ 0.18) or v2 (flanneld
//! v0.11, `etcdctl set`) — and, in `auto` mode, finding it: the keyspace that holds
//! `<prefix>/config`, v3 first.

use std::fmt;
use std::str::FromStr;

use crate::etcd::{EtcdOptions, EtcdRegistry, EXAMPLE_CONFIG};
use crate::etcdv2::EtcdV2Registry;
use crate::registry::{Registry, RegistryError};

/// The `--etcd-api` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdApi {
    /// The keyspace that holds `<prefix>/config`, v3 first.
    Auto,
    /// The v3 keyspace only.
    V3,
    /// The v2 keyspace only.
    V2,
}

impl FromStr for EtcdApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EtcdApi::Auto),
            "v3" => Ok(EtcdApi::V3),
            "v2" => Ok(EtcdApi::V2),
            other => Err(format!("invalid --etcd-api {other:?}: use auto, v3 or v2")),
        }
    }
}

impl fmt::Display for EtcdApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EtcdApi::Auto => "auto",
            EtcdApi::V3 => "v3",
            EtcdApi::V2 => "v2",
        })
    }
}

/// A registry in the keyspace chosen.
#[derive(Clone)]
pub enum Keyspace {
    /// The v3 keyspace (boxed: the v3 client is large).
    V3(Box<EtcdRegistry>),
    /// The v2 keyspace.
    V2(EtcdV2Registry),
}

/// Finds the keyspace holding the network config (`--etcd-api=auto`).
pub struct Detector {
    v3: EtcdRegistry,
    /// `Err` when the options cannot work with the v2 client (then only v3 is looked at).
    v2: Result<EtcdV2Registry, RegistryError>,
}

impl Detector {
    /// Prepares clients for both keyspaces.
    pub async fn connect(options: &EtcdOptions) -> Result<Detector, RegistryError> {
        let v3 = EtcdRegistry::connect(options).await?;
        let v2 = EtcdV2Registry::connect(options);
        if let Err(e) = &v2 {
            tracing::info!("not looking in the etcd v2 keyspace: {e}");
        }
        Ok(Detector { v3, v2 })
    }

    /// Looks for `<prefix>/config` in the v3 keyspace, then in the v2 keyspace, and logs which
    /// one is used and why. The first keyspace holding the key decides: an invalid config there
    /// is [`RegistryError::InvalidConfig`]; neither holding it is
    /// [`RegistryError::ConfigNotFound`]; both are worth retrying (an operator may fix it).
    pub async fn detect(&self) -> Result<Keyspace, RegistryError> {
        let key = self.v3.config_key().to_string();
        match self.v3.network_config().await {
            Ok(_) => {
                tracing::info!("using the etcd v3 keyspace (--etcd-api=auto): {key} is there");
                return Ok(Keyspace::V3(Box::new(self.v3.clone())));
            }
            Err(RegistryError::ConfigNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let v2_note = match &self.v2 {
            Ok(v2) => match v2.network_config().await {
                Ok(_) => {
                    tracing::info!(
                        "using the etcd v2 keyspace (--etcd-api=auto): {key} is not in the v3 \
                         keyspace but in the v2 keyspace (a flanneld v0.11 network); leases are \
                         written as v0.11 writes them"
                    );
                    return Ok(Keyspace::V2(v2.clone()));
                }
                Err(RegistryError::ConfigNotFound { .. }) => "",
                Err(RegistryError::V2Disabled { .. }) => " (this etcd does not serve the v2 API)",
                Err(e) => return Err(e),
            },
            Err(_) => " (the v2 keyspace cannot be read with these options)",
        };
        Err(RegistryError::ConfigNotFound {
            hint: format!(
                "Looked in the v3 keyspace, then in the v2 keyspace{v2_note} (--etcd-api=auto). \
                 Create it with the etcdv3 API, e.g. etcdctl put {key} '{EXAMPLE_CONFIG}'"
            ),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_api_parses_and_prints() {
        for api in [EtcdApi::Auto, EtcdApi::V3, EtcdApi::V2] {
            assert_eq!(api.to_string().parse::<EtcdApi>(), Ok(api));
        }
        assert!("v4"
            .parse::<EtcdApi>()
            .unwrap_err()
            .contains("auto, v3 or v2"));
    }
}

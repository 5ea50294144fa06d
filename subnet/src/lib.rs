//! The flanneld control plane: network config, lease codec, subnet allocation, subnet.env, the
//! etcd registry and the lease manager.

pub mod config;
pub mod json;
pub mod lease;

pub use config::{ConfigError, NetworkConfig};
pub use lease::{Lease, LeaseAttrs, LeaseError, SubnetKey};
pub mod peers;
pub mod subnet_env;

pub use peers::{LeaseEvent, PeerSet};
pub use subnet_env::{PreviousEnv, SubnetEnv};

//! The flanneld control plane: network config, lease codec, subnet allocation, subnet.env, the
//! etcd registries (v3, and the v2 keyspace of flanneld v0.11) and the lease manager.

pub mod config;
pub mod json;
pub mod lease;

pub use config::{ConfigError, NetworkConfig};
pub use lease::{Lease, LeaseAttrs, LeaseError, SubnetKey};
pub mod peers;
pub mod subnet_env;

pub use peers::{LeaseEvent, PeerSet};
pub mod validate;
pub use subnet_env::{PreviousEnv, SubnetEnv};
pub use validate::{LeasePolicy, Rejection};
pub mod alloc;
pub mod etcd;
pub mod etcdv2;
pub mod keyspace;
pub mod manager;
pub mod members;
pub mod registry;
mod retry;
pub mod watch;

pub use alloc::OutOfSubnets;
pub use etcd::{EtcdOptions, EtcdRegistry};
pub use etcdv2::EtcdV2Registry;
pub use keyspace::{EtcdApi, Keyspace};
pub use manager::{AcquireError, LeaseManager, LeaseTiming};
pub use registry::{Registry, RegistryError, WatchScope, WatchUpdate};

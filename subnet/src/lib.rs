//! The flanneld control plane: network config, lease codec, subnet allocation, subnet.env, the
//! etcd registries (v3, and the v2 keyspace of flanneld v0.11) and the lease manager.
//!
//! The modules are private: every public item has one path, `subnet::<Item>`.

mod alloc;
mod config;
mod etcd;
mod etcdv2;
mod family;
mod ignored;
mod json;
mod keyspace;
mod lease;
mod manager;
mod members;
mod peers;
mod registry;
mod retry;
mod subnet_env;
mod validate;
mod watch;

// The network config and its parts.
pub use config::{BackendConfig, ConfigError, Ipv4Range, Ipv6Range, NetworkConfig, SubnetRange};
pub use json::Fields;
// Leases, their keys and values, and what is checked before a peer's lease is programmed.
pub use lease::{never, BackendData, Lease, LeaseAttrs, LeaseError, SubnetKey, NO_IPV4};
pub use validate::{overlaps, FamilyPolicy, LeasePolicy, Rejection};
// The peers the data plane connects to, and the events that change them.
pub use peers::{LeaseEvent, PeerSet};
// Choosing and holding this host's subnet.
pub use alloc::{allows_key, choose_subnet, Choice, OutOfSubnets, Plan, Reason};
pub use family::Subnet;
pub use manager::{
    acquire, is_valid, AcquireError, LeaseCounters, LeaseHandle, LeaseManager, LeaseTiming,
    OWN_KEY_CHECK_PERIOD,
};
pub use subnet_env::{FamilyEnv, PreviousEnv, SubnetEnv};
// The stores: the Registry trait, etcd v3, the v2 keyspace, the choice between them.
pub use etcd::{EtcdOptions, EtcdRegistry};
pub use etcdv2::{EtcdV2Registry, Export, ExportedLease};
pub use ignored::{ignored_keys, IgnoreReason, IgnoredKeys, Logged, NAMED_KEYS, SUMMARY_PERIOD};
pub use keyspace::{Detector, EtcdApi, Keyspace};
pub use members::spawn_member_check;
pub use registry::{
    ConfigWatch, PutGuard, Registry, RegistryError, StoredLease, WatchScope, WatchUpdate,
    CONFIG_POLL_PERIOD,
};

//! Test support for flanneld-rs: network namespaces, a real etcd server, and clusters of hosts
//! running the agent. The tests themselves live in `tests/tests/`.

pub mod cluster;
pub mod dataplane;
pub mod etcd;
pub mod modgraph;
pub mod netns;
pub mod root;

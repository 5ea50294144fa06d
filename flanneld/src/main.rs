//! flanneld-rs: a drop-in Rust reimplementation of the flanneld agent (etcd mode).

mod cli;
mod healthz;
mod iface;
mod mk_docker_opts;

fn main() {}

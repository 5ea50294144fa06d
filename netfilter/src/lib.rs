//! flanneld's masquerade and forward rules.
//!
//! * [`RuleSet::build`] is the pure builder: cluster Network, own subnet and options in, the
//!   desired agent-owned chains (`nat FLANNEL-POSTRTG`, `filter FLANNEL-FWD`) out, renderable as
//!   an `iptables-restore` payload.
//! * [`plan()`] compares one `iptables-save` dump with a rule set and yields the repair payload.
//! * [`Iptables`] runs the binaries: [`Iptables::detect`] picks legacy or nft, and
//!   [`Netfilter::ensure`] does save → plan → restore → verify.
//!
//! The masquerade chain is jumped from nat POSTROUTING position 1 and ACCEPTs pod-to-pod
//! traffic, so a MASQUERADE rule below (docker's `-s <pod subnet> ! -o docker0`) cannot rewrite
//! it; `ensure` moves the jump back to the top whenever something else is inserted above it.
//! Foreign rules are never deleted, only reported.

mod detect;
mod egress;
mod egress_file;
mod error;
mod exec;
mod explain;
mod go_rules;
mod iptables;
mod leftovers;
mod monitor;
mod nftables;
mod plan;
mod removal;
mod rule;
mod ruleset;
mod save;
mod words;

pub use detect::{BackendChoice, UnknownBackend};
pub use egress::{first_match, Action, EgressPolicy, EgressRule, Origin, LINK_LOCAL};
pub use egress_file::{parse_go_duration, parse_policy, PolicyError, MAX_CIDR_LIMIT};
pub use error::Error;
pub use explain::{walk, Flow, Outcome, Step, Verdict};
pub use iptables::{Flavour, IpFamily, Iptables};
pub use leftovers::{go_leftover_removal, go_leftovers};
pub use monitor::NftChanges;
pub use nftables::{remove_tables, table_name, NftTable, Nftables};
pub use plan::{plan, Plan};
pub use removal::{removal, Removal};
pub use rule::{Rule, Table};
pub use ruleset::{
    Config, OwnedChain, Previous, RuleSet, FORWARD_CHAIN, FORWARD_COMMENT, KUBE_PROXY_MARK,
    MASQ_CHAIN, MASQ_COMMENT,
};
pub use save::{ParseError, Saved, SavedTable};

/// What one [`Netfilter::ensure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// Whether rules were (re)applied.
    pub applied: bool,
    /// Why they were, e.g. ``"`-A POSTROUTING -s 10.1.74.0/24 ! -o docker0 -j MASQUERADE` sits
    /// above the jump to FLANNEL-POSTRTG in nat/POSTROUTING"``; `None` when nothing was done.
    pub reason: Option<String>,
    /// Foreign MASQUERADE/SNAT rules in nat POSTROUTING whose source overlaps the cluster
    /// Network (`-A POSTROUTING ...` lines), left in place. Warn once per distinct rule.
    pub foreign: Vec<String>,
}

/// A firewall backend that can make the kernel hold a [`RuleSet`].
pub trait Netfilter {
    /// Reads the current rules and, if anything is missing, different or out of order,
    /// replaces the agent-owned chains and re-inserts their jumps at the top in one atomic
    /// transaction, then reads back to verify. Idempotent: nothing is written when all is in
    /// place. Synchronous; call it from a blocking thread.
    fn ensure(&self, rules: &RuleSet) -> Result<EnsureOutcome, Error>;
}

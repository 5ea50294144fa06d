//! Native nftables (`EnableNFTables`): the agent's own tables, named as Go flanneld HEAD names
//! them (`ip flannel-ipv4`, `ip6 flannel-ipv6`), so a host moved from Go HEAD is taken over.
//!
//! **The pod-IP guarantee.** In nftables every base chain on a hook runs: an `accept` in our nat
//! chain does not stop docker's `MASQUERADE` in iptables-nft's (or iptables-legacy's) nat
//! POSTROUTING from rewriting pod-to-pod traffic. What does stop it is the NAT core itself: for a
//! new connection it walks the nat chains of the hook in priority order and stops at the first
//! one that sets up a source NAT binding (`nf_nat_inet_fn`). So our chain runs before the
//! iptables ones (priority `srcnat - 10`) and binds pod-to-pod connections to their own source
//! address (`snat to ip saddr`): the connection keeps the pod address, and no later nat chain
//! is consulted for it. Masquerading stays `masquerade` for traffic leaving the cluster.
//!
//! Applied as one `nft -f` transaction that replaces the table whole; verified by listing it.

use std::sync::Mutex;

use ipnet::IpNet;

use crate::error::Error;
use crate::exec;
use crate::iptables::IpFamily;
use crate::ruleset::{egress_steps, multicast, Config, EgressVerdict};
use crate::EnsureOutcome;

/// The name of the table of a family.
pub fn table_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "flannel-ipv4",
        IpFamily::V6 => "flannel-ipv6",
    }
}

/// The nftables family keyword and the address match of a family: `ip` / `ip6`.
fn keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The agent's table for one family, as an `nft -f` script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTable {
    family: IpFamily,
    /// The chains' bodies (`chain postrtg { ... }`), in order.
    chains: Vec<String>,
}

impl NftTable {
    /// The table for `config` (its network's family).
    pub fn build(config: &Config) -> NftTable {
        let family = IpFamily::of(&config.network);
        let mut chains = Vec::new();
        if config.ip_masq {
            chains.push(postrtg(config, family));
        }
        if config.forward_rules {
            chains.push(forward(config.network, family));
        }
        NftTable { family, chains }
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// `ip flannel-ipv4` or `ip6 flannel-ipv6`.
    pub fn name(&self) -> String {
        format!("{} {}", keyword(self.family), table_name(self.family))
    }

    /// How many chains the table has.
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// The `nft -f` script: create the table if missing, delete it, create it with our chains;
    /// one transaction, so the rules are never half there.
    pub fn script(&self) -> String {
        let name = self.name();
        let mut out = format!("table {name} {{}}\ndelete table {name}\ntable {name} {{\n");
        for chain in &self.chains {
            out.push_str(chain);
        }
        out.push_str("}\n");
        out
    }
}

/// The nat chain: kube-proxy's marked packets and delivery to our pods are left alone, pod to
/// pod (and the egress policy's exempt destinations) bound to the pod's own address, the rest
/// leaving the cluster masqueraded.
fn postrtg(config: &Config, family: IpFamily) -> String {
    let ip = keyword(family);
    let (net, sub) = (config.network, config.subnet);
    let masq = if config.random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let keep = format!("snat {ip} to {ip} saddr");
    let multicast = multicast(config.network);
    let mut rules = vec![
        "meta mark & 0x00004000 == 0x00004000 return".to_string(),
        format!("{ip} daddr {sub} return"),
        format!("{ip} saddr {net} {ip} daddr {net} {keep}"),
    ];
    rules.extend(egress_steps(config).into_iter().map(|(dst, verdict, _)| {
        let action = match verdict {
            EgressVerdict::Return => "return",
            EgressVerdict::Keep => &keep,
            EgressVerdict::Masquerade => masq,
        };
        format!("{ip} saddr {net} {ip} daddr {dst} {action}")
    }));
    rules.push(format!("{ip} saddr {net} {ip} daddr != {multicast} {masq}"));
    rules.push(format!("{ip} saddr != {net} {ip} daddr {net} {masq}"));
    chain(
        "postrtg",
        "type nat hook postrouting priority srcnat - 10; policy accept;",
        &rules,
        "flanneld masq",
    )
}

/// The filter chain: forwarding to and from the cluster network is accepted.
fn forward(network: IpNet, family: IpFamily) -> String {
    let ip = keyword(family);
    let rules = [
        format!("{ip} saddr {network} accept"),
        format!("{ip} daddr {network} accept"),
    ];
    chain(
        "forward",
        "type filter hook forward priority filter; policy accept;",
        &rules,
        "flanneld forward",
    )
}

fn chain(name: &str, hook: &str, rules: &[String], comment: &str) -> String {
    let mut out = format!("  chain {name} {{\n    {hook}\n");
    for rule in rules {
        out.push_str(&format!("    {rule} comment \"{comment}\"\n"));
    }
    out.push_str("  }\n");
    out
}

/// The `nft` binary, applying [`NftTable`]s. It remembers the listing of the table it applied
/// last, so a check that finds exactly that listing writes nothing.
#[derive(Debug, Default)]
pub struct Nftables {
    /// The script applied last and the listing the kernel gave for it.
    applied: Mutex<Option<(String, String)>>,
}

impl Nftables {
    /// An applier that has applied nothing yet.
    pub fn new() -> Nftables {
        Nftables::default()
    }

    /// Whether `nft` can be run here (its version, for the log).
    pub fn probe() -> Result<String, Error> {
        let version = exec::run("nft", &["--version"], None)?.stdout()?;
        Ok(version.trim().to_string())
    }

    /// Makes the kernel hold `table` exactly: lists it; when the listing is not the one our last
    /// apply of the same script left, applies the script (one transaction) and lists again to
    /// verify every chain is there.
    pub fn ensure(&self, table: &NftTable) -> Result<EnsureOutcome, Error> {
        let script = table.script();
        let listing = list(table)?;
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let reason = match (&*applied, &listing) {
            (Some((s, l)), Some(now)) if *s == script && l == now => {
                return Ok(EnsureOutcome::default())
            }
            (_, None) => format!("table {} is missing", table.name()),
            (Some((s, _)), Some(_)) if *s == script => {
                format!("table {} changed under us", table.name())
            }
            _ => format!("table {} is not ours as configured now", table.name()),
        };
        exec::run("nft", &["-f", "-"], Some(&script))?.stdout()?;
        let after = list(table)?.unwrap_or_default();
        let chains = after.matches("\tchain ").count();
        if chains != table.chain_count() {
            return Err(Error::Verify {
                command: "nft -f -".into(),
                reasons: format!(
                    "`nft list table {}` shows {chains} chains, {} expected",
                    table.name(),
                    table.chain_count()
                ),
                payload: script,
            });
        }
        *applied = Some((script, after));
        Ok(EnsureOutcome {
            applied: true,
            reason: Some(reason),
            foreign: Vec::new(),
        })
    }
}

/// `nft list table`, or `None` when the table does not exist.
fn list(table: &NftTable) -> Result<Option<String>, Error> {
    let name = table.name();
    let args: Vec<&str> = ["list", "table"]
        .into_iter()
        .chain(name.split(' '))
        .collect();
    let finished = exec::run("nft", &args, None)?;
    if finished.output.status.success() {
        return Ok(Some(
            String::from_utf8_lossy(&finished.output.stdout).into_owned(),
        ));
    }
    if finished.stderr().contains("No such file or directory") {
        return Ok(None);
    }
    finished.stdout().map(Some)
}

/// Deletes our tables of both families where they exist (switching to iptables mode); returns
/// what was deleted.
pub fn remove_tables() -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let (kw, name) = (keyword(family), table_name(family));
        let finished = exec::run("nft", &["delete", "table", kw, name], None)?;
        if finished.output.status.success() {
            removed.push(format!("nft table {kw} {name}"));
        } else if !finished.stderr().contains("No such file or directory") {
            finished.stdout()?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(network: &str, subnet: &str) -> Config {
        Config {
            network: network.parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            ip_masq: true,
            random_fully: true,
            forward_rules: true,
            egress: None,
        }
    }

    #[test]
    fn golden_ipv4_table() {
        let table = NftTable::build(&config("10.1.0.0/16", "10.1.74.0/24"));
        assert_eq!(
            table.script(),
            r#"table ip flannel-ipv4 {}
delete table ip flannel-ipv4
table ip flannel-ipv4 {
  chain postrtg {
    type nat hook postrouting priority srcnat - 10; policy accept;
    meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
    ip daddr 10.1.74.0/24 return comment "flanneld masq"
    ip saddr 10.1.0.0/16 ip daddr 10.1.0.0/16 snat ip to ip saddr comment "flanneld masq"
    ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
    ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random comment "flanneld masq"
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr 10.1.0.0/16 accept comment "flanneld forward"
    ip daddr 10.1.0.0/16 accept comment "flanneld forward"
  }
}
"#
        );
    }

    #[test]
    fn golden_ipv6_table_without_masquerade() {
        let table = NftTable::build(&Config {
            ip_masq: false,
            ..config("fd00:10::/48", "fd00:10:0:4a::/64")
        });
        assert_eq!(table.name(), "ip6 flannel-ipv6");
        assert_eq!(
            table.script(),
            r#"table ip6 flannel-ipv6 {}
delete table ip6 flannel-ipv6
table ip6 flannel-ipv6 {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip6 saddr fd00:10::/48 accept comment "flanneld forward"
    ip6 daddr fd00:10::/48 accept comment "flanneld forward"
  }
}
"#
        );
    }

    #[test]
    fn the_egress_policy_keeps_or_masquerades_like_the_iptables_rules() {
        let policy = crate::EgressPolicy {
            non_masquerade: vec!["10.0.0.0/8".parse().unwrap()],
            masquerade: vec!["10.100.0.0/16".parse().unwrap()],
            ..crate::EgressPolicy::default()
        };
        let table = NftTable::build(&Config {
            egress: Some(policy.compile()),
            random_fully: false,
            ..config("10.1.0.0/16", "10.1.74.0/24")
        });
        let script = table.script();
        let masq = script.find("ip daddr 10.100.0.0/16 masquerade").unwrap();
        let keep = script
            .find("ip daddr 10.0.0.0/8 snat ip to ip saddr")
            .unwrap();
        assert!(masq < keep, "most specific first:\n{script}");
    }
}

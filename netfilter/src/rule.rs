//! Tables and rules as `iptables-save` shows them: a chain name plus the words that follow it.

use std::fmt;

use ipnet::IpNet;

use crate::words;

/// A netfilter table the agent writes to, or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// The `nat` table (masquerading).
    Nat,
    /// The `filter` table (forward accepts).
    Filter,
    /// The `raw` table: only read (docker 28's direct-access filtering lives there).
    Raw,
}

impl Table {
    /// The table's name as `iptables -t` and `*table` lines spell it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Raw => "raw",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule: the chain it lives in and its match and target words, unquoted, in the order
/// `iptables-save` prints them (so rules compare equal word for word).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The chain holding the rule.
    pub chain: String,
    /// The words after `-A <chain>`.
    pub spec: Vec<String>,
}

impl Rule {
    /// A rule in `chain` with the given words.
    pub fn new(chain: &str, spec: &[&str]) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec: spec.iter().map(|w| w.to_string()).collect(),
        }
    }

    /// The target (`-j` / `--jump`), if any.
    pub fn target(&self) -> Option<&str> {
        self.value_of(&["-j", "--jump"])
    }

    /// The source match (`-s`/`--source`), if any, and whether it is negated (`! -s`).
    pub fn source(&self) -> Option<(&str, bool)> {
        self.matched(&["-s", "--source"])
    }

    /// The destination match (`-d`/`--destination`), if any, and whether it is negated.
    pub fn destination(&self) -> Option<(&str, bool)> {
        self.matched(&["-d", "--destination"])
    }

    /// The input interface match (`-i`/`--in-interface`), if any, and whether it is negated.
    pub fn in_interface(&self) -> Option<(&str, bool)> {
        self.matched(&["-i", "--in-interface"])
    }

    /// The value of the first of `flags` and whether a `!` negates it.
    fn matched(&self, flags: &[&str]) -> Option<(&str, bool)> {
        let at = self.spec.iter().position(|w| flags.contains(&w.as_str()))?;
        let negated = at > 0 && self.spec[at - 1] == "!";
        Some((self.spec.get(at + 1)?.as_str(), negated))
    }

    /// The restore line `<op> <chain> <spec>`, e.g. with op `-A` or `-D`.
    pub fn line(&self, op: &str) -> String {
        format!("{op} {} {}", self.chain, words::join(&self.spec))
    }

    fn value_of(&self, flags: &[&str]) -> Option<&str> {
        let at = self.spec.iter().position(|w| flags.contains(&w.as_str()))?;
        self.spec.get(at + 1).map(String::as_str)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line("-A"))
    }
}

/// Whether a rule's source match (`-s X`, `! -s X` or none) can match addresses of `network`.
/// Sources that do not parse as an address or network count as overlapping, to err on the side
/// of reporting.
pub(crate) fn source_overlaps(rule: &Rule, network: IpNet) -> bool {
    let Some((source, negated)) = rule.source() else {
        return true;
    };
    let Some(source) = parse_net(source) else {
        return true;
    };
    if negated {
        !source.contains(&network)
    } else {
        source.contains(&network.network()) || network.contains(&source.network())
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn finds_target_and_source() {
        let rule = Rule::new(
            "POSTROUTING",
            &["!", "-s", "10.1.0.0/16", "-j", "MASQUERADE"],
        );
        assert_eq!(rule.target(), Some("MASQUERADE"));
        assert_eq!(rule.source(), Some(("10.1.0.0/16", true)));
        let rule = Rule::new("POSTROUTING", &["-o", "eth0", "-j"]);
        assert_eq!(rule.target(), None);
        assert_eq!(rule.source(), None);
    }

    #[test]
    fn source_overlap() {
        let cluster = net("10.1.0.0/16");
        let with = |spec: &[&str]| source_overlaps(&Rule::new("P", spec), cluster);
        assert!(with(&["-s", "10.1.74.0/24", "-j", "MASQUERADE"]));
        assert!(with(&["-s", "10.0.0.0/8", "-j", "MASQUERADE"]));
        assert!(with(&["-s", "10.1.2.3", "-j", "MASQUERADE"]));
        assert!(!with(&["-s", "172.17.0.0/16", "-j", "MASQUERADE"]));
        assert!(with(&["-o", "eth0", "-j", "MASQUERADE"]));
        assert!(!with(&["!", "-s", "10.0.0.0/8", "-j", "MASQUERADE"]));
        assert!(with(&["!", "-s", "10.1.74.0/24", "-j", "MASQUERADE"]));
        assert!(with(&["-s", "bogus", "-j", "MASQUERADE"]));
    }

    #[test]
    fn renders_lines_with_quotes() {
        let rule = Rule::new("X", &["-m", "comment", "--comment", "a b", "-j", "RETURN"]);
        assert_eq!(
            rule.to_string(),
            r#"-A X -m comment --comment "a b" -j RETURN"#
        );
        assert_eq!(
            rule.line("-D"),
            r#"-D X -m comment --comment "a b" -j RETURN"#
        );
    }
}

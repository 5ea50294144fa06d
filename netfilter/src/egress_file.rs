//! Reading an ip-masq-agent config file (YAML or JSON; JSON is YAML) into an [`EgressPolicy`],
//! validated as a whole: every error names the key, the value and the fix.
//!
//! Keys and meaning are ip-masq-agent's (`nonMasqueradeCIDRs`, `masqLinkLocal`,
//! `masqLinkLocalIPv6`, `resyncInterval`, `cidrLimit`), so an operator's existing file works
//! unchanged, plus `masqueradeCIDRs`. Absent keys keep ip-masq-agent's defaults, a null list is
//! an empty list, and an empty file is all defaults. Unlike ip-masq-agent, unknown keys are an
//! error: a misspelt key silently ignored is a policy silently not applied.

use std::time::Duration;

use ipnet::Ipv4Net;
use yaml_rust2::{Yaml, YamlLoader};

use crate::egress::EgressPolicy;

/// The largest `cidrLimit` accepted: each entry is one iptables rule walked per new flow.
pub const MAX_CIDR_LIMIT: usize = 1024;

const KEYS: [&str; 6] = [
    "nonMasqueradeCIDRs",
    "masqueradeCIDRs",
    "masqLinkLocal",
    "masqLinkLocalIPv6",
    "resyncInterval",
    "cidrLimit",
];

/// Why a policy file was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PolicyError {
    /// The key at fault; empty for the file as a whole.
    pub key: String,
    /// The value at fault, as written.
    pub value: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl PolicyError {
    fn new(key: &str, value: impl Into<String>, problem: impl Into<String>) -> PolicyError {
        PolicyError {
            key: key.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }

    fn describe(&self) -> String {
        match (self.key.is_empty(), self.value.is_empty()) {
            (true, _) => self.problem.clone(),
            (false, true) => format!("key {}: {}", self.key, self.problem),
            (false, false) => format!("key {}, value {:?}: {}", self.key, self.value, self.problem),
        }
    }
}

/// Parses and validates the text of a policy file.
pub fn parse_policy(text: &str) -> Result<EgressPolicy, PolicyError> {
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| PolicyError::new("", "", format!("not valid YAML or JSON: {e}")))?;
    let mut policy = EgressPolicy::default();
    let map =
        match docs.as_slice() {
            [] | [Yaml::Null] => return Ok(policy),
            [Yaml::Hash(map)] => map,
            [_] => return Err(PolicyError::new(
                "",
                "",
                "the file must hold one mapping of keys, such as nonMasqueradeCIDRs: [10.0.0.0/8]",
            )),
            _ => {
                return Err(PolicyError::new(
                    "",
                    "",
                    "the file holds several YAML documents; keep one",
                ))
            }
        };
    for (key, value) in map {
        let key = key.as_str().unwrap_or_default();
        match key {
            "nonMasqueradeCIDRs" => policy.non_masquerade = cidr_list(key, value)?,
            "masqueradeCIDRs" => policy.masquerade = cidr_list(key, value)?,
            "masqLinkLocal" => policy.masq_link_local = boolean(key, value)?,
            "masqLinkLocalIPv6" => policy.masq_link_local_ipv6 = boolean(key, value)?,
            "resyncInterval" => policy.resync_interval = interval(key, value)?,
            "cidrLimit" => policy.cidr_limit = cidr_limit(key, value)?,
            _ => {
                let valid = KEYS.join(", ");
                return Err(PolicyError::new(
                    key,
                    "",
                    format!("unknown key; valid keys are {valid}"),
                ));
            }
        }
    }
    check_limits(&policy)?;
    check_overlap(&policy)?;
    Ok(policy)
}

/// A value as the file wrote it, for error messages.
fn shown(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "null".into(),
        Yaml::Array(_) => "a list".into(),
        Yaml::Hash(_) => "a mapping".into(),
        _ => "an unsupported value".into(),
    }
}

fn cidr_list(key: &str, value: &Yaml) -> Result<Vec<Ipv4Net>, PolicyError> {
    let items = match value {
        Yaml::Null => return Ok(Vec::new()),
        Yaml::Array(items) => items,
        other => {
            return Err(PolicyError::new(
                key,
                shown(other),
                "use a list of CIDRs, such as [10.0.0.0/8, 172.16.0.0/12]",
            ))
        }
    };
    let mut cidrs: Vec<Ipv4Net> = Vec::with_capacity(items.len());
    for item in items {
        let cidr = cidr(key, item)?;
        if cidrs.contains(&cidr) {
            return Err(PolicyError::new(
                key,
                cidr.to_string(),
                "listed twice; keep one",
            ));
        }
        cidrs.push(cidr);
    }
    Ok(cidrs)
}

fn cidr(key: &str, item: &Yaml) -> Result<Ipv4Net, PolicyError> {
    let Yaml::String(text) = item else {
        return Err(PolicyError::new(
            key,
            shown(item),
            "use a CIDR string such as 10.0.0.0/8",
        ));
    };
    if text.contains(':') {
        return Err(PolicyError::new(
            key,
            text,
            "IPv6 ranges are not programmed yet (no dual stack); remove this entry",
        ));
    }
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| PolicyError::new(key, text, "not an IPv4 CIDR; use one such as 10.0.0.0/8"))?;
    if net.addr() != net.network() {
        let fix = format!("not a network address; use {}", net.trunc());
        return Err(PolicyError::new(key, text, fix));
    }
    Ok(net)
}

fn boolean(key: &str, value: &Yaml) -> Result<bool, PolicyError> {
    match value {
        Yaml::Boolean(b) => Ok(*b),
        other => Err(PolicyError::new(key, shown(other), "use true or false")),
    }
}

fn interval(key: &str, value: &Yaml) -> Result<Duration, PolicyError> {
    let hint = "use a positive Go duration such as 60s or 1m30s";
    let Yaml::String(text) = value else {
        return Err(PolicyError::new(key, shown(value), hint));
    };
    match parse_go_duration(text) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(PolicyError::new(key, text, hint)),
    }
}

fn cidr_limit(key: &str, value: &Yaml) -> Result<usize, PolicyError> {
    let hint = format!("use a whole number from 1 to {MAX_CIDR_LIMIT}");
    match value {
        Yaml::Integer(n) => usize::try_from(*n)
            .ok()
            .filter(|n| (1..=MAX_CIDR_LIMIT).contains(n))
            .ok_or_else(|| PolicyError::new(key, n.to_string(), hint)),
        other => Err(PolicyError::new(key, shown(other), hint)),
    }
}

fn check_limits(policy: &EgressPolicy) -> Result<(), PolicyError> {
    let lists = [
        ("nonMasqueradeCIDRs", policy.non_masquerade.len()),
        ("masqueradeCIDRs", policy.masquerade.len()),
    ];
    for (key, count) in lists {
        if count > policy.cidr_limit {
            let fix = format!(
                "{count} entries exceed cidrLimit {}; merge ranges or raise cidrLimit (at most {MAX_CIDR_LIMIT})",
                policy.cidr_limit
            );
            return Err(PolicyError::new(key, "", fix));
        }
    }
    Ok(())
}

fn check_overlap(policy: &EgressPolicy) -> Result<(), PolicyError> {
    match policy
        .masquerade
        .iter()
        .find(|c| policy.non_masquerade.contains(c))
    {
        Some(both) => Err(PolicyError::new(
            "masqueradeCIDRs",
            both.to_string(),
            "also listed in nonMasqueradeCIDRs; remove it from one of the two lists",
        )),
        None => Ok(()),
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with a unit (`ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h`), such as `300ms`, `1m30s` or `1.5h`, optionally signed; `0` alone.
/// `None` for anything else and for negative durations.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let body = text.strip_prefix('+').unwrap_or(text);
    if body == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = body;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let unit_len = rest[number_len..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len() - number_len);
        let (number, unit) = rest[..number_len + unit_len].split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        total += number.parse::<f64>().ok()? * unit_seconds(unit)?;
        rest = &rest[number_len + unit_len..];
    }
    (!body.is_empty()).then(|| Duration::from_secs_f64(total))
}

fn unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1e-9,
        "us" | "µs" | "μs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PolicyError {
        parse_policy(text).unwrap_err()
    }

    #[test]
    fn ip_masq_agent_example_files_parse() {
        // The README's example config (YAML) and the same as JSON.
        let yaml = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 192.168.0.0/16\nmasqLinkLocal: true\nresyncInterval: 60s\n";
        let json = r#"{"nonMasqueradeCIDRs": ["10.0.0.0/8", "192.168.0.0/16"], "masqLinkLocal": true, "resyncInterval": "60s"}"#;
        for text in [yaml, json] {
            let p = parse_policy(text).unwrap();
            assert_eq!(p.non_masquerade.len(), 2, "{text}");
            assert!(p.masq_link_local);
            assert_eq!(p.resync_interval, Duration::from_secs(60));
            assert!(p.masquerade.is_empty());
        }
        // The shapes of ip-masq-agent's own examples: its DaemonSet's ConfigMap (flow list),
        // the Kubernetes task page (block list), and an all-keys file with an empty list.
        let configmap =
            parse_policy("nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n")
                .unwrap();
        assert_eq!(configmap, EgressPolicy::default());
        let task_page =
            parse_policy("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nresyncInterval: 60s\n").unwrap();
        assert_eq!(task_page.non_masquerade.len(), 1);
        let all_keys = "nonMasqueradeCIDRs: []\nmasqLinkLocal: false\nmasqLinkLocalIPv6: false\nresyncInterval: 60s\ncidrLimit: 64\n";
        assert!(parse_policy(all_keys).unwrap().non_masquerade.is_empty());
        assert_eq!(parse_policy("").unwrap(), EgressPolicy::default());
        assert_eq!(parse_policy("{}").unwrap(), EgressPolicy::default());
        let none = parse_policy("nonMasqueradeCIDRs: null\ncidrLimit: 10\n").unwrap();
        assert!(none.non_masquerade.is_empty());
        assert_eq!(none.cidr_limit, 10);
        let exceptions = parse_policy("nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.100.10.0/24]\nmasqLinkLocalIPv6: false\nresyncInterval: 1m30s\n").unwrap();
        assert_eq!(
            exceptions.masquerade,
            ["10.100.10.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(exceptions.resync_interval, Duration::from_secs(90));
    }

    #[test]
    fn every_error_names_the_key_the_value_and_the_fix() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "nonMasqueradeCIDRs: [10.1.2.3/8]",
                "nonMasqueradeCIDRs",
                "10.1.2.3/8",
                "use 10.0.0.0/8",
            ),
            (
                "nonMasqueradeCIDRs: [banana]",
                "nonMasqueradeCIDRs",
                "banana",
                "10.0.0.0/8",
            ),
            (
                "nonMasqueradeCIDRs: [fd00::/8]",
                "nonMasqueradeCIDRs",
                "fd00::/8",
                "IPv6",
            ),
            (
                "nonMasqueradeCIDRs: 10.0.0.0/8",
                "nonMasqueradeCIDRs",
                "10.0.0.0/8",
                "list",
            ),
            (
                "nonMasqueradeCIDRs: [7]",
                "nonMasqueradeCIDRs",
                "7",
                "CIDR string",
            ),
            (
                "masqueradeCIDRs: [10.0.0.0/8, 10.0.0.0/8]",
                "masqueradeCIDRs",
                "10.0.0.0/8",
                "twice",
            ),
            (
                "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.0.0.0/8]",
                "masqueradeCIDRs",
                "10.0.0.0/8",
                "remove it from one",
            ),
            (
                "masqLinkLocal: yes please",
                "masqLinkLocal",
                "yes please",
                "true or false",
            ),
            ("resyncInterval: 60", "resyncInterval", "60", "60s"),
            (
                "resyncInterval: 10 minutes",
                "resyncInterval",
                "10 minutes",
                "1m30s",
            ),
            ("resyncInterval: 0s", "resyncInterval", "0s", "positive"),
            ("cidrLimit: 5000", "cidrLimit", "5000", "1024"),
            (
                "nonMasqueradeCIDR: [10.0.0.0/8]",
                "nonMasqueradeCIDR",
                "",
                "valid keys are nonMasqueradeCIDRs",
            ),
            (
                "cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8, 11.0.0.0/8]",
                "nonMasqueradeCIDRs",
                "",
                "exceed cidrLimit 1",
            ),
        ];
        for (text, key, value, fix) in cases {
            let e = err(text);
            assert_eq!((e.key.as_str(), e.value.as_str()), (*key, *value), "{text}");
            let shown = e.to_string();
            assert!(
                shown.contains(fix) && shown.contains(key),
                "{text}: {shown}"
            );
        }
        for broken in ["[10.0.0.0/8]", "a: [", "--- {}\n--- {}\n"] {
            assert!(err(broken).key.is_empty(), "{broken}");
        }
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("60s"), Some(Duration::from_secs(60)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(d("2h45m0.5s"), Some(Duration::from_secs_f64(9900.5)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        for bad in ["", "60", "s", "1x", "-1s", "1m30", ".s", "1 m"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }
}

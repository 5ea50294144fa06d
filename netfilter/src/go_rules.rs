//! The rules Go flanneld wrote directly into the built-in chains (v0.11 to v0.19), built for a
//! Network and subnet: what the agent retires when its Network or subnet changed
//! ([`crate::ruleset`]) and what `flanneld doctor` and `cleanup --go-leftovers` look for
//! ([`crate::leftovers`]). Pure, and a leaf: it knows only rules.

use ipnet::IpNet;

use crate::rule::Rule;

/// Go flanneld's masquerade rules in nat `POSTROUTING` for `network` and our `subnet`, with
/// and without `--random-fully`, with `comment` (v0.17 to v0.19) or without (v0.11 to v0.16);
/// multicast destinations (`multicast`, the family's range) are not masqueraded.
pub(crate) fn go_masq_rules(
    network: IpNet,
    subnet: IpNet,
    comment: Option<&str>,
    multicast: &str,
) -> Vec<Rule> {
    let (n, s) = (network.to_string(), subnet.to_string());
    let rule = |matches: &[&str], target: &[&str]| {
        let mut spec = matches.to_vec();
        if let Some(text) = comment {
            spec.extend(["-m", "comment", "--comment", text]);
        }
        spec.push("-j");
        spec.extend(target);
        Rule::new("POSTROUTING", &spec)
    };
    let mut rules = vec![
        rule(&["-s", &n, "-d", &n], &["RETURN"]),
        rule(&["!", "-s", &n, "-d", &s], &["RETURN"]),
    ];
    for masq in [&["MASQUERADE"][..], &["MASQUERADE", "--random-fully"]] {
        rules.push(rule(&["-s", &n, "!", "-d", multicast], masq));
        rules.push(rule(&["!", "-s", &n, "-d", &n], masq));
    }
    rules
}

/// Go flanneld's accept rules in filter `FORWARD` for `network`, with or without `comment`.
pub(crate) fn go_forward_rules(network: IpNet, comment: Option<&str>) -> Vec<Rule> {
    let n = network.to_string();
    ["-s", "-d"]
        .into_iter()
        .map(|direction| {
            let mut spec = vec![direction, &n];
            if let Some(text) = comment {
                spec.extend(["-m", "comment", "--comment", text]);
            }
            spec.extend(["-j", "ACCEPT"]);
            Rule::new("FORWARD", &spec)
        })
        .collect()
}

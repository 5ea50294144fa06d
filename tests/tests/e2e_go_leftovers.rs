//! End to end, a host switched from Go flanneld v0.11 in place (issue 24): Go's rules stay in
//! nat POSTROUTING and filter FORWARD behind ours; `flanneld doctor` names them with the exact
//! commands, `flanneld cleanup --go-leftovers` removes exactly them, and nobody else's rules.

use std::fs;

use flanneld_tests::cluster::{flanneld_bin, Cluster};

const CONFIG: &str = r#"{"Network":"10.48.0.0/16","Backend":{"Type":"host-gw"}}"#;
const NETWORK: &str = "10.48.0.0/16";
/// The subnet Go flanneld held, recorded in its subnet.env; the agent re-claims it.
const SUBNET: &str = "10.48.7.0/24";

/// What Go flanneld v0.11 appended (iptables-nft flavour, with --random-fully), as
/// `iptables-save` prints it.
fn go_rules() -> [(&'static str, String); 6] {
    let n = NETWORK;
    [
        ("nat", format!("-A POSTROUTING -s {n} -d {n} -j RETURN")),
        (
            "nat",
            format!("-A POSTROUTING -s {n} ! -d 224.0.0.0/4 -j MASQUERADE --random-fully"),
        ),
        (
            "nat",
            format!("-A POSTROUTING ! -s {n} -d {SUBNET} -j RETURN"),
        ),
        (
            "nat",
            format!("-A POSTROUTING ! -s {n} -d {n} -j MASQUERADE --random-fully"),
        ),
        ("filter", format!("-A FORWARD -s {n} -j ACCEPT")),
        ("filter", format!("-A FORWARD -d {n} -j ACCEPT")),
    ]
}

/// Docker's rule, which is not Go flanneld's and must stay.
const DOCKER: &str = "-A POSTROUTING -s 10.48.7.0/24 ! -o docker0 -j MASQUERADE";

fn flanneld(c: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let out = c.hosts[0].try_exec(flanneld_bin().to_str().unwrap(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn go_flanneld_rules_are_named_by_doctor_and_removed_by_cleanup_go_leftovers_only() {
    let mut c = Cluster::build(1, CONFIG, &["--ip-masq"]);
    let env = c.subnet_env(0);
    fs::create_dir_all(env.parent().unwrap()).unwrap();
    let previous = format!("FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.48.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n");
    fs::write(&env, previous).unwrap();
    for (table, rule) in go_rules().iter().chain([&("nat", DOCKER.to_string())]) {
        c.hosts[0].sh(&format!("iptables-nft -t {table} {rule}"));
    }
    c.start_agent(0);
    assert_eq!(c.wait_subnet(0), "10.48.7.1/24");
    c.wait_ready(0);

    // The doctor, reading the running agent's flags: a note with the exact commands.
    let (code, said) = flanneld(&c, &["doctor"]);
    assert_eq!(code, Some(0), "a note is no problem:\n{said}");
    assert!(said.contains("go-flanneld-rules"), "{said}");
    for (table, rule) in go_rules() {
        let delete = format!("iptables-nft -t {table} {}", rule.replacen("-A", "-D", 1));
        assert!(said.contains(&delete), "{delete} missing:\n{said}");
    }
    assert!(
        said.contains("A rollback to Go flanneld adds them again"),
        "{said}"
    );

    let subnet_file = format!("--subnet-file={}", env.display());
    let (code, removed) = flanneld(&c, &["cleanup", "--go-leftovers", &subnet_file]);
    assert_eq!(code, Some(0), "{removed}");
    let save = |table: &str| c.hosts[0].exec("iptables-nft-save", &["-t", table]);
    for (table, rule) in go_rules() {
        assert!(!save(table).contains(&rule), "{rule} still there");
        assert!(removed.contains(&rule.replacen("-A", "-D", 1)), "{removed}");
    }
    let nat = save("nat");
    assert!(nat.contains(DOCKER), "docker's rule stays:\n{nat}");
    assert!(nat.contains("-j FLANNEL-POSTRTG"), "ours stay:\n{nat}");
    assert!(save("filter").contains("-j FLANNEL-FWD"));
    let (_, after) = flanneld(&c, &["doctor"]);
    assert!(!after.contains("go-flanneld-rules"), "{after}");
    let (code, again) = flanneld(&c, &["cleanup", "--go-leftovers", &subnet_file]);
    assert_eq!(code, Some(0));
    assert!(
        again.contains("no Go flanneld rule for 10.48.0.0/16"),
        "{again}"
    );
}

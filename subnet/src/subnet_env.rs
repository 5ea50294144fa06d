//! subnet.env: the file the CNI plugin, docker and scripts read (`FLANNEL_NETWORK`,
//! `FLANNEL_SUBNET`, `FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`, `FLANNEL_MTU`,
//! `FLANNEL_IPMASQ`), and the previous values read back at start.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::family::Subnet;
use crate::lease::SubnetKey;
use crate::lease::NO_IPV4;

/// One family's lines of subnet.env: the cluster network and our subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyEnv<N> {
    /// The cluster network (`FLANNEL_NETWORK`, `FLANNEL_IPV6_NETWORK`).
    pub network: N,
    /// Our leased subnet (`FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`, written as its first host
    /// address, e.g. `10.1.74.1/24`).
    pub subnet: N,
}

/// The values written to subnet.env, in Go flanneld's line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 lines; `None` on an IPv6-only network.
    pub ipv4: Option<FamilyEnv<Ipv4Net>>,
    /// The IPv6 lines; `Some` when the network config enables IPv6.
    pub ipv6: Option<FamilyEnv<Ipv6Net>>,
    /// The pod MTU (`FLANNEL_MTU`).
    pub mtu: u32,
    /// Whether the agent masquerades (`FLANNEL_IPMASQ`).
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file contents: `KEY=value` lines, no quotes, `\n` line ends, as Go flanneld HEAD
    /// writes them (the IPv6 lines only on a network with IPv6).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(v4) = &self.ipv4 {
            text += &format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
                v4.network,
                v4.subnet.first_host()
            );
        }
        if let Some(v6) = &self.ipv6 {
            text += &format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}\n",
                v6.network,
                v6.subnet.first_host()
            );
        }
        text + &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq)
    }

    /// `FLANNEL_SUBNET`: the IPv4 subnet's first host address with its length (`10.1.74.1/24`),
    /// the address of the pod bridge (docker's `--bip`).
    pub fn flannel_subnet(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|v4| v4.subnet.first_host())
    }

    /// Reads a complete subnet.env as the agent writes it (each family's two keys valid or both
    /// absent, at least one family, MTU and IPMASQ); `None` when the file is missing or
    /// incomplete.
    pub fn read(path: &Path) -> Option<SubnetEnv> {
        let text = fs::read_to_string(path).ok()?;
        let value = |wanted: &str| {
            lines(&text).find_map(|line| match line {
                Line::Entry { key, value, .. } if key == wanted => Some(value.to_string()),
                _ => None,
            })
        };
        let env = SubnetEnv {
            ipv4: family_env(&value, "FLANNEL_NETWORK", "FLANNEL_SUBNET")?,
            ipv6: family_env(&value, "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")?,
            mtu: value("FLANNEL_MTU")?.parse().ok()?,
            ipmasq: value("FLANNEL_IPMASQ")? == "true",
        };
        (env.ipv4.is_some() || env.ipv6.is_some()).then_some(env)
    }

    /// The key of the lease these values describe (`10.1.74.0-24&fd00:1:4a::-64`).
    pub fn key(&self) -> SubnetKey {
        SubnetKey {
            ipv4: self.ipv4.map_or(NO_IPV4, |v4| v4.subnet),
            ipv6: self.ipv6.map(|v6| v6.subnet),
        }
    }

    /// Writes the file atomically: a temp file in the same directory, fsync, mode 0644 (whatever
    /// the umask), rename over the target, fsync of the directory. The directory is created 0755.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "subnet file path has no file name",
            )
        })?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(self.render().as_bytes())?;
            file.set_permissions(fs::Permissions::from_mode(0o644))?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// One family's pair of keys: `Some(None)` when both are absent, `None` when only one is there
/// or one is not a single subnet.
fn family_env<N: Subnet + FromStr>(
    value: &dyn Fn(&str) -> Option<String>,
    network: &str,
    subnet: &str,
) -> Option<Option<FamilyEnv<N>>> {
    match (value(network), value(subnet)) {
        (None, None) => Some(None),
        (Some(n), Some(s)) => Some(Some(FamilyEnv {
            network: single_cidr(&n)?,
            subnet: single_cidr(&s)?,
        })),
        _ => None,
    }
}

/// What a previous run left in subnet.env: used to re-claim the same subnet and to remove rules
/// built from old values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreviousEnv {
    /// `FLANNEL_NETWORK`, if present and valid.
    pub network: Option<Ipv4Net>,
    /// `FLANNEL_SUBNET` as a network (`10.1.74.1/24` ⇒ `10.1.74.0/24`), if present and valid.
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK`, if present and valid.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET` as a network (`fd00:1::1/64` ⇒ `fd00:1::/64`).
    pub ipv6_subnet: Option<Ipv6Net>,
}

impl PreviousEnv {
    /// Reads `path`; a missing or unreadable file gives empty values. What cannot be used (an
    /// unreadable file, a line that is not `KEY=value`, a subnet value that is not one IPv4
    /// subnet) is logged with what was ignored.
    pub fn read(path: &Path) -> PreviousEnv {
        match fs::read_to_string(path) {
            Ok(text) => {
                for problem in problems(&text) {
                    tracing::warn!("{}: {problem}", path.display());
                }
                PreviousEnv::parse(&text)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PreviousEnv::default(),
            Err(e) => {
                tracing::warn!(
                    "cannot read {} ({e}): no subnet of a previous run is known",
                    path.display()
                );
                PreviousEnv::default()
            }
        }
    }

    /// The lease key of the previous run, to claim again: its IPv4 subnet with the IPv6 one
    /// when there was one (`0.0.0.0-0&<v6>` on an IPv6-only network).
    pub fn key(&self) -> Option<SubnetKey> {
        match (self.subnet, self.ipv6_subnet) {
            (None, None) => None,
            (ipv4, ipv6) => Some(SubnetKey {
                ipv4: ipv4.unwrap_or(NO_IPV4),
                ipv6,
            }),
        }
    }

    /// Parses dotenv text (comments, `export`, quotes tolerated). A value may be a comma list as
    /// Go flanneld accepts: invalid entries are skipped, and more than one valid entry means the
    /// value is ambiguous and treated as absent.
    pub fn parse(text: &str) -> PreviousEnv {
        let mut prev = PreviousEnv::default();
        for line in lines(text) {
            match line {
                Line::Entry {
                    key: "FLANNEL_NETWORK",
                    value,
                    ..
                } => prev.network = single_cidr(value),
                Line::Entry {
                    key: "FLANNEL_SUBNET",
                    value,
                    ..
                } => prev.subnet = single_cidr(value),
                Line::Entry {
                    key: "FLANNEL_IPV6_NETWORK",
                    value,
                    ..
                } => prev.ipv6_network = single_cidr(value),
                Line::Entry {
                    key: "FLANNEL_IPV6_SUBNET",
                    value,
                    ..
                } => prev.ipv6_subnet = single_cidr(value),
                _ => {}
            }
        }
        prev
    }
}

/// One line of a dotenv file that is neither blank nor a comment.
enum Line<'a> {
    /// `KEY=value`, with `export`, spaces and quotes stripped.
    Entry {
        number: usize,
        key: &'a str,
        value: &'a str,
    },
    /// Not of that form.
    Malformed { number: usize, text: &'a str },
}

/// The lines of `text` as [`PreviousEnv::parse`] reads them, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        Some(match line.split_once('=') {
            Some((key, value)) => Line::Entry {
                number: n + 1,
                key: key.trim(),
                value: value.trim().trim_matches(|c| c == '"' || c == '\''),
            },
            None => Line::Malformed {
                number: n + 1,
                text: line,
            },
        })
    })
}

/// What [`PreviousEnv::parse`] ignores in `text`, one note per line, naming it.
fn problems(text: &str) -> Vec<String> {
    lines(text)
        .filter_map(|line| match line {
            Line::Malformed { number, text } => {
                Some(format!("ignoring line {number}: {text:?} is not KEY=value"))
            }
            Line::Entry { number, key, value }
                if ["FLANNEL_NETWORK", "FLANNEL_SUBNET"].contains(&key)
                    && single_cidr::<Ipv4Net>(value).is_none() =>
            {
                Some(format!(
                    "ignoring {key}={value:?} (line {number}): not one IPv4 subnet such as 10.5.34.1/24"
                ))
            }
            Line::Entry { number, key, value }
                if ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"].contains(&key)
                    && single_cidr::<Ipv6Net>(value).is_none() =>
            {
                Some(format!(
                    "ignoring {key}={value:?} (line {number}): not one IPv6 subnet such as fd00:5:34::1/64"
                ))
            }
            Line::Entry { .. } => None,
        })
        .collect()
}

/// The one valid subnet in a comma list, host bits cleared; `None` when there is none or more
/// than one (Go's reading).
fn single_cidr<N: Subnet + FromStr>(value: &str) -> Option<N> {
    let mut valid = value
        .split(',')
        .filter_map(|v| v.trim().parse::<N>().ok())
        .map(|n| n.truncated());
    match (valid.next(), valid.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_a_corrupt_file_loses_is_named() {
        let notes = problems(
            "FLANNEL_NETWORK=10.1.0.0/16\n\u{0}garbage\nFLANNEL_SUBNET=10.1.300.1/24\n# ok\n",
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("line 2") && notes[0].contains("not KEY=value"));
        assert!(
            notes[1].contains("FLANNEL_SUBNET=\"10.1.300.1/24\""),
            "{notes:?}"
        );
        assert!(problems("FLANNEL_SUBNET=10.1.3.1/24\nFLANNEL_MTU=1450\n").is_empty());
    }

    fn env() -> SubnetEnv {
        SubnetEnv {
            ipv4: Some(FamilyEnv {
                network: "10.1.0.0/16".parse().unwrap(),
                subnet: "10.1.74.0/24".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ipmasq: true,
        }
    }

    fn dual() -> SubnetEnv {
        SubnetEnv {
            ipv6: Some(FamilyEnv {
                network: "fc00::/48".parse().unwrap(),
                subnet: "fc00:0:0:4a::/64".parse().unwrap(),
            }),
            ..env()
        }
    }

    #[test]
    fn dual_stack_renders_like_go_head_and_reads_back() {
        assert_eq!(
            dual().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n\
             FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:4a::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let v6_only = SubnetEnv {
            ipv4: None,
            ..dual()
        };
        assert!(v6_only.render().starts_with("FLANNEL_IPV6_NETWORK="));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        for env in [dual(), v6_only] {
            env.write_atomic(&path).unwrap();
            assert_eq!(SubnetEnv::read(&path), Some(env.clone()));
            assert_eq!(PreviousEnv::read(&path).key(), Some(env.key()));
        }
        assert_eq!(dual().key().to_string(), "10.1.74.0-24&fc00:0:0:4a::-64");
        assert_eq!(
            PreviousEnv::parse("FLANNEL_IPV6_SUBNET=fc00:0:0:4a::1/64\n").key(),
            Some("0.0.0.0-0&fc00:0:0:4a::-64".parse().unwrap())
        );
        std::fs::write(
            &path,
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(SubnetEnv::read(&path), None, "half a family");
    }

    #[test]
    fn renders_exactly_like_flanneld() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn writes_atomically_with_mode_0644_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env().write_atomic(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_to_string(&path).unwrap(), env().render());
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
        let prev = PreviousEnv::read(&path);
        assert_eq!(prev.network, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(prev.subnet, Some("10.1.74.0/24".parse().unwrap()));
    }

    #[test]
    fn previous_values_tolerate_dotenv_syntax_and_comma_lists() {
        let prev = PreviousEnv::parse(
            "# c\nexport FLANNEL_NETWORK=\"10.2.0.0/16\"\nFLANNEL_SUBNET=bogus,10.2.3.1/24\n",
        );
        assert_eq!(prev.network, Some("10.2.0.0/16".parse().unwrap()));
        assert_eq!(prev.subnet, Some("10.2.3.0/24".parse().unwrap()));
        let prev =
            PreviousEnv::parse("FLANNEL_SUBNET=10.2.3.1/24,10.2.4.1/24\nFLANNEL_NETWORK=nope");
        assert_eq!(prev, PreviousEnv::default());
        assert_eq!(
            PreviousEnv::read(Path::new("/nonexistent/subnet.env")),
            PreviousEnv::default()
        );
    }

    #[test]
    fn a_written_file_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let env = env();
        env.write_atomic(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path), Some(env.clone()));
        assert_eq!(env.flannel_subnet().unwrap().to_string(), "10.1.74.1/24");
        std::fs::write(&path, "FLANNEL_NETWORK=10.1.0.0/16\n").unwrap();
        assert_eq!(SubnetEnv::read(&path), None, "incomplete");
    }
}

//! The import graph between the modules (files) of one crate, read from the source text, and
//! its cycles: `tests/tests/module_cycles.rs` keeps every crate of the workspace free of them.
//!
//! A module's imports are the `crate::`, `super::` and `self::` paths in its code (test modules
//! and other `#[cfg(test)]` items left out), resolved to the file that defines the first module
//! on the path. The crate root (`lib.rs`, `main.rs`) is the crate's facade and no node of the
//! graph: paths through its `pub use` re-exports are followed to their definitions, items
//! defined in it are left out. A name taken through another module's re-export is an import
//! of that module.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module's path from the crate root, e.g. `["cli", "options"]`; empty for the root.
type ModPath = Vec<String>;

/// One import: the module that imports, the one imported from and the names taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// The importing file, relative to `src/`.
    pub from: String,
    /// The file imported from.
    pub to: String,
    /// The first names taken, for the message.
    pub names: Vec<String>,
}

/// A crate's modules and the paths each of them names.
pub struct Crate {
    files: BTreeMap<ModPath, String>,
    paths: BTreeMap<ModPath, Vec<ModPath>>,
    root_reexports: BTreeMap<String, ModPath>,
}

impl Crate {
    /// Reads every `.rs` file under `src`.
    pub fn read(src: &Path) -> std::io::Result<Crate> {
        let mut sources = Vec::new();
        collect(src, src, &mut sources)?;
        Ok(Crate::from_sources(sources))
    }

    /// A crate from `(path relative to src/, text)` pairs.
    pub fn from_sources(sources: Vec<(String, String)>) -> Crate {
        let mut krate = Crate {
            files: BTreeMap::new(),
            paths: BTreeMap::new(),
            root_reexports: BTreeMap::new(),
        };
        let modules: BTreeSet<ModPath> = sources.iter().map(|(f, _)| module_path(f)).collect();
        for (file, text) in sources {
            let module = module_path(&file);
            let code = without_tests(&text);
            let paths = referenced_paths(&module, &modules, &code);
            if module.is_empty() {
                krate.root_reexports.extend(reexports(&module, &code));
            }
            krate.paths.insert(module.clone(), paths);
            krate.files.insert(module, file);
        }
        krate
    }

    /// Every import between two different non-root modules, one per pair.
    pub fn imports(&self) -> Vec<Import> {
        let mut pairs: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (module, paths) in &self.paths {
            if module.is_empty() {
                continue;
            }
            for path in paths {
                let Some((target, name)) = self.resolve(path, 0) else {
                    continue;
                };
                if target.is_empty() || &target == module {
                    continue;
                }
                let key = (self.files[module].clone(), self.files[&target].clone());
                pairs.entry(key).or_default().insert(name);
            }
        }
        let to_import = |((from, to), names): ((String, String), BTreeSet<String>)| Import {
            from,
            to,
            names: names.into_iter().take(4).collect(),
        };
        pairs.into_iter().map(to_import).collect()
    }

    /// The file that defines what `path` names, and the name taken from it; `None` when it is
    /// outside the crate.
    fn resolve(&self, path: &ModPath, depth: usize) -> Option<(ModPath, String)> {
        let known = (0..=path.len())
            .rev()
            .find(|n| self.files.contains_key(&path[..*n]))?;
        let module = path[..known].to_vec();
        let Some(next) = path.get(known) else {
            return Some((module, path.last().cloned().unwrap_or_default()));
        };
        // Only the root's re-exports are followed: a name taken through another module's
        // `pub use` makes the taker depend on that module's file.
        let through = module
            .is_empty()
            .then(|| self.root_reexports.get(next))
            .flatten();
        match through {
            Some(source) if depth < 8 => {
                let mut followed = source.clone();
                followed.extend_from_slice(&path[known + 1..]);
                self.resolve(&followed, depth + 1)
            }
            _ => Some((module, next.clone())),
        }
    }

    /// The import cycles: each a list of imports from a file back to itself.
    pub fn cycles(&self) -> Vec<Vec<Import>> {
        let imports = self.imports();
        let mut next: BTreeMap<&str, Vec<&Import>> = BTreeMap::new();
        for import in &imports {
            next.entry(import.from.as_str()).or_default().push(import);
        }
        let mut cycles: Vec<Vec<Import>> = Vec::new();
        let mut seen_sets: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        for start in next.keys() {
            if let Some(cycle) = cycle_from(start, &next) {
                let members: BTreeSet<String> = cycle.iter().map(|i| i.from.clone()).collect();
                if seen_sets.insert(members) {
                    cycles.push(cycle);
                }
            }
        }
        cycles
    }
}

/// A shortest cycle through `start`, by breadth-first search.
fn cycle_from(start: &str, next: &BTreeMap<&str, Vec<&Import>>) -> Option<Vec<Import>> {
    let mut came_by: BTreeMap<&str, &Import> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for import in next.get(at).into_iter().flatten() {
            if import.to == start {
                let mut cycle = vec![(*import).clone()];
                let mut back = at;
                while back != start {
                    let by = came_by[back];
                    cycle.push(by.clone());
                    back = by.from.as_str();
                }
                cycle.reverse();
                return Some(cycle);
            }
            if !came_by.contains_key(import.to.as_str()) {
                came_by.insert(import.to.as_str(), import);
                queue.push_back(import.to.as_str());
            }
        }
    }
    None
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            out.push((relative.display().to_string(), fs::read_to_string(&path)?));
        }
    }
    Ok(())
}

/// `cli/options.rs` → `[cli, options]`; `cli/mod.rs` → `[cli]`; `lib.rs`, `main.rs` and the
/// files of `bin/` → `[]`.
fn module_path(file: &str) -> ModPath {
    let stem = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if parts.first().is_some_and(|p| p == "bin") || matches!(stem, "lib" | "main") {
        return Vec::new();
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// `base` extended by `tail`, where `self` stays and `super` goes up one module.
fn join(base: &ModPath, tail: Vec<String>) -> ModPath {
    let mut path = base.clone();
    for segment in tail {
        match segment.as_str() {
            "self" => {}
            "super" => {
                path.pop();
            }
            _ => path.push(segment),
        }
    }
    path
}

/// `text` with comments, string and char literals blanked and `#[cfg(test)]` items removed.
fn without_tests(text: &str) -> String {
    let code = blank_literals(text);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = skip_item(&rest[at + "#[cfg(test)]".len()..]);
    }
    out.push_str(rest);
    out
}

/// What follows the item at the start of `text`: after its `;` or its balanced `{ ... }`.
fn skip_item(text: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            ';' if depth == 0 => return &text[i + 1..],
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[i + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

/// `text` with the insides of comments and string and char literals replaced by spaces, so
/// braces and paths in them are not read as code.
fn blank_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let end = literal_end(&chars, i);
        if end > i {
            out.extend(std::iter::repeat_n(' ', end - i));
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Where a comment or literal starting at `i` ends; `i` when none starts there.
fn literal_end(chars: &[char], i: usize) -> usize {
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    let find = |from: usize, pat: &[char]| {
        (from..chars.len())
            .find(|k| chars[*k..].starts_with(pat))
            .map_or(chars.len(), |k| k + pat.len())
    };
    match (at(i), at(i + 1)) {
        ('/', '/') => find(i, &['\n']),
        ('/', '*') => find(i + 2, &['*', '/']),
        ('r', '#' | '"') if !at(i.wrapping_sub(1)).is_alphanumeric() => {
            let hashes = (i + 1..chars.len())
                .take_while(|k| chars[*k] == '#')
                .count();
            if at(i + 1 + hashes) != '"' {
                return i;
            }
            let mut close = vec!['"'];
            close.extend(std::iter::repeat_n('#', hashes));
            find(i + 2 + hashes, &close)
        }
        ('"', _) => {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                k += if chars[k] == '\\' { 2 } else { 1 };
            }
            k + 1
        }
        ('\'', '\\') => find(i + 2, &['\'']),
        ('\'', _) if at(i + 2) == '\'' => i + 3,
        _ => i,
    }
}

/// Every path in `code` that starts with `crate::`, `super::`, `self::` or the name of a child
/// module of `module`, made absolute, use groups (`{a, b::c}`) expanded.
fn referenced_paths(module: &ModPath, modules: &BTreeSet<ModPath>, code: &str) -> Vec<ModPath> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("::") {
        let start = (0..at)
            .rev()
            .find(|k| !(bytes[*k].is_ascii_alphanumeric() || bytes[*k] == b'_'))
            .map_or(0, |k| k + 1);
        if start >= 2 && &bytes[start - 2..start] == b"::" {
            continue;
        }
        let first = &code[start..at];
        let base = match first {
            "crate" => Vec::new(),
            "super" | "self" => join(module, vec![first.to_string()]),
            _ if modules.contains(&join(module, vec![first.to_string()])) => {
                join(module, vec![first.to_string()])
            }
            _ => continue,
        };
        for tail in expand_tree(&code[at + 2..]) {
            paths.push(join(&base, tail));
        }
    }
    paths
}

/// The paths of a use tree or path tail: `a::b::{c, d::e}` → `[a,b,c]`, `[a,b,d,e]`.
fn expand_tree(text: &str) -> Vec<ModPath> {
    let mut prefix = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group_end(group)];
            return split_top(inner)
                .into_iter()
                .flat_map(expand_tree)
                .map(|tail| prefix.iter().cloned().chain(tail).collect())
                .collect();
        }
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            return vec![prefix];
        }
        prefix.push(rest[..len].to_string());
        match rest[len..].strip_prefix("::") {
            Some(more) => rest = more.trim_start(),
            None => return vec![prefix],
        }
    }
}

/// The index of the `}` that closes a group whose `{` was just before `text`.
fn group_end(text: &str) -> usize {
    let mut depth = 1usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// The comma-separated items of a group, commas inside nested groups kept.
fn split_top(inner: &str) -> Vec<&str> {
    let (mut items, mut depth, mut from) = (Vec::new(), 0usize, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[from..]);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The names a module re-exports (`pub use`, `pub(crate) use`), each with the absolute path it
/// stands for.
fn reexports(module: &ModPath, code: &str) -> BTreeMap<String, ModPath> {
    let mut names = BTreeMap::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(tree) = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| statement.strip_prefix(p))
        else {
            continue;
        };
        let (base, tree) = match tree.split_once("::") {
            Some(("crate", rest)) => (Vec::new(), rest),
            _ => (module.clone(), tree),
        };
        for tail in expand_tree(tree) {
            let path = join(&base, tail);
            if let Some(name) = path.last() {
                names.insert(name.clone(), path.clone());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(files: &[(&str, &str)]) -> Crate {
        let sources = files.iter().map(|(f, t)| (f.to_string(), t.to_string()));
        Crate::from_sources(sources.collect())
    }

    #[test]
    fn use_trees_expand_to_paths() {
        assert_eq!(
            expand_tree("a::{b, c::{d, e}};"),
            vec![
                vec!["a".to_string(), "b".into()],
                vec!["a".into(), "c".into(), "d".into()],
                vec!["a".into(), "c".into(), "e".into()],
            ]
        );
    }

    #[test]
    fn a_cycle_through_a_reexport_is_found() {
        let k = krate(&[
            ("lib.rs", "mod a; mod b; pub use b::Thing;"),
            ("a.rs", "use crate::Thing; pub struct Other;"),
            ("b.rs", "pub struct Thing(crate::a::Other);"),
        ]);
        let cycles = k.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].len(), 2);
    }

    #[test]
    fn a_parent_and_a_child_that_use_each_other_are_a_cycle() {
        let k = krate(&[
            ("lib.rs", "mod x;"),
            ("x/mod.rs", "mod inner; pub use inner::g; pub struct T;"),
            ("x/inner.rs", "pub fn g() -> super::T { super::T }"),
        ]);
        assert_eq!(k.cycles().len(), 1, "{:?}", k.imports());
    }

    #[test]
    fn tests_comments_strings_and_the_root_are_not_imports() {
        let k = krate(&[
            ("lib.rs", "mod a; mod b; pub struct Root;"),
            (
                "a.rs",
                "use crate::Root; // crate::b::X\nfn f() { let _ = \"crate::b::X {\"; }\n#[cfg(test)]\nmod tests { use crate::b::X; }",
            ),
            ("b.rs", "pub struct X; use crate::a::f;"),
        ]);
        assert!(k.cycles().is_empty(), "{:?}", k.imports());
        assert_eq!(k.imports().len(), 1);
    }

    #[test]
    fn super_from_a_mod_file_is_its_parent() {
        let k = krate(&[
            ("lib.rs", "mod x; mod y;"),
            ("x/mod.rs", "mod inner; pub struct T;"),
            ("x/inner.rs", "use super::T; use super::super::y::U;"),
            ("y.rs", "pub struct U;"),
        ]);
        let to: Vec<_> = k.imports().into_iter().map(|i| (i.from, i.to)).collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            to,
            vec![pair("x/inner.rs", "x/mod.rs"), pair("x/inner.rs", "y.rs")]
        );
        assert!(k.cycles().is_empty());
    }
}

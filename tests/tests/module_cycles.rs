//! No import cycle between the modules of any crate of the workspace (`flanneld_tests::modgraph`
//! reads the imports from the source): a cycle means two files that cannot be read, changed or
//! tested one without the other, and the layering in docs/architecture.md says there are none.

use std::path::Path;

use flanneld_tests::modgraph::Crate;

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for name in ["subnet", "backends", "netfilter", "flanneld", "tests"] {
        let krate = Crate::read(&root.join(name).join("src")).expect("read the crate's sources");
        assert!(
            !krate.imports().is_empty() || name == "tests",
            "{name}: no import read"
        );
        for cycle in krate.cycles() {
            let steps: Vec<String> = cycle
                .iter()
                .map(|i| format!("{} -> {} ({})", i.from, i.to, i.names.join(", ")))
                .collect();
            found.push(format!("{name}: {}", steps.join("; ")));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles (move the shared items into a leaf module both can import):\n{}",
        found.join("\n")
    );
}

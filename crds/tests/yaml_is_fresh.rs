//! The committed CRD YAML must be exactly what the Rust types generate.

#[test]
fn committed_yaml_matches_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = sluice_crds::generated_files().expect("CRDs serialise");
    assert!(!files.is_empty());
    let pairs = sluice_crds::OUTPUT_DIRS
        .iter()
        .flat_map(|d| files.iter().map(move |f| (d, f)));
    for (dir, (name, body)) in pairs {
        let path = root.join(dir).join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo xtask crds`",
                path.display()
            )
        });
        assert!(
            committed == *body,
            "{} is stale: the Rust types generate something else; run `cargo xtask crds`",
            path.display()
        );
    }
}

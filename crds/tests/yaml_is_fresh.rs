//! The committed CRD YAML must be exactly what the Rust types generate.

#[test]
fn committed_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let files = sluice_crds::generated_files().expect("CRDs serialise");
    assert!(!files.is_empty());
    for (name, body) in files {
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo xtask crds`",
                path.display()
            )
        });
        assert!(
            committed == body,
            "{} is stale: the Rust types generate something else; run `cargo xtask crds`",
            path.display()
        );
    }
}

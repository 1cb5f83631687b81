//! Writes (or with `--check`, compares) the generated CRD YAML.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let root = root.canonicalize().unwrap_or(root);
    let files = match sluice_crds::generated_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: serialising CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = false;
    let pairs = sluice_crds::OUTPUT_DIRS
        .iter()
        .flat_map(|d| files.iter().map(move |f| (d, f)));
    for (dir, (name, body)) in pairs {
        let dir = root.join(dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("error: creating {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        let path = dir.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == *body {
            continue;
        }
        if check {
            eprintln!("stale: {} (run `cargo xtask crds`)", path.display());
            stale = true;
        } else if let Err(e) = std::fs::write(&path, body) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

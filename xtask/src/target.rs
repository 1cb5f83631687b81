//! Where cargo builds the workspace. `cargo xtask test` and `demo` build
//! into the project's cache unless a target directory is chosen: CI runs
//! them in a fresh clone each time, whose own `target/` would start empty
//! and compile every dependency again (about ten minutes on two cores).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{cache_dir, root};

/// The cached target directory, once a task has chosen it.
static CACHED: OnceLock<PathBuf> = OnceLock::new();

/// Past this size the cached target directory is emptied before a build:
/// every clone at a new path adds its own build of the workspace's crates,
/// and cargo never removes them.
const CACHED_LIMIT_BYTES: u64 = 30 << 30;

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, else the cache if
/// [`use_cache`] chose it, else `target/`.
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| CACHED.get().cloned())
        .unwrap_or_else(|| root().join("target"))
}

/// Builds into `<cache>/target` from now on, unless `CARGO_TARGET_DIR`
/// says otherwise; empties it first when it has grown past the limit.
pub fn use_cache() {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        return;
    }
    let dir = cache_dir().join("target");
    let size = size_of(&dir);
    if size > CACHED_LIMIT_BYTES {
        eprintln!(
            "the cached target directory {} holds {} GiB (limit {}): emptying it",
            dir.display(),
            size >> 30,
            CACHED_LIMIT_BYTES >> 30
        );
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("could not empty {}: {e}", dir.display());
        }
    }
    eprintln!(
        "building into {} (set CARGO_TARGET_DIR to choose another)",
        dir.display()
    );
    let _ = CACHED.set(dir);
}

/// Sets the build environment on a cargo command: the target directory,
/// and, in the cache, no incremental build state (it is most of a debug
/// target's size and serves only edit-and-rebuild loops).
pub fn configure(cmd: &mut std::process::Command) {
    // Set only when `CARGO_TARGET_DIR` is not (see `use_cache`).
    if let Some(dir) = CACHED.get() {
        cmd.env("CARGO_TARGET_DIR", dir)
            .env("CARGO_INCREMENTAL", "0");
    }
}

/// Bytes under `dir` (0 when it is missing); symbolic links not followed.
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => size_of(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_files_in_subdirectories_and_a_missing_directory_is_empty() {
        let dir = std::env::temp_dir().join(format!("sluice-xtask-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("debug/deps")).expect("mkdir");
        std::fs::write(dir.join("a"), [0u8; 10]).expect("write");
        std::fs::write(dir.join("debug/deps/b"), [0u8; 32]).expect("write");
        assert_eq!(size_of(&dir), 42);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(size_of(&dir), 0);
    }
}

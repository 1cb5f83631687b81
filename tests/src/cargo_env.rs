//! The environment of a nested `cargo` command. `cargo run` and `cargo
//! test` give the binary they start variables about itself (its manifest
//! directory, package name and version, crate and binary name). Passed on
//! to a `cargo build` of the workspace, they change the fingerprints of
//! build scripts that watch the environment (ring's, through cc), and
//! everything above them is rebuilt: two minutes on two cores, each time.
//!
//! Shared by the test harness and xtask (included by path: xtask does not
//! depend on the harness).

use std::process::Command;

/// Whether `cargo run` or `cargo test` set `key` for the running binary.
fn set_for_the_binary(key: &str) -> bool {
    key.starts_with("CARGO_MANIFEST_")
        || key.starts_with("CARGO_PKG_")
        || [
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ]
        .contains(&key)
}

/// Removes from `cmd`'s environment what cargo set for the running binary.
pub fn clear_run_vars(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_for_the_binary) {
            cmd.env_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_cargo_sets_for_the_binary_is_removed() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_LINKS",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(set_for_the_binary(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_HOME",
            "PATH",
        ] {
            assert!(!set_for_the_binary(key), "{key}");
        }
    }
}

//! A profile-guided build of sluice-proxy, measured beside the plain
//! release build (`cargo xtask bench proxy`, its "PGO" row).
//!
//! The proxy is built once with LLVM's instrumentation, trained on the
//! benchmark's own loads (plaintext, TLS, the sidecar pair over mTLS with
//! the 100-rule policy, each at peak and at the fixed rate, against the
//! benchmark's backend), and built again with the profile. At 2,000 req/s
//! each request starts on caches gone cold while the proxy slept; the
//! profile puts the request path's code together and its rare branches
//! aside, so that less of it has to be fetched again.
//!
//! Both builds go to target directories of their own in the project's
//! cache, for the target triple named (so that build scripts and proc
//! macros are neither instrumented nor profiled), and leave the
//! workspace's release build as it is. A profile is kept under the name
//! of the instrumented build it was trained on and of the training, and
//! reused while neither changes: a rerun on the same code skips the
//! training and the second build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Contender, MESH, PORTS, Proc, rate, sluice_command, spawn, wait_http, wrk_peak};
use crate::{cache_dir, cargo, run};

/// Seconds of each training load.
const TRAIN_SECONDS: u32 = 2;

/// Builds the instrumented proxy, trains it against the running backend
/// (configs and certificates in `dir`, `bench` the load tool) and returns
/// the path of the build that used its profile.
pub fn build(dir: &Path, bench: &Path) -> Result<PathBuf> {
    let host = host_triple()?;
    let pgo = cache_dir().join("pgo");
    let raw = pgo.join("raw");
    let instrumented = build_with(
        "build sluice-proxy instrumented for PGO (release)",
        &pgo.join("generate"),
        &host,
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    // A profile is kept for the instrumented build it was trained on and
    // the training that ran (this file): while neither changes, the next
    // run reuses it, and cargo finds the build that used it up to date.
    let key = fnv1a(&std::fs::read(&instrumented)?) ^ fnv1a(include_bytes!("pgo.rs"));
    let named = pgo.join(format!("proxy-{key:016x}.profdata"));
    if named.exists() {
        eprintln!(
            "\n==> reuse the profile of this instrumented build: {}",
            named.display()
        );
    } else {
        // Only what the training writes.
        let _ = std::fs::remove_dir_all(&raw);
        std::fs::create_dir_all(&raw)?;
        train(&instrumented, &raw, dir, bench)?;
        let merged = pgo.join("merged.profdata");
        run("merge the training's profiles", {
            let mut c = Command::new(llvm_profdata(&host)?);
            c.arg("merge").arg("-o").arg(&merged).arg(&raw);
            c
        })?;
        std::fs::rename(&merged, &named)?;
        remove_other_profiles(&pgo, &named);
    }
    build_with(
        "build sluice-proxy with the profile (release)",
        &pgo.join("use"),
        &host,
        &format!("-Cprofile-use={}", named.display()),
    )
}

/// `cargo build --release` of the proxy for `host` into `target_dir` with
/// `rustflags`; the binary's path.
fn build_with(what: &str, target_dir: &Path, host: &str, rustflags: &str) -> Result<PathBuf> {
    run(what, {
        let mut c = cargo();
        c.args(["build", "--release", "--locked", "-p", "sluice-proxy"])
            .args(["--target", host])
            .env("CARGO_TARGET_DIR", target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", rustflags);
        c
    })?;
    Ok(target_dir.join(host).join("release/sluice-proxy"))
}

/// Runs the instrumented proxy through each training load, each process
/// stopped with SIGTERM so that it writes its profile into `raw`.
fn train(proxy: &Path, raw: &Path, dir: &Path, bench: &Path) -> Result<()> {
    eprintln!("\n==> train the instrumented proxy");
    let profile_file = raw.join("proxy-%p-%m.profraw");
    let start = |config: &str, cert: Option<&str>| -> Result<Proc> {
        let mut c = sluice_command(proxy, dir, config, cert);
        c.env("LLVM_PROFILE_FILE", &profile_file);
        spawn("sluice-proxy (instrumented)", c, &dir.join("pgo-train.log"))
    };
    let roots = dir.join("certs/roots.pem");
    {
        let mut plain = start("sluice.yaml", None)?;
        load(
            &Contender::ready("training", PORTS.sluice, Some(&mut plain), None)?,
            bench,
        )?;
        finish(plain)?;
    }
    {
        let mut tls = start("sluice-tls.yaml", None)?;
        let c = Contender::ready_over(
            "training",
            PORTS.sluice_tls,
            Some(roots),
            Some(&mut tls),
            None,
        )?;
        load(&c, bench)?;
        finish(tls)?;
    }
    let mut client = start("sluice-client.yaml", Some("client"))?;
    for (_, config, port) in MESH {
        let mut server = start(config, Some("server"))?;
        wait_http(PORTS.server_plain, &mut server)?;
        load(
            &Contender::ready("training", port, Some(&mut client), None)?,
            bench,
        )?;
        finish(server)?;
    }
    finish(client)
}

/// Peak, then the fixed rate, on `c`.
fn load(c: &Contender, bench: &Path) -> Result<()> {
    wrk_peak(&c.url(), TRAIN_SECONDS)?;
    rate(
        bench,
        &c.bench_target(),
        super::FIXED_RPS,
        TRAIN_SECONDS.into(),
    )?;
    Ok(())
}

/// Stops a training proxy; one that does not exit writes no profile.
fn finish(mut p: Proc) -> Result<()> {
    if !p.stop("-TERM", Duration::from_secs(10)) {
        bail!("the instrumented proxy did not exit on SIGTERM: no profile");
    }
    Ok(())
}

/// The toolchain's `llvm-profdata` for `host` (rustup's `llvm-tools`,
/// added if missing: its LLVM must be rustc's, which Debian's is not).
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let path = Path::new(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/llvm-profdata"));
    if !path.exists() {
        run("add rustup's llvm-tools (llvm-profdata)", {
            let mut c = Command::new("rustup");
            c.args(["component", "add", "llvm-tools"])
                .current_dir(crate::root());
            c
        })?;
    }
    if !path.exists() {
        bail!("{} is missing after adding llvm-tools", path.display());
    }
    Ok(path)
}

/// rustc's host target triple.
fn host_triple() -> Result<String> {
    let info = output(Command::new("rustc").arg("-vV"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host in `rustc -vV`")
}

/// A command's standard output, run at the workspace root (where the
/// toolchain file picks rustc).
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .current_dir(crate::root())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the profiles of earlier runs beside `keep`.
fn remove_other_profiles(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p != keep && p.extension().is_some_and(|x| x == "profdata") {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// FNV-1a, 64 bits: a name for a file's content, not a defence.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_named_by_its_bytes_in_their_order() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
    }
}

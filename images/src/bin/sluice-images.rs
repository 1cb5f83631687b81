//! `sluice-images`: writes Sluice's OCI image archives (see
//! `sluice_images::catalog`) from built workspace binaries. `cargo xtask
//! images` runs it on the release build.
//!
//! ```text
//! sluice-images --bins target/release --out target/images
//! sluice-images --bins target/release --rootfs /rootfs   # file trees, for the Dockerfile
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Write Sluice's OCI image archives")]
struct Args {
    /// Where the workspace's binaries are (`target/release`).
    #[arg(long)]
    bins: PathBuf,
    /// Where the archives go.
    #[arg(long, required_unless_present = "rootfs")]
    out: Option<PathBuf>,
    /// Write each image's file tree under this directory instead (one
    /// directory per image, named as its archive without `.oci.tar`).
    #[arg(long, conflicts_with = "out")]
    rootfs: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let images = match sluice_images::catalog::sluice(&args.bins) {
        Ok(images) => images,
        Err(e) => {
            eprintln!("sluice-images: {e}");
            return ExitCode::FAILURE;
        }
    };
    for image in images {
        if let Some(dir) = &args.rootfs {
            let name = image.archive_name().replace(".oci.tar", "");
            if let Err(e) = image.rootfs.write_to(&dir.join(&name)) {
                eprintln!("sluice-images: {}: {e}", image.repository);
                return ExitCode::FAILURE;
            }
            println!("{}", dir.join(name).display());
            continue;
        }
        let Some(out) = &args.out else {
            return ExitCode::FAILURE;
        };
        match image.build(out) {
            Ok(path) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!(
                    "{}  {:.1} MiB  {}",
                    path.display(),
                    size as f64 / (1024.0 * 1024.0),
                    image.references().join(" ")
                );
            }
            Err(e) => {
                eprintln!("sluice-images: {}: {e}", image.repository);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

//! `sluice-images`: writes Sluice's OCI image archives (see
//! `sluice_images::catalog`) from built workspace binaries. `cargo xtask
//! images` runs it on the release build.
//!
//! ```text
//! sluice-images --bins target/release --out target/images
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
    #[arg(long)]
    out: PathBuf,
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
        match image.build(&args.out) {
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

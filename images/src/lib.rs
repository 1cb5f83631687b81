//! Sluice's container images, built without a container engine.
//!
//! An [`Image`] is a [`Rootfs`] (the programs, the shared libraries `ldd`
//! names for them, `/etc/passwd`, CA certificates) plus the config a
//! runtime needs (user, entrypoint, environment, labels), under one or more
//! tags. [`Image::build`] writes it as an OCI image layout archive that
//! containerd imports (`ctr images import`), as do `docker load`, `kind
//! load image-archive` and `k3d image import`. [`catalog`] lists Sluice's
//! own images: what `cargo xtask images` builds and the test bed's node
//! runs.

pub mod catalog;
pub mod layout;
pub mod rootfs;

use std::path::{Path, PathBuf};

pub use rootfs::Rootfs;

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the image needs is not there (a binary not built yet).
    #[error("{0} does not exist (build it first)")]
    Missing(PathBuf),
    /// `ldd` could not list a program's libraries.
    #[error("ldd {object}: {detail}")]
    Ldd {
        /// The program or library.
        object: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An OCI document could not be built (a bug of this crate).
    #[error("OCI document: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    /// JSON encoding failed (a bug of this crate).
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One tag of an image, with the environment that tag adds (demo-app's
/// tags set its colour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The tag (`0.1.0`, `blue`).
    pub tag: String,
    /// Environment this tag adds to the image's.
    pub env: Vec<(String, String)>,
}

impl Tag {
    /// A tag that adds nothing.
    pub fn plain(tag: &str) -> Tag {
        Tag {
            tag: tag.to_owned(),
            env: Vec::new(),
        }
    }
}

/// An image: one layer, one config per tag.
#[derive(Debug, Clone)]
pub struct Image {
    /// The repository, without registry for Docker Hub-style names
    /// (`sluice/sluice-proxy`), or with it (`sluice.test/coredns`).
    pub repository: String,
    /// Its tags.
    pub tags: Vec<Tag>,
    /// One line for the `org.opencontainers.image.description` label.
    pub description: String,
    /// The file tree.
    pub rootfs: Rootfs,
    /// The program and its fixed arguments.
    pub entrypoint: Vec<String>,
    /// Default arguments (a pod's `args` replace them).
    pub cmd: Vec<String>,
    /// Environment of every tag.
    pub env: Vec<(String, String)>,
    /// `uid:gid` the container runs as unless the pod says otherwise.
    pub user: String,
    /// Ports the program listens on, for documentation.
    pub ports: Vec<u16>,
}

impl Image {
    /// The reference of `tag` as containerd stores it: Docker Hub-style
    /// names get `docker.io/` (what the kubelet's `sluice/x:t` normalises to).
    pub fn full_name(&self, tag: &str) -> String {
        let first = self.repository.split('/').next().unwrap_or("");
        let has_registry = self.repository.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if has_registry {
            format!("{}:{tag}", self.repository)
        } else {
            format!("docker.io/{}:{tag}", self.repository)
        }
    }

    /// The references of every tag, as a pod names them.
    pub fn references(&self) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| format!("{}:{}", self.repository, t.tag))
            .collect()
    }

    /// The file name of this image's archive.
    pub fn archive_name(&self) -> String {
        format!("{}.oci.tar", self.repository.replace(['/', ':'], "_"))
    }

    /// Writes the archive to `dir`, unless the one there was made from the
    /// same inputs (same files, sizes and modification times, same
    /// config). Returns its path.
    pub fn build(&self, dir: &Path) -> Result<PathBuf, Error> {
        let out = dir.join(self.archive_name());
        let stamp = out.with_extension("inputs");
        let inputs = self.fingerprint()?;
        let fresh = out.exists()
            && std::fs::read_to_string(&stamp).is_ok_and(|previous| previous == inputs);
        if !fresh {
            layout::write_archive(self, &out)?;
            std::fs::write(&stamp, &inputs).map_err(|e| Error::io(&stamp, e))?;
        }
        Ok(out)
    }

    /// A description of everything the archive is made of.
    fn fingerprint(&self) -> Result<String, Error> {
        use std::os::unix::fs::MetadataExt;
        let mut text = format!(
            "{} {:?} {:?} {:?} {:?} {} {:?} {}\n",
            self.repository,
            self.tags,
            self.entrypoint,
            self.cmd,
            self.env,
            self.user,
            self.ports,
            self.description
        );
        for (path, entry) in self.rootfs.entries() {
            match entry {
                rootfs::Entry::Copy { source, mode } => {
                    let m = std::fs::metadata(&source).map_err(|e| Error::io(&source, e))?;
                    text.push_str(&format!(
                        "{path} {} {} {} {mode:o}\n",
                        source.display(),
                        m.len(),
                        m.mtime_nsec() + m.mtime() * 1_000_000_000
                    ));
                }
                other => text.push_str(&format!("{path} {other:?}\n")),
            }
        }
        Ok(text)
    }
}

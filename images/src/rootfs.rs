//! The file tree of an image's single layer: programs with the shared
//! libraries they load, a few files written out, directories and links.
//!
//! Paths are absolute paths inside the image. Nothing is copied until the
//! layer is written ([`crate::layout`]); a [`Rootfs`] only records where
//! each entry comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file copied from the host (symlinks on the host followed).
    Copy {
        /// Where its bytes come from.
        source: PathBuf,
        /// Its permission bits in the image.
        mode: u32,
    },
    /// A regular file with the given content.
    Text {
        /// Its content.
        content: Vec<u8>,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory.
    Dir {
        /// Its permission bits (`0o1777` for `/tmp`).
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// What it points to.
        target: String,
    },
}

/// A user of the image's `/etc/passwd` (and its group of the same id).
#[derive(Debug, Clone, Copy)]
pub struct User {
    /// Login name.
    pub name: &'static str,
    /// User and group id.
    pub id: u32,
}

/// The users every image knows, so that `runAsUser` of any of Sluice's
/// ids has a name: root, the proxy's user (its UID is the contract with the
/// interception rules), the non-root user of the other images, nobody.
pub const USERS: &[User] = &[
    User {
        name: "root",
        id: 0,
    },
    User {
        name: "sluice-proxy",
        id: sluice_proto::config::PROXY_UID,
    },
    User {
        name: "nonroot",
        id: NONROOT_UID,
    },
    User {
        name: "nobody",
        id: 65534,
    },
];

/// The non-root user of the operator, demo-app and client images (as
/// distroless images name it).
pub const NONROOT_UID: u32 = 65532;

/// A layer's file tree, keyed by absolute path.
#[derive(Debug, Clone, Default)]
pub struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

impl Rootfs {
    /// The base every image starts from: `/etc/passwd` and `/etc/group` with
    /// [`USERS`], `/tmp`, and the CA bundle for TLS clients.
    pub fn base() -> Result<Rootfs, Error> {
        let mut fs = Rootfs::default();
        let passwd: String = USERS
            .iter()
            .map(|u| {
                let home = if u.id == 0 { "/root" } else { "/" };
                format!(
                    "{n}:x:{id}:{id}:{n}:{home}:/sbin/nologin\n",
                    n = u.name,
                    id = u.id
                )
            })
            .collect();
        let group: String = USERS
            .iter()
            .map(|u| format!("{}:x:{}:\n", u.name, u.id))
            .collect();
        fs.text("/etc/passwd", passwd, 0o644);
        fs.text("/etc/group", group, 0o644);
        fs.dir("/tmp", 0o1777);
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if bundle.exists() {
            fs.copy("/etc/ssl/certs/ca-certificates.crt", bundle, 0o644);
        }
        Ok(fs)
    }

    /// Adds directory `path` (and, when the tree is written, its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entries.insert(path.to_owned(), Entry::Dir { mode });
        self
    }

    /// Adds a file with `content`.
    pub fn text(&mut self, path: &str, content: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.entries.insert(
            path.to_owned(),
            Entry::Text {
                content: content.into(),
                mode,
            },
        );
        self
    }

    /// Adds a copy of host file `source` at `path`.
    pub fn copy(&mut self, path: &str, source: &Path, mode: u32) -> &mut Self {
        self.entries.insert(
            path.to_owned(),
            Entry::Copy {
                source: source.to_owned(),
                mode,
            },
        );
        self
    }

    /// Adds a symbolic link `path` → `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.insert(
            path.to_owned(),
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
        self
    }

    /// Adds program `source` at `path` with every shared library it loads,
    /// at the paths the dynamic loader will look for them (as `ldd` names
    /// them). A static program brings nothing else.
    pub fn program(&mut self, path: &str, source: &Path) -> Result<&mut Self, Error> {
        if !source.is_file() {
            return Err(Error::Missing(source.to_owned()));
        }
        self.copy(path, source, 0o755);
        self.libraries_of(source)
    }

    /// Adds the shared libraries `object` (a program or a library) loads.
    pub fn libraries_of(&mut self, object: &Path) -> Result<&mut Self, Error> {
        for lib in shared_libraries(object)? {
            let at = lib.display().to_string();
            self.copy(&at, &lib, 0o755);
        }
        Ok(self)
    }

    /// The entries, sorted by path, with every missing parent directory
    /// added (`0o755`), so that the layer lists a directory before what it
    /// holds.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        let mut all = self.entries.clone();
        let parents: BTreeSet<String> = self
            .entries
            .keys()
            .flat_map(|p| ancestors(p))
            .filter(|p| !self.entries.contains_key(p))
            .collect();
        for p in parents {
            all.insert(p, Entry::Dir { mode: 0o755 });
        }
        all.into_iter().collect()
    }
}

impl Rootfs {
    /// Writes the tree under `dir` (a `docker build` copies it into an
    /// empty image, so that the Dockerfile's images match the archives).
    pub fn write_to(&self, dir: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        for (path, entry) in self.entries() {
            let at = dir.join(path.trim_start_matches('/'));
            let io = |e: std::io::Error| Error::Io {
                path: at.clone(),
                source: e,
            };
            let mode = match &entry {
                Entry::Dir { mode } => {
                    std::fs::create_dir_all(&at).map_err(io)?;
                    Some(*mode)
                }
                Entry::Text { content, mode } => {
                    std::fs::write(&at, content).map_err(io)?;
                    Some(*mode)
                }
                Entry::Copy { source, mode } => {
                    std::fs::copy(source, &at).map_err(io)?;
                    Some(*mode)
                }
                Entry::Symlink { target } => {
                    let _ = std::fs::remove_file(&at);
                    std::os::unix::fs::symlink(target, &at).map_err(io)?;
                    None
                }
            };
            if let Some(mode) = mode {
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode)).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// `/a/b/c` → `/a`, `/a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    (1..parts.len())
        .map(|n| format!("/{}", parts[..n].join("/")))
        .collect()
}

/// The shared libraries `object` loads, from `ldd`'s answer.
fn shared_libraries(object: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = Command::new("ldd")
        .arg(object)
        .output()
        .map_err(|e| Error::Ldd {
            object: object.to_owned(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // ldd exits 1 for a static program ("not a dynamic executable").
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(Error::Ldd {
            object: object.to_owned(),
            detail: err.trim().to_owned(),
        });
    }
    parse_ldd(&text).map_err(|detail| Error::Ldd {
        object: object.to_owned(),
        detail,
    })
}

/// The library paths in `ldd` output; an unresolved library is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            continue;
        }
        if line.contains("=> not found") {
            return Err(format!("missing library: {line}"));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or the
        // loader itself, `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO
        // has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_every_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn an_unresolved_library_is_an_error() {
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("refused");
        assert!(e.contains("libfoo.so.1"), "{e}");
    }

    #[test]
    fn parents_come_before_what_they_hold() {
        let mut fs = Rootfs::default();
        fs.text("/usr/local/bin/x", "x", 0o755);
        let paths: Vec<String> = fs.entries().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            ["/usr", "/usr/local", "/usr/local/bin", "/usr/local/bin/x"]
        );
    }

    #[test]
    fn the_base_knows_the_proxy_user() {
        let fs = Rootfs::base().expect("base");
        let Some((_, Entry::Text { content, .. })) =
            fs.entries().into_iter().find(|(p, _)| p == "/etc/passwd")
        else {
            panic!("no /etc/passwd");
        };
        let passwd = String::from_utf8(content).expect("utf-8");
        assert!(passwd.contains("sluice-proxy:x:1337:1337:"), "{passwd}");
    }
}

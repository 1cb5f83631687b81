//! Writes an image as an OCI image layout in one tar archive, the form
//! `ctr images import`, `docker load`, `kind load image-archive`, `k3d image
//! import` and `skopeo copy oci-archive:` accept.
//!
//! One uncompressed layer holds the [`Rootfs`]; each tag gets a config and
//! a manifest of its own (they differ only in the environment), all
//! sharing that layer. The layer is deterministic: sorted entries, owner
//! 0:0, mtime 0.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use crate::rootfs::{Entry, Rootfs};
use crate::{Error, Image};

/// The annotation containerd names an imported image by.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference's tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Writes `image` to `out` (through a temporary file beside it, so a reader
/// never sees half an archive).
pub fn write_archive(image: &Image, out: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::io(out, e);
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let layer_path = out.with_extension("layer.tmp");
    let layer = write_layer(&image.rootfs, &layer_path)?;
    let tmp = out.with_extension("tmp");
    let result = (|| {
        let mut archive = tar::Builder::new(BufWriter::new(File::create(&tmp).map_err(io)?));
        append_bytes(
            &mut archive,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let mut layer_file = File::open(&layer_path).map_err(io)?;
        append_blob_reader(&mut archive, &layer.hex, layer.size, &mut layer_file)?;
        let mut manifests = Vec::new();
        for tag in &image.tags {
            let config = config_json(image, tag, &layer.digest())?;
            let config_blob = append_blob(&mut archive, &config)?;
            let manifest = manifest_json(&config_blob, &layer)?;
            let manifest_blob = append_blob(&mut archive, &manifest)?;
            manifests.push(index_entry(image, tag, &manifest_blob)?);
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()?;
        append_bytes(&mut archive, "index.json", &serde_json::to_vec(&index)?)?;
        archive
            .into_inner()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    })();
    let _ = std::fs::remove_file(&layer_path);
    match result {
        Ok(()) => std::fs::rename(&tmp, out).map_err(io),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A blob's sha256 (hex) and size.
#[derive(Debug, Clone)]
struct Blob {
    hex: String,
    size: u64,
}

impl Blob {
    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    fn descriptor(&self, media_type: MediaType) -> Result<Descriptor, Error> {
        Ok(DescriptorBuilder::default()
            .media_type(media_type)
            .digest(oci_spec::image::Digest::try_from(self.digest())?)
            .size(self.size)
            .build()?)
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer tar of `rootfs` to `path`.
fn write_layer(rootfs: &Rootfs, path: &Path) -> Result<Blob, Error> {
    let io = |e: std::io::Error| Error::io(path, e);
    let file = BufWriter::new(File::create(path).map_err(io)?);
    let mut tar = tar::Builder::new(Hashing {
        inner: file,
        hash: Sha256::new(),
        size: 0,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    for (at, entry) in rootfs.entries() {
        let name = at.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                header.set_size(0);
                tar.append_data(&mut header, format!("{name}/"), std::io::empty())
                    .map_err(io)?;
            }
            Entry::Text { content, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(content.len() as u64);
                tar.append_data(&mut header, name, content.as_slice())
                    .map_err(io)?;
            }
            Entry::Copy { source, mode } => {
                let src_err = |e: std::io::Error| Error::io(&source, e);
                let file = File::open(&source).map_err(src_err)?;
                let size = file.metadata().map_err(src_err)?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(size);
                tar.append_data(&mut header, name, file.take(size))
                    .map_err(io)?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, name, target).map_err(io)?;
            }
        }
    }
    let hashing = tar.into_inner().map_err(io)?;
    let Hashing {
        mut inner,
        hash,
        size,
    } = hashing;
    inner.flush().map_err(io)?;
    Ok(Blob {
        hex: hex(&hash.finalize()),
        size,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn append_bytes<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> Result<(), Error> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    archive
        .append_data(&mut header, path, data)
        .map_err(|e| Error::io(Path::new(path), e))
}

/// Adds `data` as a blob and returns its digest and size.
fn append_blob<W: Write>(archive: &mut tar::Builder<W>, data: &[u8]) -> Result<Blob, Error> {
    let blob = Blob {
        hex: hex(&Sha256::digest(data)),
        size: data.len() as u64,
    };
    append_bytes(archive, &format!("blobs/sha256/{}", blob.hex), data)?;
    Ok(blob)
}

fn append_blob_reader<W: Write>(
    archive: &mut tar::Builder<W>,
    hex: &str,
    size: u64,
    reader: &mut File,
) -> Result<(), Error> {
    let path = format!("blobs/sha256/{hex}");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_size(size);
    archive
        .append_data(&mut header, &path, reader.take(size))
        .map_err(|e| Error::io(Path::new(&path), e))
}

fn config_json(image: &Image, tag: &crate::Tag, layer_digest: &str) -> Result<Vec<u8>, Error> {
    let env: Vec<String> = [(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )]
    .into_iter()
    .chain(image.env.iter().cloned())
    .chain(tag.env.iter().cloned())
    .map(|(k, v)| format!("{k}={v}"))
    .collect();
    let labels: HashMap<String, String> = [
        (
            "org.opencontainers.image.title".to_owned(),
            image.repository.clone(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            image.description.clone(),
        ),
        (
            "org.opencontainers.image.version".to_owned(),
            tag.tag.clone(),
        ),
    ]
    .into();
    let mut config = ConfigBuilder::default()
        .env(env)
        .entrypoint(image.entrypoint.clone())
        .user(image.user.clone())
        .working_dir("/")
        .labels(labels);
    if !image.cmd.is_empty() {
        config = config.cmd(image.cmd.clone());
    }
    if !image.ports.is_empty() {
        config = config.exposed_ports(
            image
                .ports
                .iter()
                .map(|p| format!("{p}/tcp"))
                .collect::<Vec<_>>(),
        );
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer_digest.to_owned()])
                .build()?,
        )
        .build()?;
    Ok(serde_json::to_vec(&config)?)
}

fn manifest_json(config: &Blob, layer: &Blob) -> Result<Vec<u8>, Error> {
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor(MediaType::ImageConfig)?)
        .layers(vec![layer.descriptor(MediaType::ImageLayer)?])
        .build()?;
    Ok(serde_json::to_vec(&manifest)?)
}

fn index_entry(image: &Image, tag: &crate::Tag, manifest: &Blob) -> Result<Descriptor, Error> {
    let mut d = manifest.descriptor(MediaType::ImageManifest)?;
    d.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()?,
    ));
    d.set_annotations(Some(
        [
            (CONTAINERD_NAME.to_owned(), image.full_name(&tag.tag)),
            (REF_NAME.to_owned(), tag.tag.clone()),
        ]
        .into(),
    ));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;
    use crate::Tag;

    fn image() -> Image {
        let mut rootfs = Rootfs::default();
        rootfs.text("/etc/hello", "hi\n", 0o644);
        rootfs.symlink("/bin/sh", "/bin/busybox");
        Image {
            repository: "sluice/example".into(),
            tags: vec![
                Tag::plain("0.1.0"),
                Tag {
                    tag: "blue".into(),
                    env: vec![("COLOR".into(), "blue".into())],
                },
            ],
            description: "an example".into(),
            rootfs,
            entrypoint: vec!["/bin/sh".into()],
            cmd: vec![],
            env: vec![],
            user: "65532:65532".into(),
            ports: vec![8080],
        }
    }

    /// Every file of the archive by path.
    fn files(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(File::open(path).expect("archive"));
        let mut out = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            out.insert(name, data);
        }
        out
    }

    fn json(data: &[u8]) -> serde_json::Value {
        serde_json::from_slice(data).expect("json")
    }

    #[test]
    fn each_tag_gets_a_manifest_that_containerd_names_and_blobs_match_their_digests() {
        let dir = std::env::temp_dir().join(format!("sluice-images-{}", std::process::id()));
        let out = dir.join("example.oci.tar");
        write_archive(&image(), &out).expect("written");
        let files = files(&out);
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(super::hex(&Sha256::digest(data)), hex, "{name}");
            }
        }
        let index = json(&files["index.json"]);
        let manifests = index["manifests"].as_array().expect("manifests");
        let names: Vec<&str> = manifests
            .iter()
            .filter_map(|m| m["annotations"][CONTAINERD_NAME].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "docker.io/sluice/example:0.1.0",
                "docker.io/sluice/example:blue"
            ]
        );
        let blob = |d: &serde_json::Value| {
            let hex = d["digest"]
                .as_str()
                .expect("digest")
                .trim_start_matches("sha256:");
            &files[&format!("blobs/sha256/{hex}")]
        };
        let blue = json(blob(&manifests[1]));
        let config = json(blob(&blue["config"]));
        let env: Vec<&str> = config["config"]["Env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(env.contains(&"COLOR=blue"), "{env:?}");
        assert_eq!(config["config"]["User"], "65532:65532");
        // One layer shared by both tags, holding the file and the link.
        let layer = blob(&blue["layers"][0]);
        let mut entries = tar::Archive::new(layer.as_slice());
        let paths: Vec<String> = entries
            .entries()
            .expect("layer")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(paths, ["bin/", "bin/sh", "etc/", "etc/hello"]);
        assert_eq!(config["rootfs"]["diff_ids"][0], blue["layers"][0]["digest"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! Sluice's images: which program goes into which image, as whom it runs,
//! and under which names. [`sluice`] lists what `cargo xtask images`
//! builds and the Helm chart deploys; [`coredns`] is the test bed's cluster
//! DNS, built from its Go module.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_proto::images as names;

use crate::rootfs::NONROOT_UID;
use crate::{Error, Image, Rootfs, Tag};

/// Where the images keep their programs.
const BIN: &str = "/usr/local/bin";

/// Every image of the project, from the workspace binaries in `bins`
/// (`target/release` or `target/debug`).
pub fn sluice(bins: &Path) -> Result<Vec<Image>, Error> {
    Ok(vec![
        operator(bins)?,
        proxy(bins)?,
        demo_app(bins)?,
        curl(bins)?,
        pause(bins)?,
    ])
}

/// `repository:tag` split at the tag.
fn split(reference: &str) -> (String, Vec<Tag>) {
    let repository = names::repository(reference).to_owned();
    let tag = reference
        .strip_prefix(&repository)
        .and_then(|t| t.strip_prefix(':'))
        .unwrap_or(names::TAG);
    (repository, vec![Tag::plain(tag)])
}

fn user(uid: u32) -> String {
    format!("{uid}:{uid}")
}

/// A workspace binary as the image's only program.
fn single(
    bins: &Path,
    binary: &str,
    reference: &str,
    description: &str,
    uid: u32,
) -> Result<Image, Error> {
    let mut rootfs = Rootfs::base()?;
    let at = format!("{BIN}/{binary}");
    rootfs.program(&at, &bins.join(binary))?;
    let (repository, tags) = split(reference);
    Ok(Image {
        repository,
        tags,
        description: description.to_owned(),
        rootfs,
        entrypoint: vec![at],
        cmd: Vec::new(),
        env: Vec::new(),
        user: user(uid),
        ports: Vec::new(),
    })
}

/// The operator: non-root, nothing written to its root filesystem.
pub fn operator(bins: &Path) -> Result<Image, Error> {
    let mut image = single(
        bins,
        "sluice-operator",
        names::OPERATOR,
        "Sluice operator: rollouts, mesh control plane, CA, injection webhook, dashboard",
        NONROOT_UID,
    )?;
    image.ports = vec![15010, 15014, 15017, 20001];
    Ok(image)
}

/// The proxy, as the gateway and the sidecar (UID 1337) and as the
/// interception step, which needs `iptables` (Debian's nft backend with its
/// extensions) and runs as root with only `NET_ADMIN`/`NET_RAW`.
pub fn proxy(bins: &Path) -> Result<Image, Error> {
    let mut image = single(
        bins,
        "sluice-proxy",
        names::PROXY,
        "Sluice proxy: ingress gateway, sidecar and its interception step",
        sluice_proto::config::PROXY_UID,
    )?;
    let fs = &mut image.rootfs;
    fs.program(
        "/usr/sbin/xtables-nft-multi",
        Path::new("/usr/sbin/xtables-nft-multi"),
    )?;
    for name in ["iptables", "iptables-restore", "iptables-save"] {
        fs.symlink(&format!("/usr/sbin/{name}"), "xtables-nft-multi");
    }
    // Match and target extensions are loaded by name at run time.
    let extensions = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for ext in sorted_files(extensions)? {
        let at = ext.display().to_string();
        fs.copy(&at, &ext, 0o644);
        fs.libraries_of(&ext)?;
    }
    fs.copy("/etc/protocols", Path::new("/etc/protocols"), 0o644);
    image.ports = vec![
        sluice_proto::config::OUTBOUND_PORT,
        sluice_proto::config::INBOUND_PORT,
        sluice_proto::probes::ADMIN_PORT,
    ];
    Ok(image)
}

/// The hands-on's app, one tag per colour.
pub fn demo_app(bins: &Path) -> Result<Image, Error> {
    let mut image = single(
        bins,
        "demo-app",
        names::DEMO_APP_REPOSITORY,
        "Sluice demo-app: answers with its colour; error rate and latency set by flags",
        NONROOT_UID,
    )?;
    image.tags = std::iter::once(Tag::plain(names::TAG))
        .chain(names::DEMO_APP_COLOURS.iter().map(|c| Tag {
            tag: (*c).to_owned(),
            env: vec![("COLOR".to_owned(), (*c).to_owned())],
        }))
        .collect();
    image.ports = vec![8080];
    Ok(image)
}

/// The hands-on's client: Debian's curl with its libraries and busybox for
/// a shell. Without a command it waits, and stops at once when told to
/// (a busybox `sleep` as PID 1 would ignore SIGTERM).
pub fn curl(bins: &Path) -> Result<Image, Error> {
    let mut rootfs = Rootfs::base()?;
    rootfs.program("/usr/bin/curl", Path::new("/usr/bin/curl"))?;
    rootfs.program("/bin/busybox", Path::new("/bin/busybox"))?;
    for applet in busybox_applets()? {
        if applet != "/bin/busybox" && applet != "/usr/bin/curl" {
            rootfs.symlink(&applet, "/bin/busybox");
        }
    }
    let wait = format!("{BIN}/sluice-pause");
    rootfs.program(&wait, &bins.join("sluice-pause"))?;
    let (repository, tags) = split(names::CURL);
    Ok(Image {
        repository,
        tags,
        description: "Sluice hands-on client: curl and a busybox shell".to_owned(),
        rootfs,
        entrypoint: vec![wait],
        cmd: Vec::new(),
        env: Vec::new(),
        user: user(NONROOT_UID),
        ports: Vec::new(),
    })
}

/// The pod sandbox: holds a pod's namespaces until the pod goes.
pub fn pause(bins: &Path) -> Result<Image, Error> {
    single(
        bins,
        "sluice-pause",
        names::PAUSE,
        "Sluice pause: the pod sandbox process",
        65535,
    )
}

/// CoreDNS (a static Go binary) for the test bed's cluster DNS, listening
/// on an unprivileged port so that it needs no capability.
pub fn coredns(binary: &Path, version: &str) -> Result<Image, Error> {
    test_bed_program("coredns", binary, version)
}

/// metrics-server (a static Go binary) for the test bed's resource metrics.
pub fn metrics_server(binary: &Path, version: &str) -> Result<Image, Error> {
    test_bed_program("metrics-server", binary, version)
}

/// One program of the test bed's own (not Sluice's) as `sluice.test/<name>`.
fn test_bed_program(name: &str, binary: &Path, version: &str) -> Result<Image, Error> {
    program_image(
        name,
        binary,
        &format!("sluice.test/{name}:{version}"),
        format!("{name} for the Sluice test bed"),
        NONROOT_UID,
    )
}

/// A static program of another project under the exact `reference` its own
/// manifests run (the node pulls nothing): the Gateway API conformance
/// suite's backends. `uid` is who it runs as (0 for one that binds a
/// privileged port through a file capability in its upstream image).
pub fn named_program(reference: &str, binary: &Path, uid: u32) -> Result<Image, Error> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".to_owned());
    let description = format!("{reference}, built from its source for the test bed");
    program_image(&name, binary, reference, description, uid)
}

/// What goes into Istio's test echo app, built from its Go module.
pub struct IstioEcho<'a> {
    /// The exact reference the suite's mesh manifests run (`echo-advanced`).
    pub reference: &'a str,
    /// `istio.io/istio/pkg/test/echo/cmd/server`, the entrypoint.
    pub server: &'a Path,
    /// `istio.io/istio/pkg/test/echo/cmd/client`, which the suite execs.
    pub client: &'a Path,
    /// The TLS pair the manifests' `--crt=/cert.crt --key=/cert.key` name.
    pub cert: &'a Path,
    /// See `cert`.
    pub key: &'a Path,
}

/// Istio's echo app as upstream's `app` image lays it out: both programs
/// in `/usr/local/bin` (on the PATH, since the suite execs `client` by
/// name), the TLS pair at `/`, run as upstream's UID 1338 (not the proxy's,
/// so that its traffic is intercepted).
pub fn istio_echo(parts: &IstioEcho) -> Result<Image, Error> {
    let mut rootfs = Rootfs::base()?;
    let server = format!("{BIN}/server");
    rootfs.program(&server, parts.server)?;
    rootfs.program(&format!("{BIN}/client"), parts.client)?;
    rootfs.copy("/cert.crt", parts.cert, 0o444);
    rootfs.copy("/cert.key", parts.key, 0o444);
    let (repository, tags) = split(parts.reference);
    Ok(Image {
        repository,
        tags,
        description: format!(
            "{}, built from its source for the test bed",
            parts.reference
        ),
        rootfs,
        entrypoint: vec![server],
        cmd: Vec::new(),
        env: vec![("PATH".to_owned(), format!("{BIN}:/usr/bin:/bin"))],
        user: user(1338),
        ports: Vec::new(),
    })
}

/// `binary` as `/<name>`, the image's only program.
fn program_image(
    name: &str,
    binary: &Path,
    reference: &str,
    description: String,
    uid: u32,
) -> Result<Image, Error> {
    let mut rootfs = Rootfs::base()?;
    let at = format!("/{name}");
    rootfs.program(&at, binary)?;
    let (repository, tags) = split(reference);
    Ok(Image {
        repository,
        tags,
        description,
        rootfs,
        entrypoint: vec![at],
        cmd: Vec::new(),
        env: Vec::new(),
        user: user(uid),
        ports: Vec::new(),
    })
}

/// Every file directly in `dir`, sorted.
fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Where busybox installs each applet (`/bin/sh`, `/usr/bin/wc`, ...).
fn busybox_applets() -> Result<Vec<String>, Error> {
    let out = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .map_err(|e| Error::io(Path::new("/bin/busybox"), e))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| format!("/{}", l.trim()))
        .filter(|l| l.len() > 1)
        .collect())
}

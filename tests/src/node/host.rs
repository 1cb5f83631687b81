//! What a real node changes on the host outside its own directory, and
//! putting it back.
//!
//! The kubelet and kube-proxy own host-wide state: iptables chains with
//! fixed names (`KUBE-*`), paths under `/var`, cgroups under `kubepods`,
//! kernel sysctls the kubelet sets at start. So one node runs on a machine
//! at a time ([`MachineLock`]), and each node leaves a [`Record`] of what to
//! undo in `/run/sluice`, so that the next one cleans up after a harness that
//! was killed before its teardown ran.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::process::run;

/// Where the lock and the record live.
const RUN_DIR: &str = "/run/sluice";

/// The sysctls the kubelet sets at start (with `protectKernelDefaults`
/// off, as here) and those kube-proxy may touch; each is put back as found.
/// `net.ipv4.ip_forward` is not among them: nothing here sets it, and
/// writing it would reset every interface's forwarding.
const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
];

/// Chains the kubelet adds to the host's tables (kube-proxy's own go with
/// `kube-proxy --cleanup`), by table.
const KUBELET_CHAINS: &[(&str, &str)] = &[
    ("filter", "KUBE-FIREWALL"),
    ("filter", "KUBE-KUBELET-CANARY"),
    ("nat", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-IPTABLES-HINT"),
];

/// Paths the kubelet and containerd use whatever their configuration says.
const KUBELET_DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
const CNI_RESULTS: &str = "/var/lib/cni/results";
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// The one node of this machine, held for as long as the node runs.
#[derive(Debug)]
pub struct MachineLock {
    _file: File,
}

impl MachineLock {
    /// Takes the lock, or fails at once naming the process that holds it.
    pub fn acquire() -> Result<MachineLock, Error> {
        std::fs::create_dir_all(RUN_DIR).map_err(|e| Error::io(Path::new(RUN_DIR), e))?;
        let path = Path::new(RUN_DIR).join("node.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor we own.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !taken {
            let holder = Record::read().map(|r| r.pid).unwrap_or(0);
            let what = std::fs::read_to_string(format!("/proc/{holder}/cmdline"))
                .map(|c| c.replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            return Err(Error::Setup(format!(
                "another Sluice node runs on this machine (pid {holder}: {what}); only one can, \
                 as the kubelet and kube-proxy own host-wide state. Stop it (`cargo xtask demo down` \
                 for the sandbox) and run again"
            )));
        }
        Ok(MachineLock { _file: file })
    }
}

/// What a running node has changed, for whoever tears it down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The process that owns the node.
    pub pid: u32,
    /// The node's directory: every process and mount under it is the node's.
    pub dir: PathBuf,
    /// The bridge index, once claimed.
    pub bridge: Option<u8>,
    /// The CNI network name.
    pub cni_name: String,
    /// kube-proxy, for `--cleanup`.
    pub kube_proxy: PathBuf,
    /// The sysctls as they were before the node started.
    pub sysctls: BTreeMap<String, String>,
    /// Whether `/var/lib/kubelet` existed before (else it is removed).
    pub had_var_lib_kubelet: bool,
}

impl Record {
    fn path() -> PathBuf {
        Path::new(RUN_DIR).join("node.json")
    }

    /// The record of the last node that did not finish its teardown.
    pub fn read() -> Option<Record> {
        let text = std::fs::read_to_string(Self::path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A record for a node about to start in `dir`, with the sysctls as
    /// they are now (after [`clean_stale`] put back those of an earlier
    /// node). The bridge is not known yet ([`Record::with_bridge`]).
    pub fn new(dir: &Path, kube_proxy: &Path) -> Record {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), read_sysctl(k)?)))
            .collect();
        Record {
            pid: std::process::id(),
            dir: dir.to_owned(),
            bridge: None,
            cni_name: String::new(),
            kube_proxy: kube_proxy.to_owned(),
            sysctls,
            had_var_lib_kubelet: Path::new("/var/lib/kubelet").exists(),
        }
    }

    /// The record with the node's bridge.
    pub fn with_bridge(mut self, index: u8, cni_name: String) -> Record {
        self.bridge = Some(index);
        self.cni_name = cni_name;
        self
    }

    /// Saves the record (before anything is started).
    pub fn write(&self) -> Result<(), Error> {
        let path = Self::path();
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Setup(format!("node record: {e}")))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }

    /// Puts the sysctls back as they were. Called once the kubelet has
    /// started (it sets them once, at start) and again at teardown.
    pub fn restore_sysctls(&self) {
        for (key, value) in &self.sysctls {
            if read_sysctl(key).as_deref() != Some(value.as_str()) {
                let _ = std::fs::write(sysctl_path(key), value);
            }
        }
    }

    /// Undoes everything the node did to the host: kills its processes and
    /// its pods' processes, unmounts what it mounted, removes its cgroups,
    /// iptables chains, bridge and the files it left outside its directory,
    /// and restores the sysctls. Safe to run on a node that is half started
    /// or long dead.
    pub fn clean_up(&self) {
        kill_processes_under(&self.dir);
        kill_pods();
        let _ = run(
            &self.kube_proxy.display().to_string(),
            &["--cleanup", "--v=0"],
        );
        remove_kubelet_chains();
        if let Some(index) = self.bridge {
            super::network::remove_index(index);
        }
        unmount_under(&self.dir);
        remove_pod_cgroups();
        self.remove_stray_files();
        self.restore_sysctls();
        let _ = std::fs::remove_file(Self::path());
    }

    fn remove_stray_files(&self) {
        // Log links of the node's pods point into its directory.
        if let Ok(links) = std::fs::read_dir(CONTAINER_LOG_LINKS) {
            for link in links.flatten() {
                let target = std::fs::read_link(link.path()).unwrap_or_default();
                if target.starts_with(&self.dir) || !target.exists() {
                    let _ = std::fs::remove_file(link.path());
                }
            }
        }
        let _ = std::fs::remove_dir(CONTAINER_LOG_LINKS);
        let _ = std::fs::remove_file(Path::new(KUBELET_DEVICE_PLUGINS).join("kubelet.sock"));
        if !self.had_var_lib_kubelet {
            let _ = std::fs::remove_dir(KUBELET_DEVICE_PLUGINS);
            let _ = std::fs::remove_dir("/var/lib/kubelet");
        }
        if let Ok(results) = std::fs::read_dir(CNI_RESULTS)
            && !self.cni_name.is_empty()
        {
            // containerd sets up each pod's loopback as network `cni-loopback`.
            let prefixes = [format!("{}-", self.cni_name), "cni-loopback-".to_owned()];
            for r in results.flatten() {
                let name = r.file_name().to_string_lossy().into_owned();
                if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    let _ = std::fs::remove_file(r.path());
                }
            }
        }
        let _ = std::fs::remove_dir(CNI_RESULTS);
        let _ = std::fs::remove_dir("/var/lib/cni");
        // Sockets of shims that were killed: nobody answers on them.
        if let Ok(sockets) = std::fs::read_dir(SHIM_SOCKETS) {
            for s in sockets.flatten() {
                if std::os::unix::net::UnixStream::connect(s.path()).is_err() {
                    let _ = std::fs::remove_file(s.path());
                }
            }
        }
        let _ = std::fs::remove_dir(SHIM_SOCKETS);
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Cleans up after a node whose owner died without tearing it down.
pub fn clean_stale() {
    if let Some(record) = Record::read() {
        let alive = Path::new(&format!("/proc/{}", record.pid)).exists()
            && record.pid != std::process::id();
        if !alive {
            eprintln!(
                "[sluice-tests] cleaning up after a node that was not torn down (pid {}, {})",
                record.pid,
                record.dir.display()
            );
            record.clean_up();
            let _ = std::fs::remove_dir_all(&record.dir);
        }
    }
}

/// The processes (but this one) whose command line names `dir`:
/// containerd, its shims, the kubelet, kube-proxy.
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}

fn kill_processes_under(dir: &Path) {
    for pid in processes_under(dir) {
        // SAFETY: a plain syscall.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// The resident memory of the processes under `dir`, in KiB.
pub fn resident_kib_under(dir: &Path) -> u64 {
    processes_under(dir)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// The kubelet's pod cgroups (cgroupfs driver: `kubepods` in each v1
/// hierarchy and the unified one), deepest first.
fn pod_cgroups() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return dirs;
    };
    for h in hierarchies.flatten() {
        let root = h.path().join("kubepods");
        if root.is_dir() {
            collect_dirs(&root, &mut dirs);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Kills every process in the pods' cgroups and waits (briefly) for them
/// to be gone.
fn kill_pods() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut any = false;
        for dir in pod_cgroups() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                any = true;
                // SAFETY: a plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !any || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_pod_cgroups() {
    for dir in pod_cgroups() {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Unmounts every mount point under `dir`, deepest first (volumes,
/// container root filesystems, network namespaces, shm).
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(b as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

fn remove_kubelet_chains() {
    for ipt in ["iptables", "ip6tables"] {
        for hook in ["INPUT", "OUTPUT"] {
            for _ in 0..4 {
                if run(ipt, &["-w", "-D", hook, "-j", "KUBE-FIREWALL"]).is_err() {
                    break;
                }
            }
        }
        for (table, chain) in KUBELET_CHAINS {
            let _ = run(ipt, &["-w", "-t", table, "-F", chain]);
            let _ = run(ipt, &["-w", "-t", table, "-X", chain]);
        }
    }
}

/// How much of the host's iptables state carries a node's marks: for a
/// check that teardown left nothing.
pub fn leftover_chains() -> Vec<String> {
    let mut left = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        if let Ok(text) = run(save, &[]) {
            left.extend(
                text.lines()
                    .filter(|l| l.contains("KUBE-") || l.contains("SLUICE-") || l.contains("CNI-"))
                    .map(str::to_owned),
            );
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b/c"),
            PathBuf::from("/tmp/a b/c")
        );
    }

    #[test]
    fn sysctl_keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.route_localnet"),
            PathBuf::from("/proc/sys/net/ipv4/conf/all/route_localnet")
        );
    }
}

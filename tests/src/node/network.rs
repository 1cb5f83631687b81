//! Pod networking: one Linux bridge per node with a /24 of its own, and for
//! each pod a network namespace joined to the bridge by a veth pair.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for network test
//! beds (RFC 2544): node `N` owns `198.18.N.0/24` and the bridge holds
//! `198.18.N.1`, which is also where the node's apiserver listens. Nothing
//! here is routed off the machine: the bridge forwards only between its own
//! pods (after Service DNAT, see [`super::services`]) and rejects the rest.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Error;
use crate::process::{run, run_with_input};

/// Where bridges record the process that owns them, so that a later run can
/// clean up after a harness that was killed.
const OWNER_DIR: &str = "/run/sluice";

/// A node's bridge and the address pool of its pods.
#[derive(Debug)]
pub struct PodNetwork {
    index: u8,
    bridge: String,
    gateway: Ipv4Addr,
    free: Mutex<Free>,
    owner_file: PathBuf,
}

#[derive(Debug)]
struct Free {
    hosts: BTreeSet<u8>,
    /// The last address handed out: the next one is the first free one
    /// after it (as CNI's host-local IPAM does), so that a just-freed
    /// address is not reused while peers still hold its old neighbour
    /// (ARP) entry and would black-hole traffic to the new pod.
    last: u8,
    next_ns: u32,
}

/// The network of one pod.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// The namespace's name under `/run/netns`.
    pub netns: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
}

impl PodNet {
    /// Path of the namespace file, for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

impl PodNetwork {
    /// Creates a bridge with a free index, after removing those of dead harnesses.
    pub fn create() -> Result<PodNetwork, Error> {
        std::fs::create_dir_all(OWNER_DIR).map_err(|e| Error::io(Path::new(OWNER_DIR), e))?;
        clean_stale();
        for index in 0..=255u8 {
            let bridge = format!("sluice{index}");
            // `ip link add` fails when the name is taken: an atomic claim.
            if run("ip", &["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            let owner_file = Path::new(OWNER_DIR).join(format!("net-{index}.pid"));
            std::fs::write(&owner_file, std::process::id().to_string())
                .map_err(|e| Error::io(&owner_file, e))?;
            let gateway = Ipv4Addr::new(198, 18, index, 1);
            let net = PodNetwork {
                index,
                bridge: bridge.clone(),
                gateway,
                free: Mutex::new(Free {
                    hosts: (2..=254).collect(),
                    last: 1,
                    next_ns: 0,
                }),
                owner_file,
            };
            run(
                "ip",
                &["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
            )?;
            run("ip", &["link", "set", &bridge, "up"])?;
            install_routing(index, &bridge)?;
            return Ok(net);
        }
        Err(Error::Setup(
            "no free bridge index (sluice0..sluice255 all exist)".into(),
        ))
    }

    /// The bridge's own address: the node's InternalIP.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The pod CIDR of this node.
    pub fn pod_cidr(&self) -> String {
        pod_cidr(self.index)
    }

    /// The nat chain that holds this node's Service rules.
    pub fn service_chain(&self) -> String {
        service_chain(self.index)
    }

    /// Creates a namespace with an address on the bridge.
    pub fn add_pod(&self) -> Result<PodNet, Error> {
        let (host, n) = {
            let mut free = self
                .free
                .lock()
                .map_err(|_| Error::Setup("network state poisoned".into()))?;
            let host = free
                .hosts
                .range(free.last.saturating_add(1)..)
                .next()
                .or_else(|| free.hosts.first())
                .copied()
                .ok_or_else(|| Error::Setup("pod addresses exhausted".into()))?;
            free.hosts.remove(&host);
            free.last = host;
            free.next_ns += 1;
            (host, free.next_ns)
        };
        let pod = PodNet {
            netns: format!("sl{}-{n}", self.index),
            ip: Ipv4Addr::new(198, 18, self.index, host),
        };
        let veth = format!("slv{}-{n}", self.index);
        let result = (|| {
            // A harness killed mid-run may leave a veth of the same name
            // behind (its namespace kept alive by a dying process).
            let _ = run("ip", &["link", "del", &veth]);
            let _ = run("ip", &["netns", "del", &pod.netns]);
            run("ip", &["netns", "add", &pod.netns])?;
            // The MAC follows from the address (as Docker's bridge does), so
            // a reused address keeps its MAC and the neighbour (ARP) entries
            // peers still hold for it stay right: otherwise a long-lived
            // peer (the gateway) sends to the old pod's MAC and the new pod
            // is unreachable from it until the entry is re-probed.
            let [_, _, n, h] = pod.ip.octets();
            let mac = format!("02:42:c6:12:{n:02x}:{h:02x}");
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address", &mac,
                    "netns", &pod.netns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &self.bridge, "up"])?;
            let ns = pod.netns.as_str();
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", pod.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &self.gateway.to_string(),
                ],
            )?;
            Ok(())
        })();
        if let Err(e) = result {
            self.remove_pod(&pod);
            return Err(e);
        }
        Ok(pod)
    }

    /// Deletes the namespace (its veth goes with it) and frees the address.
    pub fn remove_pod(&self, pod: &PodNet) {
        let _ = run("ip", &["netns", "del", &pod.netns]);
        if let Ok(mut free) = self.free.lock() {
            free.hosts.insert(pod.ip.octets()[3]);
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        remove_index(self.index);
        let _ = std::fs::remove_file(&self.owner_file);
    }
}

fn pod_cidr(index: u8) -> String {
    format!("198.18.{index}.0/24")
}

fn service_chain(index: u8) -> String {
    format!("SLUICE-SVC-{index}")
}

fn forward_chain(index: u8) -> String {
    format!("SLUICE-FWD-{index}")
}

/// The rules that hook bridge `index` into the host's tables: Service
/// DNAT for what its pods send and for NodePorts on the node's address
/// (the chain starts empty), masquerade for
/// DNATed connections so that replies come back through the host's
/// conntrack (as kube-proxy's `--masquerade-all`; pods on one bridge would
/// otherwise answer each other directly), and a forwarding guard.
fn hooks(index: u8) -> [(&'static str, &'static str, Vec<String>); 4] {
    let bridge = format!("sluice{index}");
    let words = |s: String| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    [
        (
            "nat",
            "PREROUTING",
            words(format!("-i {bridge} -j {}", service_chain(index))),
        ),
        (
            "nat",
            "OUTPUT",
            words(format!(
                "-d 198.18.{index}.1/32 -p tcp -j {}",
                service_chain(index)
            )),
        ),
        (
            "nat",
            "POSTROUTING",
            words(format!(
                "-o {bridge} -s {} -m conntrack --ctstate DNAT -j MASQUERADE",
                pod_cidr(index)
            )),
        ),
        (
            "filter",
            "FORWARD",
            words(format!("-i {bridge} -j {}", forward_chain(index))),
        ),
    ]
}

/// Lets bridge `index` route between its pods (Service DNAT turns a
/// ClusterIP connection into a routed one) and nowhere else.
fn install_routing(index: u8, bridge: &str) -> Result<(), Error> {
    remove_routing(index);
    let forwarding = format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding");
    std::fs::write(&forwarding, "1").map_err(|e| Error::io(Path::new(&forwarding), e))?;
    let (svc, fwd, cidr) = (service_chain(index), forward_chain(index), pod_cidr(index));
    let mut rules = format!("*nat\n:{svc} - [0:0]\nCOMMIT\n*filter\n:{fwd} - [0:0]\n");
    rules.push_str(&format!(
        "-A {fwd} -d {cidr} -j ACCEPT\n-A {fwd} -j REJECT\nCOMMIT\n"
    ));
    run_with_input("iptables-restore", &["-w", "--noflush"], Some(&rules))?;
    for (table, chain, rule) in hooks(index) {
        let mut args = vec!["-w", "-t", table, "-A", chain];
        args.extend(rule.iter().map(String::as_str));
        run("iptables", &args)?;
    }
    Ok(())
}

/// Removes what [`install_routing`] added; missing rules are fine.
fn remove_routing(index: u8) {
    for (table, chain, rule) in hooks(index) {
        let mut args = vec!["-w", "-t", table, "-D", chain];
        args.extend(rule.iter().map(String::as_str));
        // A killed harness may have left the rule more than once.
        for _ in 0..8 {
            if run("iptables", &args).is_err() {
                break;
            }
        }
    }
    for (table, chain) in [
        ("nat", service_chain(index)),
        ("filter", forward_chain(index)),
    ] {
        let _ = run("iptables", &["-w", "-t", table, "-F", &chain]);
        let _ = run("iptables", &["-w", "-t", table, "-X", &chain]);
    }
}

/// Deletes bridge `index` and every pod namespace of it.
fn remove_index(index: u8) {
    remove_routing(index);
    let prefix = format!("sl{index}-");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&prefix) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    let _ = run("ip", &["link", "del", &format!("sluice{index}")]);
}

/// Removes the bridges of harnesses that no longer run.
fn clean_stale() {
    let Ok(entries) = std::fs::read_dir(OWNER_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("net-")
            .and_then(|s| s.strip_suffix(".pid"))
            .and_then(|s| s.parse::<u8>().ok())
        else {
            continue;
        };
        let pid: i32 = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            remove_index(index);
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

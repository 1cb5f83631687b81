//! The node's network: a Linux bridge with a /24 of its own, the CNI
//! configuration that puts each pod on it (the `bridge`, `host-local` and
//! `portmap` plugins from Debian), and a guard that keeps pod traffic on
//! the machine.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for network test
//! beds (RFC 2544): node `N` owns `198.18.N.0/24` and the bridge holds
//! `198.18.N.1`, which is the node's InternalIP and where its apiserver
//! listens; Services are in 198.19.0.0/16. Pods get no default route: only
//! their bridge and the Service range (through the node, where kube-proxy
//! translates it) are reachable from them. The host routes the Service
//! range to the bridge as well, so that an address kube-proxy has not
//! translated (yet) ends there instead of leaving by the machine's default
//! route, where something else may answer it. Forwarding is turned on for the
//! bridge alone (never `net.ipv4.ip_forward`, which would reset every
//! interface's setting), and a filter chain rejects anything forwarded off
//! the bridge.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::Error;
use crate::control_plane::SERVICE_CIDR;
use crate::process::{run, run_with_input};

/// A node's bridge. It stays until [`remove_index`] (the node's
/// [`super::host::Record`] knows its index).
#[derive(Debug)]
pub struct PodNetwork {
    index: u8,
    bridge: String,
    gateway: Ipv4Addr,
}

impl PodNetwork {
    /// Creates a bridge with a free index (an index is claimed by creating
    /// its bridge: `ip link add` fails when the name is taken) and its
    /// forwarding guard.
    pub fn create() -> Result<PodNetwork, Error> {
        for index in 0..=255u8 {
            let bridge = bridge_name(index);
            if run("ip", &["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            let net = PodNetwork {
                index,
                bridge: bridge.clone(),
                gateway: Ipv4Addr::new(198, 18, index, 1),
            };
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/24", net.gateway),
                    "dev",
                    &bridge,
                ],
            )?;
            run("ip", &["link", "set", &bridge, "up"])?;
            // Goes with the bridge when it is deleted.
            run(
                "ip",
                &[
                    "route",
                    "replace",
                    SERVICE_CIDR,
                    "dev",
                    &bridge,
                    "src",
                    &net.gateway.to_string(),
                ],
            )?;
            install_guard(index, &bridge)?;
            return Ok(net);
        }
        Err(Error::Setup(
            "no free bridge index (sluice0..sluice255 all exist)".into(),
        ))
    }

    /// The bridge's index (`N` of `198.18.N.0/24`).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The bridge's own address: the node's InternalIP.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pod CIDR of this node.
    pub fn pod_cidr(&self) -> String {
        pod_cidr(self.index)
    }

    /// The CNI network's name (libcni names its cache files after it).
    pub fn cni_name(&self) -> String {
        format!("sluice-{}", self.index)
    }

    /// The CNI configuration list: pods on the bridge with an address of
    /// the node's /24 and a route to Services through the node.
    pub fn cni_conflist(&self, ipam_dir: &Path) -> String {
        let i = self.index;
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.cni_name(),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    // The bridge exists with its address; the plugin must
                    // not turn on global forwarding (isGateway would).
                    "isGateway": false,
                    "isDefaultGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": pod_cidr(i),
                            "rangeStart": format!("198.18.{i}.2"),
                            "rangeEnd": format!("198.18.{i}.254"),
                            "gateway": self.gateway.to_string(),
                        }]],
                        "routes": [{"dst": SERVICE_CIDR, "gw": self.gateway.to_string()}],
                        "dataDir": ipam_dir.display().to_string(),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
            ]
        })
        .to_string()
    }
}

fn bridge_name(index: u8) -> String {
    format!("sluice{index}")
}

fn pod_cidr(index: u8) -> String {
    format!("198.18.{index}.0/24")
}

fn guard_chain(index: u8) -> String {
    format!("SLUICE-FWD-{index}")
}

/// The FORWARD rule that sends what comes from bridge `index` to its guard.
fn guard_hook(index: u8) -> Vec<String> {
    ["-i", &bridge_name(index), "-j", &guard_chain(index)]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Lets bridge `index` route between its pods (kube-proxy's DNAT turns a
/// ClusterIP connection into a routed one) and nowhere else.
fn install_guard(index: u8, bridge: &str) -> Result<(), Error> {
    remove_guard(index);
    let forwarding = format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding");
    std::fs::write(&forwarding, "1").map_err(|e| Error::io(Path::new(&forwarding), e))?;
    let (chain, cidr) = (guard_chain(index), pod_cidr(index));
    let rules = format!(
        "*filter\n:{chain} - [0:0]\n-A {chain} -d {cidr} -j ACCEPT\n-A {chain} -j REJECT\nCOMMIT\n"
    );
    run_with_input("iptables-restore", &["-w", "--noflush"], Some(&rules))?;
    let mut args = vec!["-w", "-I", "FORWARD", "1"];
    let hook = guard_hook(index);
    args.extend(hook.iter().map(String::as_str));
    run("iptables", &args)?;
    Ok(())
}

/// Removes what [`install_guard`] added; missing rules are fine.
fn remove_guard(index: u8) {
    let hook = guard_hook(index);
    let mut args = vec!["-w", "-D", "FORWARD"];
    args.extend(hook.iter().map(String::as_str));
    // A killed harness may have left the rule more than once.
    for _ in 0..8 {
        if run("iptables", &args).is_err() {
            break;
        }
    }
    let chain = guard_chain(index);
    let _ = run("iptables", &["-w", "-F", &chain]);
    let _ = run("iptables", &["-w", "-X", &chain]);
}

/// Deletes bridge `index` and its guard.
pub fn remove_index(index: u8) {
    remove_guard(index);
    let _ = run("ip", &["link", "del", &bridge_name(index)]);
}

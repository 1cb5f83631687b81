//! Transparent interception: the iptables rules an init step installs in a
//! pod's network namespace, so that an unmodified app's traffic goes
//! through its sidecar. Inbound TCP is redirected to the sidecar's inbound
//! port (which finds the workload port with `SO_ORIGINAL_DST`); outbound TCP
//! to its outbound port. The sidecar's own connections pass untouched: by
//! its user id ([`PROXY_UID`], what the injector runs it as) and by a
//! socket mark ([`MARK`], for where it runs as another user but may set
//! marks); so do loopback, excluded ports and the control plane.

use std::process::Command;

/// The mark the sidecar sets on its upstream sockets (`SO_MARK`); the
/// same number as its user id, as Istio does.
pub const MARK: u32 = PROXY_UID;

pub use sluice_proto::config::PROXY_UID;

/// What to intercept.
#[derive(Debug, Clone)]
pub struct InterceptSettings {
    /// Where inbound connections go.
    pub inbound_port: u16,
    /// Where outbound connections go.
    pub outbound_port: u16,
    /// Inbound ports left alone (the proxy's admin, its inbound port).
    pub exclude_inbound: Vec<u16>,
    /// Outbound destination ports left alone (the control plane).
    pub exclude_outbound: Vec<u16>,
    /// The sidecar's user id.
    pub proxy_uid: u32,
}

/// One `iptables -t nat` command.
fn nat(args: &[&str]) -> Vec<String> {
    ["-t", "nat"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect()
}

/// Lets TCP to `port` through `chain` untouched.
fn pass(chain: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    nat(&["-A", chain, "-p", "tcp", "--dport", &port, "-j", "RETURN"])
}

/// Sends the rest of `chain`'s TCP to `port`.
fn redirect(chain: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    nat(&[
        "-A",
        chain,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ])
}

/// The `iptables -t nat` commands, in order.
pub fn rules(s: &InterceptSettings) -> Vec<Vec<String>> {
    let mark = MARK.to_string();
    let mut r = vec![
        nat(&["-N", "SLUICE_INBOUND"]),
        nat(&["-N", "SLUICE_OUTBOUND"]),
        nat(&["-A", "PREROUTING", "-p", "tcp", "-j", "SLUICE_INBOUND"]),
        nat(&["-A", "OUTPUT", "-p", "tcp", "-j", "SLUICE_OUTBOUND"]),
    ];
    for p in s.exclude_inbound.iter().chain([&s.inbound_port]) {
        r.push(pass("SLUICE_INBOUND", *p));
    }
    r.push(redirect("SLUICE_INBOUND", s.inbound_port));
    r.push(nat(&[
        "-A",
        "SLUICE_OUTBOUND",
        "-m",
        "mark",
        "--mark",
        &mark,
        "-j",
        "RETURN",
    ]));
    r.push(nat(&[
        "-A",
        "SLUICE_OUTBOUND",
        "-m",
        "owner",
        "--uid-owner",
        &s.proxy_uid.to_string(),
        "-j",
        "RETURN",
    ]));
    r.push(nat(&["-A", "SLUICE_OUTBOUND", "-o", "lo", "-j", "RETURN"]));
    r.push(nat(&[
        "-A",
        "SLUICE_OUTBOUND",
        "-d",
        "127.0.0.0/8",
        "-j",
        "RETURN",
    ]));
    for p in &s.exclude_outbound {
        r.push(pass("SLUICE_OUTBOUND", *p));
    }
    r.push(redirect("SLUICE_OUTBOUND", s.outbound_port));
    r
}

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("iptables {args}: {reason}")]
pub struct InterceptError {
    args: String,
    reason: String,
}

/// Installs [`rules`] with the `iptables` binary.
pub fn install(s: &InterceptSettings) -> Result<(), InterceptError> {
    for args in rules(s) {
        let out = Command::new("iptables").args(&args).output();
        let fail = |reason: String| InterceptError {
            args: args.join(" "),
            reason,
        };
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(fail(String::from_utf8_lossy(&o.stderr).trim().to_owned())),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Ok(())
}

/// Marks an upstream socket so that interception lets it pass. Outside a
/// pod with the rules (or without CAP_NET_ADMIN) this is a harmless no-op.
pub fn mark(socket: &tokio::net::TcpSocket) {
    let _ = socket2::SockRef::from(socket).set_mark(MARK);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_redirect_both_ways_and_spare_the_proxy() {
        let r = rules(&InterceptSettings {
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound: vec![15021],
            exclude_outbound: vec![15010],
            proxy_uid: 1337,
        });
        let text: Vec<String> = r.iter().map(|a| a.join(" ")).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no rule with {needle}: {text:#?}"))
        };
        // Exclusions come before the catch-all redirects.
        assert!(pos("--dport 15021 -j RETURN") < pos("REDIRECT --to-ports 15006"));
        assert!(pos("--dport 15006 -j RETURN") < pos("REDIRECT --to-ports 15006"));
        assert!(pos("--mark 1337 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("--uid-owner 1337 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("--dport 15010 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("-d 127.0.0.0/8 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(text.iter().all(|l| l.starts_with("-t nat ")));
    }
}

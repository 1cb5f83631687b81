//! Arbitrary policies (as the JSON a proxy receives) against arbitrary
//! peers and requests: compiling and deciding never panic, and a verdict the
//! connection phase gives before any request is read (allow or deny) is the
//! verdict every request on that connection then gets.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sluice_authz::{HttpAttributes, Peer, Policies, Traffic, Verdict};
use sluice_proto::authz::Policy;

fuzz_target!(|input: (String, [u8; 4], u16, Option<String>, String, String, String, String, String)| {
    let (policies, ip, port, principal, method, path, host, header, value) = input;
    let Ok(policies) = serde_json::from_str::<Vec<Policy>>(&policies) else {
        return;
    };
    let Ok(compiled) = Policies::compile(&policies) else {
        return;
    };
    let peer = Peer {
        ip: IpAddr::from(ip),
        principal: principal.as_deref(),
        port,
    };
    let mut headers = http::HeaderMap::new();
    if let (Ok(n), Ok(v)) = (
        http::HeaderName::from_bytes(header.as_bytes()),
        http::HeaderValue::from_str(&value),
    ) {
        headers.insert(n, v);
    }
    let request = Traffic::Http(HttpAttributes {
        method: &method,
        path: &path,
        host: &host,
        headers: &headers,
        auth: None,
    });
    let _ = compiled.decide(&peer, &Traffic::Tcp);
    let early = compiled.decide(&peer, &Traffic::Connection).verdict;
    let late = compiled.decide(&peer, &request).verdict;
    assert_ne!(late, Verdict::Defer, "a request was deferred");
    match early {
        Verdict::Defer => {}
        Verdict::Allow => assert_eq!(late, Verdict::Allow, "allowed at connect, not on request"),
        Verdict::Deny(_) => assert!(
            matches!(late, Verdict::Deny(_)),
            "denied at connect, not on request"
        ),
    }
});

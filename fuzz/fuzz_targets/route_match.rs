//! Arbitrary routes against arbitrary requests: matching never panics, and
//! an exact host always matches itself in any letter case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proxy::config::{HeaderMatch, PathMatch, RouteMatch};
use sluice_proxy::route::{HostMatcher, Matcher, any_matches, request_host};

fuzz_target!(|input: (String, String, String, String, String, Option<String>)| {
    let (host, path, method, header, value, path_rule) = input;
    let rule = RouteMatch {
        path: path_rule.map(|p| if p.len() % 2 == 0 { PathMatch::Exact(p) } else { PathMatch::Prefix(p) }),
        method: Some(method.clone()),
        headers: vec![HeaderMatch { name: header.clone(), value: Some(value.clone()) }],
    };
    let matcher = Matcher::new(&rule);
    let Ok(req) = http::Request::builder()
        .method(method.as_str())
        .uri(format!("/{}", path.trim_start_matches('/')))
        .header("host", host.as_str())
        .header(header.as_str(), value.as_str())
        .body(())
    else {
        return;
    };
    let (parts, ()) = req.into_parts();
    let _ = any_matches(std::slice::from_ref(&matcher), &parts);
    if let Some(h) = request_host(&parts) {
        let hosts = HostMatcher::new(&[h.to_owned()]);
        assert!(hosts.matches(&h.to_ascii_uppercase(), None));
        let _ = HostMatcher::new(&[format!("*.{h}")]).matches(h, None);
    }
});

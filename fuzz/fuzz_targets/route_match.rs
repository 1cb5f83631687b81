//! Arbitrary routes against arbitrary requests: matching never panics, a
//! route whose value matches are exact matches a request that carries those
//! values, and an exact host always matches itself in any letter case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proxy::config::{HeaderMatch, PathMatch, RouteMatch};
use sluice_proxy::route::{HostMatcher, Matcher, first_match, request_host};

fuzz_target!(|input: (String, String, String, String, String, Option<String>, String)| {
    let (host, path, method, header, value, path_rule, regex) = input;
    let exact = |name: &str| HeaderMatch {
        name: name.to_owned(),
        value: Some(value.clone()),
        regex: None,
    };
    let by_value = RouteMatch {
        path: None,
        method: Some(method.clone()),
        headers: vec![exact(&header)],
        query: vec![exact("q")],
    };
    let by_pattern = RouteMatch {
        path: path_rule.map(|p| if p.len() % 2 == 0 { PathMatch::Exact(p) } else { PathMatch::Prefix(p) }),
        method: None,
        headers: vec![HeaderMatch { name: header.clone(), value: None, regex: Some(regex.clone()) }],
        query: vec![HeaderMatch { name: "q".to_owned(), value: None, regex: Some(regex) }],
    };
    let matchers = [Matcher::new(&by_pattern), Matcher::new(&by_value)];
    let Ok(req) = http::Request::builder()
        .method(method.as_str())
        .uri(format!("/{}?q={value}", path.trim_start_matches('/')))
        .header("host", host.as_str())
        .header(header.as_str(), value.as_str())
        .body(())
    else {
        return;
    };
    let (parts, ()) = req.into_parts();
    let _ = first_match(&matchers, &parts);
    // A value the URI kept whole, and that does not split into parameters,
    // must match itself.
    if !value.contains('&') && parts.uri.query() == Some(&format!("q={value}")) {
        assert!(matchers[1].matches(&parts), "exact values did not match themselves");
    }
    if let Some(h) = request_host(&parts) {
        let hosts = HostMatcher::new(&[h.to_owned()]);
        assert!(hosts.matches(&h.to_ascii_uppercase(), None));
        let _ = HostMatcher::new(&[format!("*.{h}")]).matches(h, None);
    }
});

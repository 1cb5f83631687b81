//! Arbitrary policies against arbitrary peers and requests: compiling and
//! deciding never panic, and a verdict the connection phase gives before any
//! request is read (allow or deny) is the verdict every request on that
//! connection then gets. Policies are built from a small vocabulary of the
//! values rules use (principals, CIDRs, ports, methods, condition keys) as
//! well as free strings, so that inputs compile and match often.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_authz::{HttpAttributes, Peer, Policies, Traffic, Verdict};
use sluice_proto::authz::{self, Action, Condition, Operation, Policy, Rule, Source};

const WORDS: &[&str] = &[
    "*",
    "",
    "cluster.local/ns/a/sa/client",
    "cluster.local/ns/a/*",
    "*/sa/client",
    "a",
    "b",
    "10.0.0.0/8",
    "10.1.2.3",
    "10.1.2.3/32",
    "192.168.0.0/16",
    "8080",
    "80",
    "GET",
    "POST",
    "/admin",
    "/admin*",
    "*/health",
    "app.test",
    "*.test",
    "x-user",
    "alice",
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "request.headers[x-user]",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.claims[sub]",
];

#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Free(String),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Known(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
            Word::Free(s) => s.clone(),
        }
    }
}

fn texts(words: &[Word]) -> Vec<String> {
    words.iter().map(Word::text).collect()
}

#[derive(Arbitrary, Debug)]
struct Fields([Vec<Word>; 8]);

#[derive(Arbitrary, Debug)]
struct ArbRule {
    from: Vec<Fields>,
    to: Vec<Fields>,
    when: Vec<(Word, Vec<Word>, Vec<Word>)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policies: Vec<(u8, Vec<ArbRule>)>,
    ip: [u8; 4],
    port: u16,
    principal: Option<Word>,
    method: Word,
    path: Word,
    host: Word,
    header: (Word, Word),
}

fn source(f: &Fields) -> authz::From {
    let [p, np, ns, nns, ip, nip, rp, nrp] = &f.0;
    authz::From {
        source: Source {
            principals: texts(p),
            not_principals: texts(np),
            namespaces: texts(ns),
            not_namespaces: texts(nns),
            ip_blocks: texts(ip),
            not_ip_blocks: texts(nip),
            request_principals: texts(rp),
            not_request_principals: texts(nrp),
        },
    }
}

fn operation(f: &Fields) -> authz::To {
    let [h, nh, p, np, m, nm, pa, npa] = &f.0;
    authz::To {
        operation: Operation {
            hosts: texts(h),
            not_hosts: texts(nh),
            ports: texts(p),
            not_ports: texts(np),
            methods: texts(m),
            not_methods: texts(nm),
            paths: texts(pa),
            not_paths: texts(npa),
        },
    }
}

fn policies(input: &Input) -> Vec<Policy> {
    input
        .policies
        .iter()
        .enumerate()
        .map(|(i, (action, rules))| Policy {
            name: format!("p{i}"),
            action: [Action::Allow, Action::Deny, Action::Audit][usize::from(*action) % 3],
            rules: rules
                .iter()
                .map(|r| Rule {
                    from: r.from.iter().map(source).collect(),
                    to: r.to.iter().map(operation).collect(),
                    when: r
                        .when
                        .iter()
                        .map(|(key, values, not_values)| Condition {
                            key: key.text(),
                            values: texts(values),
                            not_values: texts(not_values),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let Ok(compiled) = Policies::compile(&policies(&input)) else {
        return;
    };
    let principal = input.principal.as_ref().map(Word::text);
    let peer = Peer {
        ip: IpAddr::from(input.ip),
        principal: principal.as_deref(),
        port: input.port,
    };
    let mut headers = http::HeaderMap::new();
    if let (Ok(n), Ok(v)) = (
        http::HeaderName::from_bytes(input.header.0.text().as_bytes()),
        http::HeaderValue::from_str(&input.header.1.text()),
    ) {
        headers.insert(n, v);
    }
    let (method, path, host) = (input.method.text(), input.path.text(), input.host.text());
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

//! Arbitrary bytes as an upstream's answer on the proxy's own HTTP/1
//! client: the response head parser and the chunked decoder never panic;
//! a head is consumed from the front and what follows stays; its fields
//! pass on as whole lines, without hop-by-hop ones; a body
//! decoded by its chunks only ever shrinks the buffer, and bytes after its
//! end stay for the next message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::pool::chunked::{Chunked, Step};
use sluice_proxy::pool::response_head::{BodyFraming, parse};

/// Prefixes the first byte picks, so that inputs reach the fields and
/// the chunked decoder without first having to find a status line.
const PREFIXES: [&[u8]; 3] = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
];

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let head_request = mode & 0x80 != 0;
    let data = [PREFIXES[usize::from(mode) % PREFIXES.len()], rest].concat();
    let mut buf = BytesMut::from(&data[..]);
    let Ok(Some(head)) = parse(&mut buf, head_request) else {
        return;
    };
    assert!(data.ends_with(&buf));
    assert!(!head.response.status().is_informational());
    if head_request {
        assert_eq!(head.framing, BodyFraming::Empty);
    }
    if head.framing == BodyFraming::UntilClose {
        assert!(!head.keep_alive);
    }
    // The fields as they are passed on: whole lines, each a field, none
    // of them hop-by-hop; made into a map, no more of them.
    let mut out = Vec::new();
    head.fields.write(&mut out, true);
    let mut lines = 0;
    for line in out.split_inclusive(|&b| b == b'\n') {
        lines += 1;
        assert!(line.ends_with(b"\r\n"));
        let colon = line.iter().position(|&b| b == b':').expect("a field line");
        let name = &line[..colon];
        assert!(!name.eq_ignore_ascii_case(b"connection"));
        assert!(!name.eq_ignore_ascii_case(b"transfer-encoding"));
    }
    assert!(head.fields.clone().into_map().len() <= lines);
    if head.framing != BodyFraming::Chunked {
        return;
    }
    let mut dec = Chunked::default();
    loop {
        let before = buf.len();
        match dec.next(&mut buf) {
            Ok(Step::Frame(_)) => assert!(buf.len() <= before),
            Ok(Step::NeedMore) | Ok(Step::Done) | Err(_) => return,
        }
    }
});

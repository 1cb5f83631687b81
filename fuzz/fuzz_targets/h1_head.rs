//! Arbitrary bytes as the start of an HTTP/1 connection, through the
//! proxy's own head parser: it never panics; what it waits on or hands to
//! hyper keeps every byte in place; what it takes or refuses is consumed
//! from the front and what follows stays; a request it takes is HTTP/1.1
//! in origin form with no body framing.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_proxy::h1::head::{Head, parse};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    match parse(&mut buf) {
        Head::Partial | Head::HandOff => assert_eq!(&buf[..], data),
        Head::Invalid => assert!(buf.len() < data.len() && data.ends_with(&buf)),
        Head::Request { req, .. } => {
            assert!(buf.len() < data.len() && data.ends_with(&buf));
            assert_eq!(req.version(), http::Version::HTTP_11);
            assert!(req.uri().path().starts_with('/'));
            let h = req.headers();
            assert!(!h.contains_key("transfer-encoding") && !h.contains_key("upgrade"));
            assert!(h
                .get_all("content-length")
                .iter()
                .all(|v| v.as_bytes().trim_ascii() == b"0"));
        }
    }
});

//! Any bytes given as a config file: an error or a config, never a panic;
//! and a config that loads survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proxy::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = config::from_yaml(text) {
        let json = serde_json_bytes(&c);
        assert_eq!(config::from_json(&json).ok(), Some(c));
    }
});

fn serde_json_bytes(c: &config::Config) -> Vec<u8> {
    sluice_proxy::config::to_json(c)
}

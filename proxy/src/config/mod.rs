//! Loading and validating the proxy's configuration.
//!
//! One document format serves both modes: the static YAML file of
//! `sluice-proxy run` and the JSON snapshots pushed by the control plane.
//! Every error names the field (`listeners[0].routes[1].backends[0].name`)
//! and, for YAML, the line, so a bad file is easy to fix; a refused document
//! never replaces the running one.

mod lines;
mod validate;

pub use sluice_proto::config::*;

use lines::LineIndex;

/// Why a configuration document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", if path.is_empty() { "document" } else { path.as_str() }, line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct ConfigError {
    /// The field at fault, e.g. `listeners[0].address`.
    pub path: String,
    /// 1-based line in the YAML source, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Parses and validates a YAML document.
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        ConfigError {
            path: clean_path(&path),
            line,
            message: strip_location(&inner.to_string()),
        }
    })?;
    let index = LineIndex::new(text);
    validate::check(&config).map_err(|mut e| {
        e.line = index.line(&e.path);
        e
    })?;
    Ok(config)
}

/// Parses and validates a JSON document (a control-plane snapshot).
pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            path: clean_path(&path),
            line: Some(inner.line()),
            message: strip_location(&inner.to_string()),
        }
    })?;
    validate::check(&config)?;
    Ok(config)
}

/// Serialises `config` as the JSON document [`from_json`] reads.
pub fn to_json(config: &Config) -> Vec<u8> {
    // A Config holds only strings, numbers and maps: serialising cannot fail.
    serde_json::to_vec(config).unwrap_or_default()
}

/// serde_path_to_error writes `.` for the root.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

/// serde's messages end with " at line L column C"; the line is reported apart.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "admin:
  address: 127.0.0.1:15000
backends:
  - name: blue
    endpoints: [127.0.0.1:9001]
  - name: yellow
    endpoints: [127.0.0.1:9002]
listeners:
  - name: web
    address: 127.0.0.1:18080
    routes:
      - name: app
        hosts: [app.example.com]
        backends:
          - {name: blue, weight: 50}
          - {name: yellow, weight: 50}
";

    #[test]
    fn good_document_loads() {
        let c = from_yaml(GOOD).unwrap();
        assert_eq!(c.listeners[0].routes[0].backends.len(), 2);
        // JSON round trip: the control plane's form of the same document.
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(from_json(&json).unwrap(), c);
    }

    #[test]
    fn type_error_names_field_and_line() {
        let bad = GOOD.replace("127.0.0.1:18080", "not-an-address");
        let e = from_yaml(&bad).unwrap_err();
        assert_eq!(e.path, "listeners[0].address");
        assert_eq!(e.line, Some(10));
        assert!(
            e.to_string()
                .starts_with("listeners[0].address (line 10): "),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        let bad = GOOD.replace("    hosts:", "    hostz:");
        let e = from_yaml(&bad).unwrap_err();
        assert!(e.message.contains("unknown field `hostz`"), "{e}");
        assert_eq!(e.line, Some(13));
    }

    #[test]
    fn semantic_error_names_field_and_line() {
        let bad = GOOD.replace("{name: yellow, weight: 50}", "{name: green, weight: 50}");
        let e = from_yaml(&bad).unwrap_err();
        assert_eq!(e.path, "listeners[0].routes[0].backends[1].name");
        assert_eq!(e.line, Some(16));
        assert!(e.message.contains("green"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = from_yaml("listeners:\n  - name: [unclosed\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }
}

//! Snapshots sent as deltas. A config document's top-level fields are its
//! sections (`backends`, `listeners`, `inbound`, `mesh_tcp`, ...); a delta
//! carries only the sections that differ from a base document, a removed
//! one as `null`. A weight change then sends the routes, not the mesh's
//! identity table, to each of a thousand sidecars.
//!
//! Sections are compared and copied as raw JSON text: neither side builds
//! a tree of the document to make or apply a delta, and what changed is
//! kept as ranges of the target document, not as a second copy of it.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::mesh::Snapshot;

/// A delta that cannot be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// A document or the delta is not a JSON object.
    #[error("config delta: {0}")]
    Json(#[from] serde_json::Error),
    /// The delta is over a version other than the last one received.
    #[error("a delta over version {base}, but this stream last received {}", received.as_deref().unwrap_or("no whole document"))]
    UnknownBase {
        /// The delta's base.
        base: String,
        /// The version last received on the stream, if any.
        received: Option<String>,
    },
}

/// A document's sections, by name, as their raw JSON text.
type Sections<'a> = BTreeMap<String, &'a RawValue>;

fn sections(doc: &[u8]) -> Result<Sections<'_>, DeltaError> {
    Ok(serde_json::from_slice(doc)?)
}

/// One section of a delta: its name, and where its new text is in the
/// target document (`None`: removed).
pub type Change = (String, Option<Range<usize>>);

/// What turns `base` into `target`: the sections of `target` that `base`
/// lacks or holds with other text, and each section of `base` that
/// `target` lacks.
pub fn changes(base: &[u8], target: &[u8]) -> Result<Vec<Change>, DeltaError> {
    let old = sections(base)?;
    let new = sections(target)?;
    // Where a section's text starts in `target`: RawValue borrows it.
    let offset = |text: &RawValue| text.get().as_ptr() as usize - target.as_ptr() as usize;
    let mut out: Vec<Change> = new
        .iter()
        .filter(|(name, text)| old.get(*name).map(|o| o.get()) != Some(text.get()))
        .map(|(name, text)| {
            let start = offset(text);
            (name.clone(), Some(start..start + text.get().len()))
        })
        .collect();
    out.extend(
        old.keys()
            .filter(|name| !new.contains_key(*name))
            .map(|name| (name.clone(), None)),
    );
    Ok(out)
}

/// The delta made of `changes` to `target`: a JSON object of each changed
/// section's text, `null` for a removed one.
pub fn encode(target: &[u8], changes: &[Change]) -> Vec<u8> {
    let len: usize = changes
        .iter()
        .map(|(name, range)| name.len() + range.as_ref().map_or(4, Range::len) + 4)
        .sum();
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'{');
    for (i, (name, range)) in changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, name);
        out.push(b':');
        match range.clone().and_then(|r| target.get(r)) {
            Some(text) => out.extend_from_slice(text),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    out
}

/// `base` with `delta` applied: each section the delta names replaced, or
/// removed where the delta says `null`.
pub fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut doc = sections(base)?;
    let changes: BTreeMap<String, Option<&RawValue>> = serde_json::from_slice(delta)?;
    for (name, text) in changes {
        match text {
            Some(text) => doc.insert(name, text),
            None => doc.remove(&name),
        };
    }
    Ok(serde_json::to_vec(&doc)?)
}

/// The whole document `snapshot` stands for, given the version and
/// document last received on its stream: itself when whole, else its delta
/// applied over that document, which must be its base.
pub fn whole_document(
    received: Option<(&str, &[u8])>,
    snapshot: Snapshot,
) -> Result<Bytes, DeltaError> {
    if snapshot.base.is_empty() {
        return Ok(snapshot.config_json);
    }
    match received {
        Some((version, doc)) if version == snapshot.base => {
            Ok(apply(doc, &snapshot.config_json)?.into())
        }
        other => Err(DeltaError::UnknownBase {
            base: snapshot.base,
            received: other.map(|(v, _)| v.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("JSON")
    }

    /// The delta that turns `base` into `target`.
    fn diff(base: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
        Ok(encode(target, &changes(base, target)?))
    }

    #[test]
    fn a_changed_section_is_all_the_delta_carries() {
        let base = br#"{"listeners":[{"w":1}],"mesh_tcp":{"workloads":{"a":["10.0.0.1"]}}}"#;
        let target = br#"{"listeners":[{"w":2}],"mesh_tcp":{"workloads":{"a":["10.0.0.1"]}}}"#;
        let delta = diff(base, target).expect("diff");
        assert_eq!(delta, br#"{"listeners":[{"w":2}]}"#);
        assert_eq!(value(&apply(base, &delta).expect("apply")), value(target));
    }

    #[test]
    fn sections_added_and_removed_round_trip() {
        let base = br#"{"backends":[],"inbound":{"mode":"STRICT"}}"#;
        let target = br#"{"backends":[{"name":"b"}],"mesh_tls":{"roots":"x"}}"#;
        let delta = diff(base, target).expect("diff");
        assert_eq!(
            value(&delta),
            value(br#"{"backends":[{"name":"b"}],"inbound":null,"mesh_tls":{"roots":"x"}}"#)
        );
        assert_eq!(value(&apply(base, &delta).expect("apply")), value(target));
    }

    #[test]
    fn equal_documents_make_an_empty_delta_that_changes_nothing() {
        let doc = br#"{"listeners":[]}"#;
        let delta = diff(doc, doc).expect("diff");
        assert_eq!(delta, b"{}");
        assert_eq!(value(&apply(doc, &delta).expect("apply")), value(doc));
    }

    #[test]
    fn a_section_name_that_needs_escaping_stays_valid_json() {
        let base = br#"{"a\"b":1}"#;
        let target = br#"{"a\"b":2}"#;
        let delta = diff(base, target).expect("diff");
        assert_eq!(value(&apply(base, &delta).expect("apply")), value(target));
    }

    #[test]
    fn a_delta_that_is_not_an_object_is_refused() {
        let base = br#"{"listeners":[]}"#;
        assert!(apply(base, b"[1]").is_err());
        assert!(apply(base, br#"{"listeners":"#).is_err());
        assert!(apply(b"null", b"{}").is_err());
        assert!(diff(b"[]", base).is_err());
    }
}

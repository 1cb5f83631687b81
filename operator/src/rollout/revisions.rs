//! Revision numbers and going back to one (`kubectl sluice undo`), as
//! Deployments and Argo Rollouts number them: each ReplicaSet carries the
//! number of the last time its template was the Rollout's, so the highest
//! is the current revision and the one below it the previous.
//!
//! A template restored from a ReplicaSet has the API server's defaults in
//! it, so its content hash differs from the hash it was created under;
//! [`current_hash`] recognises it by content instead, as the Deployment
//! controller does, so that an undo resumes the old ReplicaSet rather than
//! creating a twin.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;

use super::{HASH_LABEL, template_hash};

/// The annotation on a ReplicaSet that carries its revision number.
pub const REVISION_ANNOTATION: &str = "sluice.dev/revision";

/// Why there is nothing to go back to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UndoError {
    /// `--to-revision` names a revision no ReplicaSet has.
    #[error("no revision {wanted} (there are: {known})")]
    NoSuchRevision {
        /// The revision asked for.
        wanted: u64,
        /// The revisions there are, comma-separated.
        known: String,
    },
    /// The current revision is the oldest one kept.
    #[error("no revision before the current one {0} (older ones are not kept)")]
    NothingBefore(u64),
    /// `--to-revision` names the current revision.
    #[error("revision {0} is the current one")]
    AlreadyCurrent(u64),
}

/// The revision number of `rs`, if it has one.
pub fn revision(rs: &ReplicaSet) -> Option<u64> {
    rs.annotations().get(REVISION_ANNOTATION)?.parse().ok()
}

fn hash_of(rs: &ReplicaSet) -> Option<&str> {
    rs.labels().get(HASH_LABEL).map(String::as_str)
}

/// `rs`'s pod template as the Rollout's would be: without the hash label
/// the controller adds.
pub fn template_of(rs: &ReplicaSet) -> Option<PodTemplateSpec> {
    let mut t = rs.spec.as_ref()?.template.clone()?;
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    Some(t)
}

/// The revision hash of `template`: that of an owned ReplicaSet whose
/// template it equals (one restored by an undo), else its content hash.
/// Pod specs are compared first: they differ for every ReplicaSet but a
/// restored one (the API server defaults its template), so the usual
/// reconcile clones no template.
pub fn current_hash(owned: &[ReplicaSet], template: &PodTemplateSpec) -> String {
    owned
        .iter()
        .filter(|rs| {
            let spec = rs.spec.as_ref().and_then(|s| s.template.as_ref());
            spec.is_some_and(|t| t.spec == template.spec)
        })
        .find(|rs| template_of(rs).as_ref() == Some(template))
        .and_then(hash_of)
        .map_or_else(|| template_hash(template), str::to_owned)
}

/// The revision number of revision `hash`, if its ReplicaSet has one.
fn number_of(owned: &[ReplicaSet], hash: &str) -> Option<u64> {
    owned
        .iter()
        .find(|rs| hash_of(rs) == Some(hash))
        .and_then(revision)
}

/// The number revision `hash` should carry now: the next one, unless it is
/// already the highest.
pub fn next_number(owned: &[ReplicaSet], hash: &str) -> Option<u64> {
    let highest = owned.iter().filter_map(revision).max().unwrap_or(0);
    match number_of(owned, hash) {
        Some(n) if n == highest => None,
        _ => Some(highest + 1),
    }
}

/// The ReplicaSet an undo goes back to: revision `to`, or the highest
/// below the current revision `hash`.
pub fn undo_target<'a>(
    owned: &'a [ReplicaSet],
    hash: &str,
    to: Option<u64>,
) -> Result<&'a ReplicaSet, UndoError> {
    let current = number_of(owned, hash).unwrap_or(u64::MAX);
    let numbered = || owned.iter().filter_map(|rs| Some((revision(rs)?, rs)));
    match to {
        Some(n) if n == current => Err(UndoError::AlreadyCurrent(n)),
        Some(n) => numbered()
            .find(|(r, _)| *r == n)
            .map(|(_, rs)| rs)
            .ok_or_else(|| {
                let mut known: Vec<u64> = numbered().map(|(r, _)| r).collect();
                known.sort_unstable();
                UndoError::NoSuchRevision {
                    wanted: n,
                    known: known
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            }),
        None => numbered()
            .filter(|(r, _)| *r < current)
            .max_by_key(|(r, _)| *r)
            .map(|(_, rs)| rs)
            .ok_or(UndoError::NothingBefore(current)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A ReplicaSet of revision `n` (none when 0) running `image`, its
    /// template defaulted as the API server does.
    fn rs(hash: &str, n: u64, image: &str) -> ReplicaSet {
        let annotations = if n == 0 {
            json!({})
        } else {
            json!({REVISION_ANNOTATION: n.to_string()})
        };
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "labels": {HASH_LABEL: hash},
                         "annotations": annotations},
            "spec": {"selector": {}, "template": {
                "metadata": {"labels": {"app": "web", HASH_LABEL: hash}},
                "spec": {"containers": [{"name": "app", "image": image,
                                         "imagePullPolicy": "IfNotPresent"}]},
            }},
        }))
        .expect("replicaset")
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }))
        .expect("template")
    }

    #[test]
    fn a_restored_template_resumes_its_replicaset_and_a_new_one_gets_its_content_hash() {
        let owned = [rs("aaa", 1, "app:1"), rs("bbb", 2, "app:2")];
        let restored = template_of(&owned[0]).expect("a template");
        assert_eq!(current_hash(&owned, &restored), "aaa");
        let fresh = template("app:3");
        assert_eq!(current_hash(&owned, &fresh), template_hash(&fresh));
    }

    #[test]
    fn the_current_revision_is_numbered_after_the_highest_unless_it_is_it() {
        let owned = [rs("aaa", 1, "app:1"), rs("bbb", 2, "app:2")];
        assert_eq!(next_number(&owned, "bbb"), None);
        assert_eq!(next_number(&owned, "aaa"), Some(3), "an undo renumbers");
        assert_eq!(next_number(&owned, "ccc"), Some(3));
        assert_eq!(next_number(&[], "aaa"), Some(1));
        assert_eq!(next_number(&[rs("aaa", 0, "app:1")], "aaa"), Some(1));
    }

    #[test]
    fn undo_goes_to_the_previous_revision_or_the_one_named() {
        let owned = [
            rs("aaa", 1, "app:1"),
            rs("bbb", 3, "app:2"),
            rs("ccc", 4, "app:3"),
        ];
        let name = |r: Result<&ReplicaSet, UndoError>| r.map(|rs| rs.name_any());
        assert_eq!(name(undo_target(&owned, "ccc", None)), Ok("web-bbb".into()));
        assert_eq!(name(undo_target(&owned, "bbb", None)), Ok("web-aaa".into()));
        assert_eq!(
            name(undo_target(&owned, "ccc", Some(1))),
            Ok("web-aaa".into())
        );
        assert_eq!(
            name(undo_target(&owned, "aaa", None)),
            Err(UndoError::NothingBefore(1))
        );
        assert_eq!(
            name(undo_target(&owned, "ccc", Some(4))),
            Err(UndoError::AlreadyCurrent(4))
        );
        let missing = undo_target(&owned, "ccc", Some(2)).expect_err("no revision 2");
        assert_eq!(missing.to_string(), "no revision 2 (there are: 1, 3, 4)");
    }
}

//! What the operator's stores keep of a watched object: everything it reads,
//! without the metadata it never does. Applied to each watch event before a
//! store (a reflector or the ReplicaSet index) keeps the object, since at
//! 10,000 Rollouts the stores are most of the operator's memory.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation in which `kubectl apply` keeps a copy of the whole object
/// as last applied: as large as the object itself, and never read here.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no part of the operator reads: managed fields and the
/// last-applied copy. Objects are only ever patched from their fields, never
/// written back whole, so nothing dropped here can be lost on the server.
pub fn trim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy_and_keeps_other_annotations() {
        let mut meta = ObjectMeta {
            name: Some("demo".into()),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            annotations: Some(
                [
                    (
                        LAST_APPLIED.to_owned(),
                        "{\"a whole\": \"copy\"}".to_owned(),
                    ),
                    ("sluice.dev/revision".to_owned(), "3".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        };
        trim(&mut meta);
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations,
            Some([("sluice.dev/revision".to_owned(), "3".to_owned())].into())
        );
        assert_eq!(meta.name.as_deref(), Some("demo"));
    }

    #[test]
    fn an_object_whose_only_annotation_was_the_copy_has_none() {
        let mut meta = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into()),
            ..ObjectMeta::default()
        };
        trim(&mut meta);
        assert_eq!(meta.annotations, None);
    }
}

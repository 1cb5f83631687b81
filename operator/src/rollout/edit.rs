//! Edits users make to a Rollout from the command line, as pure functions
//! from the object to a JSON Patch: `kubectl sluice set image`.
//!
//! Each replaced field is guarded by a `test` of the container's name at
//! that index, so that a template changed between the read and the write
//! fails the patch instead of setting the wrong container's image.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{Value, json};

/// One `CONTAINER=IMAGE` argument; the container `*` means every container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChange {
    /// The container's name, or `*`.
    pub container: String,
    /// The new image.
    pub image: String,
}

/// Why an edit cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// An argument is not `CONTAINER=IMAGE`.
    #[error("{0:?} is not CONTAINER=IMAGE")]
    Syntax(String),
    /// No container (or init container) has that name.
    #[error("the pod template has no container {name:?} (it has: {known})")]
    NoContainer {
        /// The name asked for.
        name: String,
        /// The names the template has, comma-separated.
        known: String,
    },
    /// Every image named is already set: a patch would start nothing.
    #[error("nothing to change: every image named is already set")]
    Unchanged,
}

impl std::str::FromStr for ImageChange {
    type Err = EditError;

    fn from_str(arg: &str) -> Result<ImageChange, EditError> {
        match arg.split_once('=') {
            Some((c, i)) if !c.is_empty() && !i.is_empty() && !i.contains(char::is_whitespace) => {
                Ok(ImageChange {
                    container: c.to_owned(),
                    image: i.to_owned(),
                })
            }
            _ => Err(EditError::Syntax(arg.to_owned())),
        }
    }
}

/// The JSON Patch that sets each named container's image in `template`
/// (at `/spec/template`), containers first, then init containers.
pub fn set_image(template: &PodTemplateSpec, changes: &[ImageChange]) -> Result<Value, EditError> {
    let spec = template.spec.clone().unwrap_or_default();
    let lists = [
        ("containers", spec.containers),
        ("initContainers", spec.init_containers.unwrap_or_default()),
    ];
    let mut ops = Vec::new();
    let mut named_any = false;
    for change in changes {
        let mut found = false;
        for (list, containers) in &lists {
            for (i, c) in containers.iter().enumerate() {
                if change.container != "*" && c.name != change.container {
                    continue;
                }
                found = true;
                named_any = true;
                if c.image.as_deref() == Some(change.image.as_str()) {
                    continue;
                }
                let at = format!("/spec/template/spec/{list}/{i}");
                ops.push(json!({"op": "test", "path": format!("{at}/name"), "value": c.name}));
                ops.push(
                    json!({"op": "add", "path": format!("{at}/image"), "value": change.image}),
                );
            }
        }
        if !found {
            let known: Vec<&str> = lists
                .iter()
                .flat_map(|(_, cs)| cs.iter().map(|c| c.name.as_str()))
                .collect();
            return Err(EditError::NoContainer {
                name: change.container.clone(),
                known: known.join(", "),
            });
        }
    }
    if ops.is_empty() && named_any {
        return Err(EditError::Unchanged);
    }
    Ok(Value::Array(ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PodTemplateSpec {
        serde_json::from_value(json!({"spec": {
            "initContainers": [{"name": "migrate", "image": "app:1"}],
            "containers": [
                {"name": "app", "image": "app:1"},
                {"name": "cache", "image": "redis:7"},
            ],
        }}))
        .expect("template")
    }

    fn change(arg: &str) -> ImageChange {
        arg.parse().expect("CONTAINER=IMAGE")
    }

    #[test]
    fn sets_the_named_container_guarded_by_its_name() {
        let patch = set_image(&template(), &[change("cache=redis:8")]).expect("patch");
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "cache"},
                {"op": "add", "path": "/spec/template/spec/containers/1/image", "value": "redis:8"},
            ])
        );
    }

    #[test]
    fn a_star_sets_every_container_and_init_container_not_already_set() {
        let patch = set_image(&template(), &[change("*=app:2")]).expect("patch");
        let paths: Vec<&str> = patch
            .as_array()
            .into_iter()
            .flatten()
            .filter(|op| op["op"] == "add")
            .filter_map(|op| op["path"].as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/spec/template/spec/containers/0/image",
                "/spec/template/spec/containers/1/image",
                "/spec/template/spec/initContainers/0/image",
            ]
        );
    }

    #[test]
    fn an_unknown_container_is_refused_with_the_names_there_are() {
        let err = set_image(&template(), &[change("web=app:2")]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "the pod template has no container \"web\" (it has: app, cache, migrate)"
        );
    }

    #[test]
    fn an_image_already_set_changes_nothing() {
        assert_eq!(
            set_image(&template(), &[change("app=app:1")]),
            Err(EditError::Unchanged)
        );
    }

    #[test]
    fn arguments_must_be_container_equals_image() {
        for bad in ["app", "=app:2", "app=", "app=a b"] {
            assert!(
                matches!(bad.parse::<ImageChange>(), Err(EditError::Syntax(_))),
                "{bad}"
            );
        }
    }
}

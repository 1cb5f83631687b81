//! Which local program runs for a container image.
//!
//! There is no container runtime: an image name maps to a binary of this
//! workspace or to the host's own programs. The table is small on purpose.
//!
//! | image (any registry/org prefix) | runs |
//! |---|---|
//! | `demo-app:<colour>`, `rollouts-demo:<colour>` | `demo-app`, with `COLOR=<colour>` |
//! | `sluice-proxy:*` | `sluice-proxy` |
//! | `sluice-operator:*` | `sluice-operator` |
//! | `curl:*` | `sleep infinity`, or `curl ARGS` when only args are given |
//! | `busybox`, `alpine`, `debian`, `ubuntu` | the container's `command` on the host |
//!
//! A container's `command` replaces the entrypoint as in Kubernetes; a
//! command naming a workspace binary (e.g. `demo-app`) runs that binary.

use std::path::{Path, PathBuf};

/// How to start one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment the image itself sets (the container's env overrides it).
    pub image_env: Vec<(String, String)>,
}

/// The image name without registry, org and tag, and its tag.
fn parse(image: &str) -> (&str, &str) {
    let (repo, tag) = match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    };
    let repo = repo.split('@').next().unwrap_or(repo);
    (repo.rsplit('/').next().unwrap_or(repo), tag)
}

/// Resolves `image` with the container's `command` and `args`; `bins` holds
/// the workspace binaries. An unknown image without a command is an error
/// whose text becomes the container's waiting message.
pub fn resolve(
    image: &str,
    command: &[String],
    args: &[String],
    bins: &Path,
) -> Result<Launch, String> {
    let (name, tag) = parse(image);
    let workspace = |bin: &str| bins.join(bin);
    let (entrypoint, default_args, image_env): (Vec<String>, Vec<String>, Vec<(String, String)>) =
        match name {
            "demo-app" | "rollouts-demo" => {
                let mut env = Vec::new();
                if tag != "latest" {
                    env.push(("COLOR".to_owned(), tag.to_owned()));
                }
                (
                    vec![workspace("demo-app").display().to_string()],
                    vec![],
                    env,
                )
            }
            "sluice-proxy" | "sluice-operator" => {
                (vec![workspace(name).display().to_string()], vec![], vec![])
            }
            "curl" => {
                if command.is_empty() && args.is_empty() {
                    (vec!["sleep".into()], vec!["infinity".into()], vec![])
                } else {
                    (vec!["curl".into()], vec![], vec![])
                }
            }
            "busybox" | "alpine" | "debian" | "ubuntu" => {
                (vec!["sleep".into()], vec!["infinity".into()], vec![])
            }
            _ if !command.is_empty() => (vec![], vec![], vec![]),
            _ => {
                return Err(format!(
                    "image {image:?} is not mapped to a local program; known: demo-app, rollouts-demo, sluice-proxy, sluice-operator, curl, busybox (or give a command)"
                ));
            }
        };
    // Kubernetes semantics: command replaces the entrypoint and drops the
    // image's default args; args alone replace the default args.
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.into_iter().chain(args.iter().cloned()).collect()
    } else {
        entrypoint.into_iter().chain(default_args).collect()
    };
    let Some((first, rest)) = argv.split_first() else {
        return Err(format!("image {image:?}: empty command"));
    };
    let program = match Path::new(first).file_name().and_then(|n| n.to_str()) {
        Some(bin @ ("demo-app" | "sluice-proxy" | "sluice-operator")) => workspace(bin),
        _ => PathBuf::from(first),
    };
    Ok(Launch {
        program,
        args: rest.to_vec(),
        image_env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn demo_app_tag_is_its_colour() {
        let l = resolve("ghcr.io/sluice/demo-app:yellow", &[], &[], Path::new("/b")).unwrap();
        assert_eq!(l.program, PathBuf::from("/b/demo-app"));
        assert_eq!(l.image_env, vec![("COLOR".into(), "yellow".into())]);
        assert!(l.args.is_empty());
    }

    #[test]
    fn args_replace_default_args_and_command_replaces_entrypoint() {
        let l = resolve(
            "sluice-proxy:dev",
            &[],
            &s(&["sidecar", "--x"]),
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(
            (l.program, l.args),
            (PathBuf::from("/b/sluice-proxy"), s(&["sidecar", "--x"]))
        );
        let l = resolve(
            "curlimages/curl:8.1",
            &s(&["sh", "-c"]),
            &s(&["echo hi"]),
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(
            (l.program, l.args),
            (PathBuf::from("sh"), s(&["-c", "echo hi"]))
        );
    }

    #[test]
    fn curl_image_sleeps_without_command() {
        let l = resolve("curlimages/curl", &[], &[], Path::new("/b")).unwrap();
        assert_eq!(
            (l.program, l.args),
            (PathBuf::from("sleep"), s(&["infinity"]))
        );
    }

    #[test]
    fn unknown_image_without_command_is_refused() {
        let e = resolve("nginx:1.27", &[], &[], Path::new("/b")).unwrap_err();
        assert!(e.contains("nginx:1.27"), "{e}");
        let l = resolve("nginx:1.27", &s(&["demo-app"]), &[], Path::new("/b")).unwrap();
        assert_eq!(l.program, PathBuf::from("/b/demo-app"));
    }

    #[test]
    fn digest_and_registry_port_parse() {
        assert_eq!(
            parse("localhost:5000/org/demo-app:blue"),
            ("demo-app", "blue")
        );
        assert_eq!(parse("localhost:5000/org/demo-app"), ("demo-app", "latest"));
    }
}

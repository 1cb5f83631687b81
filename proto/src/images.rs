//! The names of Sluice's container images: what `cargo xtask images`
//! builds, what the Helm chart deploys and what the injector puts in pods.
//! Every image is tagged with the workspace version, the chart's
//! `appVersion`.

/// The tag of every Sluice image.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

macro_rules! image {
    ($repository:literal) => {
        concat!($repository, ":", env!("CARGO_PKG_VERSION"))
    };
}

/// The proxy: ingress gateway, injected sidecar and its interception step.
pub const PROXY: &str = image!("sluice/sluice-proxy");
/// The operator.
pub const OPERATOR: &str = image!("sluice/sluice-operator");
/// The pod sandbox (the process that holds a pod's namespaces).
pub const PAUSE: &str = image!("sluice/pause");
/// The hands-on's client: curl and a shell.
pub const CURL: &str = image!("sluice/curl");
/// The hands-on's app; its tags are colours (`sluice/demo-app:blue`).
pub const DEMO_APP_REPOSITORY: &str = "sluice/demo-app";
/// The colours `demo-app` images are tagged with, each answering with its
/// own (as Argo Rollouts' `rollouts-demo` images do).
pub const DEMO_APP_COLOURS: &[&str] = &["blue", "yellow", "green", "red", "orange", "purple"];

/// The repository of an image reference (`sluice/sluice-proxy:0.1.0` →
/// `sluice/sluice-proxy`).
pub fn repository(reference: &str) -> &str {
    reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(reference, |(repo, _)| repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_tagged_with_the_version() {
        assert_eq!(PROXY, format!("sluice/sluice-proxy:{TAG}"));
        assert_eq!(repository(PROXY), "sluice/sluice-proxy");
        assert_eq!(repository("localhost:5000/x"), "localhost:5000/x");
    }
}

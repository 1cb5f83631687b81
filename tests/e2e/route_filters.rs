//! HTTPRoute matches and filters through the real gateway: a redirect the
//! gateway answers itself, a path rewritten by prefix, a response header
//! added, and query parameter and path regular-expression matches that
//! send requests to the other version.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use sluice_tests::Cluster;
use sluice_tests::wait::poll;

use super::{GATEWAY_PORT, TIMEOUT, mesh, two_versions};

/// What the gateway answered: status, `Location`, `x-route`, body.
async fn ask(
    client: &reqwest::Client,
    ip: &str,
    host: &str,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(u16, String, String, String)> {
    let resp = client
        .request(method, format!("http://{ip}:{GATEWAY_PORT}{path}"))
        .header(reqwest::header::HOST, host)
        .send()
        .await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (location, route) = (header("location"), header("x-route"));
    Ok((
        resp.status().as_u16(),
        location,
        route,
        resp.text().await?.trim().to_owned(),
    ))
}

/// GETs `path` through the gateway until its status passes `wanted`, for
/// `what` to have happened (a config applied, endpoints arrived).
async fn get_until(
    client: &reqwest::Client,
    ip: &str,
    host: &str,
    path: &str,
    what: &str,
    wanted: fn(u16) -> bool,
) -> anyhow::Result<(u16, String, String, String)> {
    let answer = poll(what, TIMEOUT, Duration::from_millis(200), || async {
        let r = ask(client, ip, host, reqwest::Method::GET, path).await;
        Ok(r.ok().filter(|r| wanted(r.0)))
    })
    .await?;
    Ok(answer)
}

pub async fn matches_and_filters(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let (ns, host) = ("filters", "filters.example.com");
    two_versions(&cluster, &mesh, ns, host, 100, 0).await?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: filters, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["{host}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.net
        statusCode: 301
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{{path: {{type: PathPrefix, value: /shop}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /store}}}}
    backendRefs: [{{name: handson-blue, port: 8080}}]
  - matches: [{{queryParams: [{{name: version, value: yellow}}]}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-route, value: query}}]}}
    backendRefs: [{{name: handson-yellow, port: 8080}}]
  - matches: [{{path: {{type: RegularExpression, value: "/items/[0-9]+"}}}}]
    backendRefs: [{{name: handson-yellow, port: 8080}}]
"#
    ))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let ip = mesh.gateway_ip.clone();
    let get = reqwest::Method::GET;

    // Applied once the redirect is answered; everything else is checked
    // against that config.
    let redirect = get_until(
        &client,
        &ip,
        host,
        "/old/page?x=1",
        "the gateway to answer /old with a redirect",
        |status| status == 301,
    )
    .await?;
    ensure!(
        redirect.1 == format!("http://example.net:{GATEWAY_PORT}/new/page?x=1"),
        "Location: {:?}",
        redirect.1
    );

    let rewritten = ask(&client, &ip, host, reqwest::Method::POST, "/shop/cart").await?;
    ensure!(
        rewritten.3 == "blue POST /store/cart",
        "rewrite: {rewritten:?}"
    );

    // Yellow runs at weight 0, so nothing above waited for its endpoints
    // to reach the gateway: until they do, its backend answers 503.
    let query = get_until(
        &client,
        &ip,
        host,
        "/?version=yellow",
        "the gateway to have yellow's endpoints",
        |status| status != 503,
    )
    .await?;
    ensure!(
        (query.2.as_str(), query.3.as_str()) == ("query", "yellow"),
        "query match: {query:?}"
    );
    let other = ask(&client, &ip, host, get.clone(), "/?version=blue").await?;
    ensure!(
        (other.2.as_str(), other.3.as_str()) == ("", "blue"),
        "another value: {other:?}"
    );

    for (path, want) in [("/items/42", "yellow"), ("/items/abc", "blue")] {
        let r = ask(&client, &ip, host, get.clone(), path).await?;
        ensure!(r.3 == want, "{path}: {r:?}");
    }
    Ok(())
}

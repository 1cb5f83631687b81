//! The benchmark's Pingora peer: every request on `LISTEN` goes to the one
//! `UPSTREAM`, over pooled keep-alive connections, on one worker thread
//! (the same shape as the other proxies in `cargo xtask bench proxy`).
//!
//! Usage: `sluice-bench-pingora LISTEN UPSTREAM`, e.g.
//! `sluice-bench-pingora 127.0.0.1:19107 127.0.0.1:19001`.

use async_trait::async_trait;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// Sends everything to one plaintext HTTP/1.1 upstream.
struct OneUpstream {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for OneUpstream {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: sluice-bench-pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    // One worker thread, as nginx's one worker and HAProxy's `nbthread 1`.
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, OneUpstream { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}

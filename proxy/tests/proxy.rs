//! The real `sluice-proxy` binary in static mode against real clients:
//! HTTP/1.1, HTTP/2, gRPC (tonic), WebSocket, raw TCP; weighted splits,
//! reloads under load, retries, bad input and graceful shutdown.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(c: &reqwest::Client, port: u16, path: &str) -> (u16, String) {
    let r = c
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn http1_and_http2_share_one_port() {
    let (_up, _p, port) = proxied_blue().await;
    let (s, body) = get(&client(), port, "/").await;
    assert_eq!((s, body.as_str()), (200, "blue"));
    let r = h2_get_app(port).await;
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "blue");
}

/// `GET http://app.test:{port}/` over HTTP/2 with prior knowledge.
async fn h2_get_app(port: u16) -> reqwest::Response {
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("app.test", addr(port))
        .build()
        .unwrap();
    h2.get(format!("http://app.test:{port}/"))
        .send()
        .await
        .unwrap()
}

/// Sends `n` requests over `conc` keep-alive clients; counts bodies.
async fn split(port: u16, n: usize, conc: usize) -> std::collections::HashMap<String, usize> {
    let counts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..n / conc {
                let (s, body) = get(&c, port, "/").await;
                assert_eq!(s, 200);
                *counts.lock().unwrap().entry(body).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_accurate() {
    let (blue, yellow) = (upstream("blue").await, upstream("yellow").await);
    let (port, admin) = (free_port(), free_port());
    let cfg = |wb, wy| {
        http_config(
            addr(port),
            addr(admin),
            &[("blue", blue.addr, wb), ("yellow", yellow.addr, wy)],
            "",
        )
    };
    let p = ProxyProcess::start(&cfg(50, 50), addr(admin)).await;
    let counts = split(port, 10_000, 8).await;
    let blue_share = counts["blue"] as f64 / 10_000.0;
    assert!(
        (blue_share - 0.5).abs() <= 0.02,
        "50/50 gave blue {blue_share}"
    );

    let v = p.config_version().await;
    p.rewrite(&cfg(90, 10));
    p.wait_version_change(&v).await;
    let counts = split(port, 10_000, 8).await;
    let blue_share = counts["blue"] as f64 / 10_000.0;
    assert!(
        (blue_share - 0.9).abs() <= 0.015,
        "90/10 gave blue {blue_share}"
    );

    // Weight 0 sends nothing.
    let v = p.config_version().await;
    p.rewrite(&cfg(0, 100));
    p.wait_version_change(&v).await;
    let counts = split(port, 1_000, 4).await;
    assert_eq!(counts.get("blue"), None);
    let metrics = p.metrics().await;
    assert!(metrics.contains(r#"sluice_requests_total{listener="web",route="app",backend="yellow",revision="",code="200"}"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let (blue, yellow) = (upstream("blue").await, upstream("yellow").await);
    let (port, admin) = (free_port(), free_port());
    let cfg = |wb, wy| {
        http_config(
            addr(port),
            addr(admin),
            &[("blue", blue.addr, wb), ("yellow", yellow.addr, wy)],
            "",
        )
    };
    let p = ProxyProcess::start(&cfg(100, 0), addr(admin)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c
                    .get(format!("http://127.0.0.1:{port}/"))
                    .header("host", "app.test")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..6u32 {
        let v = p.config_version().await;
        let w = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        p.rewrite(&cfg(w.0, w.1));
        p.wait_version_change(&v).await;
        // Each version serves for a while under load before the next one.
        let seen = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < seen + 200 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across reloads"
    );
    assert!(ok.load(Ordering::Relaxed) >= 1200);
    // Yellow then blue took all traffic in turn.
    assert!(blue.hits.load(Ordering::Relaxed) > 0 && yellow.hits.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn grpc_unary_and_streaming_keep_trailers() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("sluice.Test", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_from(listener)),
    );
    let (port, admin) = (free_port(), free_port());
    let _p = ProxyProcess::start(
        &http_config(addr(port), addr(admin), &[("grpc", grpc_addr, 1)], ""),
        addr(admin),
    )
    .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://app.test:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                TcpStream::connect(addr(port)).await?,
            ))
        }))
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    // Unary: the status travels in the trailers.
    let resp = client
        .check(HealthCheckRequest {
            service: "sluice.Test".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Server streaming: updates arrive as they happen.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "sluice.Test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    reporter
        .set_service_status("sluice.Test", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        stream.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    server.abort();
}

fn tokio_stream_from(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    let (port, admin) = (free_port(), free_port());
    let _p = ProxyProcess::start(
        &http_config(addr(port), addr(admin), &[("ws", ws_addr, 1)], ""),
        addr(admin),
    )
    .await;
    let req = http::Request::builder()
        .uri(format!("ws://127.0.0.1:{port}/chat"))
        .header("host", "app.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    server.abort();
}

#[tokio::test]
async fn tcp_is_spliced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "admin: {{address: \"127.0.0.1:{admin}\"}}\nbackends:\n  - name: echo\n    endpoints: [\"{echo_addr}\"]\nlisteners:\n  - name: db\n    address: 127.0.0.1:{port}\n    protocol: tcp\n    backends: [{{name: echo}}]\n"
    );
    let p = ProxyProcess::start(&cfg, addr(admin)).await;
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(write, read);
    assert_eq!(n.unwrap(), payload.len());
    assert_eq!(back, payload);
    let metrics = p.metrics().await;
    assert!(metrics.contains(r#"sluice_bytes_total{listener="db",route="",backend="echo",revision="",direction="in"} 100000"#), "{metrics}");
    server.abort();
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_and_5xx() {
    let up = upstream("blue").await;
    let dead = addr(free_port());
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "admin: {{address: \"127.0.0.1:{admin}\"}}
backends:
  - {{name: blue, endpoints: [\"{}\"]}}
  - {{name: dead, endpoints: [\"{dead}\"]}}
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - {{name: app, hosts: [app.test], backends: [{{name: blue}}]}}
      - {{name: dead-route, hosts: [dead.test], backends: [{{name: dead}}]}}
",
        up.addr
    );
    let p = ProxyProcess::start(&cfg, addr(admin)).await;

    // Malformed HTTP: 400.
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Unknown host: 404 saying no route matched.
    let c = client();
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "nobody.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-sluice-flags"], "NR");
    assert_eq!(r.text().await.unwrap(), "no route matched\n");

    // Unreachable backend: 503 with the reason.
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "dead.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sluice-flags"], "UF");

    // Oversized headers: 431.
    let big = "x".repeat(100 * 1024);
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Garbage that is not HTTP at all, then a half-sent request: no crash.
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(&[0u8, 159, 146, 150, 255, 13, 10, 13, 10])
        .await
        .unwrap();
    let _ = s.read(&mut buf).await;
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    drop(s);

    // Still serving.
    let (status, body) = get(&c, port, "/").await;
    assert_eq!((status, body.as_str()), (200, "blue"));
    let m = p.metrics().await;
    assert!(
        m.contains(r#"backend="dead",revision="",code="503"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_config_is_refused_and_the_running_one_stays() {
    let up = upstream("blue").await;
    let (port, admin) = (free_port(), free_port());
    let good = http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], "");

    // At start-up: exit non-zero, naming the field and the line.
    let bad = good.replace("{name: blue, weight: 1}", "{name: green, weight: 1}");
    let mut p = ProxyProcess::spawn(&bad, addr(admin), &[]);
    let status = p.child.wait().unwrap();
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains(
            "listeners[0].routes[0].backends[0].name (line 13): unknown backend \"green\""
        ),
        "{log}"
    );

    // On reload: refused, counted, and the old config keeps serving.
    let p = ProxyProcess::start(&good, addr(admin)).await;
    let v = p.config_version().await;
    p.rewrite(&good.replace(
        &format!("address: 127.0.0.1:{port}"),
        "address: not-an-address",
    ));
    p.wait_refusals(1).await;
    assert_eq!(p.config_version().await, v);
    assert!(
        p.log_text().contains("listeners[0].address (line 8)"),
        "{}",
        p.log_text()
    );
    let (status, body) = get(&client(), port, "/").await;
    assert_eq!((status, body.as_str()), (200, "blue"));
}

/// A listener whose port is taken when its config arrives is bound once
/// the port frees, with no new config; each failed attempt is counted, and
/// the proxy is not ready until then.
#[tokio::test]
async fn a_listener_whose_port_is_taken_is_bound_once_it_frees() {
    let up = upstream("blue").await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let admin = free_port();
    let cfg = http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], "");
    let p = ProxyProcess::spawn(&cfg, addr(admin), &["--workers", "1"]);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let failures = "sluice_listener_bind_failures_total";
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(&ready).await.is_err() || p.counter(failures).await == 0 {
        assert!(Instant::now() < deadline, "no failed bind counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = reqwest::get(&ready).await.unwrap();
    assert_eq!(answer.status(), 503, "ready while its port is taken");
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("binding its listeners")
    );
    drop(holder);
    let c = client();
    loop {
        let answer = c
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "app.test")
            .send()
            .await;
        if let Ok(r) = answer {
            assert_eq!(r.text().await.unwrap(), "blue");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed port was never bound: {}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.wait_ready().await;
    assert!(p.log_text().contains("cannot listen (retrying)"));
}

#[tokio::test]
async fn retries_route_around_a_dead_endpoint() {
    let up = upstream("blue").await;
    let dead = addr(free_port());
    let (p, port) = pair_behind_proxy(dead, up.addr, "{attempts: 2}").await;
    let c = client();
    for _ in 0..50 {
        let (status, body) = get(&c, port, "/").await;
        assert_eq!((status, body.as_str()), (200, "blue"));
    }
    // Out of rotation at its first refusal (a second more only if the
    // requests outlast the first ejection), counted and logged by address.
    let ejections = p
        .counter(r#"sluice_upstream_ejections_total{reason="unreachable"}"#)
        .await;
    assert!((1..=2).contains(&ejections), "{ejections} ejections");
    let log = p.log_text();
    assert!(
        log.contains("endpoint ejected") && log.contains(&format!("endpoint={dead}")),
        "{log}"
    );
}

/// A hundred requests that succeed at once earn the route's retry budget
/// and spend none of it, so the 503s that follow are each tried again.
#[tokio::test]
async fn attempts_that_succeed_spend_none_of_the_retry_budget() {
    let (a, b) = (upstream("blue").await, upstream("blue").await);
    let (_p, port) = pair_behind_proxy(a.addr, b.addr, "{attempts: 1, budget: 0.2}").await;
    let c = client();
    for _ in 0..100 {
        assert_eq!(get(&c, port, "/").await, (200, "blue".to_owned()));
    }
    // Both endpoints answer this path 503: a retry meets the other one.
    for _ in 0..5 {
        assert_eq!(get(&c, port, "/status/503").await.0, 503);
    }
    let hits = a.hits.load(Ordering::Relaxed) + b.hits.load(Ordering::Relaxed);
    assert_eq!(
        hits - 100,
        10,
        "the five 503s were not each retried once: the budget was spent"
    );
}

/// An endpoint that fails fast looks fastest to a latency-aware balancer;
/// five 503s in a row eject it instead, and its peer takes the traffic.
#[tokio::test]
async fn an_endpoint_answering_5xx_in_a_row_is_ejected_not_favoured() {
    let (up, down) = (upstream("blue").await, answering("down", 503).await);
    let (p, port) = pair_behind_proxy(down.addr, up.addr, "{attempts: 0}").await;
    let c = client();
    let mut failed = 0;
    for _ in 0..200 {
        if get(&c, port, "/").await.0 == 503 {
            failed += 1;
        }
    }
    // One ejection for each run of five.
    let ejections = p
        .counter(r#"sluice_upstream_ejections_total{reason="5xx"}"#)
        .await;
    assert_eq!(ejections, failed / 5, "{failed} 503s");
    // Five per ejection; more only if the requests outlast the first one
    // (a second): then a probe or five, and an ejection twice as long.
    assert!(
        failed <= 15,
        "{failed} of 200 requests met the failing endpoint, {} reached the good one",
        up.hits.load(Ordering::Relaxed)
    );
}

/// A pod still being wired drops a connection's first SYN, and the proxy's
/// connect completes only on its retransmission a second later. The
/// endpoint is judged on how fast it answers once connected: had the
/// second of connecting counted as its latency, the balancer would pass it
/// over for ten seconds and more while that estimate decayed.
#[tokio::test]
async fn a_slow_first_connect_is_not_held_against_the_endpoint() {
    let (late, _held) = full_listener().await;
    let overflows = listen_overflows();
    // It starts accepting once the kernel has dropped a SYN (the proxy's):
    // the connect then completes on the SYN's retransmission.
    let opens = async move {
        while listen_overflows() == overflows {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let late = serving(late, "late", 200, opens);
    let prompt = upstream("prompt").await;
    let (_p, port) = pair_behind_proxy(late.addr, prompt.addr, "{attempts: 0}").await;
    let c = client();
    // Both are unsampled, so the late one is among the first two picks.
    let mut first_late = None;
    for _ in 0..2 {
        let t = Instant::now();
        let (status, body) = get(&c, port, "/").await;
        assert_eq!(status, 200);
        if body == "late" {
            first_late = Some(t.elapsed());
        }
    }
    let took = first_late.expect("the unsampled endpoint was not tried");
    assert!(
        took >= Duration::from_millis(500),
        "the first request to it took {took:?}: no SYN was dropped, so this test shows nothing"
    );
    // Sampled on its connect, its estimate would be ~10,000 times its
    // peer's and take log2 of that, ~13 s of halvings (one a second), to
    // come back into the choice; at least 10 s even were the peer's
    // answers slowed to a millisecond. Sampled on its answer, under one
    // second, or a few on a loaded machine where that first answer came
    // late: the bound leaves room for one 30 times slower than its peer's.
    let since = Instant::now();
    let mut sent = 0;
    loop {
        let back = since.elapsed();
        assert!(
            sent < 200_000 && back < Duration::from_secs(5),
            "after a {took:?} connect, the endpoint got none of {sent} requests in {back:?}"
        );
        sent += 1;
        if get(&c, port, "/").await.1 == "late" {
            break;
        }
    }
}

/// A listener whose backlog is full, and the connections that fill it: a
/// further SYN to it is dropped.
async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(addr(0)).unwrap();
    let listener = socket.listen(1).unwrap();
    let to = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(to)).await {
            Ok(conn) => held.push(conn.unwrap()),
            Err(_) => return (listener, held),
        }
    }
    panic!("a backlog of 1 took 8 connections");
}

/// The kernel's count of SYNs dropped for a full listen backlog
/// (`TcpExt: ListenOverflows`).
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let (up, mut p, port) = proxied_blue().await;
    let slow = tokio::spawn(async move { get(&client(), port, "/slow").await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.hits.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached upstream"
        );
        tokio::task::yield_now().await;
    }
    p.signal(libc::SIGTERM);
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "blue"));
    let status = tokio::task::spawn_blocking(move || p.child.wait().map(|s| (s.success(), p)))
        .await
        .unwrap()
        .unwrap();
    assert!(status.0, "exit status");
    assert!(
        TcpStream::connect(addr(port)).await.is_err(),
        "still accepting after shutdown"
    );
}

/// At SIGTERM every listener stops: a keep-alive connection waiting for
/// its next request is closed at once, while one whose request is with
/// the upstream gets its answer, marked `connection: close`, and only
/// then ends.
#[tokio::test]
async fn sigterm_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let (up, p, port) = proxied_blue().await;
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let mut idle = TcpStream::connect(addr(port)).await.unwrap();
    idle.write_all(request("/").as_bytes()).await.unwrap();
    let first = read_until(&mut idle, |b| b.ends_with(b"blue")).await;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    let mut busy = TcpStream::connect(addr(port)).await.unwrap();
    let before = up.hits.load(Ordering::Relaxed);
    busy.write_all(request("/slow").as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.hits.load(Ordering::Relaxed) == before {
        assert!(Instant::now() < deadline, "/slow never reached upstream");
        tokio::task::yield_now().await;
    }
    p.signal(libc::SIGTERM);
    // The upstream holds `/slow` for 500 ms: the idle connection's end
    // comes first.
    let ended = tokio::select! {
        biased;
        rest = read_until(&mut idle, |_| false) => format!("idle ended with {} bytes", rest.len()),
        answer = read_until(&mut busy, |b| b.ends_with(b"blue")) => {
            format!("the busy answer came first: {}", String::from_utf8_lossy(&answer))
        }
    };
    assert_eq!(ended, "idle ended with 0 bytes");
    let answer = read_until(&mut busy, |_| false).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("blue"), "{answer}");
}

/// The request-smuggling shapes proxies are known for, sent as raw bytes:
/// two lengths, a non-chunked Transfer-Encoding, obs-fold and a bad chunk
/// get a 400, their connection closed, nothing forwarded; a length with
/// chunked and a bare LF are read one way only and forwarded re-encoded,
/// so that no upstream ever sees framing it might read another way.
#[tokio::test]
async fn smuggling_shapes_get_400_or_are_reframed_never_forwarded_as_sent() {
    let (up, p, port) = proxied_blue().await;
    let cases: [(&str, &[u8]); 4] = [
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, bytes) in cases {
        let before = up.hits.load(Ordering::Relaxed);
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .is_ok();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let forwarded = up.hits.load(Ordering::Relaxed) - before;
        if !text.starts_with("HTTP/1.1 400") || !closed || forwarded != 0 {
            wrong.push(format!(
                "{what}: closed {closed}, forwarded {forwarded}, answered {:?}",
                text.lines().next().unwrap_or("")
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let m = p.metrics().await;
    assert!(m.contains("sluice_framing_refused_total 1"), "{m}");
    // Content-Length with Transfer-Encoding: read as chunked (RFC 9112
    // 6.3), forwarded without the length, and the connection closed.
    let text = exchange_until_closed(port, b"POST /headers HTTP/1.1\r\nHost: app.test\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("\"50\""), "the length went upstream: {text}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "a second request was read: {text}"
    );
    // A bare LF ends lines for hyper (HTTP/1.1 lets a recipient accept
    // it); the head goes upstream re-encoded with CRLF, never as sent.
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"GET /headers HTTP/1.1\nHost: app.test\nConnection: close\n\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

/// With `--max-connections 2`, a third connection is closed at once and
/// counted while two are open; once one closes, a new one is served.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let up = upstream("blue").await;
    let (port, admin) = (free_port(), free_port());
    let p = ProxyProcess::spawn(
        &http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], ""),
        addr(admin),
        &["--workers", "1", "--max-connections", "2"],
    );
    p.wait_ready().await;
    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    let mut third = TcpStream::connect(addr(port)).await.unwrap();
    let _ = third.write_all(request).await;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the limit, yet answered");
    assert!(
        p.metrics()
            .await
            .contains("sluice_connections_over_limit_total 1")
    );
    drop(open.pop());
    // The closed connection is counted out once the proxy has seen it go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let n = s.read(&mut buf).await.unwrap_or(0);
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A route with mirrors: clients get the primary's answers only; every
/// request is copied to the mirror, a body whole (teed as the primary
/// reads it); a mirror that cannot be reached is counted on its own
/// backend and never seen by clients.
#[tokio::test]
async fn mirrored_requests_reach_the_mirror_and_its_answers_are_discarded() {
    let (blue, yellow) = (upstream("blue").await, upstream("yellow").await);
    let dead = addr(free_port());
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "admin: {{address: \"127.0.0.1:{admin}\"}}
backends:
  - {{name: blue, endpoints: [\"{}\"]}}
  - {{name: yellow, endpoints: [\"{}\"]}}
  - {{name: dead, endpoints: [\"{dead}\"]}}
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - name: app
        hosts: [app.test]
        backends: [{{name: blue}}]
        mirrors: [{{backend: yellow}}, {{backend: dead, percent: 100}}]
",
        blue.addr, yellow.addr
    );
    let p = ProxyProcess::start(&cfg, addr(admin)).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, port, "/").await, (200, "blue".to_owned()));
    }
    // A body of many frames.
    let payload = vec![b'x'; 300 * 1024];
    let r = c
        .post(format!("http://127.0.0.1:{port}/"))
        .header("host", "app.test")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "blue");
    // Copies are sent in the background: wait for all 21 to be counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = p.metrics().await;
        let copies = m.contains(r#"backend="yellow",revision="",code="200"} 21"#);
        let failed = m.contains(r#"backend="dead",revision="",code="503"} 21"#);
        if copies && failed {
            assert!(m.contains("sluice_mirror_copies_given_up_total 0"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "copies not all counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(blue.hits.load(Ordering::Relaxed), 21);
    assert_eq!(
        yellow.hits.load(Ordering::Relaxed),
        21,
        "the POST was not copied"
    );
    let sent = payload.len() as u64;
    assert_eq!(blue.body_bytes.load(Ordering::Relaxed), sent);
    assert_eq!(
        yellow.body_bytes.load(Ordering::Relaxed),
        sent,
        "the copy's body is not the original's"
    );
}

/// HTTP/2 rapid reset (CVE-2023-44487), with a raw h2 client: a connection
/// that opens streams and resets them at once, without end, is cut off
/// (GOAWAY or closed) long before 10,000 streams, and the proxy goes on
/// serving other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_and_others_keep_being_served() {
    let (_up, _p, port) = proxied_blue().await;
    let tcp = TcpStream::connect(addr(port)).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut opened = 0u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    while opened < 10_000 && Instant::now() < deadline {
        let Ok(ready) = h2.clone().ready().await else {
            break;
        };
        h2 = ready;
        let req = http::Request::builder()
            .uri(format!("http://app.test:{port}/slow"))
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = h2.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    eprintln!("rapid reset: cut off after {opened} reset streams: {ended:?}");
    assert!(opened > 0, "no stream was ever opened: {ended:?}");
    assert!(
        opened < 10_000 && ended.is_ok(),
        "the proxy took {opened} reset streams and the connection is {}",
        if ended.is_ok() {
            "closed"
        } else {
            "still open"
        }
    );
    // The proxy goes on serving other clients.
    let (s, body) = get(&client(), port, "/").await;
    assert_eq!((s, body.as_str()), (200, "blue"));
}

/// Whether the proxy closes `s` within `within`: a read gives 0 (or a
/// reset) before the deadline.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Slow clients: a request head trickled past `--header-read-timeout` and
/// a TLS handshake never finished within `--handshake-timeout` lose their
/// connections, each counted; a head that arrives in pieces within the
/// bound is served, and a keep-alive connection waiting longer than it
/// for its next request is not cut (that wait is the idle timeout's).
#[tokio::test]
async fn slow_clients_are_cut_off_by_the_header_read_and_handshake_timeouts() {
    let up = upstream("blue").await;
    let bound = Duration::from_millis(500);
    let flags = [
        "--header-read-timeout",
        "500ms",
        "--handshake-timeout",
        "500ms",
    ];

    let (port, admin) = (free_port(), free_port());
    let cfg = http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], "");
    let p = ProxyProcess::spawn(&cfg, addr(admin), &flags);
    p.wait_ready().await;
    let mut trickled = TcpStream::connect(addr(port)).await.unwrap();
    trickled
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut trickled, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= bound - Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    p.wait_metric("sluice_header_read_timeouts_total 1").await;

    // The same head in two pieces, the second well within the bound; then
    // the connection waits twice the bound before its next request.
    let mut slow = TcpStream::connect(addr(port)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(bound / 5).await;
    slow.write_all(b"Host: app.test\r\n\r\n").await.unwrap();
    let answer = read_until(&mut slow, |b| b.ends_with(b"blue")).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    tokio::time::sleep(bound * 2).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut slow, |b| b.ends_with(b"blue")).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    p.wait_metric("sluice_header_read_timeouts_total 1").await;

    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.test"]);
    let (tls_port, tls_admin) = (free_port(), free_port());
    let tls = ProxyProcess::spawn(
        &https_config(tls_port, tls_admin, up.addr, &[(&["a.test"], &leaf)]),
        addr(tls_admin),
        &flags,
    );
    tls.wait_ready().await;
    let mut silent = TcpStream::connect(addr(tls_port)).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    tls.wait_metric("sluice_tls_handshake_failures_total 1")
        .await;
}

/// Reads until the end of the stream, or until `done` says the bytes so
/// far are enough; within 5 s.
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !done(&got) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("within 5 s");
    got
}

/// Idle timeouts: a keep-alive HTTP/1 connection, an HTTP/2 connection and
/// a TCP splice on which nothing moves are closed after
/// `--connection-idle-timeout` and counted; one with steady traffic is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let up = upstream("blue").await;
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (port, tcp_port, admin) = (free_port(), free_port(), free_port());
    let mut cfg = http_config(addr(port), addr(admin), &[("blue", up.addr, 1)], "");
    cfg = cfg.replacen(
        "backends:\n",
        &format!("backends:\n  - name: echo\n    endpoints: [\"{echo_addr}\"]\n"),
        1,
    );
    cfg.push_str(&format!(
        "  - name: db\n    address: 127.0.0.1:{tcp_port}\n    protocol: tcp\n    backends: [{{name: echo}}]\n"
    ));
    let p = ProxyProcess::spawn(&cfg, addr(admin), &["--connection-idle-timeout", "600ms"]);
    p.wait_ready().await;

    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let mut h1 = TcpStream::connect(addr(port)).await.unwrap();
    h1.write_all(request).await.unwrap();
    let mut h2 = TcpStream::connect(addr(port)).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut tcp = TcpStream::connect(addr(tcp_port)).await.unwrap();
    tcp.write_all(b"hello").await.unwrap();
    // A TCP connection that keeps talking, every 200 ms, outlives them all.
    let mut busy = TcpStream::connect(addr(tcp_port)).await.unwrap();
    let busy_task = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        for _ in 0..10 {
            busy.write_all(b"ping").await?;
            busy.read_exact(&mut buf[..4]).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<_, std::io::Error>(())
    });
    for (what, s) in [("HTTP/1", &mut h1), ("HTTP/2", &mut h2), ("TCP", &mut tcp)] {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "the idle {what} connection is still open"
        );
    }
    busy_task
        .await
        .unwrap()
        .expect("the busy connection was cut while it talked");
    let metrics = p.metrics().await;
    let closed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_idle_timeouts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // Each idle connection, and the TCP one's upstream side too.
    assert!(closed >= 3.0, "{metrics}");
    server.abort();
}

/// `/ready` answers 200 only once every worker has bound every listener, so
/// a client that connects the moment it reads 200 is never refused. Each
/// start polls `/ready` back to back to land in the window between the
/// config being applied and the workers binding its sockets.
#[tokio::test]
async fn ready_means_every_worker_has_bound_every_listener() {
    const STARTS: usize = 100;
    let mut refused = Vec::new();
    for start in 0..STARTS {
        let admin = addr(free_port());
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let mut cfg = format!(
            "admin:\n  address: {admin}\nbackends:\n  - name: none\n    endpoints: [\"127.0.0.1:9\"]\nlisteners:\n"
        );
        for port in &ports {
            cfg.push_str(&format!(
                "  - name: l{port}\n    address: 127.0.0.1:{port}\n    protocol: tcp\n    backends: [{{name: none}}]\n"
            ));
        }
        let p = ProxyProcess::spawn(&cfg, admin, &["--workers", "4"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers_200(admin, "/ready").await {
            assert!(Instant::now() < deadline, "never ready:\n{}", p.log_text());
        }
        for port in ports {
            if let Err(e) = TcpStream::connect(addr(port)).await {
                refused.push(format!("start {start}, port {port}: {e}"));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "refused after /ready said 200: {refused:#?}"
    );
}

/// One plain HTTP/1.1 GET of `path` on its own connection, without the
/// pauses of a client's retry loop: whether it answered 200.
async fn answers_200(at: std::net::SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(at).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 16];
    s.write_all(request.as_bytes()).await.is_ok()
        && s.read_exact(&mut head).await.is_ok()
        && head.starts_with(b"HTTP/1.1 200 ")
}

/// A CA and leaf certificates it signs, as PEM: (chain, key).
struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
    }

    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One HTTPS listener on `port` in front of `blue`, with `certs`
/// (hostnames, chain, key).
fn https_config(
    port: u16,
    admin: u16,
    blue: std::net::SocketAddr,
    certs: &[(&[&str], &(String, String))],
) -> String {
    let mut s = format!(
        "admin:\n  address: {}\nbackends:\n  - name: blue\n    endpoints: [\"{blue}\"]\nlisteners:\n  - name: web\n    address: {}\n    routes:\n      - name: all\n        backends: [{{name: blue, weight: 1}}]\n    tls:\n      certificates:\n",
        addr(admin),
        addr(port)
    );
    for (hosts, (chain, key)) in certs {
        s.push_str(&format!(
            "        - hostnames: {}\n          chain_pem: {}\n          key_pem: {}\n",
            serde_json::to_string(hosts).unwrap(),
            serde_json::to_string(chain).unwrap(),
            serde_json::to_string(key).unwrap(),
        ));
    }
    s
}

#[tokio::test]
async fn https_listeners_pick_the_certificate_by_sni_and_tell_upstream_https() {
    let up = upstream("blue").await;
    let ca = TestCa::new();
    let exact = ca.leaf(&["a.test"]);
    let wildcard = ca.leaf(&["*.w.test"]);
    let (port, admin) = (free_port(), free_port());
    let config = https_config(
        port,
        admin,
        up.addr,
        &[(&["a.test"], &exact), (&["*.w.test"], &wildcard)],
    );
    let p = ProxyProcess::start(&config, addr(admin)).await;
    let root = reqwest::Certificate::from_pem(ca.0.pem().as_bytes()).unwrap();
    let builder = || {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone())
            .resolve("a.test", addr(port))
            .resolve("x.w.test", addr(port))
            .resolve("other.test", addr(port))
            .timeout(Duration::from_secs(10))
    };
    let client = builder().build().unwrap();

    // Each name gets the certificate that names it (the client checks the
    // name), over HTTP/2 as ALPN settles; upstream hears https whatever
    // the client claimed.
    for host in ["a.test", "x.w.test"] {
        let r = client
            .get(format!("https://{host}:{port}/headers"))
            .header("x-forwarded-proto", "http")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.version(), http::Version::HTTP_2, "{host}");
        let headers = r.text().await.unwrap();
        assert!(
            headers.contains(r#""x-forwarded-proto": "https""#),
            "{headers}"
        );
    }
    // A client that offers only HTTP/1.1 is served on the proxy's own
    // HTTP/1 path: requests without a body, then one with a body (which
    // that path hands to hyper mid-connection), on the kept-alive
    // connection.
    let h1 = builder().http1_only().build().unwrap();
    for _ in 0..3 {
        let r = h1
            .get(format!("https://a.test:{port}/headers"))
            .header("x-forwarded-proto", "http")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), http::Version::HTTP_11);
        let headers = r.text().await.unwrap();
        assert!(
            headers.contains(r#""x-forwarded-proto": "https""#),
            "{headers}"
        );
    }
    let posted = h1
        .post(format!("https://a.test:{port}/"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.version(), http::Version::HTTP_11);
    assert_eq!(posted.text().await.unwrap(), "blue");
    assert_eq!(up.body_bytes.load(Ordering::Relaxed), 100_000);
    // No certificate serves other.test and there is no default: refused
    // in the handshake, and counted.
    let refused = client
        .get(format!("https://other.test:{port}/"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    p.wait_metric("sluice_tls_handshake_failures_total 1").await;

    // The running config shown on the admin port carries no private key.
    let shown = reqwest::get(format!("http://{}/config", addr(admin)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");

    // A key that is not its certificate's is refused, naming the
    // certificate, and the running certificates keep serving.
    let v = p.config_version().await;
    let mismatched = (exact.0.clone(), wildcard.1.clone());
    p.rewrite(&https_config(
        port,
        admin,
        up.addr,
        &[(&["a.test"], &mismatched)],
    ));
    p.wait_refusals(1).await;
    assert_eq!(p.config_version().await, v);
    assert!(
        p.log_text()
            .contains("listeners[0].tls.certificates[0] (line 14): unusable private key"),
        "{}",
        p.log_text()
    );
    let r = client
        .get(format!("https://x.w.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "blue");
}

#[tokio::test]
async fn route_filters_redirect_rewrite_change_headers_and_match_queries_and_regexes() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"admin: {{address: "{admin}"}}
backends:
  - {{name: blue, endpoints: ["{blue}"]}}
  - {{name: green, endpoints: ["{green}"]}}
listeners:
  - name: web
    address: "{listen}"
    routes:
      - name: redirect
        hosts: [r.test]
        match: [{{path: !prefix /old}}]
        backends: [{{name: blue}}]
        filters:
          redirect: {{scheme: https, hostname: example.net, path: !prefix /new, status: 301}}
      - name: rewrite
        hosts: [rw.test]
        backends: [{{name: blue}}]
        filters:
          rewrite: {{hostname: backend.test, path: !full /headers}}
          request_headers: {{set: [[x-env, prod]], remove: [x-secret]}}
          response_headers: {{add: [[x-route, rewrite]]}}
      - name: query
        hosts: [q.test]
        match: [{{query: [{{name: v, value: "2"}}]}}]
        backends: [{{name: green}}]
      - name: regex
        hosts: [q.test]
        match: [{{path: !regex "/items/[0-9]+"}}]
        backends: [{{name: green}}]
      - name: rest
        hosts: [q.test]
        backends: [{{name: blue}}]
"#,
        admin = addr(admin),
        blue = blue.addr,
        green = green.addr,
        listen = addr(port),
    );
    let _p = ProxyProcess::start(&config, addr(admin)).await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let send = |host: &'static str, path: &'static str| {
        c.get(format!("http://127.0.0.1:{port}{path}"))
            .header("host", host)
            .header("x-secret", "s")
            .send()
    };

    let r = send("r.test", "/old/page?x=1").await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        "https://example.net/new/page?x=1",
        "the prefix is replaced, the query kept, the scheme's port left out"
    );
    assert_eq!(
        blue.hits.load(Ordering::Relaxed),
        0,
        "a redirect reaches no backend"
    );

    let r = send("rw.test", "/anything").await.unwrap();
    assert_eq!(r.headers()["x-route"], "rewrite");
    let seen = r.text().await.unwrap();
    assert!(seen.contains(r#""host": "backend.test""#), "{seen}");
    assert!(seen.contains(r#""x-env": "prod""#), "{seen}");
    assert!(!seen.contains("x-secret"), "{seen}");

    for (path, want) in [
        ("/?v=2", "green"),
        ("/?a=1&v=2", "green"),
        ("/?v=22", "blue"),
        ("/?v=3&v=2", "blue"),
        ("/items/42", "green"),
        ("/items/42/x", "blue"),
        ("/items/abc", "blue"),
    ] {
        let body = send("q.test", path).await.unwrap().text().await.unwrap();
        assert_eq!(body, want, "{path}");
    }
}

#[tokio::test]
async fn an_attempt_slower_than_its_backend_request_timeout_gets_504() {
    let up = upstream("blue").await;
    let (port, admin) = (free_port(), free_port());
    let config = http_config(
        addr(port),
        addr(admin),
        &[("blue", up.addr, 1)],
        "        timeout: 5s\n        attempt_timeout: 200ms\n",
    );
    let _p = ProxyProcess::start(&config, addr(admin)).await;
    let c = client();
    let started = Instant::now();
    let (status, _) = get(&c, port, "/slow").await;
    assert_eq!(status, 504, "the 500 ms answer outlasts the 200 ms attempt");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&c, port, "/").await, (200, "blue".to_owned()));
}

/// One plaintext HTTP/1.1 connection: pipelined bodiless requests are
/// answered in order on the proxy's own path (a `HEAD` with its length
/// and no body, a `204` with neither); the first request with a body hands
/// the connection to hyper, which forwards it whole and serves the rest,
/// `Connection: close` included.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_off_to_hyper() {
    let (up, _p, port) = proxied_blue().await;
    let text = exchange_until_closed(
        port,
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n\
          HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n\
          GET /status/204 HTTP/1.1\r\nHost: app.test\r\n\r\n\
          POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello\
          GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<(&str, &str)> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").unwrap())
        .collect();
    let statuses: Vec<&str> = responses.iter().map(|(h, _)| &h[..3]).collect();
    assert_eq!(statuses, ["200", "200", "204", "200", "200"], "{text}");
    let bodies: Vec<&str> = responses.iter().map(|(_, b)| *b).collect();
    assert_eq!(bodies, ["blue", "", "", "blue", "blue"], "{text}");
    assert!(responses[1].0.contains("content-length: 4"), "{text}");
    assert!(!responses[2].0.contains("content-length"), "{text}");
    assert!(responses[4].0.contains("connection: close"), "{text}");
    assert_eq!(up.hits.load(Ordering::Relaxed), 5);
    assert_eq!(up.body_bytes.load(Ordering::Relaxed), 5);
}

/// A client that sends half a request head and closes gets no answer and
/// nothing is forwarded; the next connection is served.
#[tokio::test]
async fn half_a_head_then_a_close_forwards_nothing() {
    let (up, _p, port) = proxied_blue().await;
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("closed")
        .unwrap();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(get(&client(), port, "/").await, (200, "blue".into()));
    assert_eq!(up.hits.load(Ordering::Relaxed), 1);
}

/// An upstream answer of unknown length (chunked, or ended by closing its
/// connection) reaches an HTTP/1.1 client chunked, whole, and the client's
/// connection stays open for the next request.
#[tokio::test]
async fn answers_of_unknown_length_are_chunked_and_keep_the_connection() {
    let (raw_addr, _) = raw_upstream(|head| {
        if head.starts_with("GET /close") {
            (
                &[b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"],
                true,
            )
        } else {
            (
                &[
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    b"6\r\n world\r\n0\r\n\r\n",
                ],
                true,
            )
        }
    })
    .await;
    let (p, port) = proxying_to(raw_addr).await;
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    let mut answers = String::new();
    for path in ["/chunked", "/close"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("the answer ends")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        answers.push_str(&String::from_utf8(got).unwrap());
    }
    let bodies: Vec<String> = answers
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| {
            let (head, chunks) = r.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            assert!(!head.contains("connection"), "{head}");
            // Chunk data lines sit between size lines.
            chunks.split("\r\n").skip(1).step_by(2).collect()
        })
        .collect();
    assert_eq!(bodies, ["hello world", "until the end"], "{answers}");
    drop(p);
}

/// An upstream answer's hop-by-hop fields stop at the proxy: the fixed
/// ones and those its `Connection` names; the rest pass on as sent.
#[tokio::test]
async fn an_answers_hop_by_hop_fields_are_not_passed_on() {
    let (raw_addr, _) = raw_upstream(|_| {
        (
            &[b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-Kept: 1\r\ncontent-length: 2\r\n\r\nok"],
            false,
        )
    })
    .await;
    let (_p, port) = proxying_to(raw_addr).await;
    let text = exchange_until_closed(
        port,
        b"GET /hops HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "ok");
    let names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    assert!(names.contains(&"x-kept".to_owned()), "{head}");
    for hop in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!names.contains(&hop.to_owned()), "{hop} passed on: {head}");
    }
}

/// An upstream answer's fields reach an HTTP/1.1 client as the upstream
/// wrote them (the proxy's own path passes its head's lines on), and
/// reach clients hyper serves (HTTP/2, HTTP/1.0) and a route's response
/// filters as fields all the same.
#[tokio::test]
async fn an_answers_fields_reach_every_client_and_the_response_filters() {
    let (raw_addr, _) = raw_upstream(|_| {
        (
            &[b"HTTP/1.1 200 OK\r\nX-Case: Kept\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nx-two: 1\r\nConnection: keep-alive\r\nX-Two: 2\r\nContent-Length: 2\r\n\r\nok"],
            false,
        )
    })
    .await;
    // HTTP/1.1 upstream whatever the client speaks; with the filters on
    // a route of its own.
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"admin: {{address: "{admin}"}}
backends:
  - {{name: raw, endpoints: ["{raw_addr}"], protocol: http1}}
listeners:
  - name: web
    address: "{listen}"
    routes:
      - name: filtered
        hosts: [filtered.test]
        backends: [{{name: raw}}]
        filters:
          response_headers: {{set: [[x-case, changed]], add: [[x-route, r]]}}
      - name: app
        hosts: [app.test]
        backends: [{{name: raw}}]
"#,
        admin = addr(admin),
        listen = addr(port),
    );
    let _p = ProxyProcess::start(&config, addr(admin)).await;
    let date = "Tue, 01 Dec 2026 00:00:00 GMT";

    let text = exchange_until_closed(
        port,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    assert_eq!(body, "ok");
    let date_line = format!("Date: {date}");
    for line in ["X-Case: Kept", &date_line, "x-two: 1", "X-Two: 2"] {
        assert!(head.lines().any(|l| l == line), "{line} missing: {head}");
    }
    let lower = head.to_ascii_lowercase();
    assert_eq!(lower.matches("\r\ndate:").count(), 1, "{head}");
    assert_eq!(lower.matches("\r\ncontent-length:").count(), 1, "{head}");

    // HTTP/1.0 goes to hyper.
    let text = exchange_until_closed(port, b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n").await;
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-case: kept\r\n"), "{text}");
    assert!(
        lower.contains(&format!("\r\ndate: {}\r\n", date.to_ascii_lowercase())),
        "{text}"
    );

    let r = h2_get_app(port).await;
    assert_eq!(r.version(), http::Version::HTTP_2);
    let fields = r.headers();
    assert_eq!(fields["x-case"], "Kept");
    assert_eq!(fields["date"], date);
    let twos: Vec<_> = fields.get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert!(fields.get("connection").is_none());

    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "filtered.test")
        .send()
        .await
        .unwrap();
    let fields = r.headers();
    assert_eq!(fields["x-case"], "changed");
    assert_eq!(fields["x-route"], "r");
    assert_eq!(fields["date"], date);
    let twos: Vec<_> = fields.get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
}

/// A proxy whose one route goes to `raw_addr`, and the port it listens on.
async fn proxying_to(raw_addr: std::net::SocketAddr) -> (ProxyProcess, u16) {
    let (port, admin) = (free_port(), free_port());
    let p = ProxyProcess::start(
        &http_config(addr(port), addr(admin), &[("raw", raw_addr, 1)], ""),
        addr(admin),
    )
    .await;
    (p, port)
}

/// A raw upstream that reads each request head and answers with the
/// pieces `answer` gives for it, each written and flushed on its own,
/// closing the connection after them when it says so; the heads it read
/// are kept.
async fn raw_upstream(
    answer: fn(&str) -> (&'static [&'static [u8]], bool),
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = raw.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let (pieces, close) = answer(&head);
                    seen.lock().unwrap().push(head);
                    for piece in pieces {
                        if s.write_all(piece).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (raw_addr, heads)
}

/// Bodiless requests go upstream through the proxy's own HTTP/1 client:
/// the request head arrives as sent (host kept, no framing added); an
/// answer whose length is ambiguous is refused with 502, never passed on;
/// an upstream that closes every kept connection after its answer costs
/// no request (the closed connection is not reused, or the request goes
/// again on a fresh one); an answer cut short reaches the client cut
/// short, its connection closed.
#[tokio::test]
async fn the_own_upstream_client_refuses_ambiguous_answers_and_survives_closed_connections() {
    let (raw_addr, heads) = raw_upstream(|head| {
        if head.starts_with("GET /two-lengths") {
            (
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"],
                false,
            )
        } else if head.starts_with("GET /cut") {
            (&[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"], true)
        } else {
            // Keep-alive by its head, closed all the same.
            (&[b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye"], true)
        }
    })
    .await;
    let (_p, port) = proxying_to(raw_addr).await;
    let c = client();
    assert_eq!(get(&c, port, "/two-lengths").await.0, 502);
    for i in 0..20 {
        assert_eq!(
            get(&c, port, "/bye").await,
            (200, "bye".into()),
            "request {i}"
        );
    }
    let first = heads.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("GET /two-lengths HTTP/1.1\r\n"),
        "{first}"
    );
    assert!(first.contains("host: app.test\r\n"), "{first}");
    assert!(!first.contains("transfer-encoding"), "{first}");

    let text = exchange_until_closed(port, b"GET /cut HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 10\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
}

//! `GET /metrics`, `GET /readyz` and draining, against a real server with real WebSocket
//! clients: counters scraped before and after real handshakes, the text checked by
//! `promtool check metrics` (Debian's `prometheus`), who may scrape, and what a drain
//! refuses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use webrtc_bootstrap_server::config::IpNet;

/// One HTTP/1.1 GET: the status code and the whole response.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let reply = http_get(addr, path).await?;
    Ok((reply.status, reply.raw()))
}

/// The body of a 200 `GET /metrics`.
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, response) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics: {response}");
    anyhow::ensure!(
        response.contains("text/plain; version=0.0.4"),
        "not the Prometheus text format: {response}"
    );
    let (_, body) = response.split_once("\r\n\r\n").context("no body")?;
    Ok(body.to_owned())
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no sample {series} in\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} is not a number"))
}

/// How much `series` grew from `before` to `after`.
fn delta(before: &str, after: &str, series: &str) -> anyhow::Result<f64> {
    Ok(sample(after, series)? - sample(before, series)?)
}

/// `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool(text: &str) -> anyhow::Result<Option<String>> {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool check metrics failed:\n{said}\non:\n{text}");
    }
    Ok(Some(said))
}

#[tokio::test]
async fn handshakes_show_in_the_metrics_and_promtool_accepts_them() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let before = scrape(server.addr).await?;
    let mut root = server.root().await?;
    server.wait_health("root", |h| h.root_connected).await?;
    for _ in 0..2 {
        handshake(&server, &mut root).await?;
    }
    // A newcomer nobody answers, closed early by its client.
    let mut early = server.join().await?;
    send(
        &mut early,
        &envelope(None, r#"{"type":"offer","sdp":"x"}"#, 0),
    )
    .await?;
    // Unknown destination, dropped.
    send(
        &mut early,
        &envelope(Some("0123456789abcdef0123456789abcdef"), "{}", 1),
    )
    .await?;
    recv_matching(&mut root, |m| m.contains(r#""sdp":"x""#)).await?;
    early.close(None).await?;
    server
        .wait_health("every /join socket ended", |h| {
            h.prospects == 0 && h.stats.joins == 5
        })
        .await?;
    // A socket's outcome is counted as it ends, just after it leaves the registry.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let after = scrape(server.addr).await?;
        let outcomes = ["answered", "timed_out", "closed_early"]
            .iter()
            .map(|o| sample(&after, &format!("bootstrap_joins_total{{outcome=\"{o}\"}}")))
            .sum::<anyhow::Result<f64>>()?;
        if outcomes == 5.0 || tokio::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let d = |series: &str| delta(&before, &after, series);
    assert_eq!(d("bootstrap_joins_opened_total")?, 5.0);
    assert_eq!(d(r#"bootstrap_joins_total{outcome="answered"}"#)?, 4.0);
    assert_eq!(d(r#"bootstrap_joins_total{outcome="closed_early"}"#)?, 1.0);
    assert_eq!(d(r#"bootstrap_joins_total{outcome="timed_out"}"#)?, 0.0);
    // Per handshake: offer and two candidates to the root; answer, candidate and the
    // direct candidate to peers. Plus the unanswered offer.
    assert_eq!(
        d(r#"bootstrap_messages_relayed_total{direction="to_root"}"#)?,
        7.0
    );
    assert_eq!(
        d(r#"bootstrap_messages_relayed_total{direction="to_peer"}"#)?,
        6.0
    );
    assert_eq!(
        d(r#"bootstrap_messages_dropped_total{reason="unknown_destination"}"#)?,
        1.0
    );
    assert_eq!(d("bootstrap_join_latency_seconds_count")?, 4.0);
    assert!(d("bootstrap_join_latency_seconds_sum")? > 0.0);
    assert_eq!(d(r#"bootstrap_socket_closes_total{code="none"}"#)?, 5.0);
    assert_eq!(d("bootstrap_roots_connected_total")?, 1.0);
    assert_eq!(
        sample(&after, r#"bootstrap_root_connected{overlay="default"}"#)?,
        1.0
    );
    assert_eq!(
        sample(&after, r#"bootstrap_join_sockets{overlay="default"}"#)?,
        0.0
    );
    assert_eq!(sample(&after, "bootstrap_ready")?, 1.0);
    assert!(sample(&after, "process_open_fds")? > 0.0);
    assert!(sample(&after, "process_resident_memory_bytes")? > 0.0);
    assert!(sample(&after, "process_cpu_seconds_total")? > 0.0);

    // A second root replaces the first.
    let _second = server.root().await?;
    let closed = recv_close(&mut root).await?;
    assert_eq!(closed.map(|c| u16::from(c.code)), Some(4000));
    let replaced = scrape(server.addr).await?;
    assert_eq!(
        delta(&before, &replaced, "bootstrap_roots_replaced_total")?,
        1.0
    );

    match promtool(&replaced)? {
        Some(said) => eprintln!("promtool check metrics: ok {said}"),
        None => bootstrap_testkit::skip_or_fail(
            "metrics promtool",
            "promtool is not installed",
            "apt-get install -y prometheus",
        )?,
    }
    server.stop().await
}

#[tokio::test]
async fn metrics_are_only_for_allowed_addresses_or_their_own_listener() -> anyhow::Result<()> {
    let elsewhere: IpNet = "10.0.0.0/8".parse()?;
    let server = TestServer::with(|c| c.metrics_allow = vec![elsewhere]).await?;
    let (status, _) = get(server.addr, "/metrics").await?;
    assert_eq!(status, 403, "127.0.0.1 is not in 10.0.0.0/8");
    let (status, _) = get(server.addr, "/healthz").await?;
    assert_eq!(status, 200, "/healthz stays open");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = listener.local_addr()?;
    let app = webrtc_bootstrap_server::metrics_router(server.state.clone());
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    let text = scrape(metrics_addr).await?;
    assert!(text.contains("bootstrap_joins_opened_total 0"), "{text}");
    let (status, _) = get(metrics_addr, "/healthz").await?;
    assert_eq!(status, 404, "the metrics listener serves /metrics only");
    task.abort();
    server.stop().await
}

#[tokio::test]
async fn a_drain_refuses_new_joins_and_keeps_open_ones_relaying() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    assert_eq!(get(server.addr, "/readyz").await?.0, 200);
    let mut root = server.root().await?;
    let mut open = server.join().await?;
    server.wait_health("joined", |h| h.prospects == 1).await?;
    server.state.start_draining();
    let (status, response) = get(server.addr, "/readyz").await?;
    assert_eq!(status, 503, "{response}");
    let refused = connect(&server.url("/join")).await;
    let error = refused.err().context("a /join while draining")?;
    assert!(error.to_string().contains("503"), "{error:#}");
    let request = upgrade_request(server.addr, "/join");
    let mut raw = tokio::net::TcpStream::connect(server.addr).await?;
    raw.write_all(request.as_bytes()).await?;
    let mut response = vec![0; 1024];
    let n = tokio::time::timeout(WAIT, raw.read(&mut response)).await??;
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(
        response.starts_with("HTTP/1.1 503") && response.contains("retry-after: 5"),
        "{response}"
    );
    // The socket opened before the drain still reaches the root.
    send(
        &mut open,
        &envelope(None, r#"{"type":"offer","sdp":"d"}"#, 0),
    )
    .await?;
    recv_matching(&mut root, |m| m.contains(r#""sdp":"d""#)).await?;
    let text = scrape(server.addr).await?;
    assert_eq!(sample(&text, "bootstrap_ready")?, 0.0);
    assert_eq!(
        sample(
            &text,
            r#"bootstrap_joins_total{outcome="refused_draining"}"#
        )?,
        2.0
    );
    server.stop().await
}

/// The status line of an upgrade request to `path` with `headers` (raw lines).
async fn upgrade_status(addr: SocketAddr, path: &str, headers: &str) -> anyhow::Result<String> {
    let request =
        upgrade_request(addr, path).replacen("\r\n\r\n", &format!("\r\n{headers}\r\n"), 1);
    let mut raw = tokio::net::TcpStream::connect(addr).await?;
    raw.write_all(request.as_bytes()).await?;
    let mut response = vec![0; 1024];
    let n = tokio::time::timeout(WAIT, raw.read(&mut response)).await??;
    let text = String::from_utf8_lossy(&response[..n]).into_owned();
    // Keep the socket open until the answer is read; a 101 stays open on drop's close.
    drop(raw);
    Ok(text)
}

#[tokio::test]
async fn per_client_limits_origins_and_trusted_proxies() -> anyhow::Result<()> {
    let server = TestServer::with(|c| {
        c.max_joins_per_ip = Some(2);
        c.allowed_origins = vec!["https://app.example".to_owned()];
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("CIDR")];
    })
    .await?;
    let addr = server.addr;
    // Origins: another browser origin is refused before any upgrade; none is allowed.
    let evil = upgrade_status(addr, "/join", "Origin: https://evil.example\r\n").await?;
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    let good = upgrade_status(addr, "/join", "Origin: https://app.example\r\n").await?;
    assert!(good.starts_with("HTTP/1.1 101"), "{good}");
    // Behind the trusted proxy (127.0.0.1), each forwarded client has its own cap.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut raw = tokio::net::TcpStream::connect(addr).await?;
        let request = upgrade_request(addr, "/join").replacen(
            "\r\n\r\n",
            "\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n",
            1,
        );
        raw.write_all(request.as_bytes()).await?;
        let mut response = vec![0; 1024];
        let n = tokio::time::timeout(WAIT, raw.read(&mut response)).await??;
        assert!(response[..n].starts_with(b"HTTP/1.1 101"));
        held.push(raw);
    }
    let third = upgrade_status(addr, "/join", "X-Forwarded-For: 198.51.100.7\r\n").await?;
    assert!(
        third.starts_with("HTTP/1.1 429") && third.contains("retry-after: 1"),
        "{third}"
    );
    let other = upgrade_status(addr, "/join", "Forwarded: for=198.51.100.8\r\n").await?;
    assert!(other.starts_with("HTTP/1.1 101"), "another client: {other}");
    // A socket that ends frees its client's slot.
    held.pop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = upgrade_status(addr, "/join", "X-Forwarded-For: 198.51.100.7\r\n").await?;
        if again.starts_with("HTTP/1.1 101") {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{again}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(addr).await?;
    assert!(sample(&text, "bootstrap_origin_refused_total")? >= 1.0);
    assert!(sample(&text, r#"bootstrap_joins_total{outcome="refused_per_ip"}"#)? >= 1.0);
    server.stop().await
}

#[tokio::test]
async fn a_join_rate_per_client() -> anyhow::Result<()> {
    let server = TestServer::with(|c| c.join_rate_per_ip = Some(3)).await?;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let status = upgrade_status(server.addr, "/join", "").await?;
        statuses.push(status[9..12].to_owned());
    }
    assert_eq!(statuses, ["101", "101", "101", "429", "429"]);
    server.stop().await
}

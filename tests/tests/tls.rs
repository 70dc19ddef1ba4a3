//! Built-in TLS: `wss://` joins by an unchanged JS 4.4.1 client (`secure: true`, the
//! test CA through `NODE_EXTRA_CA_CERTS`) and by Rust peers, with real WebRTC data
//! channels; `/healthz` and static files over `https://`; a plaintext request on the TLS
//! port costs nothing lasting. The CA and the leaf are minted in the test (rcgen).

mod js;

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bootstrap_testkit::TestServer;
use bootstrap_testkit::tls::{self, TestCa};
use js::{Js, WAIT, scenario};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use webrtc_bootstrap_peer::{Client, Message, Options, Peer};

const SECRET: &str = "tls-secret";

/// A TLS server with a fresh CA's leaf (and `public` as its static files, if given).
async fn tls_server(public: Option<std::path::PathBuf>) -> anyhow::Result<(TestServer, TestCa)> {
    let ca = TestCa::new()?;
    let dir = tls::tempdir("tls-e2e")?;
    let files = ca.leaf(1)?.write(&dir, "server")?;
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        c.tls = Some(files);
        c.public = public;
    })
    .await?;
    Ok((server, ca))
}

fn client(addr: std::net::SocketAddr, ca: &TestCa) -> anyhow::Result<Client> {
    let mut options = Options::loopback();
    options.timeout = WAIT;
    options.tls_roots_pem = ca.pem.clone().into_bytes();
    // `localhost`: the name in the leaf, as a browser would check it.
    Ok(Client::with_options(
        &format!("wss://localhost:{}", addr.port()),
        options,
    )?)
}

async fn recv_text(peer: &mut Peer) -> anyhow::Result<String> {
    match tokio::time::timeout(WAIT, peer.recv())
        .await
        .context("no message in time")?
    {
        Some(Message::Text(text)) => Ok(text),
        Some(Message::Binary(bytes)) => Ok(String::from_utf8(bytes)?),
        None => bail!("peer closed"),
    }
}

#[test]
fn a_js_client_and_rust_peers_join_over_wss() -> anyhow::Result<()> {
    scenario(
        "a_js_client_and_rust_peers_join_over_wss",
        "TLS: JS 4.4.1 newcomer (secure) and Rust newcomer -> Rust server over wss -> Rust root",
        async || {
            let (server, ca) = tls_server(None).await?;
            let ca_file = tls::tempdir("tls-ca")?.join("ca.pem");
            std::fs::write(&ca_file, &ca.pem)?;
            let mut root = client(server.addr, &ca)?.root(SECRET).await?;
            let host = format!("localhost:{}", server.addr.port());
            let mut js = Js::spawn_with_env(
                "newcomer",
                "js-newcomer",
                &["--url", &host, "--secure", "1"],
                &[("NODE_EXTRA_CA_CERTS", ca_file.as_os_str())],
            )?;
            let incoming = tokio::time::timeout(WAIT, root.next())
                .await
                .context("no JS newcomer in time")?
                .context("root stopped")?;
            let mut from_js = incoming.accept().connected().await?;
            js.expect_event("connected").await?;
            ensure!(recv_text(&mut from_js).await? == "hello from the js newcomer");
            from_js.send_text("hello over wss").await?;
            js.expect_data("hello over wss").await?;

            let newcomer = client(server.addr, &ca)?;
            let joining = tokio::spawn(async move { newcomer.join().await });
            let incoming = tokio::time::timeout(WAIT, root.next())
                .await
                .context("no Rust newcomer in time")?
                .context("root stopped")?;
            let mut answered = incoming.accept().connected().await?;
            let joined = joining.await??;
            joined.send_text("rust over wss").await?;
            ensure!(recv_text(&mut answered).await? == "rust over wss");
            ensure!(server.health().stats.joins >= 4, "{:?}", server.health());
            js.expect_no_uncaught(Duration::from_millis(300)).await
        },
    )
}

#[tokio::test]
async fn https_serves_healthz_and_files_and_plaintext_costs_nothing_lasting() -> anyhow::Result<()>
{
    let public = tls::tempdir("tls-public")?;
    std::fs::write(public.join("index.html"), "<h1>over tls</h1>")?;
    let (server, ca) = tls_server(Some(public)).await?;
    let config = ca.client_config()?;
    let mut stream = tls::connect(server.addr, config.clone()).await?;
    let (_, connection) = stream.get_ref();
    assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
    let health = tls::get(&mut stream, "/healthz").await?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let page = tls::get(&mut stream, "/index.html").await?;
    assert!(page.contains("<h1>over tls</h1>"), "{page}");
    let ready = tls::get(&mut stream, "/readyz").await?;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // A client that does not trust the CA is refused by its own TLS stack.
    let untrusted = TestCa::new()?.client_config()?;
    assert!(tls::connect(server.addr, untrusted).await.is_err());

    // Plaintext HTTP on the TLS port: no HTTP answer, the connection just ends.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await?;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, plain.read_to_end(&mut reply))
        .await
        .context("the plaintext connection was not closed")??;
    assert!(!String::from_utf8_lossy(&reply).contains("200 OK"));
    // A TCP connection that never starts its handshake holds a pending slot only until
    // it goes (or for the request-head timeout).
    let idle = tokio::net::TcpStream::connect(server.addr).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.health().pending_connections < 2 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(idle);
    drop(stream);
    while server.health().pending_connections > 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await
}

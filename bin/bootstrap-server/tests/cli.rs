//! The `bootstrap-server` binary as a user runs it: configuration errors, config file
//! and overrides, `/healthz`, static files, and SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-server");

fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SECRET")
        .env_remove("PORT")
        .env_remove("HOST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            bail!("bootstrap-server {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn assert_usage_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running server process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn spawn(args: &[&str], port: u16) -> anyhow::Result<Self> {
        Self::spawn_logging(args, port, "warn", Stdio::inherit())
    }

    /// Like [`Server::spawn`], logging at `level` to `stderr`.
    fn spawn_logging(args: &[&str], port: u16, level: &str, stderr: Stdio) -> anyhow::Result<Self> {
        let child = Command::new(BIN)
            .args(args)
            .env_remove("SECRET")
            .env_remove("PORT")
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("server did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, addr })
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("server did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn missing_secret_is_a_usage_error() -> anyhow::Result<()> {
    assert_usage_error(&run_to_end(&[], &[])?, "no root could ever connect");
    Ok(())
}

#[test]
fn unsafe_secret_is_a_usage_error() -> anyhow::Result<()> {
    assert_usage_error(&run_to_end(&["--secret", "a/b"], &[])?, "URL-safe");
    assert_usage_error(&run_to_end(&[], &[("SECRET", "with space")])?, "URL-safe");
    Ok(())
}

#[test]
fn port_in_use_is_a_usage_error() -> anyhow::Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port().to_string();
    let output = run_to_end(
        &[
            "--secret",
            "port-in-use-secret-0123",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ],
        &[],
    )?;
    assert_usage_error(&output, "cannot listen");
    Ok(())
}

#[test]
fn bad_flags_and_bad_config_files_are_usage_errors() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let file = dir.join("bad.json");
    std::fs::write(&file, r#"{"secret":"s","sekret":"typo"}"#)?;
    assert_usage_error(
        &run_to_end(&[file.to_str().context("path")?], &[])?,
        "invalid config file",
    );
    assert_usage_error(
        &run_to_end(&["/nonexistent/config.json"], &[])?,
        "cannot read config file",
    );
    assert_usage_error(
        &run_to_end(&["--secret", "s", "--timeout", "0"], &[])?,
        "timeout must be greater than 0",
    );
    let output = run_to_end(&["--no-such-flag"], &[])?;
    assert_eq!(output.status.code(), Some(64));
    let help = run_to_end(&["--help"], &[])?;
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--max-prospects"));
    Ok(())
}

#[test]
fn the_example_config_is_valid() -> anyhow::Result<()> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.json");
    let port = free_port()?;
    let mut server = Server::spawn(
        &[
            example.to_str().context("path")?,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
        port,
    )?;
    assert!(http_get(server.addr, "/healthz")?.contains("\"status\":\"ok\""));
    assert!(server.terminate()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn config_file_flags_override_and_sigterm_closes_sockets_with_1001() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let public = dir.join("public");
    std::fs::create_dir_all(&public)?;
    std::fs::write(public.join("index.html"), "<h1>hello</h1>")?;
    let file_port = free_port()?;
    let port = free_port()?;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"secret":"fromfile","allow_weak_secret":true,"port":{file_port},"host":"127.0.0.1","public":{:?},"log_format":"json","drain_timeout":300}}"#,
            public.to_str().context("path")?
        ),
    )?;
    // The flag overrides the file's port; the secret comes from the file.
    let mut server = Server::spawn(
        &[
            config.to_str().context("path")?,
            "--port",
            &port.to_string(),
        ],
        port,
    )?;
    let health = http_get(server.addr, "/healthz")?;
    assert!(health.contains("\"root_connected\":false"), "{health}");
    assert!(http_get(server.addr, "/index.html")?.contains("<h1>hello</h1>"));
    assert!(http_get(server.addr, "/")?.contains("<h1>hello</h1>"));
    let url = format!("ws://{}/fromfile/webrtc-bootstrap-root", server.addr);
    let (mut root, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await??;
    let (mut join, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{}/join", server.addr)),
    )
    .await??;
    let health = http_get(server.addr, "/healthz")?;
    assert!(
        health.contains("\"root_connected\":true") && health.contains("\"prospects\":1"),
        "{health}"
    );

    let status = tokio::task::spawn_blocking(move || server.terminate()).await??;
    assert!(status.success(), "{status:?}");
    for ws in [&mut root, &mut join] {
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await? {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => bail!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    }
    Ok(())
}

#[test]
fn overlay_flags_and_token_keys_are_checked_without_echoing_secrets() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let missing = dir.join("missing");
    let missing = missing.to_str().context("path")?;
    assert_usage_error(
        &run_to_end(&["--overlay", "topsecretvalue"], &[])?,
        "NAME=SECRET",
    );
    let output = run_to_end(&["--overlay", "topsecretvalue"], &[])?;
    assert!(!String::from_utf8_lossy(&output.stderr).contains("topsecretvalue"));
    assert_usage_error(
        &run_to_end(&["--overlay", "a/b=s"], &[])?,
        "overlay name \"a/b\" is invalid",
    );
    assert_usage_error(
        &run_to_end(&["--overlay", "default=s"], &[])?,
        "is the default overlay",
    );
    assert_usage_error(
        &run_to_end(&["--overlay", &format!("a=@{missing}")], &[])?,
        "cannot read the secret file",
    );
    assert_usage_error(
        &run_to_end(&["--overlay", "a="], &[])?,
        "its root could never connect",
    );
    assert_usage_error(
        &run_to_end(&["--secret", "s", "--join-auth", "token"], &[])?,
        "needs a token key",
    );
    assert_usage_error(
        &run_to_end(&["--token-key-file", missing], &[])?,
        "cannot use the token key file",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn overlays_from_flags_files_and_tokens_minted_by_the_binary() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let secret_file = dir.join("b.secret");
    std::fs::write(&secret_file, "secret-b\n")?;
    let key_file = dir.join("token.key");
    std::fs::write(&key_file, "an HS256 key of more than thirty-two bytes\n")?;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"overlays":{"c":{"secret":"secret-c","max_prospects":5,"timeout":1000}}}"#,
    )?;
    let key = key_file.to_str().context("path")?;
    let mint = |aud: &str, overlay: &str| -> anyhow::Result<String> {
        let output = run_to_end(
            &[
                "token",
                "--key-file",
                key,
                "--aud",
                aud,
                "--overlay",
                overlay,
                "--ttl",
                "60",
            ],
            &[],
        )?;
        anyhow::ensure!(output.status.success(), "{output:?}");
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    };
    let join_a = mint("join", "a")?;
    let root_b = mint("root", "b")?;
    assert_eq!(join_a.split('.').count(), 3, "{join_a}");
    let port = free_port()?;
    let b_flag = format!("b=@{}", secret_file.to_str().context("path")?);
    let server = Server::spawn(
        &[
            config.to_str().context("path")?,
            "--overlay",
            "a=secret-a",
            "--overlay",
            &b_flag,
            "--token-key-file",
            key,
            "--join-auth",
            "token",
            "--allow-weak-secret",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
        port,
    )?;
    let connect = |path: String| {
        let url = format!("ws://{}{path}", server.addr);
        async move {
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(url),
            )
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| Ok(connected?.0))
        }
    };
    // The secret from the file (its newline ignored), and a root token in its place.
    let _root_a = connect("/o/a/secret-a/webrtc-bootstrap-root".into()).await?;
    let _root_b = connect(format!("/o/b/{root_b}/webrtc-bootstrap-root")).await?;
    let _root_c = connect("/o/c/secret-c/webrtc-bootstrap-root".into()).await?;
    let _old_b = connect("/o/b/secret-b/webrtc-bootstrap-root".into()).await?;
    let _join_a = connect(format!("/o/a/t/{join_a}/join")).await?;
    assert!(connect("/o/a/join".into()).await.is_err(), "no token");
    assert!(
        connect(format!("/o/b/t/{join_a}/join")).await.is_err(),
        "token for a"
    );
    let health = http_get(server.addr, "/healthz")?;
    for needle in [
        r#""name":"a","root_connected":true,"prospects":1"#,
        r#""name":"b","root_connected":true"#,
        r#""name":"c","root_connected":true,"prospects":0,"max_prospects":5"#,
        r#""auth_failures":2"#,
    ] {
        assert!(health.contains(needle), "{needle} not in {health}");
    }
    for secret in ["secret-a", "secret-b", "secret-c", &join_a, &root_b] {
        assert!(!health.contains(secret), "{health}");
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "bootstrap-server-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A secret long enough not to be weak.
const STRONG: &str = "a-strong-secret-0123456789";

#[test]
fn weak_secrets_are_refused_without_echoing_them() -> anyhow::Result<()> {
    let weak = "tiny-s3cret";
    for (args, env) in [
        (vec!["--secret", weak], vec![]),
        (vec![], vec![("SECRET", weak)]),
        (vec!["--overlay", "chat=tiny-s3cret"], vec![]),
    ] {
        let output = run_to_end(&args, &env)?;
        assert_usage_error(&output, "shorter than 16 characters");
        assert_usage_error(&output, "--allow-weak-secret");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains(weak), "{stderr}");
    }
    let output = run_to_end(&["--overlay", "chat=tiny-s3cret"], &[])?;
    assert_usage_error(&output, "overlay \"chat\"");
    // `false` in the config file is the default: still refused.
    let dir = tempdir()?;
    let file = dir.join("weak.json");
    std::fs::write(
        &file,
        r#"{"secret":"tiny-s3cret","allow_weak_secret":false}"#,
    )?;
    assert_usage_error(
        &run_to_end(&[file.to_str().context("path")?], &[])?,
        "shorter than 16 characters",
    );
    Ok(())
}

#[test]
fn dot_secrets_and_huge_frames_are_usage_errors() -> anyhow::Result<()> {
    for secret in [".", ".."] {
        assert_usage_error(
            &run_to_end(&["--secret", secret, "--allow-weak-secret"], &[])?,
            "clients remove such path segments",
        );
        let overlay = format!("chat={secret}");
        assert_usage_error(
            &run_to_end(&["--overlay", &overlay, "--allow-weak-secret"], &[])?,
            "the secret of overlay \"chat\" must not be",
        );
    }
    for bytes in ["16777217", "1000000000000"] {
        assert_usage_error(
            &run_to_end(&["--secret", STRONG, "--max-frame-bytes", bytes], &[])?,
            "max_frame_bytes must be from 4096 to 16777216",
        );
    }
    Ok(())
}

#[test]
fn an_allowed_weak_secret_is_logged_as_a_warning_without_the_secret() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut child = Command::new(BIN)
        .args([
            "--secret",
            "tiny-s3cret",
            "--allow-weak-secret",
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string()])
        .env_remove("SECRET")
        .env_remove("PORT")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The warning is logged before the server binds.
    let started = loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break true;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let health = started.then(|| http_get(addr, "/healthz"));
    let _ = child.kill();
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(started, "server did not start: {stderr}");
    let health = health.context("started")??;
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(
        stderr.contains("WARN") && stderr.contains("WEAK SECRET"),
        "{stderr}"
    );
    assert!(stderr.contains("default"), "{stderr}");
    assert!(!stderr.contains("tiny-s3cret"), "{stderr}");
    Ok(())
}

/// Opens `n` plain TCP connections from `source` that never send anything.
fn idle_connections(
    addr: SocketAddr,
    source: std::net::IpAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            // Connections the server closes at once still complete the TCP handshake.
            if let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
            {
                held.push(tcp);
            }
        }
        anyhow::Ok(held)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_never_lock_out_the_root_or_healthz() -> anyhow::Result<()> {
    // A server allowed 200 open files, and 300 connections from one client that never
    // send a request head: the root and `/healthz` still get in.
    let port = free_port()?;
    let command = format!(
        "ulimit -n 200 && exec {BIN} --secret a-long-enough-secret --host 127.0.0.1 --port {port}"
    );
    let child = Command::new("bash")
        .args(["-c", &command])
        .env_remove("SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut server = Server { child, addr };
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let held = tokio::task::spawn_blocking(move || idle_connections(addr, attacker, 300)).await??;
    let (_root, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!(
            "ws://{addr}/a-long-enough-secret/webrtc-bootstrap-root"
        )),
    )
    .await
    .context("the root got no answer")??;
    let health = http_get(addr, "/healthz")?;
    assert!(health.contains("\"root_connected\":true"), "{health}");
    let refused: u64 = health
        .split("\"connections_refused\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .context("connections_refused")?
        .parse()?;
    assert!(refused > 0, "{health}");
    drop(held);
    assert!(server.terminate()?.success());
    // Accept errors, if any, were logged at a bounded rate.
    let mut output = String::new();
    if let Some(mut stderr) = server.child.stderr.take() {
        std::io::Read::read_to_string(&mut stderr, &mut output)?;
    }
    assert!(output.matches("accept failed").count() <= 1, "{output}");
    Ok(())
}

#[test]
fn turn_flags_are_checked_without_echoing_the_secret() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let secret = dir.join("turn.secret");
    std::fs::write(&secret, "turn-shared-secret-value\n")?;
    let secret = secret.to_str().context("path")?;
    let missing = dir.join("missing");
    let missing = missing.to_str().context("path")?;
    let base = ["--secret", STRONG];
    let cases: [(&[&str], &str); 5] = [
        (&["--turn-uri", "turn:h:3478"], "needs --turn-secret-file"),
        (
            &["--turn-secret-file", missing, "--turn-uri", "turn:h"],
            "cannot read the secret file",
        ),
        (&["--turn-secret-file", secret], "at least one TURN URI"),
        (
            &["--turn-secret-file", secret, "--turn-uri", "http://h"],
            "must start with turn: or turns:",
        ),
        (
            &[
                "--turn-secret-file",
                secret,
                "--turn-uri",
                "turn:h",
                "--turn-ttl",
                "5",
            ],
            "TTL must be from 60 s",
        ),
    ];
    for (flags, needle) in cases {
        let args: Vec<&str> = base.iter().chain(flags).copied().collect();
        let output = run_to_end(&args, &[])?;
        assert_usage_error(&output, needle);
        assert!(!String::from_utf8_lossy(&output.stderr).contains("turn-shared-secret-value"));
    }
    Ok(())
}

#[test]
fn ice_servers_from_the_binary_and_the_secret_never_logged() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let secret = dir.join("turn.secret");
    std::fs::write(&secret, "turn-shared-secret-value\n")?;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"secret":"{STRONG}","turn_secret_file":{:?},"turn_uris":["turn:turn.example.org:3478?transport=udp"],"turn_ttl":600}}"#,
            secret.to_str().context("path")?
        ),
    )?;
    let log = dir.join("server.log");
    let port = free_port()?;
    let mut child = Command::new(BIN)
        .arg(&config)
        .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
        // Flags replace the file's URIs.
        .args(["--turn-uri", "turns:turn.example.org:5349?transport=tcp"])
        .args(["--stun-uri", "stun:turn.example.org:3478"])
        .env_remove("SECRET")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = http_get(addr, "/ice-servers")?;
    let health = http_get(addr, "/healthz")?;
    let _ = child.kill();
    child.wait()?;
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").context("body")?.1)?;
    assert_eq!(body["ttl"], 600, "{answer}");
    assert_eq!(
        body["iceServers"][0]["urls"],
        serde_json::json!(["turns:turn.example.org:5349?transport=tcp"])
    );
    assert_eq!(
        body["iceServers"][1]["urls"],
        serde_json::json!(["stun:turn.example.org:3478"])
    );
    assert!(health.contains("\"turn_credentials\":true"), "{health}");
    let logged = std::fs::read_to_string(&log)?;
    assert!(!logged.is_empty());
    for text in [&logged, &answer, &health] {
        assert!(!text.contains("turn-shared-secret-value"), "{text}");
    }
    Ok(())
}

/// Sends SIGTERM to the server without waiting for it to exit.
fn signal(server: &Server, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await??;
    Ok(ws)
}

/// Next text frame other than heartbeats.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(text))) if text.as_str() != "\"heartbeat\"" => {
                return Ok(text.to_string());
            }
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_handshakes_under_way_and_refuses_new_joins() -> anyhow::Result<()> {
    use futures_util::SinkExt as _;
    const STARTED: usize = 12;
    let port = free_port()?;
    let server = Server::spawn(
        &[
            "--secret",
            "drain-secret-0123456789",
            "--host",
            "127.0.0.1",
            "--timeout",
            "20000",
            "--drain-timeout",
            "8000",
            "--port",
            &port.to_string(),
        ],
        port,
    )?;
    let addr = server.addr;
    let mut root = ws(&format!(
        "ws://{addr}/drain-secret-0123456789/webrtc-bootstrap-root"
    ))
    .await?;
    // A burst of newcomers, each with its offer sent: their handshakes are under way.
    let mut newcomers = Vec::new();
    for i in 0..STARTED {
        let mut newcomer = ws(&format!("ws://{addr}/join")).await?;
        let offer = format!(
            r#"{{"origin":null,"destination":null,"signal":{{"type":"offer","sdp":"n{i}"}},"rank":0}}"#
        );
        newcomer.send(Message::text(offer)).await?;
        newcomers.push(newcomer);
    }
    // Offers from different sockets may reach the root in any order: each newcomer's
    // id is found by its offer's marker.
    let mut origins = vec![String::new(); STARTED];
    for _ in 0..STARTED {
        let offer: serde_json::Value = serde_json::from_str(&next_text(&mut root).await?)?;
        let marker = offer["signal"]["sdp"].as_str().context("sdp")?;
        let i: usize = marker.trim_start_matches('n').parse()?;
        origins[i] = offer["origin"].as_str().context("origin")?.to_owned();
    }
    // The root delegates each offer to an answerer, which opens its /join socket.
    let mut answerers = Vec::new();
    for _ in 0..STARTED {
        answerers.push(ws(&format!("ws://{addr}/join")).await?);
    }
    signal(&server, "TERM")?;
    let signalled = Instant::now();
    // Not ready at once; every later /join is refused with 503.
    loop {
        let ready = tokio::task::spawn_blocking(move || http_get(addr, "/readyz")).await??;
        if ready.starts_with("HTTP/1.1 503") {
            break;
        }
        anyhow::ensure!(
            signalled.elapsed() < Duration::from_secs(3),
            "still ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/join")).await;
        let error = refused
            .err()
            .context("a /join after SIGTERM was accepted")?;
        assert!(error.to_string().contains("503"), "{error}");
    }
    // The handshakes that started before the signal complete, relaying both ways:
    // each answerer's answer reaches its newcomer, whose candidate reaches the answerer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (answerer, origin) in answerers.iter_mut().zip(&origins) {
        let answer = format!(
            r#"{{"origin":null,"destination":"{origin}","signal":{{"type":"answer","sdp":"a"}},"rank":0}}"#
        );
        answerer.send(Message::text(answer)).await?;
    }
    for (newcomer, answerer) in newcomers.iter_mut().zip(&mut answerers) {
        let answer: serde_json::Value = serde_json::from_str(&next_text(newcomer).await?)?;
        assert_eq!(answer["signal"]["type"], "answer");
        let from = answer["origin"].as_str().context("origin")?;
        let candidate = format!(
            r#"{{"origin":null,"destination":"{from}","signal":{{"candidate":{{}}}},"rank":1}}"#
        );
        newcomer.send(Message::text(candidate)).await?;
        let candidate: serde_json::Value = serde_json::from_str(&next_text(answerer).await?)?;
        assert_eq!(candidate["rank"], 1);
        newcomer.close(None).await?;
        answerer.close(None).await?;
    }
    // Once the last /join socket has ended, the root is closed with 1001 and the
    // process exits, well within the drain timeout.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), root.next()).await? {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => bail!("expected the root's close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(Instant::now() < deadline, "no exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await??;
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exited after {:?}",
        signalled.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_a_drain_exits_at_once() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut server = Server::spawn(
        &[
            "--secret",
            "drain-secret-0123456789",
            "--host",
            "127.0.0.1",
            "--drain-timeout",
            "60000",
            "--port",
            &port.to_string(),
        ],
        port,
    )?;
    let _join = ws(&format!("ws://{}/join", server.addr)).await?;
    signal(&server, "TERM")?;
    let addr = server.addr;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
        .await??
        .starts_with("HTTP/1.1 503")
    {
        anyhow::ensure!(Instant::now() < deadline, "no drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate()).await??;
    assert!(
        !status.success(),
        "a second signal exits with an error status"
    );
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_tls_certificate_for_new_connections_only() -> anyhow::Result<()> {
    use bootstrap_testkit::tls::{self, TestCa};
    let dir = tls::tempdir("cli-tls")?;
    let ca = TestCa::new()?;
    let (first, second) = (ca.leaf(1001)?, ca.leaf(2002)?);
    let files = first.write(&dir, "server")?;
    let port = free_port()?;
    let server = Server::spawn(
        &[
            "--secret",
            "tls-reload-secret-0123",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--tls-cert",
            files.cert.to_str().context("path")?,
            "--tls-key",
            files.key.to_str().context("path")?,
        ],
        port,
    )?;
    let config = ca.client_config()?;
    let mut old = tls::connect(server.addr, config.clone()).await?;
    assert_eq!(tls::presented(&old)?, first.der, "serial 1001 at start");
    assert!(
        tls::get(&mut old, "/healthz")
            .await?
            .starts_with("HTTP/1.1 200")
    );

    // Renewed files, then SIGHUP: new connections get serial 2002.
    second.write_to(&files)?;
    signal(&server, "HUP")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let new = tls::connect(server.addr, config.clone()).await?;
        if tls::presented(&new)? == second.der {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before keeps its certificate and keeps working.
    assert_eq!(tls::presented(&old)?, first.der);
    assert!(
        tls::get(&mut old, "/healthz")
            .await?
            .starts_with("HTTP/1.1 200")
    );

    // A broken file: the reload fails (and the log says why); 2002 stays in use.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n")?;
    signal(&server, "HUP")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = tls::connect(server.addr, config).await?;
    assert_eq!(tls::presented(&new)?, second.der);
    // The old connection still answers.
    let health = tls::get(&mut old, "/healthz").await?;
    assert!(health.contains("\"prospects\":0"), "{health}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_config_file() -> anyhow::Result<()> {
    let dir = tempdir()?;
    let port = free_port()?;
    let config = dir.join("reload.json");
    let write = |origins: &str, port: u16| {
        std::fs::write(
            &config,
            format!(
                r#"{{"secret":"reload-secret-0123456789","host":"127.0.0.1","port":{port},"allowed_origins":[{origins}]}}"#
            ),
        )
    };
    write(r#""https://a.example""#, port)?;
    let log = dir.join("server.log");
    let server = Server::spawn_logging(
        &[config.to_str().context("path")?],
        port,
        "warn",
        Stdio::from(std::fs::File::create(&log)?),
    )?;
    let addr = server.addr;
    let status = move |origin: &'static str| -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /join HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        )?;
        let mut response = [0; 12];
        stream.read_exact(&mut response)?;
        Ok(String::from_utf8_lossy(&response[9..12]).into_owned())
    };
    assert_eq!(status("https://a.example")?, "101");
    assert_eq!(status("https://b.example")?, "403");
    // The file now allows b only, and asks for another port (which needs a restart).
    write(r#""https://b.example""#, free_port()?)?;
    signal(&server, "HUP")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("https://b.example")? != "101" {
        anyhow::ensure!(Instant::now() < deadline, "origins not reloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status("https://a.example")?, "403");
    // The port is named as needing a restart (at `warn`, by name only).
    eventually("the restart warning", || {
        Ok(std::fs::read_to_string(&log)?.contains("apply only after a restart"))
    })
    .await?;
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains("host and port"), "{logged}");
    assert!(!logged.contains("reload-secret-0123456789"), "{logged}");
    // A broken file changes nothing (once the log says it was refused).
    std::fs::write(&config, "{ not json")?;
    signal(&server, "HUP")?;
    eventually("the refused reload", || {
        Ok(std::fs::read_to_string(&log)?.contains("configuration NOT reloaded"))
    })
    .await?;
    assert_eq!(status("https://b.example")?, "101");
    assert_eq!(status("https://a.example")?, "403");
    Ok(())
}

/// The close frame's code and reason, skipping whatever comes before it.
async fn next_close(ws: &mut Ws) -> anyhow::Result<(u16, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Close(Some(frame)))) => {
                return Ok((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) => bail!("a close frame without a code"),
            Some(Ok(_)) => {}
            other => bail!("expected a close frame, got {other:?}"),
        }
    }
}

/// The HTTP status a WebSocket upgrade to `url` is refused with.
async fn refused_with(url: &str) -> anyhow::Result<String> {
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await?;
    match attempt {
        Ok(_) => bail!("{url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(response.status().as_str().to_owned())
        }
        Err(error) => bail!("{url}: {error}"),
    }
}

/// Polls `condition` every 20 ms until it holds, for at most 5 s.
async fn eventually(
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition()? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_secrets_overlays_and_limits() -> anyhow::Result<()> {
    use futures_util::SinkExt as _;
    const OLD: &str = "old-default-secret-0123";
    const NEW: &str = "new-default-secret-4567";
    const SECRET_A: &str = "overlay-a-secret-0123";
    const SECRET_B: &str = "overlay-b-secret-4567";
    let dir = tempdir()?;
    let port = free_port()?;
    let config = dir.join("reload.json");
    let log = dir.join("server.log");
    let write = |secret: &str, overlays: &str, max_prospects: usize| {
        std::fs::write(
            &config,
            format!(
                r#"{{"secret":"{secret}","host":"127.0.0.1","port":{port},"max_prospects":{max_prospects},"overlays":{{{overlays}}}}}"#
            ),
        )
    };
    write(OLD, &format!(r#""a":{{"secret":"{SECRET_A}"}}"#), 10)?;
    let server = Server::spawn_logging(
        &[config.to_str().context("path")?],
        port,
        "debug",
        Stdio::from(std::fs::File::create(&log)?),
    )?;
    let addr = server.addr;
    let url = |path: &str| format!("ws://{addr}{path}");
    let health = move || http_get(addr, "/healthz");

    // Before: a root under the old secret with two /join sockets, and overlay a with
    // its root and a /join socket.
    let mut root = ws(&url(&format!("/{OLD}/webrtc-bootstrap-root"))).await?;
    let mut joins = vec![ws(&url("/join")).await?, ws(&url("/join")).await?];
    let mut root_a = ws(&url(&format!("/o/a/{SECRET_A}/webrtc-bootstrap-root"))).await?;
    let mut join_a = ws(&url("/o/a/join")).await?;
    assert!(health()?.contains(r#""prospects":3,"max_prospects":10"#));

    // After: a new default secret, b instead of a, at most 3 /join sockets in all.
    write(NEW, &format!(r#""b":{{"secret":"{SECRET_B}"}}"#), 3)?;
    signal(&server, "HUP")?;
    eventually("overlay b", || Ok(health()?.contains(r#""name":"b""#))).await?;

    // a's sockets are closed as on shutdown, and a is unknown.
    for socket in [&mut root_a, &mut join_a] {
        assert_eq!(
            next_close(socket).await.context("a's sockets closed")?,
            (1001, "overlay removed".to_owned())
        );
    }
    assert_eq!(refused_with(&url("/o/a/join")).await?, "404");
    assert_eq!(
        refused_with(&url(&format!("/o/a/{SECRET_A}/webrtc-bootstrap-root"))).await?,
        "404"
    );
    let now = health()?;
    assert!(!now.contains(r#""name":"a""#), "{now}");
    // b is served: its root, and a /join socket.
    let _root_b = ws(&url(&format!("/o/b/{SECRET_B}/webrtc-bootstrap-root"))).await?;
    let _join_b = ws(&url("/o/b/join")).await?;
    // The new cap: two default /join sockets and b's are open, so a fourth is refused
    // (the old cap was 10), while the open ones stay.
    assert_eq!(refused_with(&url("/join")).await?, "503");
    assert!(health()?.contains(r#""prospects":3,"max_prospects":3"#));

    // The root admitted under the old secret still gets offers, and the /join sockets
    // opened before the reload still relay to each other (an answerer's answer).
    let offer =
        r#"{"origin":null,"destination":null,"signal":{"type":"offer","sdp":"o"},"rank":0}"#;
    joins[0].send(Message::text(offer)).await?;
    let relayed: serde_json::Value =
        serde_json::from_str(&next_text(&mut root).await.context("relayed to the root")?)?;
    assert_eq!(relayed["signal"]["type"], "offer");
    let origin = relayed["origin"].as_str().context("origin")?.to_owned();
    let answer = format!(
        r#"{{"origin":null,"destination":"{origin}","signal":{{"type":"answer","sdp":"a"}},"rank":0}}"#
    );
    joins[1].send(Message::text(answer)).await?;
    let answered: serde_json::Value = serde_json::from_str(
        &next_text(&mut joins[0])
            .await
            .context("relayed to the newcomer")?,
    )?;
    assert_eq!(answered["signal"]["type"], "answer");

    // A new root with the old secret is refused; with the new one it is the root, and
    // the old root is replaced (newest root wins).
    assert_eq!(
        refused_with(&url(&format!("/{OLD}/webrtc-bootstrap-root"))).await?,
        "404"
    );
    let _new_root = ws(&url(&format!("/{NEW}/webrtc-bootstrap-root"))).await?;
    assert_eq!(next_close(&mut root).await.context("replaced")?.0, 4000);

    // An invalid file changes nothing: the log says so, and everything stays.
    let refusals = || -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(&log)?
            .matches("configuration NOT reloaded")
            .count())
    };
    std::fs::write(
        &config,
        format!(r#"{{"secret":"{OLD}","host":"127.0.0.1","port":{port},"timeout":0}}"#),
    )?;
    signal(&server, "HUP")?;
    eventually("the refused reload", || Ok(refusals()? == 1)).await?;
    let now = health()?;
    assert!(
        now.contains(r#""name":"b""#) && now.contains(r#""max_prospects":3"#),
        "{now}"
    );
    assert_eq!(
        refused_with(&url(&format!("/{OLD}/webrtc-bootstrap-root"))).await?,
        "404"
    );

    // The log names what changed, and no secret.
    let logged = std::fs::read_to_string(&log)?;
    for needle in ["overlay added", "overlay removed", "root secret changed"] {
        assert!(logged.contains(needle), "{needle:?} not in {logged}");
    }
    for secret in [OLD, NEW, SECRET_A, SECRET_B] {
        assert!(!logged.contains(secret), "{secret} in {logged}");
    }
    drop(joins);
    Ok(())
}

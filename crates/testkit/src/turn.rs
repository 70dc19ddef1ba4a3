//! [`Coturn`]: the real TURN server (Debian's `coturn`, `turnserver`) on 127.0.0.1, with
//! the TURN REST API's shared secret, for tests that relay through it.
//!
//! Start it inside a loopback-only network namespace ([`crate::in_loopback_netns`]):
//! it relays to loopback peers only because it is told to (`--allow-loopback-peers`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The program, from Debian's `coturn` package.
pub const TURNSERVER: &str = "turnserver";

/// The realm the server runs with.
pub const REALM: &str = "bootstrap.test";

/// How long [`Coturn::start`] waits for the server to answer.
const READY_WAIT: Duration = Duration::from_secs(10);

/// A running `turnserver`, killed when dropped.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Coturn {
    /// Whether `turnserver` is installed.
    #[must_use]
    pub fn installed() -> bool {
        std::process::Command::new(TURNSERVER)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts `turnserver` on a free UDP port of 127.0.0.1, checking REST API
    /// credentials against `secret`, relaying from ports 49152-49407 of 127.0.0.1 to
    /// loopback peers; returns once it answers a STUN binding request.
    ///
    /// # Errors
    /// When it cannot start or does not answer in time.
    pub async fn start(secret: &str) -> anyhow::Result<Self> {
        let port = free_udp_port().await?;
        let dir =
            std::env::temp_dir().join(format!("bootstrap-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).context("coturn's directory")?;
        let log = std::fs::File::create(dir.join("turnserver.log")).context("coturn's log")?;
        let child = Command::new(TURNSERVER)
            // -v: without it coturn logs no session lines, so `allocations` saw none.
            .args([
                "-n",
                "-v",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
            ])
            .arg(format!("--listening-port={port}"))
            .args(["--min-port=49152", "--max-port=49407"])
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
            ])
            .arg(format!("--realm={REALM}"))
            .args([
                "--fingerprint",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-cli",
            ])
            // Loopback is all a test namespace has; refused unless allowed (with --no-cli).
            .arg("--allow-loopback-peers")
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .args(["--log-file=stdout", "--simple-log"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting turnserver (Debian package coturn)")?;
        let mut coturn = Self { child, port, dir };
        coturn.wait_ready().await?;
        Ok(coturn)
    }

    /// `turn:127.0.0.1:PORT?transport=udp`.
    #[must_use]
    pub fn uri(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// Its UDP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// How many allocations it logged so far (`ALLOCATE processed, success` lines).
    /// coturn writes its log about once a second: see [`Coturn::wait_allocations`].
    #[must_use]
    pub fn allocations(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("ALLOCATE processed, success"))
            .count()
    }

    /// How many allocations it logged, once at least `count` (or after `wait`).
    pub async fn wait_allocations(&self, count: usize, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        loop {
            let logged = self.allocations();
            if logged >= count || Instant::now() >= deadline {
                return logged;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends STUN binding requests until one is answered.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(("127.0.0.1", self.port)).await?;
        // A binding request: type 0x0001, length 0, the magic cookie, a transaction id.
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"bootstrap-tk");
        let deadline = Instant::now() + READY_WAIT;
        let mut answer = [0u8; 512];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("turnserver exited with {status}:\n{}", self.log());
            }
            let _ = socket.send(&request).await;
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut answer)).await
                && n >= 20
                && answer[..2] == [0x01, 0x01]
            {
                return Ok(());
            }
        }
        bail!(
            "turnserver did not answer within {READY_WAIT:?}:\n{}",
            self.log()
        )
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP port of 127.0.0.1 that was free a moment ago.
async fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    Ok(socket.local_addr()?.port())
}

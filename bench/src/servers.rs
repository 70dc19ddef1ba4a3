//! Starting the servers under test on free loopback ports, and stopping them.
//!
//! Our server is the release `bootstrap-server` binary; the JS server is
//! `node bench/js/server.js`, which runs webrtc-bootstrap 4.4.1's `Server` on
//! `127.0.0.1`. Each run gets a fresh process, so peak RSS is the run's own. Both are
//! given the same room: a `/join` lifetime longer than any run, and for ours no socket
//! cap or rate limit that the bench could hit (the JS server has neither).

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Our Rust server.
    Ours,
    /// The JS webrtc-bootstrap 4.4.1 server.
    Js,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ours => "ours",
            Self::Js => "js",
        })
    }
}

/// `/join` socket lifetime given to both servers: longer than any run.
pub const JOIN_TIMEOUT_MS: u64 = 3_600_000;

/// The flags our server runs with in the bench (after `--secret`, `--host`, `--port`).
#[must_use]
pub fn our_flags() -> Vec<String> {
    [
        "--timeout",
        &JOIN_TIMEOUT_MS.to_string(),
        "--max-prospects",
        "1000000",
        "--rate-per-second",
        "1000000",
        "--rate-burst",
        "1000000",
        // The generator is one client opening up to 2 C connections at once.
        "--max-pending-connections",
        "100000",
        "--max-pending-per-client",
        "100000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct Programs {
    /// Our release binary.
    pub server_bin: PathBuf,
    /// The `node` executable.
    pub node: String,
    /// `bench/js`, holding `server.js` and `node_modules`.
    pub js_dir: PathBuf,
    /// The JS server's V8 old-space limit in MiB (100 000 sockets need more than the
    /// default).
    pub node_heap_mib: u64,
    /// Worker threads of our server (`TOKIO_WORKER_THREADS`); `None`: one per core.
    /// On a 2-core machine the load generator needs a core of its own, so the bench
    /// gives each server one: the JS server runs its JavaScript on one thread too.
    pub server_workers: Option<usize>,
}

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Reaped {
    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status, if it has exited.
    ///
    /// # Errors
    /// When the status cannot be read.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server process; killed when dropped.
#[derive(Debug)]
pub struct Spawned {
    /// Which server.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stderr and stdout.
    pub log: PathBuf,
    child: Reaped,
}

impl Spawned {
    /// Starts `kind` on a free port of 127.0.0.1 with `secret` and waits until it
    /// accepts connections.
    ///
    /// # Errors
    /// When the program cannot start or does not listen within 20 s.
    pub fn start(kind: Kind, programs: &Programs, secret: &str) -> anyhow::Result<Self> {
        Self::start_with(kind, programs, secret, &[])
    }

    /// [`Self::start`], with `extra` flags for our server (ignored for the JS server).
    ///
    /// # Errors
    /// When the program cannot start or does not listen within 20 s.
    pub fn start_with(
        kind: Kind,
        programs: &Programs,
        secret: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("bootstrap-bench-{kind}-{port}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = match kind {
            Kind::Ours => {
                let mut c = Command::new(&programs.server_bin);
                c.args(["--secret", secret, "--host", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .args(our_flags())
                    .args(extra)
                    .env("RUST_LOG", "warn");
                match programs.server_workers {
                    Some(n) => c.env("TOKIO_WORKER_THREADS", n.to_string()),
                    None => c.env_remove("TOKIO_WORKER_THREADS"),
                };
                c
            }
            Kind::Js => {
                let mut c = Command::new(&programs.node);
                c.arg(format!("--max-old-space-size={}", programs.node_heap_mib))
                    .arg(programs.js_dir.join("server.js"))
                    .args(["--secret", secret, "--port"])
                    .arg(port.to_string())
                    .args(["--timeout", &JOIN_TIMEOUT_MS.to_string()])
                    .env_remove("DEBUG");
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start the {kind} server ({command:?})"))?;
        let mut spawned = Self {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            child: Reaped(child),
        };
        spawned.wait_ready(Duration::from_secs(20))?;
        Ok(spawned)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} server exited with {status}; see {}",
                    self.kind,
                    self.log.display()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} server did not listen on {} in time; see {}",
                    self.kind,
                    self.addr,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (a crash during a run invalidates it).
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Kills the process and waits for it.
    pub fn stop(self) {
        drop(self);
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether the JS server can run: `node_modules` is installed under `js_dir`.
#[must_use]
pub fn js_installed(js_dir: &Path) -> bool {
    js_dir
        .join("node_modules")
        .join("webrtc-bootstrap")
        .join("package.json")
        .is_file()
}

/// The output of `program --version`, trimmed, or `None`.
#[must_use]
pub fn version_of(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

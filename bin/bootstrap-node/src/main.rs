//! `bootstrap-node`: one node of a WebRTC tree overlay, on the command line.
//!
//! Run with:
//! ```text
//! bootstrap-node root --url ws://127.0.0.1:5000 --secret s3cret-s3cret-s3cret --max-degree 3
//! bootstrap-node join --url ws://127.0.0.1:5000
//! ```
//! In a named overlay, on a server with token auth (tokens from `bootstrap-server token`;
//! `@FILE` or the environment keep them out of the process list):
//! ```text
//! bootstrap-node root --url ws://127.0.0.1:5000 --overlay chat --token @root.jwt --join-token @join.jwt
//! BOOTSTRAP_TOKEN=eyJ... bootstrap-node join --url ws://127.0.0.1:5000 --overlay chat
//! ```
//! Behind NATs and firewalls, relay through TURN with short-lived credentials that the
//! bootstrap server hands out (`bootstrap-server --turn-secret-file … --turn-uri …`):
//! `--ice-from-server` fetches them from its `/ice-servers`, `--relay-only` sends
//! everything through the relay (then a node prints `ice: …, relay only` once ready):
//! ```text
//! bootstrap-node root --url ws://127.0.0.1:5000 --secret s3cret-s3cret-s3cret --ice-from-server --relay-only
//! bootstrap-node join --url ws://127.0.0.1:5000 --ice-from-server --relay-only
//! ```
//! A second root can wait as a standby for the same overlay: it gets no join requests
//! while the active root is there, and takes over (printing `promoted`) when the active
//! root's connection ends; the orphaned subtrees then re-join under it:
//! ```text
//! bootstrap-node root --url ws://127.0.0.1:5000 --secret s3cret-s3cret-s3cret --standby
//! ```
//! Lines typed on standard input are broadcast through the whole tree: a node sends them
//! up to the root, the root broadcasts them down. Every node prints what it receives.
//! `/status` prints the node's parent and children, `/tree` the whole tree as the root
//! shares it; `/quit` (or end of input) leaves.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeInfo, NodeOptions, Source};
use webrtc_bootstrap_peer::{Client, IceServer, Options};

/// A node of a WebRTC tree overlay built through a webrtc-bootstrap server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Become the root of the tree (needs the overlay's secret or a root token).
    Root {
        #[command(flatten)]
        common: Common,
        /// The overlay's root secret (give this or --token).
        #[arg(
            long,
            env = "SECRET",
            hide_env_values = true,
            value_name = "SECRET|@FILE"
        )]
        secret: Option<Credential>,
        /// A root token in place of the secret, on a server with token auth: the token,
        /// or @FILE to read it from a file (better than argv, which other users see).
        #[arg(
            long,
            env = "BOOTSTRAP_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN|@FILE"
        )]
        token: Option<Credential>,
        /// The join token the root's answers present (each answer opens a /join socket),
        /// needed when the server requires join tokens: the token or @FILE.
        #[arg(
            long,
            env = "BOOTSTRAP_JOIN_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN|@FILE"
        )]
        join_token: Option<Credential>,
        /// Wait as a standby root: no join requests while another root is active; take
        /// over when it goes (the server must support standby roots).
        #[arg(long)]
        standby: bool,
    },
    /// Join the tree.
    Join {
        #[command(flatten)]
        common: Common,
        /// The join token, when the server requires one: the token, or @FILE to read it
        /// from a file (better than argv, which other users see). It is also presented
        /// when this node answers nodes joining under it.
        #[arg(
            long,
            env = "BOOTSTRAP_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN|@FILE"
        )]
        token: Option<Credential>,
    },
}

/// A secret or token as given on the command line or in the environment: the value,
/// or `@FILE` for a file holding it. `Debug` hides it.
#[derive(Clone)]
struct Credential(String);

impl FromStr for Credential {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Credential {
    /// The value: read from the file for `@FILE` (one trailing newline ignored).
    /// `what` names it in errors, which never include the value.
    fn resolve(&self, what: &str) -> anyhow::Result<String> {
        let value = match self.0.strip_prefix('@') {
            Some(path) => read_credential(Path::new(path))
                .with_context(|| format!("cannot read the {what} file {path}"))?,
            None => self.0.clone(),
        };
        if value.is_empty() {
            bail!("the {what} is empty");
        }
        Ok(value)
    }
}

/// A credential kept in a file: its content, one trailing newline (`\n` or `\r\n`)
/// ignored.
fn read_credential(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

#[derive(Debug, Args)]
struct Common {
    /// The bootstrap server, e.g. ws://127.0.0.1:5000 or wss://example.org. As with JS
    /// clients it may end in /o/NAME (an overlay) and /t/TOKEN (a join token).
    #[arg(long)]
    url: String,
    /// The overlay to join or be the root of (the server's /o/NAME/...) [default: the
    /// server's default overlay].
    #[arg(long, env = "BOOTSTRAP_OVERLAY", value_name = "NAME")]
    overlay: Option<String>,
    /// Most children this node accepts.
    #[arg(long, default_value_t = 10)]
    max_degree: usize,
    /// STUN or TURN server URL (repeatable), e.g. stun:stun.example.org:3478.
    #[arg(long = "ice-server")]
    ice_servers: Vec<String>,
    /// Username for the TURN servers given with --ice-server.
    #[arg(long)]
    ice_username: Option<String>,
    /// Credential for the TURN servers given with --ice-server.
    #[arg(long, hide_env_values = true, env = "ICE_CREDENTIAL")]
    ice_credential: Option<String>,
    /// Also take ICE servers from the bootstrap server: short-lived TURN credentials
    /// from its GET /ice-servers (same origin over http:// or https://, same overlay
    /// and join token as the /join sockets), fetched before the first connection and
    /// again once 80 % of their lifetime has passed. The server needs TURN configured
    /// (bootstrap-server --turn-secret-file, --turn-uri).
    #[arg(long)]
    ice_from_server: bool,
    /// Relay every connection through TURN (iceTransportPolicy "relay"): only relay
    /// candidates are gathered and sent, so no address of this host reaches the other
    /// peers. Needs a TURN server: --ice-from-server, or --ice-server turn:...
    #[arg(long)]
    relay_only: bool,
    /// Local UDP address for WebRTC (repeatable). Default: every interface plus loopback
    /// (0.0.0.0:0 and 127.0.0.1:0), so it also works on a loopback-only host.
    #[arg(long = "udp-bind")]
    udp_binds: Vec<SocketAddr>,
    /// Name shown with this node's lines [default: random].
    #[arg(long)]
    name: Option<String>,
    /// Join or answer timeout, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout: u64,
}

impl Common {
    /// A bad combination of ICE flags, found before anything connects.
    fn check_ice(&self) -> anyhow::Result<()> {
        let has_turn = self
            .ice_servers
            .iter()
            .any(|url| url.starts_with("turn:") || url.starts_with("turns:"));
        if self.relay_only && !self.ice_from_server && !has_turn {
            bail!(
                "--relay-only needs a TURN server: add --ice-from-server (TURN credentials \
                 from the bootstrap server) or --ice-server turn:HOST:PORT"
            );
        }
        Ok(())
    }

    /// What this node's ICE setup is, for its output, when it is not the default.
    fn ice_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.ice_from_server {
            parts.push("TURN credentials from the bootstrap server's /ice-servers");
        }
        if !self.ice_servers.is_empty() {
            parts.push("servers from --ice-server");
        }
        if self.relay_only {
            parts.push("relay only");
        }
        (self.ice_from_server || self.relay_only).then(|| format!("ice: {}", parts.join(", ")))
    }

    fn options(&self) -> Options {
        let ice_servers = self
            .ice_servers
            .iter()
            .map(|url| {
                let mut server = IceServer::stun(url.clone());
                if url.starts_with("turn") {
                    server.username.clone_from(&self.ice_username);
                    server.credential.clone_from(&self.ice_credential);
                }
                server
            })
            .collect();
        let udp_addrs = if self.udp_binds.is_empty() {
            vec![
                SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ]
        } else {
            self.udp_binds.clone()
        };
        Options {
            ice_servers,
            udp_addrs,
            timeout: Duration::from_millis(self.timeout),
            overlay: self.overlay.clone(),
            ice_from_server: self.ice_from_server,
            relay_only: self.relay_only,
            ..Options::default()
        }
    }

    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let mut bytes = [0u8; 3];
            let _ = getrandom::fill(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        })
    }
}

/// Exit code for a bad command line (BSD `EX_USAGE`), as `bootstrap-server` uses.
const EX_USAGE: u8 = 64;

/// Default log filter: warnings, minus the WebRTC stack's routine ones.
const QUIET_LOGS: &str = "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET_LOGS)),
        )
        .with_writer(std::io::stderr)
        .init();
    // Bad flags, credentials or addresses stop here, before anything connects.
    let setup = match Setup::from_cli(&cli) {
        Ok(setup) => setup,
        Err(error) => {
            eprintln!("bootstrap-node: {error:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bootstrap-node: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bootstrap-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a role connects with: the root's credential (secret or root token), if it is
/// the root, and the join token of its `/join` sockets.
fn credentials(role: &Role) -> anyhow::Result<(Option<String>, Option<String>)> {
    match role {
        Role::Root {
            secret,
            token,
            join_token,
            ..
        } => {
            let credential = match (secret, token) {
                (Some(secret), None) => secret.resolve("secret")?,
                (None, Some(token)) => token.resolve("root token")?,
                (Some(_), Some(_)) => bail!(
                    "give the root secret (--secret, SECRET) or a root token (--token, \
                     BOOTSTRAP_TOKEN), not both"
                ),
                (None, None) => bail!(
                    "the root needs its secret (--secret, SECRET) or a root token (--token, \
                     BOOTSTRAP_TOKEN)"
                ),
            };
            let join_token = join_token
                .as_ref()
                .map(|token| token.resolve("join token"))
                .transpose()?;
            Ok((Some(credential), join_token))
        }
        Role::Join { token, .. } => Ok((
            None,
            token
                .as_ref()
                .map(|token| token.resolve("join token"))
                .transpose()?,
        )),
    }
}

/// A checked command line: the client to connect with, and the root's credential.
struct Setup {
    client: Client,
    /// The secret or root token when this node is the root. Never printed.
    credential: Option<String>,
    name: String,
    max_degree: usize,
    /// Whether the root waits as a standby.
    standby: bool,
    /// The line describing a non-default ICE setup, printed once ready.
    ice: Option<String>,
}

impl Setup {
    fn from_cli(cli: &Cli) -> anyhow::Result<Self> {
        let common = match &cli.role {
            Role::Root { common, .. } | Role::Join { common, .. } => common,
        };
        let (credential, join_token) = credentials(&cli.role)?;
        common.check_ice()?;
        let options = Options {
            token: join_token,
            ..common.options()
        };
        Ok(Self {
            client: Client::with_options(&common.url, options)?,
            credential,
            name: common.name(),
            max_degree: common.max_degree,
            standby: matches!(cli.role, Role::Root { standby: true, .. }),
            ice: common.ice_summary(),
        })
    }
}

async fn run(setup: Setup) -> anyhow::Result<()> {
    let Setup {
        client,
        credential,
        name,
        max_degree,
        standby,
        ice,
    } = setup;
    let secret = credential.as_deref();
    let options = NodeOptions {
        max_degree,
        name: Some(name.clone()),
        report_topology: true,
        ..NodeOptions::default()
    };
    let mut node = match secret {
        Some(secret) if standby => Node::standby_root(client, secret, options)
            .await
            .context("cannot wait as a standby root")?,
        Some(secret) => Node::root(client, secret, options)
            .await
            .context("cannot become the root")?,
        None => Node::join(client, options)
            .await
            .context("cannot join the tree")?,
    };
    let is_root = secret.is_some();
    let role = match (is_root, node.info().standby) {
        (true, true) => "standby root",
        (true, false) => "root",
        (false, _) => "node",
    };
    say(&format!("ready {role} as {name}"));
    if let Some(ice) = ice {
        say(&ice);
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut tree = Value::Null;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                None => stdin_open = false,
                Some(line) if line.trim() == "/quit" => break,
                Some(line) if line.trim() == "/status" => print_status(&node.info()),
                Some(line) if line.trim() == "/tree" => print_tree(&tree, 0),
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    let message = json!({"from": name, "text": line});
                    let sent = if is_root { node.broadcast(message).await } else { node.send_to_root(message).await };
                    if let Err(error) = sent {
                        say(&format!("not sent: {error}"));
                    }
                }
            },
            event = node.next_event() => match event {
                None => break,
                Some(Event::Tree(latest)) => tree = latest,
                Some(event) => on_event(&node, is_root, event).await,
            },
        }
    }
    node.close().await;
    Ok(())
}

async fn on_event(node: &Node, is_root: bool, event: Event) {
    match event {
        Event::ParentConnected { id } => {
            say(&format!("parent connected {}", id.unwrap_or_default()))
        }
        Event::ParentClosed => say("parent closed; re-joining"),
        Event::RejoinFailed { attempt, error } => {
            say(&format!("re-join attempt {attempt} failed: {error}"))
        }
        Event::ChildConnected { id } => say(&format!("child connected {id}")),
        Event::ChildClosed { id } => say(&format!("child closed {id}")),
        Event::RootStopped { reason } => say(&format!("root stopped: {reason}")),
        Event::Promoted => say("promoted: this standby root is the root now"),
        Event::Data {
            from,
            delivery,
            data,
        } => {
            print_data(&data);
            // The root turns lines sent up to it into broadcasts for the whole tree.
            if is_root && delivery == Delivery::ToRoot {
                if let Err(error) = node.broadcast(data).await {
                    say(&format!("broadcast failed: {error}"));
                }
            } else if delivery == Delivery::Direct {
                let from = match from {
                    Source::Parent => "parent".to_owned(),
                    Source::Child(id) => id,
                };
                say(&format!("(direct message from {from})"));
            }
        }
        _ => {}
    }
}

fn print_data(data: &Value) {
    match (
        data.get("from").and_then(Value::as_str),
        data.get("text").and_then(Value::as_str),
    ) {
        (Some(from), Some(text)) => say(&format!("<{from}> {text}")),
        _ => say(&format!("data {data}")),
    }
}

fn print_status(info: &NodeInfo) {
    let parent = if info.is_root {
        "none (root)".to_owned()
    } else {
        info.parent
            .clone()
            .unwrap_or_else(|| "none (re-joining)".to_owned())
    };
    say(&format!("parent: {parent}"));
    say(&format!(
        "children ({}): {}",
        info.children.len(),
        info.children.join(" ")
    ));
    say(&format!(
        "candidates: {}, stored requests: {}",
        info.candidates, info.stored
    ));
}

fn print_tree(tree: &Value, depth: usize) {
    if depth == 0 && tree.is_null() {
        say("no tree shared yet");
        return;
    }
    let name = tree.get("name").and_then(Value::as_str).unwrap_or("?");
    say(&format!("{}{name}", "  ".repeat(depth)));
    for child in tree
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        print_tree(child, depth + 1);
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

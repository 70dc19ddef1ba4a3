//! `bootstrap-server`: the webrtc-bootstrap signaling server.
//!
//! Run with `SECRET=<16 or more random characters> bootstrap-server` or
//! `bootstrap-server config.json`; flags and environment variables override the config
//! file. See `--help`.
//! `bootstrap-server token ...` mints a token for the server's token key.

mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use webrtc_bootstrap_server::TlsFiles;
use webrtc_bootstrap_server::admission::caps_for_fd_limit;
use webrtc_bootstrap_server::auth::TokenKey;
use webrtc_bootstrap_server::cluster::{RedisBackplane, RedisOptions};
use webrtc_bootstrap_server::config::IpNet;
use webrtc_bootstrap_server::config::MIN_SECRET_LEN;
use webrtc_bootstrap_server::turn::TurnConfig;
use webrtc_bootstrap_server::{
    AppState, Config, ConfigError, JoinAuth, OverlayConfig, metrics_router, serve,
};

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

/// The webrtc-bootstrap signaling server (wire-compatible with webrtc-bootstrap 4.4.1).
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// JSON config file with the same keys as the flags, in snake_case (see config.example.json).
    config: Option<PathBuf>,
    /// Secret of the default overlay's root route /SECRET/webrtc-bootstrap-root (URL-safe
    /// characters only).
    #[arg(long, env = "SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Accept root secrets shorter than 16 characters, with a warning: anyone who guesses
    /// one becomes the root. For tests and demos only.
    #[arg(long)]
    allow_weak_secret: bool,
    /// A named overlay at /o/NAME/...: NAME=SECRET, or NAME=@FILE to read the secret from
    /// a file (better than argv, which other users can see); NAME= for root tokens only.
    /// Repeatable.
    #[arg(long = "overlay", value_name = "NAME=SECRET")]
    overlays: Vec<String>,
    /// Key of join and root tokens (JWT): a file holding an HS256 shared key (its bytes,
    /// one trailing newline ignored) or an Ed25519 public key in PEM. Turns token auth on.
    #[arg(long, value_name = "PATH")]
    token_key_file: Option<PathBuf>,
    /// Whether /join sockets need a join token [default: open].
    #[arg(long, value_enum)]
    join_auth: Option<JoinAuthArg>,
    /// Let a valid root token create an overlay that is not configured (needs a token key).
    #[arg(long)]
    dynamic_overlays: bool,
    /// Most overlays at once, the default one included [default: 1000].
    #[arg(long)]
    max_overlays: Option<usize>,
    #[command(flatten)]
    turn: TurnFlags,
    /// TCP port to listen on [default: 5000].
    #[arg(long, env = "PORT")]
    port: Option<u16>,
    /// Address to bind [default: 0.0.0.0].
    #[arg(long, env = "HOST")]
    host: Option<String>,
    /// Lifetime of every /join socket, in milliseconds [default: 30000].
    #[arg(long)]
    timeout: Option<u64>,
    /// Seed for deterministic ids (tests only) [default: seeded from the OS].
    #[arg(long)]
    seed: Option<u64>,
    /// Directory served as static files at / [default: none].
    #[arg(long)]
    public: Option<PathBuf>,
    /// Interval of the heartbeat and ping sent to the root, in milliseconds [default: 15000].
    #[arg(long)]
    heartbeat_interval: Option<u64>,
    /// How long the root may leave a ping unanswered, in milliseconds [default: 30000].
    #[arg(long)]
    root_ping_timeout: Option<u64>,
    /// Largest accepted WebSocket message in bytes, from 4096 to 16777216 (16 MiB)
    /// [default: 65536].
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Most /join sockets open at once; more get HTTP 503 [default: what the open-file
    /// limit leaves, at most 20000].
    #[arg(long)]
    max_prospects: Option<usize>,
    /// Most connections waiting for their request (not yet upgraded); more are closed at
    /// once [default: an eighth of the open-file limit, at most 1024].
    #[arg(long)]
    max_pending_connections: Option<usize>,
    /// Most such connections from one client address, an IPv6 /64 counting as one
    /// [default: a quarter of --max-pending-connections]. Raise it behind a proxy or
    /// NAT that many clients share.
    #[arg(long)]
    max_pending_per_client: Option<usize>,
    /// Sustained messages per second per socket [default: 50].
    #[arg(long)]
    rate_per_second: Option<u32>,
    /// Burst of messages per socket above the sustained rate [default: 200].
    #[arg(long)]
    rate_burst: Option<u32>,
    /// Bad messages after which a socket is closed [default: 10].
    #[arg(long)]
    max_bad_messages: Option<u32>,
    /// Join a cluster of instances through this Redis: redis://HOST:PORT/ or
    /// redis+unix:///PATH (a password in the URL is never logged). Without it the
    /// server runs alone, as always.
    #[arg(long, value_name = "URL", env = "REDIS_URL", hide_env_values = true)]
    redis: Option<String>,
    /// The cluster's name: the prefix of its Redis keys and channels, so several
    /// clusters can share one Redis [default: default].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Time to live of a root lease in Redis, in milliseconds: how long the cluster may
    /// take to forget the root of an instance that died [default: 6000].
    #[arg(long, value_name = "MS")]
    root_lease: Option<u64>,
    /// Grace period for sockets to close on shutdown, in milliseconds [default: 5000].
    #[arg(long)]
    shutdown_grace: Option<u64>,
    /// On SIGTERM or SIGINT, how long open /join sockets may go on (new ones get 503)
    /// before every socket is closed with 1001, in milliseconds; 0 closes at once
    /// [default: --timeout]. A second signal exits at once.
    #[arg(long)]
    drain_timeout: Option<u64>,
    /// Client addresses (CIDR, or one address) that may read GET /metrics on the main
    /// port. Repeatable [default: 127.0.0.0/8 and ::1].
    #[arg(long = "metrics-allow", value_name = "CIDR")]
    metrics_allow: Vec<String>,
    /// Also serve GET /metrics, to anyone who reaches it, on this address of its own
    /// (for example 127.0.0.1:9100) [default: none].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve TLS (wss://, https://) with this certificate chain (PEM: the server's
    /// certificate first, then intermediates). Needs --tls-key. SIGHUP reloads both.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most /join sockets open at once per client address (an IPv6 /64 counts as one);
    /// more get HTTP 429 with Retry-After [default: no cap].
    #[arg(long)]
    max_joins_per_ip: Option<usize>,
    /// New /join sockets per second per client address (a token bucket of as many);
    /// more get HTTP 429 with Retry-After [default: no limit].
    #[arg(long)]
    join_rate_per_ip: Option<u32>,
    /// A proxy (CIDR, or one address) whose Forwarded / X-Forwarded-For headers name the
    /// client. Repeatable [default: none; the headers are never trusted].
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// An origin (`https://app.example`) whose browser pages may open sockets; browsers
    /// from other origins get HTTP 403. Repeatable [default: any origin].
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Refuse (403) upgrades without an Origin header (Node and Rust clients send none).
    #[arg(long)]
    require_origin: bool,
    /// Log format [default: text]. Filter with RUST_LOG (default: info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// The flags of `GET /ice-servers` (TURN credentials).
#[derive(Debug, Args)]
struct TurnFlags {
    /// File holding the secret shared with the TURN server (coturn's
    /// static-auth-secret; one trailing newline ignored). Turns on GET /ice-servers,
    /// which hands out ephemeral TURN credentials (needs --turn-uri).
    #[arg(long, value_name = "PATH")]
    turn_secret_file: Option<PathBuf>,
    /// A TURN URI handed out with the credentials, e.g. turn:turn.example.org:3478?transport=udp
    /// or turns:turn.example.org:5349?transport=tcp. Repeatable.
    #[arg(long = "turn-uri", value_name = "URI")]
    turn_uris: Vec<String>,
    /// Lifetime of a TURN credential, in seconds, from 60 to 2592000 [default: 86400].
    #[arg(long, value_name = "SECONDS")]
    turn_ttl: Option<u64>,
    /// A STUN URI handed out beside the TURN ones, e.g. stun:turn.example.org:3478.
    /// Repeatable.
    #[arg(long = "stun-uri", value_name = "URI")]
    stun_uris: Vec<String>,
    /// /ice-servers requests one client address (an IPv6 /64) may make per minute;
    /// more get HTTP 429 [default: 120].
    #[arg(long)]
    ice_servers_per_minute: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a token signed with a key file (for operators and tests; applications mint
    /// their own with any JWT library).
    Token(token::TokenArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum JoinAuthArg {
    /// Anyone may join, as with the JS server.
    Open,
    /// A /join socket needs a join token for its overlay.
    Token,
}

/// One named overlay in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOverlay {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    max_prospects: Option<usize>,
    timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    secret: Option<String>,
    allow_weak_secret: Option<bool>,
    #[serde(default)]
    overlays: BTreeMap<String, FileOverlay>,
    token_key_file: Option<PathBuf>,
    join_auth: Option<JoinAuthArg>,
    dynamic_overlays: Option<bool>,
    max_overlays: Option<usize>,
    turn_secret_file: Option<PathBuf>,
    #[serde(default)]
    turn_uris: Vec<String>,
    turn_ttl: Option<u64>,
    #[serde(default)]
    stun_uris: Vec<String>,
    ice_servers_per_minute: Option<u32>,
    port: Option<u16>,
    host: Option<String>,
    timeout: Option<u64>,
    seed: Option<u64>,
    public: Option<PathBuf>,
    heartbeat_interval: Option<u64>,
    root_ping_timeout: Option<u64>,
    max_frame_bytes: Option<usize>,
    max_prospects: Option<usize>,
    max_pending_connections: Option<usize>,
    max_pending_per_client: Option<usize>,
    rate_per_second: Option<u32>,
    rate_burst: Option<u32>,
    max_bad_messages: Option<u32>,
    shutdown_grace: Option<u64>,
    drain_timeout: Option<u64>,
    metrics_allow: Option<Vec<String>>,
    metrics_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_joins_per_ip: Option<usize>,
    join_rate_per_ip: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    require_origin: Option<bool>,
    log_format: Option<LogFormat>,
    redis: Option<String>,
    cluster: Option<String>,
    root_lease: Option<u64>,
}

/// Everything `main` needs, resolved from flags, environment, file and defaults.
struct Settings {
    addr: SocketAddr,
    /// Where `/metrics` is served on its own, if anywhere.
    metrics_listen: Option<SocketAddr>,
    config: Config,
    log_format: LogFormat,
    /// Overlays whose (allowed) weak secret is warned about once logging is set up.
    weak_secrets: Vec<String>,
    /// The cluster to join, if any, and the root leases' time to live.
    cluster: Option<(RedisOptions, Duration)>,
}

/// Reads `--redis`, `--cluster` and `--root-lease`.
fn cluster_settings(
    redis: Option<String>,
    cluster: Option<String>,
    root_lease: Option<u64>,
) -> anyhow::Result<Option<(RedisOptions, Duration)>> {
    let Some(url) = redis else {
        anyhow::ensure!(
            cluster.is_none() && root_lease.is_none(),
            "--cluster and --root-lease need --redis"
        );
        return Ok(None);
    };
    anyhow::ensure!(
        ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme)),
        "--redis must be a redis://HOST:PORT/ or redis+unix:///PATH URL"
    );
    let name = cluster.unwrap_or_else(|| "default".to_owned());
    anyhow::ensure!(
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--cluster must be 1 to 64 of A-Z a-z 0-9 - _ ."
    );
    let lease = root_lease.unwrap_or(6000);
    anyhow::ensure!(
        (300..=600_000).contains(&lease),
        "--root-lease must be from 300 to 600000 ms"
    );
    let lease = Duration::from_millis(lease);
    Ok(Some((
        RedisOptions {
            url,
            cluster: name,
            instance_lease: lease.max(Duration::from_secs(10)),
        },
        lease,
    )))
}

fn settings(cli: Cli) -> anyhow::Result<Settings> {
    let file = match &cli.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let cluster = cluster_settings(
        cli.redis.clone().or(file.redis.clone()),
        cli.cluster.clone().or(file.cluster.clone()),
        cli.root_lease.or(file.root_lease),
    )?;
    let mut config = Config::new(cli.secret.or(file.secret).unwrap_or_default());
    let ms = Duration::from_millis;
    if let Some(v) = cli.timeout.or(file.timeout) {
        config.timeout = ms(v);
    }
    if let Some(v) = cli.heartbeat_interval.or(file.heartbeat_interval) {
        config.heartbeat_interval = ms(v);
    }
    if let Some(v) = cli.root_ping_timeout.or(file.root_ping_timeout) {
        config.root_ping_timeout = ms(v);
    }
    if let Some(v) = cli.shutdown_grace.or(file.shutdown_grace) {
        config.shutdown_grace = ms(v);
    }
    config.drain_timeout = cli
        .drain_timeout
        .or(file.drain_timeout)
        .map_or(config.timeout, ms);
    let metrics_allow = if cli.metrics_allow.is_empty() {
        file.metrics_allow.unwrap_or_default()
    } else {
        cli.metrics_allow
    };
    if !metrics_allow.is_empty() {
        config.metrics_allow = parse_nets("--metrics-allow", &metrics_allow)?;
    }
    config.max_joins_per_ip = cli.max_joins_per_ip.or(file.max_joins_per_ip);
    config.join_rate_per_ip = cli.join_rate_per_ip.or(file.join_rate_per_ip);
    let proxies = if cli.trusted_proxies.is_empty() {
        file.trusted_proxies.unwrap_or_default()
    } else {
        cli.trusted_proxies
    };
    config.trusted_proxies = parse_nets("--trusted-proxy", &proxies)?;
    config.allowed_origins = if cli.allowed_origins.is_empty() {
        file.allowed_origins.unwrap_or_default()
    } else {
        cli.allowed_origins
    };
    config.require_origin = cli.require_origin || file.require_origin.unwrap_or(false);
    config.tls = match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("give both --tls-cert and --tls-key (tls_cert and tls_key), or neither"),
    };
    config.seed = cli.seed.or(file.seed);
    config.public = cli.public.or(file.public);
    if let Some(v) = cli.max_frame_bytes.or(file.max_frame_bytes) {
        config.max_frame_bytes = v;
    }
    // Caps that fit the open-file limit (raised to the hard limit at start), so that
    // `accept` never runs out of descriptors and the root and `/healthz` get in.
    let fd = caps_for_fd_limit(fd_limit(), FD_RESERVE);
    config.max_prospects = config.max_prospects.min(fd.prospects);
    config.max_pending_connections = config.max_pending_connections.min(fd.pending);
    config.max_pending_per_client = config.max_pending_per_client.min(fd.pending_per_client);
    if let Some(v) = cli.max_prospects.or(file.max_prospects) {
        config.max_prospects = v;
    }
    if let Some(v) = cli.max_pending_connections.or(file.max_pending_connections) {
        config.max_pending_connections = v;
    }
    if let Some(v) = cli.max_pending_per_client.or(file.max_pending_per_client) {
        config.max_pending_per_client = v;
    }
    if let Some(v) = cli.rate_per_second.or(file.rate_per_second) {
        config.rate_per_second = v;
    }
    if let Some(v) = cli.rate_burst.or(file.rate_burst) {
        config.rate_burst = v;
    }
    if let Some(v) = cli.max_bad_messages.or(file.max_bad_messages) {
        config.max_bad_messages = v;
    }
    for (name, overlay) in file.overlays {
        let secret = match (overlay.secret, overlay.secret_file) {
            (Some(_), Some(_)) => bail!("overlay {name:?}: give secret or secret_file, not both"),
            (Some(secret), None) => secret,
            (None, Some(path)) => read_secret(&path)?,
            (None, None) => String::new(),
        };
        let overlay = OverlayConfig {
            secret,
            max_prospects: overlay.max_prospects,
            timeout: overlay.timeout.map(ms),
        };
        config.overlays.insert(name, overlay);
    }
    for flag in &cli.overlays {
        let (name, secret) = parse_overlay_flag(flag)?;
        // A flag overrides the secret of a file entry and keeps its limits.
        config.overlays.entry(name).or_default().secret = secret;
    }
    if let Some(path) = cli.token_key_file.or(file.token_key_file) {
        let key = TokenKey::from_file(&path)
            .with_context(|| format!("cannot use the token key file {}", path.display()))?;
        config.token_key = Some(Arc::new(key));
    }
    if let Some(auth) = cli.join_auth.or(file.join_auth) {
        config.join_auth = match auth {
            JoinAuthArg::Open => JoinAuth::Open,
            JoinAuthArg::Token => JoinAuth::Token,
        };
    }
    config.dynamic_overlays = cli.dynamic_overlays || file.dynamic_overlays.unwrap_or(false);
    if let Some(v) = cli.max_overlays.or(file.max_overlays) {
        config.max_overlays = v;
    }
    config.turn = turn_settings(
        cli.turn,
        file.turn_secret_file,
        &file.turn_uris,
        &file.stun_uris,
        file.turn_ttl,
        file.ice_servers_per_minute,
    )?;
    let mut problems = config.validate().err().map_or_else(Vec::new, |e| e.0);
    let weak_secrets: Vec<String> = config
        .weak_secrets()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let allow_weak = cli.allow_weak_secret || file.allow_weak_secret.unwrap_or(false);
    if !weak_secrets.is_empty() && !allow_weak {
        // Names only: the secrets themselves are never printed.
        problems.push(format!(
            "the secret of overlay {} is shorter than {MIN_SECRET_LEN} characters: use a \
             long random one, or pass --allow-weak-secret (tests and demos only)",
            weak_secrets
                .iter()
                .map(|name| format!("{name:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(ConfigError(problems).into());
    }
    let host = cli
        .host
        .or(file.host)
        .unwrap_or_else(|| "0.0.0.0".to_owned());
    let port = cli.port.or(file.port).unwrap_or(5000);
    let ip = host
        .parse()
        .with_context(|| format!("--host {host:?} is not an IP address"))?;
    Ok(Settings {
        addr: SocketAddr::new(ip, port),
        metrics_listen: cli.metrics_listen.or(file.metrics_listen),
        config,
        log_format: cli
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        weak_secrets,
        cluster,
    })
}

/// Descriptors kept out of the caps: the listener, the root, `/healthz` and metrics
/// probes, the log, files served, and the runtime's own.
const FD_RESERVE: u64 = 64;

/// The open-file limit, raised to the hard limit first (the soft limit a service
/// manager sets, often 1024, is what most servers run out of).
fn fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(_) => rlimit::Resource::NOFILE
            .get()
            .map_or(1024, |(soft, _)| soft),
    }
}

/// Address ranges: `10.0.0.0/8`, `fd00::/8`, or one address.
fn parse_nets(flag: &str, values: &[String]) -> anyhow::Result<Vec<IpNet>> {
    values
        .iter()
        .map(|value| {
            value
                .parse::<IpNet>()
                .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
                .with_context(|| format!("{flag} {value:?} is not an address range (CIDR)"))
        })
        .collect()
}

/// `NAME=SECRET` or `NAME=@FILE` (the secret read from the file).
fn parse_overlay_flag(flag: &str) -> anyhow::Result<(String, String)> {
    let Some((name, secret)) = flag.split_once('=') else {
        // Not echoed: the value may be a secret.
        bail!("--overlay must be NAME=SECRET or NAME=@FILE");
    };
    let secret = match secret.strip_prefix('@') {
        Some(path) => read_secret(Path::new(path))?,
        None => secret.to_owned(),
    };
    Ok((name.to_owned(), secret))
}

/// The TURN settings: flags replace the file's lists, not extend them.
fn turn_settings(
    cli: TurnFlags,
    secret_file: Option<PathBuf>,
    turn_uris: &[String],
    stun_uris: &[String],
    ttl: Option<u64>,
    per_minute: Option<u32>,
) -> anyhow::Result<Option<TurnConfig>> {
    let pick = |flags: Vec<String>, file: &[String]| {
        if flags.is_empty() {
            file.to_vec()
        } else {
            flags
        }
    };
    let uris = pick(cli.turn_uris, turn_uris);
    let stun_uris = pick(cli.stun_uris, stun_uris);
    let Some(path) = cli.turn_secret_file.or(secret_file) else {
        if !uris.is_empty() {
            bail!("--turn-uri needs --turn-secret-file (the secret shared with the TURN server)");
        }
        return Ok(None);
    };
    let mut turn = TurnConfig::new(read_secret(&path)?, uris);
    turn.stun_uris = stun_uris;
    if let Some(seconds) = cli.turn_ttl.or(ttl) {
        turn.ttl = Duration::from_secs(seconds);
    }
    if let Some(rate) = cli.ice_servers_per_minute.or(per_minute) {
        turn.requests_per_minute = rate;
    }
    Ok(Some(turn))
}

/// A secret kept in a file: its content, one trailing newline ignored.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// What `main` sets up once from the settings (listeners, the cluster, logging): a
/// reload that changes it is told it needs a restart. No `Debug`: it holds the Redis
/// URL, which may hold a password.
struct Fixed {
    addr: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    /// The Redis URL, the cluster's name and the root lease.
    cluster: Option<(String, String, Duration)>,
    log_format: LogFormat,
}

impl Fixed {
    fn of(settings: &Settings) -> Self {
        Self {
            addr: settings.addr,
            metrics_listen: settings.metrics_listen,
            cluster: settings
                .cluster
                .as_ref()
                .map(|(redis, lease)| (redis.url.clone(), redis.cluster.clone(), *lease)),
            log_format: settings.log_format,
        }
    }

    /// The names of the settings that differ in `new` (never their values).
    fn changed(&self, new: &Self) -> Vec<&'static str> {
        [
            ("host and port", self.addr != new.addr),
            ("metrics_listen", self.metrics_listen != new.metrics_listen),
            ("redis, cluster and root_lease", self.cluster != new.cluster),
            ("log_format", self.log_format != new.log_format),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

/// Warns about each overlay whose root secret is weak (allowed by
/// `--allow-weak-secret`), by name only.
fn warn_weak_secrets(overlays: &[String]) {
    for overlay in overlays {
        tracing::warn!(
            overlay = %overlay,
            min_len = MIN_SECRET_LEN,
            "WEAK SECRET: this overlay's root secret is short enough to guess, and whoever \
             guesses it becomes the root (allowed by --allow-weak-secret)"
        );
    }
}

/// On every SIGHUP, reads the flags, environment and config file again and applies
/// them (`AppState::reload`): secrets, overlays and their limits, the token key, the
/// socket limits, origins, the metrics allow-list, TLS files and the rest. What needs a
/// restart (the listen addresses, the cluster, the log format, TLS on or off, the
/// byte budgets and pending-connection caps) is logged by name and keeps its running
/// value. A configuration or TLS file that cannot be used leaves everything as it
/// was, and the log says why. Secrets never reach the log.
async fn reload_on_sighup(state: AppState, fixed: Fixed) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot watch SIGHUP: no reload");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // The same flags, environment and config file as at start, read again.
            let reloaded = Cli::try_parse()
                .map_err(anyhow::Error::from)
                .and_then(settings);
            let settings = match reloaded {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::error!(
                        error = %format!("{error:#}"),
                        "configuration NOT reloaded: the running one stays in use"
                    );
                    continue;
                }
            };
            let mut restart = fixed.changed(&Fixed::of(&settings));
            match state.reload(&settings.config) {
                Ok(reloaded) => {
                    warn_weak_secrets(&settings.weak_secrets);
                    restart.extend(reloaded.restart);
                    tracing::info!(
                        added = ?reloaded.added,
                        removed = ?reloaded.removed,
                        secret_changed = ?reloaded.secret_changed,
                        "configuration reloaded: new roots must present the current secrets; \
                         new sockets get the current limits"
                    );
                    if !restart.is_empty() {
                        tracing::warn!(
                            settings = %restart.join(", "),
                            "these settings changed but apply only after a restart"
                        );
                    }
                }
                Err(error) => tracing::error!(
                    %error,
                    "configuration NOT reloaded: the running one stays in use"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    drop((state, fixed));
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Completes on the first SIGINT or SIGTERM (which starts the drain); a second one
/// exits the process at once.
async fn shutdown_signal() {
    stop_signal().await;
    tracing::info!("shutdown signal received");
    tokio::spawn(async {
        stop_signal().await;
        tracing::warn!("second shutdown signal: exiting at once");
        std::process::exit(1);
    });
}

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EX_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    if let Some(Command::Token(args)) = cli.command.take() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        return match token::mint(&args, now) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bootstrap-server token: {error:#}");
                ExitCode::from(EX_USAGE)
            }
        };
    }
    let settings = match settings(cli) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bootstrap-server: {error:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(settings.log_format);
    warn_weak_secrets(&settings.weak_secrets);
    let fixed = Fixed::of(&settings);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bootstrap-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(settings.addr).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "bootstrap-server: cannot listen on {}: {error}",
                    settings.addr
                );
                return ExitCode::from(EX_USAGE);
            }
        };
        tracing::info!(config = ?settings.config, "starting");
        let state = match settings.cluster {
            None => AppState::new(settings.config),
            Some((redis, root_lease)) => {
                tracing::info!(cluster = %redis.cluster, ?root_lease, "joining the cluster");
                match RedisBackplane::connect(redis).await {
                    Ok(backplane) => {
                        AppState::clustered(settings.config, Arc::new(backplane), root_lease).await
                    }
                    Err(error) => Err(error.into()),
                }
            }
        };
        let state = match state {
            Ok(state) => state,
            Err(error @ webrtc_bootstrap_server::Error::Backplane(_)) => {
                eprintln!("bootstrap-server: {error}");
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("bootstrap-server: {error}");
                return ExitCode::from(EX_USAGE);
            }
        };
        if let Some(addr) = settings.metrics_listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(error) => {
                    eprintln!("bootstrap-server: cannot listen on {addr} for metrics: {error}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            tracing::info!(%addr, "serving /metrics");
            let stop = state.shutdown_token().cancelled_owned();
            let app = metrics_router(state.clone());
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::warn!(%error, "the metrics listener failed");
                }
            });
        }
        tokio::spawn(reload_on_sighup(state.clone(), fixed));
        // Spawned, not run on this (non-worker) thread: the accept loop then spawns
        // each connection's task on its own worker's queue instead of waking a worker
        // for every connection.
        let served = tokio::spawn(serve(listener, state, shutdown_signal())).await;
        match served {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("bootstrap-server: {error}");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("bootstrap-server: the server task failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

//! The Redis backplane: pub/sub for frames (one channel per instance, one for root
//! events, no pattern subscription), keys with expiry for the instance tags and root
//! leases, Lua scripts for the compare-and-set steps.
//!
//! Publishing never waits: frames go through one bounded queue to one task that sends
//! them in order, in pipelines; when Redis is down they are dropped and counted. The
//! subscription reconnects by itself, and the leases are taken again when Redis comes
//! back empty.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bootstrap_protocol::IdGenerator;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::backplane::{Backplane, BackplaneError, BackplaneStats};
use crate::cluster::lease::{InstanceTag, RootAt};

/// Frames waiting to be published, at most; more are dropped and counted.
const PUBLISH_QUEUE: usize = 8192;

/// Bytes of the frames waiting to be published, at most (with 64 KiB frames the count
/// alone would allow 512 MiB); more are dropped and counted.
const PUBLISH_QUEUE_BYTES: usize = 16 << 20;

/// Frames sent in one pipeline, at most.
const BATCH: usize = 256;

/// How long a Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between attempts to subscribe again.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);

/// Claims a root lease whoever holds it, with the next epoch; answers `"epoch old"`.
const CLAIM: &str = r"
local e = redis.call('INCR', KEYS[2])
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
return tostring(e) .. ' ' .. (old or '')
";

/// Takes a lease only if nobody holds it, with the next epoch; the epoch, or '' when
/// the lease is held.
const CLAIM_FREE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return ''
end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
return tostring(e)
";

/// Renews a lease if it still holds our value, or sets it again if Redis lost it
/// (keeping the epoch counter above it); 0 when someone else holds it.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if KEYS[2] and tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then
    redis.call('SET', KEYS[2], ARGV[3])
  end
  return 1
end
return 0
";

/// Deletes a lease if it still holds our value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Settings of a [`RedisBackplane`]. Its `Debug` never shows the URL (it may hold a
/// password).
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://host:port/` or `redis+unix:///path`.
    pub url: String,
    /// The cluster's name: the prefix of its keys and channels, so clusters can share
    /// one Redis.
    pub cluster: String,
    /// Time to live of the instance tag's lease (renewed every third of it).
    pub instance_lease: Duration,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("instance_lease", &self.instance_lease)
            .finish()
    }
}

/// The [`Backplane`] on Redis.
pub struct RedisBackplane {
    client: redis::Client,
    prefix: String,
    instance_lease: Duration,
    conn: ConnectionManager,
    reachable: Arc<AtomicBool>,
    started: OnceLock<Started>,
    scripts: Scripts,
}

struct Scripts {
    claim: redis::Script,
    claim_free: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

struct Started {
    queue: mpsc::Sender<Outbound>,
    /// Bytes in `queue`, against [`PUBLISH_QUEUE_BYTES`].
    queued: Arc<AtomicUsize>,
    stats: Arc<BackplaneStats>,
}

/// A frame on its way to Redis.
struct Outbound {
    channel: String,
    frame: Vec<u8>,
    /// Counted (published or undeliverable); broadcasts are not.
    counted: bool,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never shown.
        f.debug_struct("RedisBackplane")
            .field("prefix", &self.prefix)
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn unreachable(error: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unreachable(error.to_string())
}

impl RedisBackplane {
    /// Connects to Redis (which must be reachable now; later outages are survived).
    ///
    /// # Errors
    /// An invalid URL, or Redis unreachable.
    pub async fn connect(options: RedisOptions) -> Result<Self, BackplaneError> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| BackplaneError::Protocol(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT * 3,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(unreachable)?
        .map_err(unreachable)?;
        Ok(Self {
            client,
            prefix: format!("webrtc-bootstrap:{}", options.cluster),
            instance_lease: options.instance_lease,
            conn,
            reachable: Arc::new(AtomicBool::new(true)),
            started: OnceLock::new(),
            scripts: Scripts {
                claim: redis::Script::new(CLAIM),
                claim_free: redis::Script::new(CLAIM_FREE),
                renew: redis::Script::new(RENEW),
                release: redis::Script::new(RELEASE),
            },
        })
    }

    /// Runs one of the two claim scripts for `overlay`'s lease, for `holder`; its answer.
    async fn run_claim(
        &self,
        script: &redis::Script,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> Result<String, BackplaneError> {
        let (key, epoch_key) = (self.root_key(overlay), self.epoch_key(overlay));
        let mut conn = self.conn.clone();
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.run(
            script
                .key(&key)
                .key(&epoch_key)
                .arg(holder.to_string())
                .arg(ttl)
                .invoke_async(&mut conn),
        )
        .await
    }

    fn channel(&self, tag: InstanceTag) -> String {
        format!("{}:to:{tag}", self.prefix)
    }

    fn broadcast_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn root_key(&self, overlay: &str) -> String {
        format!("{}:root:{overlay}", self.prefix)
    }

    fn epoch_key(&self, overlay: &str) -> String {
        format!("{}:root-epoch:{overlay}", self.prefix)
    }

    /// Runs a command with the timeout, noting whether Redis answered.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackplaneError> {
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, invocation).await;
        let answer = match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error))
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_timeout()
                    || error.is_connection_refusal() =>
            {
                Err(unreachable(error))
            }
            Ok(Err(error)) => Err(BackplaneError::Protocol(error.to_string())),
            Err(elapsed) => Err(unreachable(elapsed)),
        };
        self.reachable.store(
            !matches!(answer, Err(BackplaneError::Unreachable(_))),
            Ordering::Release,
        );
        answer
    }

    fn send(&self, outbound: Outbound) -> bool {
        let Some(started) = self.started.get() else {
            return false;
        };
        let len = outbound.frame.len();
        let fits = started
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + len <= PUBLISH_QUEUE_BYTES).then_some(used + len)
            })
            .is_ok();
        if fits && started.queue.try_send(outbound).is_ok() {
            return true;
        }
        if fits {
            started.queued.fetch_sub(len, Ordering::AcqRel);
        }
        BackplaneStats::bump(&started.stats.dropped_unreachable);
        false
    }
}

/// The lease of `holder` with the epoch a claim script answered (`answer`, for errors).
fn lease_of(holder: InstanceTag, epoch: &str, answer: &str) -> Result<RootAt, BackplaneError> {
    let epoch = epoch
        .parse()
        .map_err(|_| BackplaneError::Protocol(format!("claim answered {answer:?}")))?;
    Ok(RootAt {
        instance: holder,
        epoch,
    })
}

impl Backplane for RedisBackplane {
    fn start(
        &self,
        inbox: mpsc::Sender<Vec<u8>>,
        stats: Arc<BackplaneStats>,
    ) -> BoxFuture<'_, Result<InstanceTag, BackplaneError>> {
        Box::pin(async move {
            let mut ids =
                IdGenerator::from_os().map_err(|e| BackplaneError::Protocol(e.to_string()))?;
            let ttl = u64::try_from(self.instance_lease.as_millis()).unwrap_or(u64::MAX);
            let (tag, nonce, key) = 'found: {
                for _ in 0..64 {
                    let draw = ids.next_id();
                    let tag = InstanceTag(draw.tag());
                    let key = format!("{}:instance:{tag}", self.prefix);
                    let nonce = draw.to_string();
                    let mut conn = self.conn.clone();
                    let set: Option<String> = self
                        .run(
                            redis::cmd("SET")
                                .arg(&key)
                                .arg(&nonce)
                                .arg("NX")
                                .arg("PX")
                                .arg(ttl)
                                .query_async(&mut conn),
                        )
                        .await?;
                    if set.is_some() {
                        break 'found (tag, nonce, key);
                    }
                }
                return Err(BackplaneError::NoFreeTag);
            };
            let (queue, rx) = mpsc::channel(PUBLISH_QUEUE);
            let queued = Arc::new(AtomicUsize::new(0));
            let started = Started {
                queue,
                queued: Arc::clone(&queued),
                stats: Arc::clone(&stats),
            };
            if self.started.set(started).is_err() {
                return Err(BackplaneError::Protocol("started twice".into()));
            }
            tokio::spawn(publisher(
                self.conn.clone(),
                rx,
                queued,
                Arc::clone(&stats),
                Arc::clone(&self.reachable),
            ));
            tokio::spawn(subscriber(
                self.client.clone(),
                vec![self.channel(tag), self.broadcast_channel()],
                inbox,
                stats,
                Arc::clone(&self.reachable),
            ));
            tokio::spawn(keep_tag(
                self.conn.clone(),
                self.scripts.renew.clone(),
                key,
                nonce,
                self.instance_lease,
                Arc::clone(&self.reachable),
            ));
            Ok(tag)
        })
    }

    fn publish(&self, to: InstanceTag, frame: Vec<u8>) -> bool {
        self.send(Outbound {
            channel: self.channel(to),
            frame,
            counted: true,
        })
    }

    fn broadcast(&self, frame: Vec<u8>) -> bool {
        self.send(Outbound {
            channel: self.broadcast_channel(),
            frame,
            counted: false,
        })
    }

    fn claim_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(RootAt, Option<RootAt>), BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            let answer = self
                .run_claim(&self.scripts.claim, &overlay, holder, ttl)
                .await?;
            let (epoch, old) = answer
                .split_once(' ')
                .ok_or_else(|| BackplaneError::Protocol(format!("claim answered {answer:?}")))?;
            Ok((lease_of(holder, epoch, &answer)?, RootAt::parse(old)))
        })
    }

    fn claim_free_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<RootAt>, BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            let answer = self
                .run_claim(&self.scripts.claim_free, &overlay, holder, ttl)
                .await?;
            if answer.is_empty() {
                return Ok(None);
            }
            lease_of(holder, &answer, &answer).map(Some)
        })
    }

    fn renew_root(
        &self,
        overlay: &str,
        at: RootAt,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BackplaneError>> {
        let (key, epoch_key) = (self.root_key(overlay), self.epoch_key(overlay));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let held: i64 = self
                .run(
                    self.scripts
                        .renew
                        .key(&key)
                        .key(&epoch_key)
                        .arg(at.value())
                        .arg(ttl)
                        .arg(at.epoch)
                        .invoke_async(&mut conn),
                )
                .await?;
            Ok(held == 1)
        })
    }

    fn release_root(&self, overlay: &str, at: RootAt) -> BoxFuture<'_, Result<(), BackplaneError>> {
        let key = self.root_key(overlay);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = self
                .run(
                    self.scripts
                        .release
                        .key(&key)
                        .arg(at.value())
                        .invoke_async(&mut conn),
                )
                .await?;
            Ok(())
        })
    }

    fn roots(
        &self,
        overlays: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<RootAt>>, BackplaneError>> {
        Box::pin(async move {
            if overlays.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = overlays.iter().map(|o| self.root_key(o)).collect();
            let mut conn = self.conn.clone();
            let values: Vec<Option<String>> = self
                .run(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
                .await?;
            Ok(values
                .iter()
                .map(|v| v.as_deref().and_then(RootAt::parse))
                .collect())
        })
    }

    fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }
}

/// Sends queued frames in order, in pipelines, counting what no instance took.
async fn publisher(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
    stats: Arc<BackplaneStats>,
    reachable: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let bytes: usize = batch.iter().map(|o| o.frame.len()).sum();
        queued.fetch_sub(bytes, Ordering::AcqRel);
        let mut pipe = redis::pipe();
        for outbound in &batch {
            pipe.cmd("PUBLISH")
                .arg(&outbound.channel)
                .arg(&outbound.frame);
        }
        let answer: Result<redis::RedisResult<Vec<i64>>, _> =
            tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut conn)).await;
        match answer {
            Ok(Ok(receivers)) => {
                reachable.store(true, Ordering::Release);
                for (outbound, receivers) in batch.iter().zip(receivers) {
                    if outbound.counted {
                        BackplaneStats::bump(if receivers > 0 {
                            &stats.published
                        } else {
                            &stats.undeliverable
                        });
                    }
                }
            }
            failed => {
                reachable.store(false, Ordering::Release);
                let lost = batch.iter().filter(|o| o.counted).count();
                for _ in 0..lost {
                    BackplaneStats::bump(&stats.dropped_unreachable);
                }
                match failed {
                    Ok(Err(error)) => debug!(%error, lost, "publish failed; frames dropped"),
                    _ => debug!(lost, "publish timed out; frames dropped"),
                }
            }
        }
        batch.clear();
    }
}

/// Subscribes to this instance's channels and hands what arrives to the inbox;
/// subscribes again whenever the connection breaks.
async fn subscriber(
    client: redis::Client,
    channels: Vec<String>,
    inbox: mpsc::Sender<Vec<u8>>,
    stats: Arc<BackplaneStats>,
    reachable: Arc<AtomicBool>,
) {
    let mut logged = false;
    loop {
        if inbox.is_closed() {
            return;
        }
        let subscribed = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            for channel in &channels {
                pubsub.subscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                reachable.store(false, Ordering::Release);
                if !logged {
                    match failed {
                        Ok(Err(error)) => {
                            warn!(%error, "cannot subscribe to the cluster broker; retrying")
                        }
                        _ => warn!("subscribing to the cluster broker timed out; retrying"),
                    }
                    logged = true;
                }
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                continue;
            }
        };
        if logged {
            info!("subscribed to the cluster broker again");
        }
        reachable.store(true, Ordering::Release);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            // Root events (the broadcast channel, subscribed last) are not counted.
            if channels
                .last()
                .is_none_or(|all| message.get_channel_name() != all)
            {
                BackplaneStats::bump(&stats.received);
            }
            if inbox
                .try_send(message.get_payload_bytes().to_vec())
                .is_err()
            {
                BackplaneStats::bump(&stats.undeliverable);
            }
        }
        reachable.store(false, Ordering::Release);
        warn!("lost the subscription to the cluster broker; retrying");
        logged = true;
        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
    }
}

/// Renews the instance tag's lease every third of its time to live (taking it again
/// if Redis lost it); ends with the process.
async fn keep_tag(
    mut conn: ConnectionManager,
    renew: redis::Script,
    key: String,
    nonce: String,
    ttl: Duration,
    reachable: Arc<AtomicBool>,
) {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let renewed = tokio::time::timeout(
            COMMAND_TIMEOUT,
            renew
                .key(&key)
                .arg(&nonce)
                .arg(ms)
                .arg(0)
                .invoke_async::<i64>(&mut conn),
        )
        .await;
        match renewed {
            Ok(Ok(1)) => reachable.store(true, Ordering::Release),
            Ok(Ok(_)) => warn!(%key, "another instance took this instance's tag; ids may clash"),
            Ok(Err(error)) => {
                reachable.store(false, Ordering::Release);
                debug!(%error, "cannot renew the instance tag now");
            }
            Err(_) => reachable.store(false, Ordering::Release),
        }
    }
}

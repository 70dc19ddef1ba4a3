//! What the server decides about a request before any upgrade, IO-free: who the client
//! is behind trusted proxies ([`client_ip`]), whether its `Origin` may open sockets
//! ([`origin_allowed`]), and whether it may open one more `/join` socket now
//! ([`JoinLimiter`]: open sockets and a token bucket per client, an IPv6 /64 counting
//! as one client).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::admission::client_key;

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// address the proxies recorded (`Forwarded: for=`, else `X-Forwarded-For`), read from
/// the right and skipping trusted proxies, since only the entries they appended can be
/// believed. With no usable entry, the peer itself.
pub(crate) fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    x_forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let from_forwarded: Vec<IpAddr> = forwarded
        .flat_map(|value| value.split(','))
        .filter_map(forwarded_for)
        .collect();
    let hops = if from_forwarded.is_empty() {
        x_forwarded_for
            .flat_map(|value| value.split(','))
            .filter_map(|item| parse_addr(item.trim()))
            .collect()
    } else {
        from_forwarded
    };
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or_else(|| hops.first())
        .copied()
        .unwrap_or(peer)
}

/// The address in one element of a `Forwarded` header (RFC 7239), if it has a
/// `for=` with an address (not `unknown` or an obfuscated name).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_addr(value.trim().trim_matches('"')))?
    })
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_addr(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Whether a request with `origin` (the `Origin` header, if any) may open a socket.
/// Browsers always send `Origin` on a WebSocket upgrade; Node and Rust clients do not,
/// and pass unless `require` is set. An empty `allowed` list allows every origin.
pub(crate) fn origin_allowed(origin: Option<&str>, allowed: &[String], require: bool) -> bool {
    match origin {
        None => !require,
        Some(origin) => {
            let origin = origin.trim().trim_end_matches('/');
            allowed.is_empty()
                || allowed
                    .iter()
                    .any(|ok| ok.trim_end_matches('/').eq_ignore_ascii_case(origin))
        }
    }
}

/// Limits on new `/join` sockets per client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JoinLimits {
    /// Most open `/join` sockets per client.
    pub(crate) max_open: Option<usize>,
    /// New `/join` sockets per second per client (a bucket of as many).
    pub(crate) per_second: Option<u32>,
}

/// Why a client may not open a `/join` socket now, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// It has `max_open` open.
    TooManyOpen,
    /// It is over its rate; a token comes back after this long.
    TooFast(Duration),
    /// The limiter tracks as many clients as it may.
    Busy,
}

/// Per client: open `/join` sockets and the rate bucket.
#[derive(Debug, Clone, Copy)]
struct Client {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// Open `/join` sockets and a token bucket per client (an IPv6 /64 is one client). A
/// client is remembered while it has a socket open or its bucket is not full again, and
/// at most `max_clients` at once.
#[derive(Debug)]
pub(crate) struct JoinLimiter {
    clients: HashMap<IpAddr, Client>,
    max_clients: usize,
}

impl JoinLimiter {
    /// A limiter that remembers at most `max_clients` clients.
    pub(crate) fn new(max_clients: usize) -> Self {
        Self {
            clients: HashMap::new(),
            max_clients,
        }
    }

    /// Counts a new `/join` socket of `ip` at `now`, unless `limits` refuse it. Each
    /// admitted socket must be [`release`](Self::release)d once.
    pub(crate) fn admit(
        &mut self,
        ip: IpAddr,
        limits: JoinLimits,
        now: Instant,
    ) -> Result<(), Limited> {
        if limits.max_open.is_none() && limits.per_second.is_none() {
            return Ok(());
        }
        let key = client_key(ip);
        if !self.clients.contains_key(&key) && self.clients.len() >= self.max_clients {
            self.forget_idle(limits, now);
            if self.clients.len() >= self.max_clients {
                return Err(Limited::Busy);
            }
        }
        let burst = f64::from(limits.per_second.unwrap_or(0));
        let client = self.clients.entry(key).or_insert(Client {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if limits.max_open.is_some_and(|max| client.open >= max) {
            return Err(Limited::TooManyOpen);
        }
        if let Some(rate) = limits.per_second {
            let rate = f64::from(rate);
            let elapsed = now.duration_since(client.refilled).as_secs_f64();
            client.tokens = (client.tokens + elapsed * rate).min(rate);
            client.refilled = now;
            if client.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - client.tokens) / rate);
                return Err(Limited::TooFast(wait));
            }
            client.tokens -= 1.0;
        }
        client.open += 1;
        Ok(())
    }

    /// A `/join` socket of `ip` admitted by [`admit`](Self::admit) has ended.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        let key = client_key(ip);
        if let Some(client) = self.clients.get_mut(&key) {
            client.open = client.open.saturating_sub(1);
        }
    }

    /// Forgets clients with nothing open whose bucket is full again.
    fn forget_idle(&mut self, limits: JoinLimits, now: Instant) {
        let rate = f64::from(limits.per_second.unwrap_or(0));
        self.clients.retain(|_, client| {
            let tokens = client.tokens + now.duration_since(client.refilled).as_secs_f64() * rate;
            client.open > 0 || tokens < rate
        });
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("CIDR")).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let none = std::iter::empty::<&str>;
        // Not from a trusted proxy: the headers are ignored.
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                none(),
                ["198.51.100.1"].into_iter(),
                &trusted
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), none(), ["198.51.100.1"].into_iter(), &[]),
            ip("10.0.0.1"),
            "nothing is trusted by default"
        );
        // From the proxy: the rightmost address that is not a trusted proxy.
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                none(),
                ["6.6.6.6, 198.51.100.1", "10.0.0.2"].into_iter(),
                &trusted
            ),
            ip("198.51.100.1"),
            "a spoofed leftmost entry is not believed"
        );
        assert_eq!(
            client_ip(
                ip("fd00::1"),
                [r#"for=192.0.2.60;proto=https, for="[2001:db8::17]:4711""#].into_iter(),
                ["6.6.6.6"].into_iter(),
                &trusted
            ),
            ip("2001:db8::17"),
            "Forwarded first, IPv6 in brackets with a port"
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                ["for=unknown"].into_iter(),
                ["192.0.2.1:80"].into_iter(),
                &trusted
            ),
            ip("192.0.2.1"),
            "no address in Forwarded: X-Forwarded-For, with a port"
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                none(),
                ["garbage", ""].into_iter(),
                &trusted
            ),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), none(), ["10.0.0.7"].into_iter(), &trusted),
            ip("10.0.0.7"),
            "only proxies: the first"
        );
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(Some("https://app.example"), &allowed, false));
        assert!(origin_allowed(
            Some("HTTPS://APP.EXAMPLE/"),
            &allowed,
            false
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            &allowed,
            false
        ));
        assert!(!origin_allowed(Some("null"), &allowed, false));
        assert!(
            origin_allowed(None, &allowed, false),
            "Node and Rust clients"
        );
        assert!(!origin_allowed(None, &allowed, true));
        assert!(origin_allowed(Some("https://any"), &[], false));
        assert!(!origin_allowed(None, &[], true));
    }

    #[test]
    fn open_sockets_per_client_with_ipv6_per_64() {
        let limits = JoinLimits {
            max_open: Some(2),
            per_second: None,
        };
        let now = Instant::now();
        let mut limiter = JoinLimiter::new(100);
        let a = ip("2001:db8:1:2::1");
        let same_64 = ip("2001:db8:1:2:ffff::9");
        let other_64 = ip("2001:db8:1:3::1");
        assert_eq!(limiter.admit(a, limits, now), Ok(()));
        assert_eq!(limiter.admit(same_64, limits, now), Ok(()));
        assert_eq!(limiter.admit(a, limits, now), Err(Limited::TooManyOpen));
        assert_eq!(limiter.admit(other_64, limits, now), Ok(()));
        assert_eq!(limiter.admit(ip("192.0.2.1"), limits, now), Ok(()));
        assert_eq!(limiter.admit(ip("192.0.2.1"), limits, now), Ok(()));
        assert_eq!(
            limiter.admit(ip("192.0.2.1"), limits, now),
            Err(Limited::TooManyOpen)
        );
        assert_eq!(limiter.admit(ip("192.0.2.2"), limits, now), Ok(()));
        limiter.release(same_64);
        assert_eq!(limiter.admit(a, limits, now), Ok(()));
    }

    #[test]
    fn a_token_bucket_per_client() {
        let limits = JoinLimits {
            max_open: None,
            per_second: Some(2),
        };
        let start = Instant::now();
        let mut limiter = JoinLimiter::new(100);
        let a = ip("192.0.2.1");
        assert_eq!(limiter.admit(a, limits, start), Ok(()));
        assert_eq!(limiter.admit(a, limits, start), Ok(()));
        assert_eq!(
            limiter.admit(a, limits, start),
            Err(Limited::TooFast(Duration::from_millis(500)))
        );
        assert_eq!(limiter.admit(ip("192.0.2.2"), limits, start), Ok(()));
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.admit(a, limits, later), Ok(()));
        assert!(matches!(
            limiter.admit(a, limits, later),
            Err(Limited::TooFast(_))
        ));
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_are_forgotten() {
        let limits = JoinLimits {
            max_open: Some(5),
            per_second: Some(1),
        };
        let start = Instant::now();
        let mut limiter = JoinLimiter::new(2);
        assert_eq!(limiter.admit(ip("192.0.2.1"), limits, start), Ok(()));
        assert_eq!(limiter.admit(ip("192.0.2.2"), limits, start), Ok(()));
        assert_eq!(
            limiter.admit(ip("192.0.2.3"), limits, start),
            Err(Limited::Busy)
        );
        limiter.release(ip("192.0.2.1"));
        limiter.release(ip("192.0.2.2"));
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.admit(ip("192.0.2.3"), limits, later), Ok(()));
        assert_eq!(limiter.len(), 1, "refilled idle clients forgotten");
        // No limits: nothing is tracked.
        let mut open = JoinLimiter::new(1);
        let none = JoinLimits {
            max_open: None,
            per_second: None,
        };
        for i in 0..10 {
            assert_eq!(open.admit(ip(&format!("192.0.2.{i}")), none, start), Ok(()));
        }
        assert_eq!(open.len(), 0);
    }
}

/// The settings of this module that a config reload may change, as one snapshot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Edge {
    /// Who may read `/metrics` on the main listener.
    pub(crate) metrics_allow: Vec<IpNet>,
    /// Proxies whose forwarded addresses are believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Origins whose browsers may open sockets (empty: any).
    pub(crate) allowed_origins: Vec<String>,
    /// Whether a request without `Origin` is refused.
    pub(crate) require_origin: bool,
    /// Limits on `/join` sockets per client.
    pub(crate) limits: JoinLimits,
}

impl Edge {
    /// The snapshot of `config`.
    pub(crate) fn of(config: &crate::Config) -> Self {
        Self {
            metrics_allow: config.metrics_allow.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            allowed_origins: config.allowed_origins.clone(),
            require_origin: config.require_origin,
            limits: JoinLimits {
                max_open: config.max_joins_per_ip,
                per_second: config.join_rate_per_ip,
            },
        }
    }
}

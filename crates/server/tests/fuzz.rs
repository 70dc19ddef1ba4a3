//! Fuzz targets for the server's parsers (see `docs/fuzzing.md`): the WebSocket upgrade
//! check and the overlay paths, through [`router`]; tokens through [`TokenKey`] and
//! their carriers.
//!
//! Under `cargo test` each target is an ordinary test: bolero runs any corpus under
//! `tests/__fuzz__/` and then random inputs for about a second. `cargo bolero test
//! <target>` runs the same target coverage-guided.
//!
//! The router targets compare every answer with a model written from the route table
//! (`route.rs`), RFC 6455 section 4.2.1 and RFC 9110 section 7.2, and check that a
//! refused or never-completed upgrade leaves nothing behind (no `/join` socket, no
//! overlay). The token targets check that only tokens minted with the key verify, that
//! minted claims come back unchanged, and that the carriers find what their docs say.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bolero::{TypeGenerator, check};
use tower::ServiceExt as _;
use webrtc_bootstrap_server::auth::{
    Audience, Claims, LEEWAY_SECS, MAX_TOKEN_BYTES, TokenError, TokenKey, bearer_from_subprotocols,
    token_from_query,
};
use webrtc_bootstrap_server::route::is_valid_overlay_name;
use webrtc_bootstrap_server::{AppState, Config, JoinAuth, OverlayConfig, router};

/// The HS256 secret of every token key here.
const SECRET: &[u8] = b"fuzzing shared secret, 32 bytes!";

/// An Ed25519 key pair (`openssl genpkey -algorithm ed25519`), as in `tests/tokens.rs`.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKjSGhBAlQBAEaacbKiA+vERYn2N/p6QOq2xE6JU8PzA
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAFGpVHSyjVsslkpobm0KwPDO3JCAF8NDwBjCAEagJ31I=
-----END PUBLIC KEY-----
";

/// The default overlay's root secret, and the named overlay `chat`'s.
const ROOT_SECRET: &str = "s3cret";
const CHAT_SECRET: &str = "chat-s3cret";
/// An overlay name no configuration has: a root token for it creates it.
const DYNAMIC: &str = "dyn";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn hs256() -> TokenKey {
    TokenKey::from_bytes(SECRET).expect("an HS256 key")
}

fn claims(aud: Audience, ovl: &str, exp: u64) -> Claims {
    Claims {
        exp,
        aud,
        ovl: ovl.to_owned(),
        sub: Some("fuzz".to_owned()),
        nbf: None,
    }
}

// ---------------------------------------------------------------------------------------
// Tokens

/// Arbitrary strings never verify (nothing here can forge a signature), and verifying
/// them never panics.
#[test]
fn token_verify_strings() {
    let keys = [
        hs256(),
        TokenKey::from_bytes(ED_PUBLIC.as_bytes()).expect("an Ed25519 public key"),
    ];
    check!()
        .with_type::<(String, bool, String, u64)>()
        .for_each(|(token, root, overlay, now)| {
            let audience = if *root {
                Audience::Root
            } else {
                Audience::Join
            };
            for key in &keys {
                let result = key.verify(token, audience, overlay, *now);
                assert!(result.is_err(), "{token:?} verified: {result:?}");
            }
        });
}

/// A change to a minted token's text.
#[derive(Debug, TypeGenerator)]
enum Mutation {
    /// XORs the byte at `.0 % len` with `.1` (kept only if the text stays UTF-8).
    Flip(u16, u8),
    /// Inserts a base64url character, a dot, `=` or a space.
    Insert(u16, u8),
    Remove(u16),
    Truncate(u16),
    /// Swaps two of the three segments.
    Swap(u8, u8),
    /// Replaces a segment with the base64url of `.1`.
    Replace(u8, Vec<u8>),
    /// Replaces the header with one naming another algorithm.
    Algorithm(u8),
    /// Appends a segment.
    Extend(String),
}

/// Algorithms a forged header may name: `none`, the key's own, the other key's, and
/// ones nobody here supports.
const ALGORITHMS: [&str; 7] = ["none", "HS256", "EdDSA", "HS512", "RS256", "ES256", "hs256"];

/// Characters [`Mutation::Insert`] picks from.
const INSERTED: &[u8] = b"AZaz09-_.= +/";

impl Mutation {
    fn apply(&self, token: &mut String) {
        let segments = |token: &str| -> Vec<String> {
            token.split('.').map(str::to_owned).collect::<Vec<_>>()
        };
        match self {
            Self::Flip(at, xor) => {
                if token.is_empty() {
                    return;
                }
                let mut bytes = token.clone().into_bytes();
                let at = usize::from(*at) % bytes.len();
                bytes[at] ^= xor;
                if let Ok(text) = String::from_utf8(bytes) {
                    *token = text;
                }
            }
            Self::Insert(at, which) => {
                let at = boundary(token, usize::from(*at) % (token.len() + 1));
                let c = INSERTED[usize::from(*which) % INSERTED.len()];
                token.insert(at, char::from(c));
            }
            Self::Remove(at) => {
                if !token.is_empty() {
                    token.remove(boundary(token, usize::from(*at) % token.len()));
                }
            }
            Self::Truncate(len) => {
                token.truncate(boundary(token, usize::from(*len) % (token.len() + 1)));
            }
            Self::Swap(a, b) => {
                let mut parts = segments(token);
                let (a, b) = (usize::from(*a) % parts.len(), usize::from(*b) % parts.len());
                parts.swap(a, b);
                *token = parts.join(".");
            }
            Self::Replace(at, bytes) => {
                let mut parts = segments(token);
                let at = usize::from(*at) % parts.len();
                parts[at] = URL_SAFE_NO_PAD.encode(bytes);
                *token = parts.join(".");
            }
            Self::Algorithm(which) => {
                let mut parts = segments(token);
                let alg = ALGORITHMS[usize::from(*which) % ALGORITHMS.len()];
                parts[0] = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
                if alg == "none" && which & 0x80 != 0 {
                    parts.truncate(2);
                    parts.push(String::new());
                }
                *token = parts.join(".");
            }
            Self::Extend(segment) => {
                token.push('.');
                token.push_str(segment);
            }
        }
    }
}

/// The char boundary at or before `at`.
fn boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A minted token changed in any way never verifies; unchanged, it does.
#[test]
fn token_mutations() {
    let now = unix_now();
    let ed = TokenKey::from_bytes(ED_PRIVATE.as_bytes()).expect("an Ed25519 private key");
    let hs = hs256();
    let mut minted = Vec::new();
    for key in [&hs, &ed] {
        for (aud, ovl) in [(Audience::Join, "default"), (Audience::Root, "chat")] {
            let claims = claims(aud, ovl, now + 3600);
            let token = key.mint(&claims).expect("mint");
            minted.push((key, claims, token));
        }
    }
    let minted = AssertUnwindSafe(minted);
    check!()
        .with_type::<(u8, Vec<Mutation>)>()
        .for_each(|(which, mutations)| {
            let (key, claims, original) = &minted[usize::from(*which) % minted.len()];
            let mut token = original.clone();
            for mutation in mutations {
                mutation.apply(&mut token);
            }
            let result = key.verify(&token, claims.aud, &claims.ovl, now);
            if token == *original {
                assert_eq!(result.as_ref(), Ok(claims));
            } else {
                assert!(
                    result.is_err(),
                    "{token:?}, changed from {original:?}, verified"
                );
            }
        });
}

/// Claims as a fuzzer writes them, and when and for what they are checked.
#[derive(Debug, TypeGenerator)]
struct ClaimsCase {
    exp: u64,
    root: bool,
    ovl: String,
    sub: Option<String>,
    nbf: Option<u64>,
    /// `now` is `exp` moved by this much (most interesting times are near `exp`),
    /// unless `far_now` is set.
    skew: i16,
    far_now: Option<u64>,
    other_overlay: String,
}

/// Whatever the claims, a minted token verifies to the same claims exactly when its
/// audience, overlay and times say it should.
#[test]
fn token_claims_round_trip() {
    let hs = hs256();
    let ed = TokenKey::from_bytes(ED_PRIVATE.as_bytes()).expect("an Ed25519 private key");
    check!()
        .with_type::<ClaimsCase>()
        .for_each(|case: &ClaimsCase| {
            let aud = if case.root {
                Audience::Root
            } else {
                Audience::Join
            };
            let other = if case.root {
                Audience::Join
            } else {
                Audience::Root
            };
            let claims = Claims {
                exp: case.exp,
                aud,
                ovl: case.ovl.clone(),
                sub: case.sub.clone(),
                nbf: case.nbf,
            };
            let now = case
                .far_now
                .unwrap_or_else(|| case.exp.saturating_add_signed(i64::from(case.skew)));
            for key in [&hs, &ed] {
                let token = key.mint(&claims).expect("mint");
                let expected = if token.len() > MAX_TOKEN_BYTES {
                    Err(TokenError::TooLarge)
                } else if now >= claims.exp.saturating_add(LEEWAY_SECS) {
                    Err(TokenError::Expired)
                } else if claims
                    .nbf
                    .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
                {
                    Err(TokenError::NotYetValid)
                } else {
                    Ok(claims.clone())
                };
                assert_eq!(key.verify(&token, aud, &claims.ovl, now), expected);
                if token.len() <= MAX_TOKEN_BYTES {
                    assert_eq!(
                        key.verify(&token, other, &claims.ovl, now),
                        Err(TokenError::WrongAudience)
                    );
                    if case.other_overlay != claims.ovl {
                        assert_eq!(
                            key.verify(&token, aud, &case.other_overlay, now),
                            Err(TokenError::WrongOverlay)
                        );
                    }
                }
            }
        });
}

/// The token carriers find exactly the token their docs describe.
#[test]
fn token_carriers() {
    check!()
        .with_type::<(Vec<String>, String)>()
        .for_each(|(values, query)| {
            let entries: Vec<&str> = values
                .iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .collect();
            let expected = entries
                .iter()
                .position(|entry| *entry == "bearer")
                .and_then(|at| entries.get(at + 1).copied())
                .filter(|token| !token.is_empty());
            assert_eq!(
                bearer_from_subprotocols(values.iter().map(String::as_str)),
                expected
            );

            let pairs: Vec<(&str, &str)> = query
                .strip_prefix('?')
                .unwrap_or(query)
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .filter(|(name, _)| *name == "token")
                .collect();
            let expected = match pairs.as_slice() {
                [(_, value)] if !value.is_empty() && !value.contains('%') => Some(*value),
                _ => None,
            };
            assert_eq!(token_from_query(query), expected, "{query:?}");
        });
}

/// The contents of a key file.
#[derive(Debug, TypeGenerator)]
enum KeyFile {
    Raw(Vec<u8>),
    /// An Ed25519 public key (SPKI) with these 32 bytes, one byte of its DER flipped
    /// when `.1` is not 0.
    Public([u8; 32], u8),
    /// An Ed25519 private key (PKCS#8) with this seed, damaged likewise.
    Private([u8; 32], u8),
    /// A PEM block with a label from [`LABELS`] around any bytes.
    Pem(u8, Vec<u8>),
}

const LABELS: [&str; 5] = [
    "PUBLIC KEY",
    "PRIVATE KEY",
    "RSA PUBLIC KEY",
    "CERTIFICATE",
    "EC PRIVATE KEY",
];

const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

/// Any key file loads or is refused without panicking; every key that can mint
/// verifies its own tokens, and an undamaged Ed25519 private key always loads.
#[test]
fn token_key_files() {
    let now = unix_now();
    check!().with_type::<KeyFile>().for_each(|file: &KeyFile| {
        let der = |prefix: &[u8], key: &[u8; 32], damage: u8| {
            let mut der = prefix.to_vec();
            der.extend_from_slice(key);
            if damage != 0 {
                let at = usize::from(damage) % der.len();
                der[at] ^= damage;
            }
            der
        };
        let (bytes, must_load) = match file {
            KeyFile::Raw(bytes) => (bytes.clone(), false),
            KeyFile::Public(key, damage) => {
                (pem("PUBLIC KEY", &der(&SPKI_PREFIX, key, *damage)), false)
            }
            KeyFile::Private(seed, damage) => (
                pem("PRIVATE KEY", &der(&PKCS8_PREFIX, seed, *damage)),
                *damage == 0,
            ),
            KeyFile::Pem(label, body) => (pem(LABELS[usize::from(*label) % 5], body), false),
        };
        let key = match TokenKey::from_bytes(&bytes) {
            Ok(key) => key,
            Err(error) => {
                assert!(!must_load, "{error}");
                return;
            }
        };
        if key.can_mint() {
            let claims = claims(Audience::Join, "default", now + 60);
            let token = key.mint(&claims).expect("a key that can mint mints");
            assert_eq!(
                key.verify(&token, Audience::Join, "default", now),
                Ok(claims)
            );
        } else {
            assert!(!must_load, "a private key that cannot mint");
        }
    });
}

// ---------------------------------------------------------------------------------------
// The router: upgrade check and overlay paths

/// A minted token the requests may carry.
struct Token {
    text: String,
    aud: Audience,
    ovl: &'static str,
    /// Whether it is within its validity period.
    current: bool,
}

/// A server state and what the model needs to know about it.
struct Server {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    app: axum::Router,
    /// Whether join tokens are required and root tokens accepted.
    tokens: bool,
    /// Configured overlays and their secrets.
    overlays: BTreeMap<&'static str, &'static str>,
    minted: Vec<Token>,
    /// Gives each request its own client address, so the failure throttle never
    /// answers 429.
    next_client: AtomicU32,
}

impl Server {
    fn new(tokens: bool) -> Self {
        let mut config = Config::new(ROOT_SECRET);
        config.seed = Some(7);
        config
            .overlays
            .insert("chat".to_owned(), OverlayConfig::new(CHAT_SECRET));
        let mut overlays = BTreeMap::from([("default", ROOT_SECRET), ("chat", CHAT_SECRET)]);
        let now = unix_now();
        let mut minted = Vec::new();
        if tokens {
            let key = hs256();
            // Roots of `tok` present root tokens only.
            config
                .overlays
                .insert("tok".to_owned(), OverlayConfig::new(""));
            overlays.insert("tok", "");
            for aud in [Audience::Join, Audience::Root] {
                for ovl in ["default", "chat", "tok", DYNAMIC] {
                    for current in [true, false] {
                        let exp = if current { now + 3600 } else { now - 3600 };
                        let text = key.mint(&claims(aud, ovl, exp)).expect("mint");
                        minted.push(Token {
                            text,
                            aud,
                            ovl,
                            current,
                        });
                    }
                }
            }
            config.token_key = Some(Arc::new(key));
            config.join_auth = JoinAuth::Token;
            config.dynamic_overlays = true;
        }
        let state = AppState::new(config).expect("a valid configuration");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Self {
            runtime,
            app: router(state.clone()),
            state,
            tokens,
            overlays,
            minted,
            next_client: AtomicU32::new(1),
        }
    }

    /// The token at `index` (modulo the tokens), or a forged one if there are none.
    fn token(&self, index: u8) -> &str {
        match self.minted.len() {
            0 => "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
            n => &self.minted[usize::from(index) % n].text,
        }
    }

    /// Sends `request` through the router; returns the answer once every task it
    /// spawned has finished.
    fn send(&self, mut request: Request) -> axum::response::Response {
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((
                Ipv4Addr::from(client),
                40_000,
            ))));
        self.runtime.block_on(async {
            let response = self
                .app
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            // The upgrade handle of these requests resolves at once to an error, which
            // ends the socket task it was handed to; let those tasks run.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            response
        })
    }

    /// Checks that no socket or overlay outlived its request.
    fn assert_idle(&self) {
        let health = self.state.health();
        assert_eq!(health.prospects, 0, "a /join socket leaked");
        let names: Vec<&str> = health.overlays.iter().map(|o| o.name.as_str()).collect();
        let configured: Vec<&str> = self.overlays.keys().copied().collect();
        assert_eq!(names, configured, "an overlay leaked");
        assert!(!health.root_connected);
    }
}

/// The socket a path asks for, from the route table in `route.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelRoute<'a> {
    Join {
        overlay: &'a str,
        token: Option<&'a str>,
    },
    Root {
        overlay: &'a str,
        credential: &'a str,
    },
}

/// Whether a path segment can be a token or secret: 1 to 4096 unreserved characters,
/// not `.` or `..`.
fn credential(segment: &str) -> bool {
    (1..=4096).contains(&segment.len())
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The route table, segment by segment.
fn model_route(path: &str) -> Option<ModelRoute<'_>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    // `/o/NAME/...` when something follows NAME; `/o/X` alone is the default overlay.
    let (overlay, rest) = match segments.as_slice() {
        ["o", name, _, ..] => {
            if !is_valid_overlay_name(name) {
                return None;
            }
            (*name, &segments[2..])
        }
        _ => ("default", &segments[..]),
    };
    match rest {
        ["join"] => Some(ModelRoute::Join {
            overlay,
            token: None,
        }),
        ["t", token, "join"] if credential(token) => Some(ModelRoute::Join {
            overlay,
            token: Some(token),
        }),
        ["t", token, secret, "webrtc-bootstrap-root"]
            if credential(token) && credential(secret) =>
        {
            Some(ModelRoute::Root {
                overlay,
                credential: secret,
            })
        }
        [secret, "webrtc-bootstrap-root"] if credential(secret) => Some(ModelRoute::Root {
            overlay,
            credential: secret,
        }),
        _ => None,
    }
}

/// `Host` syntax (RFC 9110 section 7.2, RFC 3986 section 3.2.2): a non-empty reg-name
/// or an IPv6 literal, then optionally `:` and digits.
fn valid_host(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let (host_ok, port) = match value.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((address, port)) => (address.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (host, port) = value.split_at(value.find(':').unwrap_or(value.len()));
            let chars = host.as_bytes();
            let mut ok = !chars.is_empty();
            let mut i = 0;
            while ok && i < chars.len() {
                if chars[i] == b'%' {
                    ok = chars.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && chars.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
                    i += 3;
                } else {
                    ok = chars[i].is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&chars[i]);
                    i += 1;
                }
            }
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Whether header `name` lists `token` (comma-separated, trimmed, any case).
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The answer to a request for a socket whose credentials passed (RFC 6455 section
/// 4.2.1): 405, 400 or 426 for the first check that fails, else 101 if the connection
/// can be taken over.
fn upgrade_status(request: &Request, upgradable: bool) -> u16 {
    let headers = request.headers();
    if request.method() != Method::GET {
        return 405;
    }
    let hosts: Vec<_> = headers.get_all(HOST).iter().collect();
    if !matches!(hosts.as_slice(), [host] if valid_host(host.as_bytes())) {
        return 400;
    }
    if !lists(headers, &CONNECTION, "upgrade") || !lists(headers, &UPGRADE, "websocket") {
        return 400;
    }
    let versions: Vec<_> = headers.get_all(SEC_WEBSOCKET_VERSION).iter().collect();
    match versions.as_slice() {
        [version] if version.as_bytes() == b"13" => {}
        [_, _, ..] => return 400,
        _ => return 426,
    }
    let keys: Vec<_> = headers.get_all(SEC_WEBSOCKET_KEY).iter().collect();
    let key_ok = matches!(keys.as_slice(), [key] if key.len() == 24
        && STANDARD.decode(key.as_bytes()).is_ok_and(|nonce| nonce.len() == 16));
    if !key_ok {
        return 400;
    }
    if upgradable { 101 } else { 426 }
}

impl Server {
    /// The status the router must answer `request` with.
    fn expected_status(&self, request: &Request, upgradable: bool) -> u16 {
        let path = request.uri().path();
        if path == "/healthz" {
            return if matches!(*request.method(), Method::GET | Method::HEAD) {
                200
            } else {
                405
            };
        }
        let upgrade = || upgrade_status(request, upgradable);
        match model_route(path) {
            // No static files are served.
            None => 404,
            Some(ModelRoute::Join { overlay, token }) => {
                if !self.overlays.contains_key(overlay) {
                    return 404;
                }
                if !self.tokens {
                    return upgrade();
                }
                let protocols = request
                    .headers()
                    .get_all(SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|value| value.to_str().ok());
                let carried = bearer_from_subprotocols(protocols)
                    .or(token)
                    .or_else(|| request.uri().query().and_then(token_from_query));
                if carried.is_some_and(|text| self.valid(text, Audience::Join, overlay)) {
                    upgrade()
                } else {
                    401
                }
            }
            Some(ModelRoute::Root {
                overlay,
                credential,
            }) => {
                let secret = self.overlays.get(overlay);
                if secret.is_some_and(|secret| !secret.is_empty() && *secret == credential) {
                    return upgrade();
                }
                if !self.tokens {
                    return 404;
                }
                if self.valid(credential, Audience::Root, overlay) {
                    upgrade()
                } else {
                    401
                }
            }
        }
    }

    /// Whether `text` is one of the minted tokens, current, for `aud` on `overlay`.
    fn valid(&self, text: &str, aud: Audience, overlay: &str) -> bool {
        self.minted
            .iter()
            .any(|t| t.text == text && t.current && t.aud == aud && t.ovl == overlay)
    }

    /// Sends `request` and checks the answer against the model, and that nothing
    /// leaked.
    fn check(&self, mut request: Request, upgradable: bool) {
        if upgradable {
            // What hyper attaches to an HTTP/1.1 request. Taken from a request that
            // has none, it resolves at once to an error: the socket never opens.
            let on_upgrade = hyper::upgrade::on(Request::new(Body::empty()));
            request.extensions_mut().insert(on_upgrade);
        }
        let expected = self.expected_status(&request, upgradable);
        let route = model_route(request.uri().path()).map(|route| match route {
            ModelRoute::Join { overlay, .. } | ModelRoute::Root { overlay, .. } => {
                overlay.to_owned()
            }
        });
        let is_join = matches!(
            model_route(request.uri().path()),
            Some(ModelRoute::Join { .. })
        );
        let key = request.headers().get(SEC_WEBSOCKET_KEY).cloned();
        let offers_bearer = request
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim() == "bearer");
        let summary = format!(
            "{} {} {:?}",
            request.method(),
            request.uri(),
            request.headers()
        );
        let response = self.send(request);
        let status = response.status().as_u16();
        assert_eq!(status, expected, "{summary}");
        if status == 101 {
            // Only a socket route of a valid overlay name opens a socket.
            let overlay = route.expect("101 only on a socket route");
            assert!(is_valid_overlay_name(&overlay), "{overlay:?}");
            let key = key.expect("101 only with a key");
            let headers = response.headers();
            assert_eq!(
                headers[SEC_WEBSOCKET_ACCEPT],
                bootstrap_ws::accept_key(key.as_bytes())
            );
            assert_eq!(
                headers
                    .get(SEC_WEBSOCKET_PROTOCOL)
                    .map(HeaderValue::as_bytes),
                (is_join && offers_bearer).then_some(&b"bearer"[..]),
                "{summary}"
            );
        }
        if status == 426 {
            assert!(
                response.headers().get(SEC_WEBSOCKET_VERSION).is_none()
                    || response.headers()[SEC_WEBSOCKET_VERSION] == "13"
            );
        }
        self.assert_idle();
    }
}

/// One path segment.
#[derive(Debug, Clone, TypeGenerator)]
enum Segment {
    O,
    T,
    Join,
    Root,
    /// The default overlay's secret, `chat`'s, or another word.
    Secret(u8),
    /// An overlay name: `default`, `chat`, `tok`, [`DYNAMIC`], or an invalid one.
    Overlay(u8),
    /// A minted token.
    Token(u8),
    Dot,
    DotDot,
    Empty,
    Raw(String),
}

const SECRETS: [&str; 4] = [ROOT_SECRET, CHAT_SECRET, "wrong", "%73%33cret"];
const OVERLAYS: [&str; 8] = [
    "default",
    "chat",
    "tok",
    DYNAMIC,
    "ch%61t",
    "a b",
    "caf\u{e9}",
    "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
];

#[derive(Debug, Clone, TypeGenerator)]
enum PathSpec {
    /// A path of the route table, with picked parts.
    Route(RouteSpec),
    Segments(Vec<Segment>),
    Raw(String),
}

/// A path of the route table: `[/o/NAME][/t/TOKEN]/join` or
/// `[/o/NAME][/t/TOKEN]/CREDENTIAL/webrtc-bootstrap-root`.
#[derive(Debug, Clone, TypeGenerator)]
struct RouteSpec {
    /// An index into [`OVERLAYS`].
    overlay: Option<u8>,
    /// An index into the minted tokens.
    path_token: Option<u8>,
    /// The root's credential, or none for `/join`.
    root: Option<Credential>,
}

#[derive(Debug, Clone, TypeGenerator)]
enum Credential {
    /// An index into [`SECRETS`].
    Secret(u8),
    /// An index into the minted tokens.
    Token(u8),
}

#[derive(Debug, Clone, TypeGenerator)]
enum QuerySpec {
    None,
    Token(u8),
    Raw(String),
}

impl Server {
    /// The path and query a spec stands for.
    fn target(&self, path: &PathSpec, query: &QuerySpec) -> String {
        let mut target = match path {
            PathSpec::Raw(raw) => raw.clone(),
            PathSpec::Route(route) => {
                let mut out = String::new();
                if let Some(i) = route.overlay {
                    out.push_str("/o/");
                    out.push_str(OVERLAYS[usize::from(i) % OVERLAYS.len()]);
                }
                if let Some(i) = route.path_token {
                    out.push_str("/t/");
                    out.push_str(self.token(i));
                }
                match &route.root {
                    None => out.push_str("/join"),
                    Some(credential) => {
                        out.push('/');
                        out.push_str(match credential {
                            Credential::Secret(i) => SECRETS[usize::from(*i) % SECRETS.len()],
                            Credential::Token(i) => self.token(*i),
                        });
                        out.push_str("/webrtc-bootstrap-root");
                    }
                }
                out
            }
            PathSpec::Segments(segments) => {
                let mut out = String::new();
                for segment in segments {
                    out.push('/');
                    match segment {
                        Segment::O => out.push('o'),
                        Segment::T => out.push('t'),
                        Segment::Join => out.push_str("join"),
                        Segment::Root => out.push_str("webrtc-bootstrap-root"),
                        Segment::Secret(i) => out.push_str(SECRETS[usize::from(*i) % 4]),
                        Segment::Overlay(i) => out.push_str(OVERLAYS[usize::from(*i) % 8]),
                        Segment::Token(i) => out.push_str(self.token(*i)),
                        Segment::Dot => out.push('.'),
                        Segment::DotDot => out.push_str(".."),
                        Segment::Empty => {}
                        Segment::Raw(raw) => out.push_str(raw),
                    }
                }
                out
            }
        };
        match query {
            QuerySpec::None => {}
            QuerySpec::Token(i) => {
                target.push_str("?token=");
                target.push_str(self.token(*i));
            }
            QuerySpec::Raw(raw) => {
                target.push('?');
                target.push_str(raw);
            }
        }
        target
    }
}

/// A request header.
#[derive(Debug, TypeGenerator)]
struct HeaderSpec {
    name: NameSpec,
    value: ValueSpec,
}

#[derive(Debug, TypeGenerator)]
enum NameSpec {
    Host,
    Connection,
    Upgrade,
    Version,
    Key,
    Protocol,
    Other(String),
}

#[derive(Debug, TypeGenerator)]
enum ValueSpec {
    /// A value from the header's table of valid and invalid values.
    Pick(u8),
    Raw(String),
    Bytes(Vec<u8>),
}

/// Values to pick from, valid ones first.
const HOSTS: [&str; 14] = [
    "example.com:5000",
    "[::1]:80",
    "127.0.0.1",
    "a%2Db.example:",
    "",
    "a b",
    "user@example.com",
    "x:y",
    "[::1",
    "[zz]",
    "%zz",
    "h:80:90",
    "::1",
    "caf\u{e9}.example",
];
const CONNECTIONS: [&str; 5] = ["Upgrade", "keep-alive, upgrade", "close", "upgrade2", ""];
const UPGRADES: [&str; 5] = ["websocket", "WebSocket", "h2c", "x, websocket", ""];
const VERSIONS: [&str; 5] = ["13", "8", " 13", "13, 13", ""];
const KEYS: [&str; 6] = [
    "dGhlIHNhbXBsZSBub25jZQ==",
    "AAAAAAAAAAAAAAAAAAAAAA==",
    "dGhlIHNhbXBsZSBub25jZR==",
    "short",
    "AAAAAAAAAAAAAAAAAAAAAAA=",
    "dGhlIHNhbXBsZSBub25jZQ",
];
const PROTOCOLS: [&str; 5] = ["chat", "bearer", "bearer, ", "Bearer, x", "chat, bearer"];

impl Server {
    fn header(&self, spec: &HeaderSpec) -> Option<(HeaderName, HeaderValue)> {
        let (name, table): (HeaderName, &[&str]) = match &spec.name {
            NameSpec::Host => (HOST, &HOSTS),
            NameSpec::Connection => (CONNECTION, &CONNECTIONS),
            NameSpec::Upgrade => (UPGRADE, &UPGRADES),
            NameSpec::Version => (SEC_WEBSOCKET_VERSION, &VERSIONS),
            NameSpec::Key => (SEC_WEBSOCKET_KEY, &KEYS),
            NameSpec::Protocol => (SEC_WEBSOCKET_PROTOCOL, &PROTOCOLS),
            NameSpec::Other(name) => (HeaderName::from_bytes(name.as_bytes()).ok()?, &[""]),
        };
        let value = match &spec.value {
            // A bearer token for every other protocol pick.
            ValueSpec::Pick(i) if name == SEC_WEBSOCKET_PROTOCOL && i % 2 == 1 => {
                HeaderValue::from_str(&format!("bearer, {}", self.token(i / 2))).ok()?
            }
            ValueSpec::Pick(i) => {
                HeaderValue::from_str(table[usize::from(*i) % table.len()]).ok()?
            }
            ValueSpec::Raw(raw) => HeaderValue::from_str(raw).ok()?,
            ValueSpec::Bytes(bytes) => HeaderValue::from_bytes(bytes).ok()?,
        };
        Some((name, value))
    }
}

/// Which headers a request has.
#[derive(Debug, TypeGenerator)]
enum HeadersSpec {
    /// A valid handshake plus these.
    Valid(Vec<HeaderSpec>),
    /// A valid handshake without the header at `.0 % 5`, plus these.
    Without(u8, Vec<HeaderSpec>),
    /// Only these.
    Only(Vec<HeaderSpec>),
}

#[derive(Debug, TypeGenerator)]
enum MethodSpec {
    Get,
    Post,
    Head,
    Connect,
    Other(String),
}

/// A whole request.
#[derive(Debug, TypeGenerator)]
struct RequestSpec {
    method: MethodSpec,
    path: PathSpec,
    query: QuerySpec,
    headers: HeadersSpec,
    /// Whether the request carries hyper's upgrade handle (an HTTP/1.1 connection).
    upgradable: bool,
}

impl Server {
    /// The request a spec stands for, if `http` can represent it (a request it
    /// cannot represent never reaches the router).
    fn request(&self, spec: &RequestSpec) -> Option<Request> {
        let method = match &spec.method {
            MethodSpec::Get => Method::GET,
            MethodSpec::Post => Method::POST,
            MethodSpec::Head => Method::HEAD,
            MethodSpec::Connect => Method::CONNECT,
            MethodSpec::Other(name) => Method::from_bytes(name.as_bytes()).ok()?,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(self.target(&spec.path, &spec.query))
            .body(Body::empty())
            .ok()?;
        let valid = [
            (HOST, HOSTS[0]),
            (CONNECTION, CONNECTIONS[0]),
            (UPGRADE, UPGRADES[0]),
            (SEC_WEBSOCKET_VERSION, VERSIONS[0]),
            (SEC_WEBSOCKET_KEY, KEYS[0]),
        ];
        let (skip, extra) = match &spec.headers {
            HeadersSpec::Valid(extra) => (None, extra),
            HeadersSpec::Without(skip, extra) => (Some(usize::from(*skip) % 5), extra),
            HeadersSpec::Only(extra) => (Some(usize::MAX), extra),
        };
        let headers = request.headers_mut();
        if skip != Some(usize::MAX) {
            for (i, (name, value)) in valid.into_iter().enumerate() {
                if skip != Some(i) {
                    headers.append(name, HeaderValue::from_static(value));
                }
            }
        }
        for spec in extra {
            if let Some((name, value)) = self.header(spec) {
                headers.append(name, value);
            }
        }
        Some(request)
    }
}

/// Any request through the router of a server without tokens: the status is the
/// model's, 101 only for a socket route of a valid overlay name with a valid
/// handshake, and nothing leaks.
#[test]
fn router_upgrade() {
    let server = AssertUnwindSafe(Server::new(false));
    check!()
        .with_type::<RequestSpec>()
        .for_each(|spec: &RequestSpec| {
            if let Some(request) = server.request(spec) {
                server.check(request, spec.upgradable);
            }
        });
}

/// The same with join tokens required and root tokens accepted (which create the
/// overlay [`DYNAMIC`] for as long as its root is connected: never, here).
#[test]
fn router_upgrade_tokens() {
    let server = AssertUnwindSafe(Server::new(true));
    check!()
        .with_type::<RequestSpec>()
        .for_each(|spec: &RequestSpec| {
            if let Some(request) = server.request(spec) {
                server.check(request, spec.upgradable);
            }
        });
}

/// Overlay paths: any path with a valid handshake, on both servers.
#[test]
fn router_paths() {
    let servers = AssertUnwindSafe([Server::new(false), Server::new(true)]);
    check!()
        .with_type::<(bool, PathSpec, QuerySpec)>()
        .for_each(|(tokens, path, query)| {
            let server = &servers[usize::from(*tokens)];
            let spec = RequestSpec {
                method: MethodSpec::Get,
                path: path.clone(),
                query: query.clone(),
                headers: HeadersSpec::Valid(Vec::new()),
                upgradable: true,
            };
            if let Some(request) = server.request(&spec) {
                server.check(request, true);
            }
        });
}

#[test]
fn the_model_knows_the_documented_routes() {
    assert_eq!(
        model_route("/o/chat/t/a.b/k/webrtc-bootstrap-root"),
        Some(ModelRoute::Root {
            overlay: "chat",
            credential: "k"
        })
    );
    assert_eq!(
        model_route("/o/webrtc-bootstrap-root"),
        Some(ModelRoute::Root {
            overlay: "default",
            credential: "o"
        })
    );
    assert_eq!(model_route("/o/a b/join"), None);
    assert!(valid_host(b"[::1]:80") && !valid_host(b"[::1]x") && !valid_host(b""));
    let server = Server::new(false);
    let spec = RequestSpec {
        method: MethodSpec::Get,
        path: PathSpec::Raw("/o/chat/join".to_owned()),
        query: QuerySpec::None,
        headers: HeadersSpec::Valid(Vec::new()),
        upgradable: true,
    };
    let request = server.request(&spec).expect("a valid request");
    assert_eq!(server.expected_status(&request, true), 101);
    server.check(request, true);
}

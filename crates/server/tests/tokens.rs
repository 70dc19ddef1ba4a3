//! Token interop: tokens minted outside Rust, by Node's built-in `crypto` (no npm
//! packages), verify with [`TokenKey`], and tokens [`TokenKey`] mints verify in Node.
//!
//! Without `node` these tests print `SKIPPED: node not found` and pass, unless `CI` is
//! `true`, where they fail.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenError, TokenKey};

/// The injected clock of every test.
const NOW: u64 = 1_700_000_000;
/// The HS256 secret as Node sees it; the key file adds a trailing newline.
const SECRET: &str = "interop shared secret";
/// How long one `node` run may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// An Ed25519 key pair (`openssl genpkey -algorithm ed25519`) for the Rust-minted tokens.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKjSGhBAlQBAEaacbKiA+vERYn2N/p6QOq2xE6JU8PzA
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAFGpVHSyjVsslkpobm0KwPDO3JCAF8NDwBjCAEagJ31I=
-----END PUBLIC KEY-----
";

/// Mints tokens with HMAC-SHA256 and a fresh Ed25519 key; prints them and the public key
/// (SPKI PEM) as one JSON object. Arguments: now, secret.
const MINT_JS: &str = r#"
const crypto = require('crypto');
const now = Number(process.argv[1]);
const secret = process.argv[2];
const seg = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const hs256 = (claims) => {
  const message = seg({ alg: 'HS256', typ: 'JWT' }) + '.' + seg(claims);
  return message + '.' + crypto.createHmac('sha256', secret).update(message).digest('base64url');
};
const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
const eddsa = (claims) => {
  const message = seg({ alg: 'EdDSA', typ: 'JWT' }) + '.' + seg(claims);
  return message + '.' + crypto.sign(null, Buffer.from(message), privateKey).toString('base64url');
};
const join = { exp: now + 3600, aud: 'join', ovl: 'default', sub: 'node-client' };
const root = { exp: now + 3600, aud: 'root', ovl: 'default', nbf: now - 5 };
process.stdout.write(JSON.stringify({
  public_pem: publicKey.export({ type: 'spki', format: 'pem' }),
  hs256_join: hs256(join),
  hs256_expired: hs256({ ...join, exp: now - 3600 }),
  hs256_other_overlay: hs256({ ...join, ovl: 'other' }),
  hs256_not_yet: hs256({ ...join, nbf: now + 3600 }),
  none_join: seg({ alg: 'none', typ: 'JWT' }) + '.' + seg(join) + '.',
  eddsa_root: eddsa(root),
  eddsa_join: eddsa(join),
}));
"#;

/// Verifies an HS256 and an EdDSA token; prints whether each signature holds and the
/// claims. Arguments: secret, public key PEM, HS256 token, EdDSA token.
const VERIFY_JS: &str = r#"
const crypto = require('crypto');
const [secret, publicPem, hsToken, edToken] = process.argv.slice(1);
const parts = (token) => {
  const [header, payload, signature] = token.split('.');
  return {
    message: header + '.' + payload,
    header: JSON.parse(Buffer.from(header, 'base64url')),
    claims: JSON.parse(Buffer.from(payload, 'base64url')),
    signature,
  };
};
const hs = parts(hsToken);
const ed = parts(edToken);
const hsValid = crypto.createHmac('sha256', secret).update(hs.message).digest('base64url') === hs.signature;
const edValid = crypto.verify(null, Buffer.from(ed.message), crypto.createPublicKey(publicPem),
  Buffer.from(ed.signature, 'base64url'));
process.stdout.write(JSON.stringify({
  hs: { valid: hsValid, alg: hs.header.alg, claims: hs.claims },
  ed: { valid: edValid, alg: ed.header.alg, claims: ed.claims },
}));
"#;

/// Runs `script` with `node -e` and parses what it prints; `None` if `node` is missing
/// (and `CI` is not `true`).
fn node(script: &str, args: &[&str]) -> Option<Value> {
    let spawned = Command::new("node")
        .arg("-e")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "node not found, and CI=true: the token interop tests need node"
            );
            // Straight to stderr, past the test harness's capture, so that it shows.
            let _ = writeln!(std::io::stderr(), "SKIPPED: node not found");
            return None;
        }
        Err(error) => panic!("cannot run node: {error}"),
    };
    // The output is a few kilobytes, well within a pipe's buffer, so waiting before
    // reading cannot deadlock.
    let deadline = Instant::now() + NODE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("node did not finish within {NODE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("read node's stdout");
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read node's stderr");
    assert!(status.success(), "node failed ({status}): {stderr}");
    Some(serde_json::from_str(&stdout).expect("node prints JSON"))
}

fn token<'a>(minted: &'a Value, name: &str) -> &'a str {
    minted[name].as_str().expect("a token")
}

fn hs256_key() -> TokenKey {
    // As read from a key file written with `echo`.
    TokenKey::from_bytes(format!("{SECRET}\n").as_bytes()).expect("HS256 key")
}

#[test]
fn node_hs256_tokens_verify() {
    let Some(minted) = node(MINT_JS, &[&NOW.to_string(), SECRET]) else {
        return;
    };
    let key = hs256_key();
    let claims = key
        .verify(token(&minted, "hs256_join"), Audience::Join, "default", NOW)
        .expect("valid");
    assert_eq!(
        claims,
        Claims {
            exp: NOW + 3600,
            aud: Audience::Join,
            ovl: "default".to_owned(),
            sub: Some("node-client".to_owned()),
            nbf: None,
        }
    );
    let refused = |name: &str| key.verify(token(&minted, name), Audience::Join, "default", NOW);
    assert_eq!(refused("hs256_expired"), Err(TokenError::Expired));
    assert_eq!(
        refused("hs256_other_overlay"),
        Err(TokenError::WrongOverlay)
    );
    assert_eq!(refused("hs256_not_yet"), Err(TokenError::NotYetValid));
    assert_eq!(refused("none_join"), Err(TokenError::Malformed));
    assert_eq!(refused("eddsa_join"), Err(TokenError::BadSignature));
    assert_eq!(
        key.verify(token(&minted, "hs256_join"), Audience::Root, "default", NOW),
        Err(TokenError::WrongAudience)
    );
    let other = TokenKey::from_bytes(b"another secret").expect("HS256 key");
    assert_eq!(
        other.verify(token(&minted, "hs256_join"), Audience::Join, "default", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn node_eddsa_tokens_verify_with_the_exported_public_key() {
    let Some(minted) = node(MINT_JS, &[&NOW.to_string(), SECRET]) else {
        return;
    };
    let pem = minted["public_pem"].as_str().expect("a PEM");
    let key = TokenKey::from_bytes(pem.as_bytes()).expect("Ed25519 public key");
    assert!(!key.can_mint());
    let claims = key
        .verify(token(&minted, "eddsa_root"), Audience::Root, "default", NOW)
        .expect("valid");
    assert_eq!(
        claims,
        Claims {
            exp: NOW + 3600,
            aud: Audience::Root,
            ovl: "default".to_owned(),
            sub: None,
            nbf: Some(NOW - 5),
        }
    );
    assert!(
        key.verify(token(&minted, "eddsa_join"), Audience::Join, "default", NOW)
            .is_ok()
    );
    assert_eq!(
        key.verify(token(&minted, "eddsa_join"), Audience::Join, "other", NOW),
        Err(TokenError::WrongOverlay)
    );
    assert_eq!(
        key.verify(token(&minted, "hs256_join"), Audience::Join, "default", NOW),
        Err(TokenError::BadSignature)
    );
    let unrelated = TokenKey::from_bytes(ED_PUBLIC.as_bytes()).expect("Ed25519 public key");
    assert_eq!(
        unrelated.verify(token(&minted, "eddsa_root"), Audience::Root, "default", NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn rust_minted_tokens_verify_in_node() {
    let claims = Claims {
        exp: NOW + 60,
        aud: Audience::Join,
        ovl: "default".to_owned(),
        sub: Some("rust".to_owned()),
        nbf: Some(NOW),
    };
    let hs = hs256_key().mint(&claims).expect("mint HS256");
    let ed_key = TokenKey::from_bytes(ED_PRIVATE.as_bytes()).expect("Ed25519 private key");
    let ed = ed_key.mint(&claims).expect("mint EdDSA");
    let Some(checked) = node(VERIFY_JS, &[SECRET, ED_PUBLIC, &hs, &ed]) else {
        return;
    };
    let expected = serde_json::to_value(&claims).expect("claims as JSON");
    for (name, alg) in [("hs", "HS256"), ("ed", "EdDSA")] {
        assert_eq!(
            checked[name]["valid"],
            Value::Bool(true),
            "{name}: {checked}"
        );
        assert_eq!(checked[name]["alg"], alg, "{name}");
        assert_eq!(checked[name]["claims"], expected, "{name}");
    }
}

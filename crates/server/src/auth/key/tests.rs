//! Unit tests of [`TokenKey`]: round trips, every refusal, hostile input.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;

/// Ed25519 pair A (`openssl genpkey -algorithm ed25519`, then `openssl pkey -pubout`).
const ED_A_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKjSGhBAlQBAEaacbKiA+vERYn2N/p6QOq2xE6JU8PzA
-----END PRIVATE KEY-----
";
const ED_A_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAFGpVHSyjVsslkpobm0KwPDO3JCAF8NDwBjCAEagJ31I=
-----END PUBLIC KEY-----
";
/// Ed25519 pair B.
const ED_B_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIcMeyHx9fFxJuvXRitO9edQdWAb+Osdj7GSlRu8hvBe
-----END PRIVATE KEY-----
";
const ED_B_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAAnOvby7Z+re/aOQ2psN9aMh5NiopKXziXE0YjWTzAB8=
-----END PUBLIC KEY-----
";
/// An X25519 private key: PKCS#8, but not a signing key.
const X25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIDg7B31lSCakc4r7SZ5Bq24Ol4ijyYIW+gPRjy8CSNFb
-----END PRIVATE KEY-----
";
/// A P-256 private key.
const P256_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5rGcbkCf81Q9t/nZ
mFD+O3e/3I3fxc8AvqC2DNpnfSqhRANCAATJj72GMmXhv+aAQOghYNLyTsZEru5p
2WU1JekrmHZSsxcA+Gsi0kRikOrSM7hNfO4QGbFyzFg4KN/aI9MwQ7cl
-----END PRIVATE KEY-----
";
/// An SPKI naming Ed25519 with a 4-byte key.
const ED_SHORT_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MA4wBQYDK2VwAwUAAQIDBA==
-----END PUBLIC KEY-----
";

const SECRET: &[u8] = b"correct horse battery staple";
const NOW: u64 = 1_700_000_000;

fn key(bytes: &[u8]) -> TokenKey {
    TokenKey::from_bytes(bytes).expect("test key")
}

fn claims(aud: Audience, exp: u64) -> Claims {
    Claims {
        exp,
        aud,
        ovl: "default".to_owned(),
        sub: Some("alice".to_owned()),
        nbf: None,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with arbitrary header and payload bytes, validly signed with HS256 and
/// [`SECRET`], to reach the checks behind the signature.
fn hs256_raw(header: &str, payload: &[u8]) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload));
    let secret = EncodingKey::from_secret(SECRET).expect("secret");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &secret, Algorithm::HS256).expect("sign");
    format!("{message}.{signature}")
}

fn hs256_payload(payload: &str) -> String {
    hs256_raw(r#"{"alg":"HS256","typ":"JWT"}"#, payload.as_bytes())
}

fn verify(key: &TokenKey, token: &str) -> Result<Claims, TokenError> {
    key.verify(token, Audience::Join, "default", NOW)
}

#[test]
fn hs256_round_trip() {
    let key = key(SECRET);
    assert!(key.can_mint());
    assert_eq!(key.algorithm_name(), "HS256");
    let minted = claims(Audience::Join, NOW + 60);
    let token = key.mint(&minted).expect("mint");
    let header = token.split('.').next().expect("header");
    let header = URL_SAFE_NO_PAD.decode(header).expect("base64");
    assert_eq!(header, br#"{"typ":"JWT","alg":"HS256"}"#);
    assert_eq!(verify(&key, &token), Ok(minted));
    let root = claims(Audience::Root, NOW + 60);
    let token = key.mint(&root).expect("mint");
    assert_eq!(key.verify(&token, Audience::Root, "default", NOW), Ok(root));
}

#[test]
fn one_trailing_newline_of_a_secret_is_ignored() {
    let token = key(b"s3cret")
        .mint(&claims(Audience::Join, NOW))
        .expect("mint");
    for same in [&b"s3cret\n"[..], b"s3cret\r\n", b"s3cret"] {
        assert!(verify(&key(same), &token).is_ok(), "{same:?}");
    }
    for other in [&b"s3cret\n\n"[..], b"s3cret\r", b" s3cret", b"s3cret "] {
        assert_eq!(
            verify(&key(other), &token),
            Err(TokenError::BadSignature),
            "{other:?}"
        );
    }
    for empty in [&b""[..], b"\n", b"\r\n"] {
        assert!(
            matches!(TokenKey::from_bytes(empty), Err(KeyError::Empty)),
            "{empty:?}"
        );
    }
}

#[test]
fn ed25519_round_trip() {
    let private = key(ED_A_PRIVATE.as_bytes());
    let public = key(ED_A_PUBLIC.as_bytes());
    assert_eq!(private.algorithm_name(), "EdDSA");
    assert!(private.can_mint());
    assert!(!public.can_mint());
    let minted = claims(Audience::Root, NOW + 60);
    let token = private.mint(&minted).expect("mint");
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().expect("header"))
        .expect("base64");
    assert_eq!(header, br#"{"typ":"JWT","alg":"EdDSA"}"#);
    assert_eq!(
        public.verify(&token, Audience::Root, "default", NOW),
        Ok(minted.clone())
    );
    assert_eq!(
        private.verify(&token, Audience::Root, "default", NOW),
        Ok(minted.clone())
    );
    assert!(matches!(public.mint(&minted), Err(KeyError::VerifyOnly)));
    // CRLF line endings and no final newline are PEM too.
    let crlf = ED_A_PUBLIC.replace('\n', "\r\n");
    assert!(
        key(crlf.as_bytes())
            .verify(&token, Audience::Root, "default", NOW)
            .is_ok()
    );
    let bare = ED_A_PUBLIC.trim_end();
    assert!(
        key(bare.as_bytes())
            .verify(&token, Audience::Root, "default", NOW)
            .is_ok()
    );
    // Another key pair refuses it.
    for other in [ED_B_PUBLIC, ED_B_PRIVATE] {
        assert_eq!(
            key(other.as_bytes()).verify(&token, Audience::Root, "default", NOW),
            Err(TokenError::BadSignature)
        );
    }
}

#[test]
fn unsupported_or_invalid_pem_is_refused_not_taken_for_a_secret() {
    for pem in [X25519_PRIVATE, P256_PRIVATE] {
        assert!(matches!(
            TokenKey::from_bytes(pem.as_bytes()),
            Err(KeyError::UnsupportedPem)
        ));
    }
    let certificate =
        "-----BEGIN CERTIFICATE-----\nMA4wBQYDK2VwAwUAAQIDBA==\n-----END CERTIFICATE-----\n";
    let rsa = "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n";
    let garbage = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
    let truncated = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2Vw";
    let unterminated = "-----BEGIN ";
    for pem in [certificate, rsa, garbage, truncated, unterminated] {
        assert!(
            matches!(
                TokenKey::from_bytes(pem.as_bytes()),
                Err(KeyError::UnsupportedPem)
            ),
            "{pem}"
        );
    }
    // An Ed25519 SPKI with a short key: refused at load, not a panic at verify.
    assert!(matches!(
        TokenKey::from_bytes(ED_SHORT_PUBLIC.as_bytes()),
        Err(KeyError::InvalidEd25519)
    ));
    let missing = TokenKey::from_file("/nonexistent/token.key").expect_err("no file");
    assert!(matches!(missing, KeyError::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/token.key"));
}

#[test]
fn expiry_and_not_before_have_thirty_seconds_of_leeway() {
    let key = key(SECRET);
    let at = |exp: u64, nbf: Option<u64>| {
        let token = key
            .mint(&Claims {
                nbf,
                ..claims(Audience::Join, exp)
            })
            .expect("mint");
        verify(&key, &token)
    };
    assert!(at(NOW + 1, None).is_ok());
    assert!(at(NOW, None).is_ok(), "within the leeway");
    assert!(at(NOW - 29, None).is_ok(), "within the leeway");
    assert_eq!(at(NOW - 30, None), Err(TokenError::Expired));
    assert_eq!(at(0, None), Err(TokenError::Expired));
    assert!(at(u64::MAX, None).is_ok(), "no overflow");
    assert!(at(NOW + 60, Some(NOW)).is_ok());
    assert!(
        at(NOW + 60, Some(NOW + LEEWAY_SECS)).is_ok(),
        "within the leeway"
    );
    assert_eq!(at(NOW + 60, Some(NOW + 31)), Err(TokenError::NotYetValid));
    assert_eq!(at(NOW + 60, Some(u64::MAX)), Err(TokenError::NotYetValid));
    let late = key.mint(&claims(Audience::Join, NOW)).expect("mint");
    assert_eq!(
        key.verify(&late, Audience::Join, "default", u64::MAX),
        Err(TokenError::Expired)
    );
}

#[test]
fn audience_and_overlay_must_match() {
    let key = key(SECRET);
    let join = key.mint(&claims(Audience::Join, NOW + 60)).expect("mint");
    assert_eq!(
        key.verify(&join, Audience::Root, "default", NOW),
        Err(TokenError::WrongAudience)
    );
    let root = key.mint(&claims(Audience::Root, NOW + 60)).expect("mint");
    assert_eq!(verify(&key, &root), Err(TokenError::WrongAudience));
    for overlay in ["other", "Default", "default ", ""] {
        assert_eq!(
            key.verify(&join, Audience::Join, overlay, NOW),
            Err(TokenError::WrongOverlay),
            "{overlay:?}"
        );
    }
    let admin = hs256_payload(r#"{"exp":1700000060,"aud":"admin","ovl":"default"}"#);
    assert_eq!(verify(&key, &admin), Err(TokenError::WrongAudience));
    let upper = hs256_payload(r#"{"exp":1700000060,"aud":"JOIN","ovl":"default"}"#);
    assert_eq!(verify(&key, &upper), Err(TokenError::WrongAudience));
    let minimal = hs256_payload(r#"{"exp":1700000060,"aud":"join","ovl":"default","sub":null}"#);
    let claims = verify(&key, &minimal).expect("valid");
    assert_eq!((claims.sub, claims.nbf), (None, None));
}

#[test]
fn only_the_algorithm_of_the_key_is_accepted() {
    let hs = key(SECRET);
    let ed_private = key(ED_A_PRIVATE.as_bytes());
    let ed_public = key(ED_A_PUBLIC.as_bytes());
    let minted = claims(Audience::Join, NOW + 60);
    let eddsa = ed_private.mint(&minted).expect("mint");
    assert_eq!(verify(&hs, &eddsa), Err(TokenError::BadSignature));
    let hs256 = hs.mint(&minted).expect("mint");
    assert_eq!(verify(&ed_public, &hs256), Err(TokenError::BadSignature));
    assert_eq!(verify(&ed_private, &hs256), Err(TokenError::BadSignature));
    // The classic confusion: HS256 keyed with the public key's PEM text.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &minted,
        &EncodingKey::from_secret(ED_A_PUBLIC.as_bytes()).expect("secret"),
    )
    .expect("encode");
    assert_eq!(verify(&ed_public, &confused), Err(TokenError::BadSignature));
    // Same secret, another HMAC.
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &minted,
        &EncodingKey::from_secret(SECRET).expect("secret"),
    )
    .expect("encode");
    assert_eq!(verify(&hs, &hs512), Err(TokenError::BadSignature));
}

#[test]
fn alg_none_is_never_accepted() {
    let key = key(SECRET);
    let payload = b64(br#"{"exp":1700000060,"aud":"join","ovl":"default"}"#);
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":null}"#,
    ] {
        for signature in ["", "AAAA"] {
            let token = format!("{}.{payload}.{signature}", b64(header.as_bytes()));
            assert_eq!(
                verify(&key, &token),
                Err(TokenError::Malformed),
                "{header} {signature:?}"
            );
        }
    }
    // Even with a valid HMAC over it.
    let signed = hs256_raw(
        r#"{"alg":"none"}"#,
        br#"{"exp":1700000060,"aud":"join","ovl":"default"}"#,
    );
    assert!(verify(&key, &signed).is_err());
}

#[test]
fn shapes_that_are_not_tokens_are_malformed() {
    let key = key(SECRET);
    assert_eq!(verify(&key, ""), Err(TokenError::Missing));
    let valid = key.mint(&claims(Audience::Join, NOW + 60)).expect("mint");
    let (header, rest) = valid.split_once('.').expect("segments");
    let four = format!("{valid}.{header}");
    let two = rest.to_owned();
    for token in [
        "a",
        "a.b",
        ".",
        "..",
        "...",
        "a.b.c.d",
        &four,
        &two,
        "!!!.@@@.###",
        "a b.c d.e f",
        "\u{0}é.日本.🦀",
        "eyJ.eyJ.",
        "=.=.=",
    ] {
        assert_eq!(verify(&key, token), Err(TokenError::Malformed), "{token:?}");
    }
    // Padded base64 is not base64url as JWS wants it.
    let padded = format!("{header}==.{rest}");
    assert!(verify(&key, &padded).is_err());
    // A header of invalid UTF-8, and a validly signed payload of invalid UTF-8.
    let bad_utf8 = format!("{}.{}.AAAA", b64(&[0xff, 0xfe, 0x80]), b64(b"{}"));
    assert_eq!(verify(&key, &bad_utf8), Err(TokenError::Malformed));
    let signed = hs256_raw(r#"{"alg":"HS256"}"#, &[0xff, 0xfe, 0x80]);
    assert_eq!(verify(&key, &signed), Err(TokenError::Malformed));
}

#[test]
fn validly_signed_claims_of_the_wrong_shape_are_malformed() {
    let key = key(SECRET);
    for payload in [
        "",
        "null",
        "[]",
        "{",
        r#""exp""#,
        r#"{"aud":"join","ovl":"default"}"#,
        r#"{"exp":"1700000060","aud":"join","ovl":"default"}"#,
        r#"{"exp":-1,"aud":"join","ovl":"default"}"#,
        r#"{"exp":1700000060.5,"aud":"join","ovl":"default"}"#,
        r#"{"exp":1e400,"aud":"join","ovl":"default"}"#,
        r#"{"exp":1700000060,"aud":["join"],"ovl":"default"}"#,
        r#"{"exp":1700000060,"ovl":"default"}"#,
        r#"{"exp":1700000060,"aud":"join"}"#,
        r#"{"exp":1700000060,"aud":"join","ovl":7}"#,
        r#"{"exp":1700000060,"aud":"join","ovl":"default","sub":7}"#,
        r#"{"exp":1700000060,"aud":"join","ovl":"default","nbf":"soon"}"#,
        r#"{"exp":1700000060,"exp":1700000061,"aud":"join","ovl":"default"}"#,
    ] {
        assert_eq!(
            verify(&key, &hs256_payload(payload)),
            Err(TokenError::Malformed),
            "{payload}"
        );
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let key = key(SECRET);
    let valid = key.mint(&claims(Audience::Join, NOW + 60)).expect("mint");
    let padded = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES + 1 - valid.len()));
    assert_eq!(verify(&key, &padded), Err(TokenError::TooLarge));
    assert_eq!(
        verify(&key, &"a".repeat(1 << 20)),
        Err(TokenError::TooLarge)
    );
    // At the limit it is parsed (and refused for what it is).
    let at_limit = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES - valid.len()));
    assert_eq!(verify(&key, &at_limit), Err(TokenError::BadSignature));
    let sub = "x".repeat(MAX_TOKEN_BYTES);
    let big = Claims {
        sub: Some(sub),
        ..claims(Audience::Join, NOW + 60)
    };
    let big = key.mint(&big).expect("mint");
    assert_eq!(verify(&key, &big), Err(TokenError::TooLarge));
}

#[test]
fn any_change_to_a_valid_token_is_refused_without_panicking() {
    // Fewer variants for Ed25519, whose unoptimized verification is slow.
    let cases = [
        (key(SECRET), &['A', 'B', '.', '\0'][..]),
        (key(ED_A_PRIVATE.as_bytes()), &['B', '.'][..]),
    ];
    for (key, replacements) in cases {
        let token = key.mint(&claims(Audience::Join, NOW + 60)).expect("mint");
        assert!(verify(&key, &token).is_ok());
        for (i, original) in token.char_indices() {
            for &replacement in replacements {
                if replacement == original {
                    continue;
                }
                let mut mutated = token.clone();
                mutated.replace_range(i..=i, replacement.encode_utf8(&mut [0; 4]));
                assert!(verify(&key, &mutated).is_err(), "{i} {replacement:?}");
            }
        }
        for end in 0..token.len() {
            assert!(verify(&key, &token[..end]).is_err(), "truncated to {end}");
        }
    }
}

#[test]
fn debug_and_errors_reveal_no_secrets() {
    let shown = format!("{:?}", key(b"hunter2-secret"));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(
        shown,
        r#"TokenKey { algorithm: "HS256", can_mint: true, .. }"#
    );
    let private = format!("{:?}", key(ED_A_PRIVATE.as_bytes()));
    assert_eq!(
        private,
        r#"TokenKey { algorithm: "EdDSA", can_mint: true, .. }"#
    );
    let public = format!("{:?}", key(ED_A_PUBLIC.as_bytes()));
    assert_eq!(
        public,
        r#"TokenKey { algorithm: "EdDSA", can_mint: false, .. }"#
    );
    for error in [
        TokenError::Missing,
        TokenError::TooLarge,
        TokenError::Malformed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::WrongOverlay,
    ] {
        let message = error.to_string();
        assert!(!message.is_empty() && !message.contains("ey"), "{message}");
    }
}

//! `bootstrap-server token`: mints a token for the opt-in token auth, offline, from the
//! same key file the server verifies with (an HS256 secret or an Ed25519 private key).

use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use clap::{Args, ValueEnum};
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};

/// The overlay a token is for unless `--overlay` says otherwise.
const DEFAULT_OVERLAY: &str = "default";

/// Mint a token (printed on stdout).
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Key file: an HS256 shared secret, or an Ed25519 PKCS#8 private key (PEM).
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,
    /// Whom the token admits: a /join socket or the root.
    #[arg(long, value_enum)]
    aud: AudienceArg,
    /// The overlay the token is valid for.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_OVERLAY)]
    overlay: String,
    /// Lifetime in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    ttl: u64,
    /// Subject: an opaque id of the holder, shown in the server's logs.
    #[arg(long, value_name = "ID")]
    sub: Option<String>,
}

/// `--aud`: the library's [`Audience`], spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AudienceArg {
    /// A newcomer on /join.
    Join,
    /// The root.
    Root,
}

impl From<AudienceArg> for Audience {
    fn from(arg: AudienceArg) -> Self {
        match arg {
            AudienceArg::Join => Self::Join,
            AudienceArg::Root => Self::Root,
        }
    }
}

/// Mints the token `args` describe, valid from `now_unix` (seconds since the Unix
/// epoch) for `--ttl` seconds.
pub(crate) fn mint(args: &TokenArgs, now_unix: u64) -> anyhow::Result<String> {
    ensure!(args.ttl > 0, "--ttl must be at least 1 second");
    ensure!(!args.overlay.is_empty(), "--overlay must not be empty");
    let key = TokenKey::from_file(&args.key_file)?;
    let exp = now_unix
        .checked_add(args.ttl)
        .context("--ttl is too large")?;
    let claims = Claims {
        exp,
        aud: args.aud.into(),
        ovl: args.overlay.clone(),
        sub: args.sub.clone(),
        nbf: None,
    };
    key.mint(&claims)
        .with_context(|| format!("cannot mint a token with {}", args.key_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    /// A key file in the temporary directory, removed on drop.
    struct KeyFile(PathBuf);

    impl KeyFile {
        fn new(name: &str, contents: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!(
                "bootstrap-server-token-{}-{name}",
                std::process::id()
            ));
            std::fs::write(&path, contents).expect("write the key file");
            Self(path)
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn args(key_file: &KeyFile, aud: AudienceArg) -> TokenArgs {
        TokenArgs {
            key_file: key_file.0.clone(),
            aud,
            overlay: DEFAULT_OVERLAY.to_owned(),
            ttl: 3600,
            sub: Some("alice".to_owned()),
        }
    }

    #[test]
    fn minted_tokens_verify_with_the_same_key_file() {
        let file = KeyFile::new("hs256", b"s3cret\n");
        let token = mint(&args(&file, AudienceArg::Root), NOW).expect("mint");
        let key = TokenKey::from_file(&file.0).expect("key");
        let claims = key
            .verify(&token, Audience::Root, DEFAULT_OVERLAY, NOW + 3599)
            .expect("valid");
        assert_eq!(claims.exp, NOW + 3600);
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert!(
            key.verify(&token, Audience::Join, DEFAULT_OVERLAY, NOW)
                .is_err()
        );
    }

    #[test]
    fn bad_arguments_and_public_keys_are_errors() {
        let file = KeyFile::new("bad", b"s3cret");
        let zero = TokenArgs {
            ttl: 0,
            ..args(&file, AudienceArg::Join)
        };
        assert!(mint(&zero, NOW).is_err());
        let huge = TokenArgs {
            ttl: u64::MAX,
            ..args(&file, AudienceArg::Join)
        };
        assert!(mint(&huge, NOW).is_err());
        let public = KeyFile::new(
            "public.pem",
            b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAFGpVHSyjVsslkpobm0KwPDO3JCAF8NDwBjCAEagJ31I=\n-----END PUBLIC KEY-----\n",
        );
        assert!(mint(&args(&public, AudienceArg::Join), NOW).is_err());
        let missing = TokenArgs {
            key_file: PathBuf::from("/nonexistent/key"),
            ..args(&file, AudienceArg::Join)
        };
        let error = mint(&missing, NOW).expect_err("no key file");
        assert!(error.to_string().contains("/nonexistent/key"), "{error}");
    }
}

//! Loopback-only network namespaces for tests that start libwebrtc peers (Node's wrtc,
//! Chromium): those probe every interface they see, so the test re-runs itself where the
//! only interface is `lo` (`unshare --net`, then `ip link set lo up`), and no packet can
//! leave the machine.

use std::io::Write as _;

use anyhow::{Context as _, ensure};

/// Set in the environment of the copy of the test running inside the namespace.
pub const INSIDE_ENV: &str = "BOOTSTRAP_TEST_IN_NETNS";

/// Runs the test named `test` (its exact name in this test binary) inside a new
/// loopback-only network namespace: outside, re-executes this binary there for that one
/// test and checks it passed; inside, runs `scenario` on a two-thread Tokio runtime.
///
/// # Errors
/// When `unshare` cannot run (it needs root), or the test failed inside.
pub fn in_loopback_netns(
    test: &str,
    scenario: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if std::env::var_os(INSIDE_ENV).is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(scenario());
    }
    let status = reexec([test, "--exact", "--nocapture", "--test-threads=1"])?;
    ensure!(
        status.success(),
        "{test} failed inside the network namespace ({status})"
    );
    Ok(())
}

/// Runs this program again with `args` inside a new loopback-only network namespace,
/// with [`INSIDE_ENV`] set, and returns how it exited.
///
/// # Errors
/// When `unshare` cannot run (it needs root).
pub fn reexec<I, S>(args: I) -> anyhow::Result<std::process::ExitStatus>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let exe = std::env::current_exe().context("this executable")?;
    std::process::Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            r#"PATH="$PATH:/usr/sbin:/sbin" ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(exe)
        .args(args)
        .env(INSIDE_ENV, "1")
        .status()
        .context("running unshare --net (needs root)")
}

/// Writes one line straight to the process's standard error. libtest captures
/// `println!`/`eprintln!` of passing tests; scenario verdicts and skips must be seen.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A test whose prerequisites are missing: fails in CI (where `.ci/run` installs them),
/// otherwise prints a loud SKIPPED line saying how to install them.
///
/// # Errors
/// When the `CI` environment variable is set.
pub fn skip_or_fail(test: &str, what: &str, fix: &str) -> anyhow::Result<()> {
    ensure!(
        std::env::var_os("CI").is_none(),
        "{test}: {what}; CI must run `{fix}` first"
    );
    report(&format!(
        "\n*** SKIPPED {test}: {what}. Run `{fix}` to install it. ***\n"
    ));
    Ok(())
}

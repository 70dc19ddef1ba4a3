//! [`Proc`]: a child process whose standard output is read line by line, for tests that
//! drive binaries or JS harnesses and wait for what they print.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long [`Proc::expect`] waits for a line.
pub const LINE_WAIT: Duration = Duration::from_secs(30);

/// A running child process (killed when dropped) and the lines it printed so far.
#[derive(Debug)]
pub struct Proc {
    /// A name for error messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Every line read so far, in order.
    pub seen: Vec<String>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    /// Starts `command` with piped standard input and output (standard error inherited).
    ///
    /// # Errors
    /// When the process cannot start.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> anyhow::Result<Self> {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name,
            child,
            seen: Vec::new(),
            lines,
        })
    }

    /// The next line, within `wait`; `None` once the process closed its output.
    ///
    /// # Errors
    /// When nothing comes within `wait`.
    pub async fn next_line(&mut self, wait: Duration) -> anyhow::Result<Option<String>> {
        match tokio::time::timeout(wait, self.lines.recv()).await {
            Ok(line) => {
                if let Some(line) = &line {
                    self.seen.push(line.clone());
                }
                Ok(line)
            }
            Err(_) => bail!("{} printed nothing for {wait:?}", self.name),
        }
    }

    /// Waits up to [`LINE_WAIT`] for a line containing `needle`, or finds it among the
    /// lines already read.
    ///
    /// # Errors
    /// When the process exits or stays silent first.
    pub async fn expect(&mut self, needle: &str) -> anyhow::Result<String> {
        self.expect_line(needle, |line| line.contains(needle)).await
    }

    /// Waits up to [`LINE_WAIT`] for a line that satisfies `wanted`, or finds it among
    /// the lines already read. `what` names it in errors.
    ///
    /// # Errors
    /// When the process exits or stays silent first.
    pub async fn expect_line(
        &mut self,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        if let Some(line) = self.seen.iter().find(|l| wanted(l)) {
            return Ok(line.clone());
        }
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left).await {
                Ok(Some(line)) if wanted(&line) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "{} exited before printing {what:?}; printed {:?}",
                    self.name,
                    self.seen
                ),
                Err(error) => bail!("{error} (waiting for {what:?}; printed {:?})", self.seen),
            }
        }
    }

    /// Writes `line` and a newline to the process's standard input.
    ///
    /// # Errors
    /// When the process closed its input.
    pub async fn type_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits up to 10 s for the process to exit, and checks it succeeded.
    ///
    /// # Errors
    /// When it does not exit in time or exits with a failure.
    pub async fn exit_ok(&mut self) -> anyhow::Result<()> {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit", self.name))??;
        ensure!(status.success(), "{} failed ({status})", self.name);
        Ok(())
    }
}

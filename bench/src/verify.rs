//! What the generator shares between its root task and handshake tasks, and how it
//! reports verification failures.
//!
//! The root task learns a newcomer's id from the first (offer) message it receives and
//! hands it to that handshake's task through the [`Board`]; every later root-bound
//! message is passed on as a [`RootNote`] so the handshake task can time it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::script::{Id, Mismatch};
use crate::ws::Arrival;

/// What the root tells a handshake task.
#[derive(Debug)]
pub(crate) enum RootNote {
    /// The root received the offer from the newcomer whose id is `origin`.
    Offer {
        /// The newcomer's id, as the server wrote it.
        origin: Id,
        /// When it reached the root.
        at: Arrival,
    },
    /// The root received root-bound candidate `rank`.
    Candidate {
        /// The candidate's rank.
        rank: u32,
        /// When it reached the root.
        at: Arrival,
    },
    /// The root received a wrong message on this handshake's stream.
    Failed(Failure),
}

/// Handshakes whose offer the root has not seen yet, by handshake number.
#[derive(Debug, Default)]
pub(crate) struct Board(Mutex<HashMap<u32, mpsc::UnboundedSender<RootNote>>>);

impl Board {
    /// Registers handshake `n` before its newcomer sends anything.
    pub(crate) fn register(&self, n: u32, tx: mpsc::UnboundedSender<RootNote>) {
        self.lock().insert(n, tx);
    }

    /// Takes handshake `n`'s registration: `None` if it never registered or its offer
    /// was already seen (a duplicated or misrouted offer).
    pub(crate) fn take(&self, n: u32) -> Option<mpsc::UnboundedSender<RootNote>> {
        self.lock().remove(&n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<RootNote>>> {
        // Nothing panics while holding the lock.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Kinds of verification failure; any of them fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A message never arrived (the handshake timed out).
    Lost,
    /// A message arrived twice, out of order, or after its stream ended.
    Duplicated,
    /// A message arrived at the wrong socket.
    Misrouted,
    /// `origin` was not the sender's id.
    WrongOrigin,
    /// A message arrived altered: fields, field order, destination or bytes.
    Altered,
    /// A connection failed or was closed by the server.
    Connection,
}

/// One verification failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for the report.
    pub detail: String,
}

impl Failure {
    /// A failure of `kind`.
    pub(crate) fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The failure a frame mismatch means, at `place` (e.g. "handshake 7 answerer").
    pub(crate) fn mismatch(mismatch: &Mismatch, place: &str) -> Self {
        let kind = match mismatch {
            Mismatch::Origin => FailureKind::WrongOrigin,
            Mismatch::Misrouted(_) => FailureKind::Misrouted,
            Mismatch::OutOfOrder { .. } => FailureKind::Duplicated,
            Mismatch::Altered => FailureKind::Altered,
        };
        Self::new(kind, format!("{place}: {mismatch:?}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

//! [`Answerer`]: a handle on one answer in progress, running in its own task.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::peer::Peer;
use crate::request::Request;
use crate::session::{self, RequestSource};

/// Later requests of one newcomer waiting for the answerer (a newcomer trickles a
/// handful of candidates). When full, [`SignalSender::signal`] waits.
const SIGNAL_QUEUE: usize = 64;

/// An answer in progress to one newcomer (one `origin`).
///
/// Feed it the newcomer's later requests with [`Answerer::signal`] (unless it came from
/// [`crate::Incoming::accept`], which routes them itself), then await
/// [`Answerer::connected`]. Dropping it gives up the answer and releases everything.
#[derive(Debug)]
pub struct Answerer {
    sender: SignalSender,
    result: oneshot::Receiver<Result<Peer, Error>>,
}

impl Answerer {
    /// Starts answering `first` in a new task (requires a Tokio runtime).
    pub(crate) fn spawn(
        endpoint: Arc<Endpoint>,
        first: Request,
        routed: Option<mpsc::Receiver<Request>>,
    ) -> Self {
        let origin = first.origin().to_owned();
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        let (mut result_tx, result) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = session::answer(
                &endpoint,
                first,
                RequestSource::new(rx, routed),
                result_tx.closed(),
            )
            .await;
            // If the handle is gone, dropping the peer here closes it.
            let _ = result_tx.send(outcome);
        });
        Self {
            sender: SignalSender { origin, tx },
            result,
        }
    }

    /// The newcomer's `/join` id.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.sender.origin
    }

    /// Hands a later request of the same newcomer to this answer.
    ///
    /// # Errors
    /// [`Error::WrongOrigin`] if the request comes from another newcomer. Requests
    /// arriving after the answer finished are dropped quietly.
    pub async fn signal(&self, request: Request) -> Result<(), Error> {
        self.sender.signal(request).await
    }

    /// A cloneable sender of later requests, to feed the answer from another task while
    /// this one awaits [`Answerer::connected`].
    #[must_use]
    pub fn signal_sender(&self) -> SignalSender {
        self.sender.clone()
    }

    /// Waits for the data channel to open.
    ///
    /// # Errors
    /// What the negotiation met: [`Error::ConnectTimeout`], [`Error::IceFailed`],
    /// [`Error::Unreachable`] (the answerer's own `/join`), ….
    pub async fn connected(self) -> Result<Peer, Error> {
        self.result.await.unwrap_or(Err(Error::Closed))
    }
}

/// Feeds later requests of one newcomer to its [`Answerer`].
#[derive(Debug, Clone)]
pub struct SignalSender {
    origin: String,
    tx: mpsc::Sender<Request>,
}

impl SignalSender {
    /// Hands a later request of the same newcomer to the answer.
    ///
    /// # Errors
    /// [`Error::WrongOrigin`] if the request comes from another newcomer. Requests
    /// arriving after the answer finished are dropped quietly.
    pub async fn signal(&self, request: Request) -> Result<(), Error> {
        if request.origin() != self.origin {
            return Err(Error::WrongOrigin {
                expected: self.origin.clone(),
                got: request.origin().to_owned(),
            });
        }
        if self.tx.send(request).await.is_err() {
            tracing::trace!(origin = %self.origin, "late request dropped: the answer is over");
        }
        Ok(())
    }
}

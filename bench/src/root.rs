//! The simulated root: one socket on the secret route that receives every root-bound
//! message, verifies it and tells the handshake it belongs to.
//!
//! The first message of an origin must be the offer of a registered handshake (its number
//! is read from the SDP); every later one must be that newcomer's next root-bound
//! candidate. Anything else is a verification failure.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::handshake::Ctx;
use crate::script::{Id, Side, Tag, origin_of, tag_of};
use crate::verify::{Failure, FailureKind, RootNote};
use crate::ws::{Arrival, Frame, WsClient};

/// The frame the servers send the root every 15 s.
const HEARTBEAT: &[u8] = b"\"heartbeat\"";

/// A newcomer's root-bound stream after its offer.
struct Stream {
    handshake: u32,
    next: u32,
    tx: mpsc::UnboundedSender<RootNote>,
}

/// Runs the root until `stop` fires; returns the failures not tied to one handshake.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut ws: WsClient,
    mut stop: oneshot::Receiver<()>,
) -> Vec<Failure> {
    let mut root = Root {
        ctx,
        streams: HashMap::new(),
        scratch: Vec::new(),
        failures: Vec::new(),
    };
    loop {
        tokio::select! {
            read = ws.fill() => {
                if let Err(e) = read {
                    root.failures.push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                    break;
                }
            }
            _ = &mut stop => break,
        }
        // One clock read per read call: the frames in it arrived together.
        let at = ws.arrival();
        loop {
            match ws.next_frame() {
                Ok(Some(Frame::Text(text))) => root.on_text(&text, at),
                Ok(Some(Frame::Ping(payload))) => {
                    if let Err(e) = ws.pong(&payload).await {
                        root.failures
                            .push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                    }
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Binary(_))) => root.failures.push(Failure::new(
                    FailureKind::Altered,
                    "root: binary frame (messages must be text)",
                )),
                Ok(Some(Frame::Close)) => {
                    root.failures.push(Failure::new(
                        FailureKind::Connection,
                        "root: closed by the server",
                    ));
                    return root.failures;
                }
                Ok(None) => break,
                Err(e) => {
                    root.failures
                        .push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                    return root.failures;
                }
            }
        }
    }
    let _ = ws.close(std::time::Duration::from_secs(2)).await;
    root.failures
}

struct Root {
    ctx: Arc<Ctx>,
    streams: HashMap<Id, Stream>,
    scratch: Vec<u8>,
    failures: Vec<Failure>,
}

impl Root {
    fn on_text(&mut self, frame: &[u8], at: Arrival) {
        if frame == HEARTBEAT {
            return;
        }
        let Some(origin) = origin_of(frame) else {
            self.failures.push(Failure::new(
                FailureKind::WrongOrigin,
                "root: a message without a server-set origin id",
            ));
            return;
        };
        let script = &self.ctx.script;
        if let Some(stream) = self.streams.get_mut(&origin) {
            let expected = Tag {
                handshake: stream.handshake,
                side: Side::Newcomer,
                rank: stream.next,
            };
            let checked = script.check(frame, &mut self.scratch, &origin, expected, None);
            let done = match checked {
                Ok(()) => {
                    let _ = stream.tx.send(RootNote::Candidate {
                        rank: stream.next,
                        at,
                    });
                    stream.next += 1;
                    stream.next > script.early
                }
                Err(mismatch) => {
                    let place = format!("root, handshake {}", stream.handshake);
                    let _ = stream
                        .tx
                        .send(RootNote::Failed(Failure::mismatch(&mismatch, &place)));
                    true
                }
            };
            if done {
                self.streams.remove(&origin);
            }
            return;
        }
        // A new origin: this must be the offer of a handshake that is waiting for it.
        let tag = tag_of(frame);
        let Some(tag) = tag.filter(|t| t.side == Side::Newcomer && t.rank == 0) else {
            self.failures.push(Failure::new(
                FailureKind::Duplicated,
                format!("root: unexpected message {tag:?} from an origin with no open stream"),
            ));
            return;
        };
        let Some(tx) = self.ctx.board.take(tag.handshake) else {
            self.failures.push(Failure::new(
                FailureKind::Duplicated,
                format!(
                    "root: offer of handshake {} arrived twice or unasked",
                    tag.handshake
                ),
            ));
            return;
        };
        match script.check(frame, &mut self.scratch, &origin, tag, None) {
            Ok(()) => {
                let _ = tx.send(RootNote::Offer { origin, at });
                if script.early > 0 {
                    let stream = Stream {
                        handshake: tag.handshake,
                        next: 1,
                        tx,
                    };
                    self.streams.insert(origin, stream);
                }
            }
            Err(mismatch) => {
                let place = format!("root, handshake {}", tag.handshake);
                let _ = tx.send(RootNote::Failed(Failure::mismatch(&mismatch, &place)));
            }
        }
    }
}

//! [`Message`]: one data-channel message, text or binary.
//!
//! Its own module, below both the `webrtc` adapter (which builds messages from what the
//! stack delivers) and the peer handle (which queues and sends them), so that neither
//! has to import the other for it.

/// One data-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (a JS string).
    Text(String),
    /// A binary message (a JS `Buffer` / `ArrayBuffer`).
    Binary(Vec<u8>),
}

impl Message {
    /// The payload bytes, whatever the kind.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(data) => data,
        }
    }
}

//! WebSocket framing (RFC 6455), IO-free: frame headers, masking, the opening
//! handshake's accept key, and a server-side [`Decoder`] that reassembles messages.
//!
//! The decoder holds no buffer while a socket is idle: complete frames are decoded in
//! place from the bytes just read, and only an incomplete frame (or a fragmented
//! message) is copied into memory owned by the decoder, which is given back once it
//! completes. A server with thousands of idle sockets pays nothing for their buffers.
//!
//! # Layout
//! - `frame`: [`OpCode`], [`Header`] and [`parse_header`], [`encode_frame`],
//!   [`encode_close`], [`apply_mask`], and [`FrameError`] with its close code.
//! - `decoder`: [`Decoder`], which yields [`Inbound`] messages and control frames.
//! - `handshake`: [`is_valid_key`] and [`accept_key`] for the opening handshake.
//!
//! ```
//! use std::ops::ControlFlow;
//! use bootstrap_ws::{Decoder, Inbound, OpCode, encode_frame};
//!
//! let mut wire = Vec::new();
//! encode_frame(&mut wire, OpCode::Text, b"hello", Some([1, 2, 3, 4])); // a client frame
//! let mut decoder = Decoder::new(1024);
//! let mut seen = Vec::new();
//! decoder
//!     .decode(&mut wire, |inbound| {
//!         if let Inbound::Text(text) = inbound {
//!             seen.push(text.to_owned());
//!         }
//!         ControlFlow::Continue(())
//!     })
//!     .expect("a valid frame");
//! assert_eq!(seen, ["hello"]);
//! ```

mod decoder;
mod frame;
mod handshake;

pub use decoder::{Decoder, Inbound};
pub use frame::{
    FrameError, Header, OpCode, apply_mask, encode_close, encode_frame, parse_header, status,
};
pub use handshake::{accept_key, is_valid_key};

//! Peer library (work in progress).

//! A Rust newcomer and a Rust root through the Rust server: messages both ways.

mod common;

use common::{Healthz as _, SECRET, TestServer, init_tracing, options, start_server, within};
use webrtc_bootstrap_peer::{Client, Error, MAX_MESSAGE_SIZE, Message, Peer, PeerState};

const N: usize = 100;

async fn pair(server: &TestServer) -> (Peer, Peer, webrtc_bootstrap_peer::Root) {
    let client = Client::with_options(&server.base_url(), options()).expect("client");
    let mut root = within("root", client.root(SECRET)).await.expect("root");
    let answering = async {
        let incoming = root.next().await.expect("a newcomer");
        incoming.accept().connected().await
    };
    let (newcomer, answerer) =
        within("connect", async { tokio::join!(client.join(), answering) }).await;
    (
        newcomer.expect("newcomer"),
        answerer.expect("answerer"),
        root,
    )
}

fn text(side: &str, i: usize) -> String {
    format!("{side} text #{i} {}", "x".repeat(i))
}

fn binary(side: u8, i: usize) -> Vec<u8> {
    (0..=i).map(|k| side ^ (k as u8).wrapping_mul(31)).collect()
}

async fn send_all(peer: &Peer, side: &str, tag: u8) {
    for i in 0..N {
        peer.send_text(&text(side, i)).await.expect("send text");
        peer.send_binary(&binary(tag, i))
            .await
            .expect("send binary");
    }
}

async fn receive_all(peer: &mut Peer, side: &str, tag: u8) {
    for i in 0..N {
        let got = within("text message", peer.recv())
            .await
            .expect("a message");
        assert_eq!(got, Message::Text(text(side, i)), "text #{i}");
        let got = within("binary message", peer.recv())
            .await
            .expect("a message");
        assert_eq!(got, Message::Binary(binary(tag, i)), "binary #{i}");
    }
}

#[tokio::test]
async fn hundred_text_and_binary_messages_each_way_in_order() {
    init_tracing();
    let server = start_server().await;
    let (mut newcomer, mut answerer, root) = pair(&server).await;
    assert!(newcomer.remote_id().is_some_and(|id| id.len() == 32));
    assert!(answerer.remote_id().is_some_and(|id| id.len() == 32));
    assert_ne!(newcomer.remote_id(), answerer.remote_id());
    assert_eq!(newcomer.state(), PeerState::Connected);
    // The default label is simple-peer's: 40 random hex characters, seen by both sides.
    assert_eq!(newcomer.label().len(), 40);
    assert!(newcomer.label().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(answerer.label(), newcomer.label());

    tokio::join!(
        send_all(&newcomer, "newcomer", 0x5a),
        send_all(&answerer, "answerer", 0xa5),
    );
    tokio::join!(
        receive_all(&mut answerer, "newcomer", 0x5a),
        receive_all(&mut newcomer, "answerer", 0xa5),
    );

    // Both /join sockets are closed once connected.
    server.wait_prospects(0).await;

    newcomer.close().await;
    // The remote sees the close.
    assert_eq!(within("remote close", answerer.recv()).await, None);
    assert_eq!(
        answerer.send_text("after close").await,
        Err(Error::ClosedByRemote)
    );
    root.close().await;
}

#[tokio::test]
async fn largest_message_passes_and_larger_is_refused() {
    init_tracing();
    let server = start_server().await;
    let (newcomer, mut answerer, _root) = pair(&server).await;
    assert_eq!(newcomer.max_message_size(), MAX_MESSAGE_SIZE);
    let big: Vec<u8> = (0..MAX_MESSAGE_SIZE).map(|i| (i % 251) as u8).collect();
    newcomer.send_binary(&big).await.expect("largest message");
    let too_big = vec![0u8; MAX_MESSAGE_SIZE + 1];
    assert_eq!(
        newcomer.send_binary(&too_big).await,
        Err(Error::MessageTooLarge {
            size: MAX_MESSAGE_SIZE + 1,
            max: MAX_MESSAGE_SIZE
        })
    );
    let text = "é".repeat(MAX_MESSAGE_SIZE / 2);
    newcomer.send_text(&text).await.expect("largest text");
    assert!(matches!(
        newcomer.send_text(&format!("{text}!")).await,
        Err(Error::MessageTooLarge { .. })
    ));
    assert_eq!(
        within("big", answerer.recv()).await,
        Some(Message::Binary(big))
    );
    assert_eq!(
        within("big text", answerer.recv()).await,
        Some(Message::Text(text))
    );
}

#[tokio::test]
async fn the_newcomer_chooses_the_channel_label() {
    init_tracing();
    let server = start_server().await;
    let mut labelled = options();
    labelled.channel_label = Some("my-app/1".to_owned());
    let client = Client::with_options(&server.base_url(), labelled).expect("client");
    let mut root = within("root", client.root(SECRET)).await.expect("root");
    let answering = async {
        let incoming = root.next().await.expect("a newcomer");
        incoming.accept().connected().await
    };
    let (newcomer, answerer) =
        within("connect", async { tokio::join!(client.join(), answering) }).await;
    let (newcomer, answerer) = (newcomer.expect("newcomer"), answerer.expect("answerer"));
    assert_eq!(newcomer.label(), "my-app/1");
    assert_eq!(answerer.label(), "my-app/1");
}

//! Tree overlays with real servers and real WebRTC data channels on loopback.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bootstrap_testkit::TestServer;
use serde_json::{Value, json};
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions, Source};
use webrtc_bootstrap_peer::{Client, Options};

const SECRET: &str = "tree-secret";

fn client(server: &TestServer) -> anyhow::Result<Client> {
    let mut options = Options::loopback();
    options.timeout = Duration::from_secs(20);
    Ok(Client::with_options(&server.base_url(), options)?)
}

fn options(max_degree: usize) -> NodeOptions {
    NodeOptions {
        max_degree,
        ..NodeOptions::default()
    }
}

/// Joins `count` nodes, a few at a time.
async fn join_many(
    server: &TestServer,
    count: usize,
    max_degree: usize,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for batch in 0..count.div_ceil(5) {
        let mut joins = Vec::new();
        for _ in 0..5.min(count - batch * 5) {
            let client = client(server)?;
            joins.push(tokio::spawn(async move {
                Node::join(client, options(max_degree)).await
            }));
        }
        for join in joins {
            nodes.push(
                tokio::time::timeout(Duration::from_secs(30), join)
                    .await
                    .context("join timed out")???,
            );
        }
    }
    Ok(nodes)
}

/// Waits for the next event matching `wanted`, keeping the others in `seen`.
async fn wait_event(
    node: &mut Node,
    what: &str,
    wanted: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, node.next_event())
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
            .with_context(|| format!("node closed while waiting for {what}"))?;
        if wanted(&event) {
            return Ok(event);
        }
    }
}

/// Collects the broadcasts each node received within `window`.
async fn broadcasts(nodes: &mut [Node], window: Duration) -> Vec<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + window;
    let mut received = vec![Vec::new(); nodes.len()];
    for (node, got) in nodes.iter_mut().zip(&mut received) {
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, node.next_event()).await {
            if let Event::Data {
                delivery: Delivery::Broadcast,
                data,
                from: Source::Parent,
            } = event
            {
                got.push(data);
            }
        }
    }
    received
}

async fn wait_until(what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_with_max_degree_three_and_a_broadcast() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let mut root = Node::root(client(&server)?, SECRET, options(3)).await?;
    let mut nodes = join_many(&server, 30, 3).await?;
    assert_eq!(nodes.len(), 30);
    for node in &nodes {
        let info = node.info();
        assert!(info.parent.is_some(), "a node without a parent: {info:?}");
        assert!(info.children.len() <= 3, "{info:?}");
    }
    // The tree holds every node: 30 child links in all (the answering side registers
    // its child a moment after the newcomer's channel opens).
    wait_until("30 child links", || {
        nodes.iter().map(|n| n.info().children.len()).sum::<usize>() + root.info().children.len()
            == 30
    })
    .await?;
    let root_info = root.info();
    assert!(
        root_info.is_root && root_info.children.len() <= 3,
        "{root_info:?}"
    );
    assert!(nodes.iter().all(|n| n.info().children.len() <= 3));
    // The root answered at most 3 requests itself.
    let mut root_children = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(100), root.next_event()).await
    {
        if matches!(event, Event::ChildConnected { .. }) {
            root_children += 1;
        }
    }
    assert!(root_children <= 3, "root answered {root_children}");

    root.broadcast(json!({"n": 1, "text": "hello tree"}))
        .await?;
    let received = broadcasts(&mut nodes, Duration::from_secs(5)).await;
    for (i, got) in received.iter().enumerate() {
        assert_eq!(
            got,
            &vec![json!({"n": 1, "text": "hello tree"})],
            "node {i} got {got:?}"
        );
    }
    root.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_closed_inner_node_rejoin() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let root = Node::root(client(&server)?, SECRET, options(2)).await?;
    let mut nodes = join_many(&server, 8, 2).await?;
    // Close an inner node (one with children).
    let inner = nodes
        .iter()
        .position(|n| !n.info().children.is_empty())
        .context("no inner node")?;
    let orphans = nodes[inner].info().children.len();
    let victim = nodes.remove(inner);
    victim.close().await;
    // Its children notice and re-join.
    let mut rejoined = 0;
    for node in &mut nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut closed = false;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, node.next_event()).await {
            if event == Event::ParentClosed {
                closed = true;
                break;
            }
        }
        if closed {
            wait_event(node, "re-join", |e| {
                matches!(e, Event::ParentConnected { .. })
            })
            .await?;
            rejoined += 1;
        }
    }
    assert_eq!(rejoined, orphans);
    for node in &nodes {
        assert!(node.info().parent.is_some());
    }
    root.broadcast(json!("after")).await?;
    let received = broadcasts(&mut nodes, Duration::from_secs(5)).await;
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got, &vec![json!("after")], "node {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stored_for_an_empty_slot_is_answered_by_the_next_child() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let root = Node::root(client(&server)?, SECRET, options(1)).await?;
    // A takes the root's only slot; B's offer arrives while A is still a candidate, so
    // it is stored for slot 0 and handed to A when A connects.
    let a_client = client(&server)?;
    let a = tokio::spawn(async move { Node::join(a_client, options(1)).await });
    wait_until("A is a candidate", || root.info().candidates == 1).await?;
    let b_client = client(&server)?;
    let b = tokio::spawn(async move { Node::join(b_client, options(1)).await });
    let a = tokio::time::timeout(Duration::from_secs(30), a).await???;
    let b = tokio::time::timeout(Duration::from_secs(30), b).await???;
    wait_until("root adopted A", || root.info().children.len() == 1).await?;
    wait_until("A adopted B", || a.info().children.len() == 1).await?;
    assert!(b.info().parent.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_requests_and_candidates_are_dropped_at_the_timeout() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let timeout = Duration::from_millis(1500);
    let root = Node::root(
        client(&server)?,
        SECRET,
        NodeOptions {
            max_degree: 1,
            request_timeout: timeout,
            ..NodeOptions::default()
        },
    )
    .await?;
    // Two newcomers that go away after sending their offers: the first holds the root's
    // slot as a candidate, the second's request is stored for the empty slot.
    let first = client(&server)?;
    let first = tokio::spawn(async move { first.join().await });
    wait_until("first candidate", || root.info().candidates == 1).await?;
    let second = client(&server)?;
    let second = tokio::spawn(async move { second.join().await });
    wait_until("second stored", || root.info().stored >= 1).await?;
    first.abort();
    second.abort();
    // Nobody connects: both go at the request timeout.
    wait_until("timeouts", || {
        let info = root.info();
        info.candidates == 0 && info.stored == 0
    })
    .await?;
    // The slot is free again.
    let node = Node::join(client(&server)?, options(1)).await?;
    assert!(node.info().parent.is_some());
    wait_until("root adopted the node", || root.info().children.len() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_leave_the_node_running() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let mut root = Node::root(client(&server)?, SECRET, options(3)).await?;
    // A plain peer (not an overlay node) as the root's child, sending garbage.
    let rogue = client(&server)?.join().await?;
    wait_event(&mut root, "rogue child", |e| {
        matches!(e, Event::ChildConnected { .. })
    })
    .await?;
    for text in [
        "not json",
        "null",
        "[1,2]",
        r#"{"type":"PING"}"#,
        r#"{"type":"JOIN-REQUEST","origin":5}"#,
        r#"{"no":"type"}"#,
    ] {
        rogue.send_text(text).await?;
    }
    rogue.send_binary(&[0xff, 0x00, 0x12]).await?;
    rogue
        .send_text(r#"{"type":"DATA","data":{"still":"alive"}}"#)
        .await?;
    let event = wait_event(&mut root, "data after garbage", |e| {
        matches!(e, Event::Data { .. })
    })
    .await?;
    let Event::Data { data, delivery, .. } = event else {
        unreachable!()
    };
    assert_eq!(
        (data, delivery),
        (json!({"still": "alive"}), Delivery::Direct)
    );
    // The root still answers newcomers and broadcasts.
    let mut node = Node::join(client(&server)?, options(3)).await?;
    wait_until("root adopted the node", || root.info().children.len() == 2).await?;
    root.broadcast(json!(42)).await?;
    let Event::Data { data, .. } =
        wait_event(&mut node, "broadcast", |e| matches!(e, Event::Data { .. })).await?
    else {
        unreachable!()
    };
    assert_eq!(data, json!(42));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_really_closes_parent_and_children() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let root = Node::root(client(&server)?, SECRET, options(2)).await?;
    let mut nodes = join_many(&server, 3, 2).await?;
    // Two children of the root, and the third under one of them.
    wait_until("a node with one child", || {
        nodes.iter().any(|n| n.info().children.len() == 1)
    })
    .await?;
    let middle = nodes
        .iter()
        .position(|n| n.info().children.len() == 1)
        .context("no inner node")?;
    let middle = nodes.remove(middle);
    assert_eq!(root.info().children.len(), 2);
    middle.close().await;
    // Its parent sees the child go, its child sees the parent go.
    wait_until("the root lost a child", || root.info().children.len() == 1).await?;
    let mut orphans = 0;
    for node in &mut nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, node.next_event()).await {
            if event == Event::ParentClosed {
                orphans += 1;
                break;
            }
        }
    }
    assert_eq!(
        orphans, 1,
        "the closed node's child did not lose its parent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_travel_up_to_the_root_and_to_one_child() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let mut root = Node::root(client(&server)?, SECRET, options(1)).await?;
    let mut nodes = join_many(&server, 3, 1).await?;
    // A chain root -> n0 -> n1 -> n2 (max_degree 1): the deepest node sends to the root.
    wait_until("chain", || {
        nodes
            .iter()
            .filter(|n| n.info().children.len() == 1)
            .count()
            == 2
    })
    .await?;
    let leaf = nodes
        .iter()
        .position(|n| n.info().children.is_empty())
        .context("no leaf")?;
    nodes[leaf].send_to_root(json!({"from": "leaf"})).await?;
    let event = wait_event(&mut root, "message for the root", |e| {
        matches!(e, Event::Data { .. })
    })
    .await?;
    let Event::Data {
        delivery,
        data,
        from,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(delivery, Delivery::ToRoot);
    assert_eq!(data, json!({"from": "leaf"}));
    assert!(matches!(from, Source::Child(_)));
    // Direct messages go one hop only.
    let child = root.info().children[0].clone();
    root.send_to_child(&child, json!("one hop")).await?;
    let first = nodes
        .iter()
        .position(|n| n.info().parent.is_some() && n.info().children.len() == 1)
        .context("no first")?;
    let got = broadcasts(&mut nodes, Duration::from_millis(500)).await;
    assert!(
        got.iter().all(Vec::is_empty),
        "a direct message was forwarded: {got:?}"
    );
    let _ = first;
    assert!(root.send_to_child("nope", json!(1)).await.is_err());
    assert!(root.send_to_parent(json!(1)).await.is_err());
    Ok(())
}

fn tree_size(tree: &Value) -> usize {
    1 + tree["children"]
        .as_array()
        .map_or(0, |c| c.iter().map(tree_size).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_the_picture_of_the_whole_tree() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let named = |name: &str| NodeOptions {
        max_degree: 2,
        name: Some(name.to_owned()),
        report_topology: true,
        ..NodeOptions::default()
    };
    let mut root = Node::root(client(&server)?, SECRET, named("root")).await?;
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(Node::join(client(&server)?, named(&format!("n{i}"))).await?);
    }
    // The root's picture settles on all five nodes, with every name.
    let tree = loop {
        let Event::Tree(tree) =
            wait_event(&mut root, "tree", |e| matches!(e, Event::Tree(_))).await?
        else {
            unreachable!()
        };
        if tree_size(&tree) == 5 && !tree.to_string().contains('?') {
            break tree;
        }
    };
    assert_eq!(tree["name"], "root");
    for i in 0..4 {
        assert!(tree.to_string().contains(&format!("\"n{i}\"")), "{tree}");
    }
    // Every node ends up with the same picture.
    for node in &mut nodes {
        loop {
            let Event::Tree(seen) =
                wait_event(node, "tree", |e| matches!(e, Event::Tree(_))).await?
            else {
                unreachable!()
            };
            if seen == tree {
                break;
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_nodes_releases_their_sockets() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let root = Node::root(client(&server)?, SECRET, options(2)).await?;
    let node = Node::join(client(&server)?, options(2)).await?;
    wait_until("root and child", || {
        server.state.health().root_connected && root.info().children.len() == 1
    })
    .await?;
    // Dropped without close(): the root's socket and the child link go all the same.
    drop(node);
    wait_until("the root saw its child go", || {
        root.info().children.is_empty()
    })
    .await?;
    drop(root);
    wait_until("the root socket closed", || {
        !server.state.health().root_connected
    })
    .await?;
    Ok(())
}

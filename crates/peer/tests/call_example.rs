//! The `call` example (call a named user: one overlay per user, root and join tokens)
//! runs to the end against a real server with real data channels.

#[allow(dead_code)]
#[path = "../examples/call.rs"]
mod call;

#[tokio::test]
async fn the_call_example_connects_talks_and_hangs_up() {
    let log = tokio::time::timeout(std::time::Duration::from_secs(60), call::run())
        .await
        .expect("the example finishes")
        .expect("the example succeeds");
    assert_eq!(
        log,
        [
            "alice logged in",
            "bob called alice: connected",
            "alice heard \"hi alice\"",
            "bob heard \"hi bob\"",
            "bob hung up: alice's call ended",
            "alice logged out: overlay alice removed",
        ]
    );
}

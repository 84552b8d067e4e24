//! A first connection that fails says what failed, without the password.

mod common;

use std::time::Duration;

use common::*;
use dps_feed::{BrokerUrl, Feed, FeedConfig, FeedError};

async fn start_error(url: &str, connect_timeout: Duration) -> FeedError {
    let config = FeedConfig {
        url: BrokerUrl::parse(url).unwrap(),
        connect_timeout,
        ..config(&unique("exchange"))
    };
    let err = Feed::start(config, vec![hub("hub-a.example.net")], MemOutbox::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("s3cret"), "the password leaked: {text}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_connection_refused() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = start_error(
        &format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f"),
        Duration::from_secs(20),
    )
    .await;
    assert!(matches!(err, FeedError::Refused { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("connection refused by 127.0.0.1:{port}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_access_refused() {
    let err = start_error(
        "amqp://guest:s3cret@127.0.0.1:5672/%2f",
        Duration::from_secs(20),
    )
    .await;
    assert!(matches!(err, FeedError::AccessRefused { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "access refused by 127.0.0.1:5672 for user 'guest' (wrong user name or password?)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vhost_is_named() {
    let err = start_error(
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
        Duration::from_secs(20),
    )
    .await;
    assert!(matches!(err, FeedError::VhostNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("virtual host 'no-such-vhost' not found at 127.0.0.1:5672"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_speaks_amqp_times_out() {
    // Accepts the TCP connection and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let err = start_error(
        &format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f"),
        Duration::from_secs(1),
    )
    .await;
    assert!(matches!(err, FeedError::TimedOut { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("connecting to 127.0.0.1:{port} timed out after 1s")
    );
    silent.abort();
}

#[test]
fn a_url_that_is_not_amqp_is_refused_before_connecting() {
    let err = BrokerUrl::parse("https://guest:s3cret@127.0.0.1:5672/").unwrap_err();
    assert_eq!(
        err.to_string(),
        "is not a usable broker URL: the scheme must be amqp or amqps, not https"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_of_another_type_is_a_declaration_error() {
    let exchange = unique("exchange");
    let broker = TestBroker::connect().await;
    broker
        .channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let err = Feed::start(config(&exchange), vec![], MemOutbox::new())
        .await
        .unwrap_err();
    assert!(matches!(err, FeedError::Declare { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("declare the durable topic exchange '{exchange}'")),
        "{err}"
    );
    broker.delete(&exchange, &[]).await;
}

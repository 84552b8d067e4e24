//! `amqps://` to a broker whose certificate a private CA signs: trusted with `tls_ca_file`,
//! refused without it. The broker here is the local RabbitMQ behind a TLS-terminating
//! loopback proxy (the shared broker has no TLS listener).

mod common;

use std::sync::Arc;

use common::*;
use dps_feed::{BrokerUrl, Feed, FeedConfig, FeedError};
use dps_test_util::TestPki;
use dps_types::Etag;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Accepts TLS on a loopback port and forwards the plain bytes to RabbitMQ.
async fn tls_proxy(pki: &TestPki) -> (u16, tokio::task::JoinHandle<()>) {
    let server = pki.server("127.0.0.1");
    let chain = server
        .chain_der
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_brokers_ca_publishes_and_without_it_is_refused() {
    let pki = TestPki::new();
    let (port, proxy) = tls_proxy(&pki).await;
    let url = BrokerUrl::parse(&format!("amqps://guest:guest@127.0.0.1:{port}/%2f")).unwrap();
    assert!(url.is_tls());
    let exchange = unique("exchange");

    let untrusted = Feed::start(
        FeedConfig {
            url: url.clone(),
            ..config(&exchange)
        },
        vec![],
        MemOutbox::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(untrusted, FeedError::Connect { .. }),
        "{untrusted:?}"
    );
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("broker-ca.pem");
    std::fs::write(&ca_file, pki.root_pem()).unwrap();
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(
        FeedConfig {
            url,
            tls_ca_file: Some(ca_file),
            ..config(&exchange)
        },
        vec![hub_a.clone()],
        outbox.clone(),
    )
    .await
    .unwrap();
    let broker = TestBroker::connect().await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let mut consumer = broker.consume(&queue).await;
    let event = event(1, &hub_a, &Etag::generate());
    feed.publish(outbox.append(event.clone()), event.clone())
        .await
        .unwrap();
    let delivery = next_delivery(&mut consumer, PATIENCE).await.unwrap();
    assert_eq!(delivery.data, event.body.as_bytes());
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
    proxy.abort();
}

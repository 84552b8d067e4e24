//! `serve()` over a real TLS socket on 127.0.0.1: requests work, slow clients are cut at each
//! phase without holding up anyone else, shutdown drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_api::{
    router, serve_with_counters, ApiState, HttpLimits, ListenerCounters, Rights, SharedAccessPolicy,
};
use dps_attest::SasToken;
use dps_registrar::{Registrar, RegistrarConfig};
use dps_store::Store;
use dps_types::{IdScope, SymmetricKey, Timestamp};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// Short enough for a quick test, long enough for a loaded 2-core CI machine.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1);

struct Server {
    port: u16,
    cert: CertificateDer<'static>,
    token: String,
    counters: ListenerCounters,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(limits: HttpLimits) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let host = format!("localhost:{port}");
    let owner = SharedAccessPolicy {
        name: "owner".into(),
        primary_key: SymmetricKey::generate(),
        secondary_key: None,
        rights: Rights::ALL,
    };
    let token = SasToken::generate(
        &host,
        &owner.primary_key,
        Some("owner"),
        Timestamp::now().unix() + 3600,
    );
    let config = RegistrarConfig::new(IdScope::parse("0ne00000001").expect("scope"), Vec::new());
    let registrar = Registrar::new(store, config).expect("registrar");
    let app = router(ApiState::new(registrar, &host, vec![owner]));

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .expect("server config");
    let (stop, stopped) = oneshot::channel::<()>();
    let counters = ListenerCounters::default();
    let task = tokio::spawn(serve_with_counters(
        listener,
        Arc::new(tls),
        app,
        limits,
        counters.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        port,
        cert,
        token,
        counters,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        header_read_timeout: PHASE_TIMEOUT,
        body_read_timeout: PHASE_TIMEOUT,
        tls_handshake_timeout: PHASE_TIMEOUT,
        ..HttpLimits::default()
    }
}

impl Server {
    fn client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_der(&self.cert).expect("root");
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root)
            .build()
            .expect("client")
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}?api-version=2021-10-01",
            self.port
        )
    }

    /// A raw TLS connection, for clients that misbehave.
    async fn tls(&self) -> TlsStream<TcpStream> {
        self.tls_from([127, 0, 0, 1]).await
    }

    /// A TCP connection from `source` (any 127.x.y.z is loopback on Linux).
    async fn tcp_from(&self, source: [u8; 4]) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from((source, 0)))
            .expect("bind the source address");
        socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .expect("connect")
    }

    /// A raw TLS connection from `source`.
    async fn tls_from(&self, source: [u8; 4]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = self.tcp_from(source).await;
        let name = ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake")
    }

    /// Signals shutdown without waiting.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    async fn shutdown(mut self) {
        self.stop();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "serve ends cleanly: {result:?}"
        );
    }
}

/// Reads until the peer closes (or errors); returns what was read and how long it took.
async fn read_until_closed(stream: &mut TlsStream<TcpStream>) -> (String, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a stalled connection open for 10 s"),
        }
    }
    (
        String::from_utf8_lossy(&seen).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn serves_requests_while_a_slow_client_is_cut() {
    let server = start(limits()).await;
    let client = server.client();

    // A client that opens TLS and sends half a request head, then nothing.
    let mut slow = server.tls().await;
    slow.write_all(b"GET /enrollments/dev-1 HTTP/1.1\r\nHost: loc")
        .await
        .expect("write");
    slow.flush().await.expect("flush");
    let slow_reader = tokio::spawn(async move { read_until_closed(&mut slow).await });

    // Meanwhile a normal client is served.
    let created = client
        .put(server.url("/enrollments/dev-1"))
        .header("authorization", &server.token)
        .json(&serde_json::json!({"attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 200);
    assert_eq!(
        created.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let read = client
        .get(server.url("/Enrollments/dev-1/"))
        .header("authorization", &server.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(read.status(), 200);
    let body: serde_json::Value = read.json().await.expect("json");
    assert_eq!(body["registrationId"], "dev-1");
    let unauthorized = client
        .get(server.url("/enrollments/dev-1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers()["x-ms-error-code"], "Unauthorized");

    // A body bigger than hyper's head buffer streams through.
    let big_twin = serde_json::json!({"attestation": {"type": "symmetricKey"},
        "initialTwin": {"tags": {"blob": "x".repeat(150_000)}}});
    let big = client
        .put(server.url("/enrollments/dev-big"))
        .header("authorization", &server.token)
        .json(&big_twin)
        .send()
        .await
        .expect("PUT");
    assert_eq!(big.status(), 200);

    // Garbage instead of HTTP ends that connection only.
    let mut garbage = server.tls().await;
    garbage
        .write_all(b"\x00\x01 NOT HTTP\r\n\r\n")
        .await
        .expect("write");
    let (answer, _) = read_until_closed(&mut garbage).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let still = client
        .get(server.url("/enrollments/dev-1"))
        .header("authorization", &server.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(still.status(), 200);

    let (_, waited) = slow_reader.await.expect("reader");
    assert!(waited < PHASE_TIMEOUT * 4, "cut after {waited:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_even_during_shutdown() {
    let mut server = start(limits()).await;
    let mut stream = server.tls().await;
    let head = format!(
        "PUT /enrollments/dev-1?api-version=2021-10-01 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"attestation\"",
        server.token
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
    // Give the server time to read the head, then shut down: the request in flight still
    // gets its answer before the connection closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop();
    let (response, waited) = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"errorCode\":408001"), "{response}");
    assert!(waited < PHASE_TIMEOUT * 4, "answered after {waited:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let server = start(HttpLimits {
        max_connections: 1,
        ..limits()
    })
    .await;
    // An idle connection holds the only slot (until the header timeout frees it).
    let mut holder = server.tls().await;
    holder.flush().await.expect("flush");
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut buf = [0u8; 1];
    let refused = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(refused, Ok(Ok(0)) | Ok(Err(_))),
        "the second connection is closed at once: {refused:?}"
    );
    let stats = server.counters.snapshot();
    assert_eq!(stats.shed_connection_limit, 1);
    assert_eq!(stats.shed(), 1);
    assert_eq!(stats.accepted, 1);
    let (_, waited) = read_until_closed(&mut holder).await;
    assert!(
        waited < PHASE_TIMEOUT * 4,
        "idle connection cut after {waited:?}"
    );
    server.shutdown().await;
}

/// Asserts that the server closes `tcp` without a byte (it was shed right after `accept`).
async fn assert_shed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {read:?}"
    );
}

/// Sends one authorized request on a raw connection and reads the whole answer head.
async fn authenticated_request(server: &Server, stream: &mut TlsStream<TcpStream>) {
    let request = format!(
        "GET /enrollments/none?api-version=2021-10-01 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
        server.token
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"), "{:?}", &buf[..n]);
}

#[tokio::test]
async fn one_address_cannot_starve_the_others() {
    let server = start(HttpLimits {
        max_connections_per_ip: 3,
        max_unauthenticated_per_ip: 2,
        // Long enough that the quiet connections below still hold their slots when checked.
        header_read_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let flooder = [127, 0, 0, 2];

    // Connections that finish TLS but never send a request: two are admitted, the third
    // connection from that address is shed before TLS.
    let mut quiet_1 = server.tls_from(flooder).await;
    let mut quiet_2 = server.tls_from(flooder).await;
    let mut shed = server.tcp_from(flooder).await;
    assert_shed(&mut shed).await;
    assert_eq!(server.counters.snapshot().shed_unauthenticated_limit, 1);

    // Meanwhile a client from another address is served.
    let client = server.client();
    let answer = client
        .get(server.url("/enrollments/none"))
        .header("authorization", &server.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), 404);

    // A connection that sent a request head no longer counts as unauthenticated...
    authenticated_request(&server, &mut quiet_1).await;
    authenticated_request(&server, &mut quiet_2).await;
    let mut third = server.tls_from(flooder).await;
    authenticated_request(&server, &mut third).await;
    // ...but the address's share of slots is still bounded.
    let mut over = server.tcp_from(flooder).await;
    assert_shed(&mut over).await;
    let stats = server.counters.snapshot();
    assert_eq!(stats.shed_address_limit, 1);
    assert_eq!(stats.shed_unauthenticated_limit, 1);
    assert_eq!(stats.shed_connection_limit, 0);
    server.shutdown().await;
}

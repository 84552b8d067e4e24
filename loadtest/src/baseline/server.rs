//! The bare TLS server the `tls` and `mtls` baselines measure, run as a child process
//! (`dps-loadtest baseline-server --mode tls|mtls`, hidden from `--help`) so that its CPU time
//! is its own. It reads its certificate, key and (for `mtls`) the client CA as one JSON line
//! on stdin, listens on a free loopback port and prints the port on stdout, then for each
//! connection does the handshake and one round trip (reads 1 byte, writes 1 byte, closes).
//! It exits when its stdin closes, so it never outlives the tool.
//!
//! Same TLS stack as dpsd: rustls with the aws-lc-rs provider, default protocol versions.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "baseline-server";
/// Largest material line read from stdin: three certificates or keys are a few KiB.
const MAX_MATERIAL: u64 = 64 * 1024;
/// A connection's whole life (handshake and round trip); a stuck client cannot hold a task.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the tool hands its child on stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct Material {
    /// Server certificate chain, PEM.
    pub cert_pem: String,
    /// Server key, PEM.
    pub key_pem: String,
    /// For mutual TLS: the CA client certificates must chain to.
    pub client_ca_pem: Option<String>,
}

/// Runs the child if `args` (the process's arguments) name the subcommand; `None` otherwise.
pub async fn main_if_child(args: &[String]) -> Option<ExitCode> {
    if args.get(1).map(String::as_str) != Some(SUBCOMMAND) {
        return None;
    }
    Some(match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dps-loadtest {SUBCOMMAND}: {e}");
            ExitCode::FAILURE
        }
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve() -> Result<(), BoxError> {
    let mut stdin = BufReader::new(tokio::io::stdin().take(MAX_MATERIAL));
    let mut line = String::new();
    stdin.read_line(&mut line).await?;
    let material: Material = serde_json::from_str(&line)?;
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&material)?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{}\n", listener.local_addr()?.port()).as_bytes())
        .await?;
    stdout.flush().await?;

    let mut rest = Vec::new();
    let mut stdin = stdin.into_inner().into_inner();
    loop {
        tokio::select! {
            // EOF (or an error): the tool is done or gone.
            read = stdin.read_buf(&mut rest) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Ok(());
                }
                rest.clear();
            }
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                    let mut tls = acceptor.accept(tcp).await?;
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await?;
                    tls.write_all(&byte).await?;
                    tls.shutdown().await
                }));
            }
        }
    }
}

/// rustls with aws-lc-rs (dpsd's provider), requiring a client certificate from
/// `client_ca_pem` when given.
pub fn server_config(material: &Material) -> Result<rustls::ServerConfig, BoxError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &material.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(pem)? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = private_key(&material.key_pem)?;
    Ok(builder.with_single_cert(certs(&material.cert_pem)?, key)?)
}

/// The private key of a PEM text.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, BoxError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())?
        .ok_or_else(|| "no private key in the PEM text".into())
}

/// The certificates of a PEM text.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect()
}

//! TLS on the real binary: AMQPS with lapin (rustls), the management API
//! and metrics over HTTPS, a certificate swapped by SIGHUP while an AMQPS
//! connection stays open, a bad reload that keeps the old certificate,
//! client-certificate verification, and named errors for bad TLS files.

use crate::common;

use common::Child;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// A test CA that signs server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "warren test CA");
        Ca { cert: p.self_signed(&key).unwrap(), key }
    }

    /// (certificate PEM, key PEM) for `names`, signed by this CA.
    fn issue(&self, names: &[&str], client: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, if client { "warren-test-client" } else { "localhost" });
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn write_files(dir: &Path, ca: &Ca, server: &(String, String)) -> Files {
    let f = Files { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&f.ca, ca.cert.pem()).unwrap();
    std::fs::write(&f.cert, &server.0).unwrap();
    std::fs::write(&f.key, &server.1).unwrap();
    f
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

fn client_config(ca: &Ca, identity: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert.pem().as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// The server's certificate (DER) as a new TLS client sees it.
async fn served_cert(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    let s = tls_connect(addr, client_config(ca, None)).await.expect("TLS handshake");
    s.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// GET over HTTPS as guest: (status, body).
async fn https_get(addr: std::net::SocketAddr, path: &str, ca: &Ca) -> (u16, String) {
    use base64::Engine;
    let mut s = tls_connect(addr, client_config(ca, None)).await.expect("HTTPS handshake");
    let auth = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await; // a close without close_notify still carried the reply
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

async fn lapin_tls(port: u16, ca: &Ca) -> lapin::Connection {
    let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain: Some(ca.cert.pem()) };
    lapin::Connection::connect_with_config(
        &format!("amqps://guest:guest@127.0.0.1:{port}/%2f"),
        lapin::ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().unwrap(),
    )
    .await
    .expect("lapin connects over AMQPS")
}

/// Publishes `body` to `queue` and gets it back on `ch`.
async fn round_trip(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, Default::default())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            assert_eq!(m.delivery.data, body);
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "message did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll until the deadline
    }
}

fn tls_args(f: &Files) -> Vec<String> {
    vec![
        "--set".into(),
        format!("tls.cert_file={}", f.cert.display()),
        "--set".into(),
        format!("tls.key_file={}", f.key.display()),
    ]
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Child::spawn_with(&dir.join("data"), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_https_serve_and_reload_certificates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(&["localhost", "127.0.0.1"], false);
    let files = write_files(dir.path(), &ca, &first);
    let mut args = tls_args(&files);
    args.extend(["--set".into(), "management.tls=true".into(), "--set".into(), "prometheus.tls=true".into()]);
    let child = spawn(dir.path(), &args);
    assert_ne!(child.amqps.port(), 0, "AMQPS listens");
    assert_ne!(child.amqp.port(), 0, "the plain listener stays on");

    // AMQPS with lapin over rustls, verifying the server against the CA.
    let conn = lapin_tls(child.amqps.port(), &ca).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("tls-q".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    round_trip(&ch, "tls-q", b"over tls").await;

    // HTTPS management and metrics; the connection shows as TLS.
    let (status, body) = https_get(child.mgmt, "/api/connections", &ca).await;
    assert_eq!(status, 200, "{body}");
    let conns: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &conns[0];
    assert_eq!(c["ssl"], true, "{c}");
    assert!(c["ssl_protocol"].as_str().unwrap().starts_with("tlsv1."), "{c}");
    let (status, body) = https_get(child.metrics, "/metrics", &ca).await;
    assert_eq!(status, 200);
    assert!(body.contains("rabbitmq_connections 1"), "{body}");
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(child.mgmt).await.unwrap();
    plain.write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"HTTP/1.1"), "plain HTTP answered on the HTTPS port");
    assert_eq!(served_cert(child.amqps, &ca).await, der_of(&first.0));

    // SIGHUP with a new certificate and key: new handshakes get it, the
    // open AMQPS connection goes on.
    let second = ca.issue(&["localhost", "127.0.0.1"], false);
    std::fs::write(&files.cert, &second.0).unwrap();
    std::fs::write(&files.key, &second.1).unwrap();
    child.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_cert(child.amqps, &ca).await != der_of(&second.0) {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate is not served");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll until the deadline
    }
    assert_eq!(served_cert(child.mgmt, &ca).await, der_of(&second.0), "HTTPS takes it too");
    round_trip(&ch, "tls-q", b"after reload").await;

    // A broken key on reload: refused, the second certificate stays.
    std::fs::write(&files.key, "not a key").unwrap();
    child.signal("HUP");
    let (status, _) = https_get(child.mgmt, "/api/overview", &ca).await;
    assert_eq!(status, 200);
    assert_eq!(served_cert(child.amqps, &ca).await, der_of(&second.0));
    round_trip(&ch, "tls-q", b"after a bad reload").await;
    conn.close(200, "bye".into()).await.unwrap();
    assert!(child.terminate().success());
}

/// True if the broker does not answer the protocol header over TLS. In
/// TLS 1.3 a refused client certificate shows after the client's side of
/// the handshake, so the first read tells.
async fn refused(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    match tls_connect(addr, config).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"AMQP\x00\x00\x09\x01").await;
            let mut b = [0u8; 7];
            !matches!(tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await, Ok(Ok(_)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let files = write_files(dir.path(), &ca, &ca.issue(&["localhost", "127.0.0.1"], false));
    let mut args = tls_args(&files);
    for s in [
        format!("tls.ca_file={}", files.ca.display()),
        "tls.verify_peer=true".into(),
        "tls.fail_if_no_peer_cert=true".into(),
        "amqp.listen_plain=false".into(),
    ] {
        args.extend(["--set".into(), s]);
    }
    let child = spawn(dir.path(), &args);
    assert_eq!(child.amqp.port(), 0, "no plain listener");

    // With a certificate from the CA: connection.start follows the header.
    let client = ca.issue(&["warren-test-client"], true);
    let mut s = tls_connect(child.amqps, client_config(&ca, Some(&client))).await.unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..3], &[1, 0, 0], "connection.start");

    // Without one, and with one from another CA: refused.
    assert!(
        refused(child.amqps, client_config(&ca, None)).await,
        "a client without a certificate was served"
    );
    let stranger = Ca::new().issue(&["warren-test-client"], true);
    let foreign = client_config(&ca, Some(&stranger));
    assert!(refused(child.amqps, foreign).await, "a client with a foreign certificate was served");
    assert!(child.terminate().success());
}

#[test]
fn unreadable_tls_files_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let files = write_files(dir.path(), &ca, &ca.issue(&["localhost"], false));
    let run = |cert: &Path, key: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--amqp-port", "0", "--mgmt-port", "0", "--metrics-port", "0", "--bind", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--set", "amqp.tls_port=0", "--set"])
            .arg(format!("tls.cert_file={}", cert.display()))
            .arg("--set")
            .arg(format!("tls.key_file={}", key.display()))
            .output()
            .unwrap()
    };
    let out = run(&dir.path().join("missing.pem"), &files.key);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("tls.cert_file"), "{text}");
    // A key that is not the certificate's.
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, ca.issue(&["localhost"], false).1).unwrap();
    let out = run(&files.cert, &other);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("tls.key_file"), "{text}");
}

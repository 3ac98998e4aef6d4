//! `warren healthcheck`: the container's HEALTHCHECK. Asks the local
//! management listener's `/api/health/checks/virtual-hosts` (as the default
//! user of the same configuration) and succeeds only on `200 {"status":"ok"}`:
//! a broker that does not answer fails. With `--fail-on-alarms` it asks
//! `local-alarms` instead, so a resource alarm fails too; that is not the
//! default because an orchestrator replaces unhealthy containers, and a
//! restart does not free memory held by a backlog or disk space.
//! A blocking request over a plain socket: no HTTP client crate is needed
//! for one GET on loopback. With `management.tls` the request goes over
//! TLS, trusting exactly the configured certificate.

use crate::config::Config;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Runs the check; `Ok` carries the body, `Err` says why it failed.
pub fn check(cfg: &Config, timeout: Duration, fail_on_alarms: bool) -> Result<String, String> {
    use base64::Engine;
    let ip: IpAddr = match cfg.management.bind.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    let addr = SocketAddr::new(ip, cfg.management.port);
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let creds = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", cfg.auth.default_user, cfg.auth.default_pass));
    let check = if fail_on_alarms { "local-alarms" } else { "virtual-hosts" };
    let req = format!(
        "GET /api/health/checks/{check} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {creds}\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    if cfg.management.tls {
        let client = crate::tls::pinned_client(&cfg.tls.cert_file)?;
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let conn = rustls::ClientConnection::new(client, name).map_err(|e| format!("TLS: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        exchange(&mut tls, &req, &mut raw).map_err(|e| format!("{addr}: {e}"))?;
    } else {
        exchange(&mut s, &req, &mut raw).map_err(|e| format!("{addr}: {e}"))?;
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" && body.contains("\"ok\"") {
        Ok(body.trim().to_string())
    } else {
        Err(format!("{addr} answered {status}: {}", body.trim()))
    }
}

/// Sends the request and reads the answer (at most 1 MiB) until the peer
/// closes. A TLS peer that closes without close_notify still gave us
/// everything we asked for.
fn exchange<S: Read + Write>(s: &mut S, req: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    s.write_all(req.as_bytes())?;
    s.flush()?;
    match s.take(1 << 20).read_to_end(out) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        r => r.map(|_| ()),
    }
}

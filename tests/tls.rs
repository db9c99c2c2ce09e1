//! HTTPS on the listener (HTTP/1.1 and HTTP/2 by ALPN, certificates rotated without dropping
//! connections) and `https://` upstreams.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{Backend, Proxy, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Cert {
    cert: String,
    key: String,
}

fn cert() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    Cert {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

fn connector(roots: &[&Cert], alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store
            .add(CertificateDer::from_pem_slice(c.cert.as_bytes()).expect("der"))
            .expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn dial(proxy: &Proxy, roots: &[&Cert], alpn: &[u8]) -> Result<Tls, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    connector(roots, alpn).connect(name, tcp).await
}

fn peer_cert(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

async fn start(c: &Cert) -> (Backend, Proxy) {
    let (b, dir, path) = tls_config(c).await;
    (b, Proxy::start_in(dir, path))
}

/// A backend, and a directory with a TLS config in front of it (certificate and key beside it).
async fn tls_config(c: &Cert) -> (Backend, tempfile::TempDir, std::path::PathBuf) {
    let b = Backend::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), &c.cert).expect("cert");
    std::fs::write(dir.path().join("key.pem"), &c.key).expect("key");
    let yaml = config(
        &[&b],
        &[&b],
        "id: t\npercent: 0",
        "tls:\n  cert: cert.pem\n  key: key.pem\n",
    );
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml).expect("config");
    (b, dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_http2_by_alpn() {
    let c = cert();
    let (b, proxy) = start(&c).await;

    let tls = dial(&proxy, &[&c], b"h2").await.expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/h2")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let resp = h2.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.expect("body").to_bytes(),
        "stable"
    );
    assert_eq!(b.last().headers["x-forwarded-proto"], "https");

    let tls = dial(&proxy, &[&c], b"http/1.1").await.expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = http::Request::get("/h1")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("req");
    assert_eq!(
        h1.send_request(req).await.expect("h1 response").status(),
        200
    );
    assert_eq!(b.last().uri, "/h1");

    // An HTTP/1.0 client (`curl --http1.0`) offers only http/1.0.
    let mut tls = dial(&proxy, &[&c], b"http/1.0").await.expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    tls.write_all(b"GET /h10 HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert_eq!(b.last().uri, "/h10");

    // Plain HTTP on a TLS port is not served.
    let reply = support::raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!reply.contains("200 OK"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_for_new_connections_while_old_ones_keep_working() {
    let (old, new) = (cert(), cert());
    let (_b, proxy) = start(&old).await;
    let tls = dial(&proxy, &[&old, &new], b"http/1.1").await.expect("tls");
    let old_der = CertificateDer::from_pem_slice(old.cert.as_bytes())
        .expect("der")
        .to_vec();
    assert_eq!(peer_cert(&tls), old_der);
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let get = || {
        http::Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("req")
    };
    assert_eq!(h1.send_request(get()).await.expect("before").status(), 200);

    // Rotate the files the way cert-manager or certbot do: write beside, rename over.
    let dir = proxy.dir.path();
    support::replace_file(&dir.join("key.pem"), &new.key);
    support::replace_file(&dir.join("cert.pem"), &new.cert);
    let new_der = CertificateDer::from_pem_slice(new.cert.as_bytes())
        .expect("der")
        .to_vec();
    let mut rotated = false;
    for _ in 0..100 {
        if let Ok(tls) = dial(&proxy, &[&old, &new], b"http/1.1").await
            && peer_cert(&tls) == new_der
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "new connections never got the new certificate");
    h1.ready().await.expect("the old connection is still open");
    assert_eq!(h1.send_request(get()).await.expect("after").status(), 200);
    // A broken certificate file (cut short) is refused, in words, and the running one stays.
    support::replace_file(&dir.join("cert.pem"), &new.cert[..new.cert.len() / 2]);
    let r = proxy.admin_fallback_reload();
    assert!(
        r.contains("tls.cert: ")
            && r.contains("cut short: no \\\"-----END CERTIFICATE-----\\\" line"),
        "{r}"
    );
    let tls = dial(&proxy, &[&old, &new], b"http/1.1")
        .await
        .expect("still serving");
    assert_eq!(peer_cert(&tls), new_der);
}

/// The certificate `proxy` gives a new connection, once it is `want` (waits up to 10 s).
async fn serves(proxy: &Proxy, roots: &[&Cert], want: &Cert) -> bool {
    let want = CertificateDer::from_pem_slice(want.cert.as_bytes())
        .expect("der")
        .to_vec();
    for _ in 0..100 {
        if let Ok(tls) = dial(proxy, roots, b"http/1.1").await
            && peer_cert(&tls) == want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_moved_by_a_reload_are_watched_where_they_are_now() {
    let (first, moved, renewed) = (cert(), cert(), cert());
    let (_b, proxy) = start(&first).await;
    let roots = [&first, &moved, &renewed];
    // The config now names files in another directory.
    let dir = proxy.dir.path();
    std::fs::create_dir(dir.join("tls2")).expect("dir");
    std::fs::write(dir.join("tls2/cert.pem"), &moved.cert).expect("cert");
    std::fs::write(dir.join("tls2/key.pem"), &moved.key).expect("key");
    let yaml = std::fs::read_to_string(&proxy.config_path).expect("config");
    support::replace_file(
        &proxy.config_path,
        &yaml
            .replace("cert: cert.pem", "cert: tls2/cert.pem")
            .replace("key: key.pem", "key: tls2/key.pem"),
    );
    assert!(serves(&proxy, &roots, &moved).await, "the moved pair");
    // Renewed there: new connections get it, with no edit of the config.
    support::replace_file(&dir.join("tls2/key.pem"), &renewed.key);
    support::replace_file(&dir.join("tls2/cert.pem"), &renewed.cert);
    assert!(
        serves(&proxy, &roots, &renewed).await,
        "a renewal where the reload moved the files was never seen"
    );
    // Named before they exist: the file's reload is refused; once they are there, a reload by
    // SIGHUP (or `ramp ctl reload`) puts them in force, and their directory is watched from then
    // on too.
    let (third, fourth) = (cert(), cert());
    let roots = [&first, &moved, &renewed, &third, &fourth];
    let yaml = std::fs::read_to_string(&proxy.config_path).expect("config");
    support::replace_file(&proxy.config_path, &yaml.replace("tls2/", "tls3/"));
    proxy.wait_log("reload rejected");
    std::fs::create_dir(dir.join("tls3")).expect("dir");
    std::fs::write(dir.join("tls3/cert.pem"), &third.cert).expect("cert");
    std::fs::write(dir.join("tls3/key.pem"), &third.key).expect("key");
    proxy.signal(1);
    assert!(serves(&proxy, &roots, &third).await, "the reload by SIGHUP");
    support::replace_file(&dir.join("tls3/key.pem"), &fourth.key);
    support::replace_file(&dir.join("tls3/cert.pem"), &fourth.cert);
    assert!(
        serves(&proxy, &roots, &fourth).await,
        "a renewal where a reload by SIGHUP moved the files was never seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let c = cert();
    let secure = Backend::start_tls("secure", &c.cert, &c.key).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &c.cert).expect("ca");
    let yaml = format!(
        "listen: 127.0.0.1:0\npools:\n  stable: ['https://localhost:{port}']\n  canary: ['https://localhost:{port}']\nrollout: {{id: u, percent: 0}}\nupstream: {{ca: ca.pem}}\n",
        port = secure.addr.port()
    );
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml).expect("config");
    let proxy = Proxy::start_in(dir, path);
    let r = support::Client::http1()
        .get(&proxy.url("/over-tls"), &[])
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "secure"));
    assert_eq!(secure.last().uri, "/over-tls");

    // An upstream whose certificate the CA did not sign is a 502, never a plaintext fallback.
    let other = cert();
    let impostor = Backend::start_tls("impostor", &other.cert, &other.key).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &c.cert).expect("ca");
    let yaml = format!(
        "listen: 127.0.0.1:0\npools:\n  stable: ['https://localhost:{port}']\n  canary: ['https://localhost:{port}']\nrollout: {{id: u, percent: 0}}\nupstream: {{ca: ca.pem}}\n",
        port = impostor.addr.port()
    );
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml).expect("config");
    let proxy = Proxy::start_in(dir, path);
    let r = support::Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status.as_u16(), 502);
    assert!(impostor.seen().is_empty());
}

/// A TLS 1.3 ClientHello (from `openssl s_client -servername 127.0.0.1`) naming an IP address as
/// its SNI, which RFC 6066 forbids and some clients (wrk, curl with --resolve) send anyway.
const HELLO_WITH_IP_SNI: &[&str] = &[
    "16030100ee010000ea0303b662e07a7c92ca8053b51488c7dbc3eb5e64eb87e126b80f1f682e4b1e1e288e204162ee58",
    "14f456059f26d5b0dcdbbac03c847f8bf215e06383798f06a70e0f9f000813021303130100ff010000990000000e000c",
    "0000093132372e302e302e31000b000403000102000a00160014001d0017001e00190018010001010102010301040023",
    "00000016000000170000000d001e001c040305030603080708080809080a080b080408050806040105010601002b0003",
    "020304002d00020101003300260024001d00208083aa19f914bb0d9ea430ebfaa113cc266392bf1d8c10df29cbdae5d6",
    "462644",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_naming_an_ip_address_as_sni_do_not_flood_the_logs() {
    let c = cert();
    let (_b, dir, path) = tls_config(&c).await;
    let proxy = Proxy::start_in_with_default_logs(dir, path);
    let hello: Vec<u8> = HELLO_WITH_IP_SNI
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).expect("hex"), 16).expect("hex"))
        .collect();
    let addr = proxy.addr;
    let answered = tokio::task::spawn_blocking(move || {
        (0..20)
            .filter(|_| {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                s.write_all(&hello).expect("hello");
                let mut first = [0u8; 1];
                // 0x16: a handshake record (the ServerHello).
                s.read_exact(&mut first).is_ok() && first[0] == 0x16
            })
            .count()
    })
    .await
    .expect("client");
    assert_eq!(answered, 20, "the server answered every hello");
    // A request after them, so their log lines (if any) have been written.
    let roots = [&c];
    let mut tls = dial(&proxy, &roots, b"http/1.1").await.expect("dial");
    tokio::io::AsyncWriteExt::write_all(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("request");
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let noisy: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("SNI"))
        .collect();
    assert!(noisy.is_empty(), "{noisy:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stalled_in_the_handshake_make_room_at_max_connections() {
    let c = cert();
    let (b, dir, path) = tls_config(&c).await;
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        format!("{text}limits:\n  max_connections: 10\n  header_read_timeout: 60s\n"),
    )
    .expect("config");
    let proxy = Proxy::start_in(dir, path);
    // Every place taken by a client that sent three bytes of a TLS record and nothing more.
    let stalled: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(proxy.addr).expect("connect");
            s.write_all(b"\x16\x03\x01").expect("write");
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A real client still gets in (well before the 60 s a stalled handshake may take).
    for _ in 0..3 {
        let tls = tokio::time::timeout(Duration::from_secs(10), dial(&proxy, &[&c], b"http/1.1"))
            .await
            .expect("a place within 10 s")
            .expect("handshake");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http1");
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("answer");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(b.seen().len(), 3);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_turned_off_waits_for_a_restart_and_its_retired_certificates_block_no_reload() {
    let c = cert();
    let b = Backend::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    std::fs::create_dir(dir.path().join("var")).expect("mkdir");
    std::fs::write(certs.join("cert.pem"), &c.cert).expect("cert");
    std::fs::write(certs.join("key.pem"), &c.key).expect("key");
    let extra = "admin: {socket: admin.sock}\nstate: {file: state.json}\n";
    let tls = "tls:\n  cert: certs/cert.pem\n  key: certs/key.pem\n";
    let yaml = config(&[&b], &[&b], "id: t\npercent: 0", &format!("{tls}{extra}"));
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, &yaml).expect("config");
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("set 7")["ok"], true);
    // TLS is moved to a load balancer: the section goes, the certificates are retired, and the
    // state file moves in the same edit.
    let edited = yaml
        .replace(tls, "")
        .replace("file: state.json", "file: var/state.json");
    support::replace_file(&proxy.config_path, &edited);
    std::fs::remove_dir_all(&certs).expect("retire the certificates");
    let r = proxy.admin("reload");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["restart_required"], serde_json::json!(["tls"]), "{r}");
    assert_eq!(r["applied"], serde_json::json!(["state"]), "{r}");
    let moved = std::fs::read_to_string(proxy.dir.path().join("var/state.json")).expect("moved");
    assert!(moved.contains("\"percent_ppm\": 70000"), "{moved}");
    // Until the restart the listener serves HTTPS with the certificate it had.
    assert!(dial(&proxy, &[&c], b"http/1.1").await.is_ok());
    // Later edits apply.
    support::replace_file(
        &proxy.config_path,
        &edited.replace("percent: 0", "percent: 9"),
    );
    let r = proxy.admin("reload");
    assert_eq!(
        (&r["ok"], &r["percent"]),
        (&serde_json::Value::Bool(true), &serde_json::json!(9.0)),
        "{r}"
    );
    let st = proxy.admin("status");
    assert_eq!(st["last_reload_error"], serde_json::Value::Null, "{st}");
    assert_eq!(st["restart_required"], serde_json::json!(["tls"]), "{st}");
}

/// [`tls_config`] with the metrics listener, and what `ramp check` of it says (it must pass).
async fn checked_with_metrics(
    c: &Cert,
) -> (Backend, tempfile::TempDir, std::path::PathBuf, String) {
    let (b, dir, path) = tls_config(c).await;
    let mut yaml = std::fs::read_to_string(&path).expect("config");
    yaml.push_str("metrics:\n  listen: 127.0.0.1:0\n");
    std::fs::write(&path, &yaml).expect("config");
    let (code, _, err) = support::ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    (b, dir, path, err)
}

/// A certificate for localhost valid from `not_before` to `not_after` (seconds since 1970).
fn cert_valid(not_before: u64, not_after: u64) -> Cert {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
    let key = rcgen::KeyPair::generate().expect("key");
    let c = params.self_signed(&key).expect("cert");
    Cert {
        cert: c.pem(),
        key: key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_expiring_certificate_is_warned_of_and_its_expiry_is_a_metric() {
    // Expired at 2021-01-01T00:00:00Z.
    let expired = cert_valid(1_577_836_800, 1_609_459_200);
    let (b, dir, path, err) = checked_with_metrics(&expired).await;
    assert!(
        err.contains("warning: tls.cert: the certificate expired at 2021-01-01T00:00:00Z"),
        "{err}"
    );
    let proxy = Proxy::start_in(dir, path);
    proxy.wait_log("tls.cert: the certificate expired at 2021-01-01T00:00:00Z");
    assert_eq!(
        proxy
            .metric("ramp_tls_certificate_expiry_timestamp_seconds")
            .await,
        1_609_459_200.0
    );
    // Rotated to one that expires in three whole days (and a few minutes).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let not_after = now + 3 * 24 * 3600 + 600;
    let soon = cert_valid(now - 3600, not_after);
    let d = proxy.dir.path();
    support::replace_file(&d.join("key.pem"), &soon.key);
    support::replace_file(&d.join("cert.pem"), &soon.cert);
    proxy.wait_log("in 3 days");
    support::eventually("the metric has the new expiry", || {
        let addr = proxy.metrics_addr();
        let body = support::raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        body.contains(&format!(
            "ramp_tls_certificate_expiry_timestamp_seconds {not_after}"
        ))
    })
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_whose_dates_cannot_be_read_is_said_and_its_expiry_metric_is_zero() {
    // Valid from 1969 (a UTCTime before the epoch, which rustls takes and ramp cannot read).
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(1969, 6, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let old = Cert {
        cert: params.self_signed(&key).expect("cert").pem(),
        key: key.serialize_pem(),
    };
    let (b, dir, path, err) = checked_with_metrics(&old).await;
    assert!(
        err.contains("tls.cert: the certificate's dates cannot be read here"),
        "{err}"
    );
    let proxy = Proxy::start_in(dir, path);
    proxy.wait_log("the certificate's dates cannot be read here");
    let series = "ramp_tls_certificate_expiry_timestamp_seconds";
    assert!(
        proxy
            .metrics()
            .await
            .lines()
            .any(|l| l == format!("{series} 0"))
    );
    drop(b);
}

//! HTTPS on the listener (HTTP/1.1 and HTTP/2 by ALPN, certificates rotated without dropping
//! connections) and `https://` upstreams.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{Backend, Proxy, config};

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
        rustls::crypto::ring::default_provider(),
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
    (b, Proxy::start_in(dir, path))
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
    // A broken certificate file is refused and the running one stays.
    support::replace_file(&dir.join("cert.pem"), "not a certificate");
    let r = proxy.admin_fallback_reload();
    assert!(r.contains("cert.pem"), "{r}");
    let tls = dial(&proxy, &[&old, &new], b"http/1.1")
        .await
        .expect("still serving");
    assert_eq!(peer_cert(&tls), new_der);
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

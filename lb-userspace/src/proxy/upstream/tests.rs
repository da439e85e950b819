//! The upstream client against real servers on loopback: rustls and hyper's server
//! (HTTP/1.1 over TLS, HTTP/2 in clear text and over TLS), with certificates of a CA
//! made here. What the servers saw (SNI, resumption, the connection, `te`,
//! `:authority`) comes back in their answers.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{HeaderMap, Method, Request, Response, body::Frame, header::HeaderValue, http::uri::Authority, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::{HandshakeKind, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{OutBody, Outgoing, Upstream, UpstreamError};
use crate::config::http::{Protocol, UpstreamOptions, UpstreamTls};

/// A CA (its PEM file) and a leaf of it for `backend.internal`.
struct Pki {
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn pki(tag: &str) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("test CA {tag}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["backend.internal".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = std::env::temp_dir().join(format!("xlb-upstream-test-{tag}-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();
    Pki { ca_file, chain: vec![leaf.der().clone()], key: leaf_key.serialize_der() }
}

fn server_config(p: &Pki, alpn: &[u8]) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key.clone()));
    let mut c = ServerConfig::builder_with_provider(crate::proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(p.chain.clone(), key)
        .unwrap();
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

/// Serves on loopback, TLS when `tls` is given, HTTP/2 when `h2`: each answer says
/// the client's port, whether the session was resumed and the SNI, the `te` header
/// and the authority; a `/close` answer closes its connection; every HTTP/2 answer
/// ends with a `grpc-status: 0` trailer.
async fn serve(tls: Option<Arc<ServerConfig>>, h2: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(c) => {
                        let Ok(s) = TlsAcceptor::from(c).accept(tcp).await else { return };
                        let conn = s.get_ref().1;
                        let seen = format!(
                            "port={} resumed={} sni={}",
                            peer.port(),
                            conn.handshake_kind() == Some(HandshakeKind::Resumed),
                            conn.server_name().unwrap_or("-")
                        );
                        answer(s, seen, h2).await
                    }
                    None => answer(tcp, format!("port={}", peer.port()), h2).await,
                }
            });
        }
    });
    addr
}

async fn answer<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(io: IO, seen: String, h2: bool) {
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let authority = req.uri().authority().map(ToString::to_string).or_else(|| req.headers().get("host").map(|h| h.to_str().unwrap().to_owned()));
        let text = format!("{seen} te={:?} authority={authority:?}", req.headers().get("te"));
        let mut frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(text)))];
        if h2 {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        if req.uri().path() == "/close" {
            resp.headers_mut().insert("connection", HeaderValue::from_static("close"));
        }
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let io = TokioIo::new(io);
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await
    } else {
        hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await
    };
}

fn upstream(protocol: Protocol, tls: Option<UpstreamTls>) -> Upstream {
    Upstream::new("test", Duration::from_secs(5), &UpstreamOptions { protocol, tls })
}

/// One request; the answer's status, body text and trailers.
async fn get(u: &Upstream, addr: SocketAddr, path: &str, headers: HeaderMap) -> Result<(u16, String, Option<HeaderMap>), UpstreamError> {
    let authority = Authority::try_from(addr.to_string()).unwrap();
    let out = Outgoing { method: &Method::GET, target: path, headers: &headers, body: OutBody::Bytes(Bytes::new()) };
    let resp = u.request(addr, &authority, out).await?;
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Ok((status, String::from_utf8(collected.to_bytes().to_vec()).unwrap(), trailers))
}

fn port(answer: &str) -> &str {
    answer.split_whitespace().next().unwrap()
}

#[tokio::test]
async fn https_backends_verified_by_ca_and_name_resumed_and_pooled() {
    let p = pki("h1");
    let addr = serve(Some(server_config(&p, b"http/1.1")), false).await;
    let u = upstream(Protocol::Http1, Some(UpstreamTls { ca: Some(p.ca_file.clone()), verify: true, server_name: Some("backend.internal".into()) }));
    let (status, first, _) = get(&u, addr, "/close", HeaderMap::new()).await.unwrap();
    assert_eq!(status, 200);
    assert!(first.contains("resumed=false sni=backend.internal"), "{first}");
    let (_, second, _) = get(&u, addr, "/keep", HeaderMap::new()).await.unwrap();
    assert!(second.contains("resumed=true"), "a new connection resumes the session: {second}");
    assert_ne!(port(&first), port(&second), "the closed connection is not reused");
    let (_, third, _) = get(&u, addr, "/keep", HeaderMap::new()).await.unwrap();
    assert_eq!(port(&second), port(&third), "the kept-alive connection is pooled");

    // The backend's certificate does not name the address, and another CA vouches
    // for nothing here: both refused before a request goes out.
    let by_address = upstream(Protocol::Http1, Some(UpstreamTls { ca: Some(p.ca_file.clone()), verify: true, server_name: None }));
    let e = get(&by_address, addr, "/", HeaderMap::new()).await.unwrap_err();
    assert!(e.is_connect() && e.to_string().contains("certificate"), "{e}");
    let other = pki("other");
    let untrusted =
        upstream(Protocol::Http1, Some(UpstreamTls { ca: Some(other.ca_file.clone()), verify: true, server_name: Some("backend.internal".into()) }));
    let e = get(&untrusted, addr, "/", HeaderMap::new()).await.unwrap_err();
    assert!(e.is_connect() && e.to_string().contains("UnknownIssuer"), "{e}");
    let unverified = upstream(Protocol::Http1, Some(UpstreamTls { ca: None, verify: false, server_name: None }));
    assert_eq!(get(&unverified, addr, "/", HeaderMap::new()).await.unwrap().0, 200, "verify: false takes any certificate");
    let missing = upstream(Protocol::Http1, Some(UpstreamTls { ca: Some("/nonexistent/ca.pem".into()), verify: true, server_name: None }));
    let e = get(&missing, addr, "/", HeaderMap::new()).await.unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    for f in [&p.ca_file, &other.ca_file] {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test]
async fn h2c_and_h2_carry_trailers_and_share_a_connection() {
    let p = pki("h2");
    let mut grpc = HeaderMap::new();
    grpc.insert("content-type", HeaderValue::from_static("application/grpc"));
    grpc.insert("host", HeaderValue::from_static("api.test"));
    let tls = UpstreamTls { ca: Some(p.ca_file.clone()), verify: true, server_name: Some("backend.internal".into()) };
    for (protocol, server, tls) in [(Protocol::H2c, None, None), (Protocol::H2, Some(server_config(&p, b"h2")), Some(tls))] {
        let addr = serve(server, true).await;
        let u = upstream(protocol, tls);
        let (status, first, trailers) = get(&u, addr, "/xt.Echo/Unary", grpc.clone()).await.unwrap();
        assert_eq!(status, 200);
        assert!(first.contains("te=Some(\"trailers\")") && first.contains("authority=Some(\"api.test\")"), "{protocol:?}: {first}");
        assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()), Some(HeaderValue::from_static("0")), "{protocol:?}: the trailer arrives");
        let (_, second, _) = get(&u, addr, "/", HeaderMap::new()).await.unwrap();
        assert!(second.contains("te=None"), "no te for what is not gRPC: {second}");
        assert_eq!(port(&first), port(&second), "{protocol:?}: one connection carries both");
    }
    // A backend that does not speak h2 by ALPN is refused.
    let h1_only = serve(Some(server_config(&p, b"http/1.1")), false).await;
    let u = upstream(Protocol::H2, Some(UpstreamTls { ca: Some(p.ca_file.clone()), verify: true, server_name: Some("backend.internal".into()) }));
    let e = get(&u, h1_only, "/", HeaderMap::new()).await.unwrap_err();
    assert!(e.is_connect() && e.to_string().contains("NoApplicationProtocol"), "{e}");
    let _ = std::fs::remove_file(&p.ca_file);
}

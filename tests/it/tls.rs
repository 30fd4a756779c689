//! TLS with certificates made here: PostgreSQL with every sslmode.

use godata_bridge::pg::cluster::{Cluster, ClusterOptions};
use godata_bridge::pg::tls::Db;

/// A CA and a server certificate it signed for `names`.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki(names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "godata-bridge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A throwaway cluster serving TLS with `server`'s certificate, plus
/// `files` (name, contents) in its data directory.
pub async fn ssl_cluster(server: &Pki, mut files: Vec<(String, Vec<u8>)>) -> Cluster {
    files.push(("server.crt".into(), server.cert_pem.clone().into_bytes()));
    files.push(("server.key".into(), server.key_pem.clone().into_bytes()));
    tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "server.crt".into()),
                ("ssl_key_file".into(), "server.key".into()),
            ],
            files,
        })
        .unwrap()
    })
    .await
    .unwrap()
}

/// A throwaway cluster serving TLS with `server`'s certificate and the
/// given `pg_hba.conf`, and a superuser session on it.
pub async fn hba_cluster(server: &Pki, hba: &str) -> (Cluster, tokio_postgres::Client) {
    let cluster = ssl_cluster(
        server,
        vec![("pg_hba.conf".into(), hba.as_bytes().to_vec())],
    )
    .await;
    let admin = crate::support::session(&cluster.config("postgres")).await;
    (cluster, admin)
}

fn write(dir: &std::path::Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

async fn ssl_in_use(db: &Db) -> Result<bool, String> {
    let (c, conn) = db.connect().await.map_err(|e| format!("{e:?}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(r.get(0))
}

#[tokio::test]
async fn postgres_sslmodes_verify_what_they_promise() {
    let server = pki(&["localhost"]);
    let stranger = pki(&["localhost"]);
    let cluster = ssl_cluster(&server, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &server.ca_pem);
    let other_ca = write(dir.path(), "other.pem", &stranger.ca_pem);
    let port = cluster.port();
    let url = |host: &str, q: &str| format!("postgres://postgres@{host}:{port}/postgres?{q}");

    // verify-full: the chain and the host name.
    let db = Db::from_url(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .unwrap();
    assert_eq!(ssl_in_use(&db).await, Ok(true));
    let wrong_host = Db::from_url(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .unwrap();
    let e = ssl_in_use(&wrong_host).await.unwrap_err();
    assert!(e.contains("NotValidForName"), "wrong host name: {e}");
    let unknown_ca = Db::from_url(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .unwrap();
    let e = ssl_in_use(&unknown_ca).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("BadSignature"),
        "unknown CA: {e}"
    );
    // verify-ca: the chain only.
    let db = Db::from_url(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ))
    .unwrap();
    assert_eq!(ssl_in_use(&db).await, Ok(true));
    assert!(ssl_in_use(
        &Db::from_url(&url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={other_ca}")
        ))
        .unwrap()
    )
    .await
    .is_err());
    // require: encrypted, not authenticated; disable: plain.
    let db = Db::from_url(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other_ca}"),
    ))
    .unwrap();
    assert_eq!(ssl_in_use(&db).await, Ok(true));
    let db = Db::from_url(&url("127.0.0.1", "sslmode=disable")).unwrap();
    assert_eq!(ssl_in_use(&db).await, Ok(false));
    let db = Db::from_url(&url("127.0.0.1", "")).unwrap();
    assert_eq!(
        ssl_in_use(&db).await,
        Ok(true),
        "prefer (the default) uses TLS when offered"
    );
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// An HTTPS front for a plain-HTTP server (the emulator speaks HTTP only).
async fn https_proxy(target: std::net::SocketAddr, pki: &Pki) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                }
            });
        }
    });
    port
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(" / ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[tokio::test]
async fn godata_https_with_a_ca_file_or_loudly_without_verification() {
    use godata_bridge::config::Secret;
    use godata_bridge::godata::client::{Client, GodataTls};
    use godata_sim as sim;
    let server = pki(&["localhost"]);
    let sim = crate::support::start_sim().await;
    let port = https_proxy(sim.addr(), &server).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let client = |host: &str, tls: GodataTls| {
        Client::with_tls(
            &format!("https://{host}:{port}"),
            sim::DEFAULT_USER,
            Secret::new(sim::DEFAULT_PASSWORD),
            sim::DEFAULT_OUTBREAK_ID,
            std::time::Duration::from_secs(5),
            &tls,
        )
        .unwrap()
    };
    let doc = serde_json::json!({"firstName": "A"});
    // Trusted through the CA file.
    let c = client(
        "localhost",
        GodataTls {
            ca_file: Some(ca.clone()),
            insecure_skip_verify: false,
        },
    );
    c.upsert_case(uuid::Uuid::new_v4(), &doc)
        .await
        .expect("https with the CA file");
    // Unknown CA: refused, and the reason says so.
    let c = client("localhost", GodataTls::default());
    let e = c.upsert_case(uuid::Uuid::new_v4(), &doc).await.unwrap_err();
    assert!(
        chain(&e).to_lowercase().contains("certificate"),
        "{}",
        chain(&e)
    );
    // Wrong host name: refused.
    let c = client(
        "127.0.0.1",
        GodataTls {
            ca_file: Some(ca.clone()),
            insecure_skip_verify: false,
        },
    );
    let e = c.upsert_case(uuid::Uuid::new_v4(), &doc).await.unwrap_err();
    assert!(
        chain(&e).to_lowercase().contains("certificate"),
        "{}",
        chain(&e)
    );
    // Explicitly insecure: accepted.
    let c = client(
        "127.0.0.1",
        GodataTls {
            ca_file: None,
            insecure_skip_verify: true,
        },
    );
    c.upsert_case(uuid::Uuid::new_v4(), &doc)
        .await
        .expect("insecure mode accepts the certificate");
    assert_eq!(sim.state()["cases"].as_array().unwrap().len(), 2);
    // A CA file that is not PEM is a clear error.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let e = Client::with_tls(
        "https://localhost:1",
        sim::DEFAULT_USER,
        Secret::new("x"),
        sim::DEFAULT_OUTBREAK_ID,
        std::time::Duration::from_secs(1),
        &GodataTls {
            ca_file: Some(bad),
            insecure_skip_verify: false,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("bad.pem"), "{e}");
}

//! TLS to PostgreSQL with libpq's `sslmode` meanings, on tokio-rustls:
//! `disable`, `prefer` (TLS if the server offers it, unverified), `require`
//! (TLS, unverified), `verify-ca` (the chain must lead to `sslrootcert`),
//! `verify-full` (and the host name must match). `sslrootcert` is a PEM file;
//! without it the Mozilla roots (webpki-roots) are used.
//!
//! tokio-postgres understands only disable/prefer/require, so the URL is
//! read here first: its `sslmode`/`sslrootcert` become a [`PgTls`] and the
//! rest goes to `tokio_postgres::Config`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A bad `sslmode` or `sslrootcert`.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("sslmode `{0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("the database URL is not valid: {0}")]
    Url(String),
}

/// The TLS side of a PostgreSQL connection; a tokio-postgres connector.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.mode).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate (sslmode require/prefer: encryption without
/// authentication, as libpq does); handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain is verified, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl PgTls {
    pub fn new(mode: SslMode, root_cert: Option<&str>) -> Result<PgTls, TlsConfigError> {
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        match root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let bad = |reason: String| TlsConfigError::RootCert {
                    path: path.to_string(),
                    reason,
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no certificate in the file".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(AcceptAny(provider.clone()))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsConfigError::RootCert {
                    path: root_cert.unwrap_or("(built-in roots)").to_string(),
                    reason: e.to_string(),
                })?;
                if mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(full))
                } else {
                    full
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Url(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PgTls {
            mode,
            config: Arc::new(config),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The rustls side, for connections tokio-postgres does not make (the
    /// replication client).
    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}

/// Splits `sslmode`/`sslrootcert` off a libpq URL or key=value string and
/// returns the tokio-postgres config plus the TLS connector.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, PgTls), TlsConfigError> {
    let mut mode = None;
    let mut root = None;
    let rest: String =
        if let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) {
            let mut kept = vec![];
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                match k.as_ref() {
                    "sslmode" => mode = Some(v.into_owned()),
                    "sslrootcert" => root = Some(v.into_owned()),
                    _ => kept.push(format!(
                        "{}={}",
                        form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                        form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                    )),
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else if url.contains("://") {
            url.to_string()
        } else {
            let mut kept = vec![];
            for tok in url.split_whitespace() {
                match tok.split_once('=') {
                    Some(("sslmode", v)) => mode = Some(v.to_string()),
                    Some(("sslrootcert", v)) => root = Some(v.to_string()),
                    _ => kept.push(tok),
                }
            }
            kept.join(" ")
        };
    let mode = match mode.as_deref().unwrap_or("prefer") {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(TlsConfigError::Mode(other.to_string())),
    };
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| TlsConfigError::Url(e.to_string()))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((config, PgTls::new(mode, root.as_deref())?))
}

/// A tokio-postgres config with its TLS connector.
#[derive(Debug, Clone)]
pub struct Db {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

impl Db {
    pub fn from_url(url: &str) -> Result<Db, TlsConfigError> {
        let (config, tls) = parse(url)?;
        Ok(Db { config, tls })
    }

    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, PgTlsStream>,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

/// A config without TLS (tests, throwaway clusters on loopback).
impl From<tokio_postgres::Config> for Db {
    fn from(mut config: tokio_postgres::Config) -> Db {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Db {
            config,
            tls: PgTls::new(SslMode::Disable, None).expect("no files to read"),
        }
    }
}

impl MakeTlsConnect<tokio_postgres::Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the host is not a valid TLS server name",
            )
        })?;
        Ok(PgTlsConnect {
            name,
            config: self.config.clone(),
        })
    }
}

pub struct PgTlsConnect {
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl TlsConnect<tokio_postgres::Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(s))
        })
    }
}

/// A TLS stream to PostgreSQL.
pub struct PgTlsStream(tokio_rustls::client::TlsStream<tokio_postgres::Socket>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_rootcert_are_read_from_the_url() {
        let (c, tls) =
            parse("postgres://u@db.example:5433/hmis?sslmode=verify-ca&application_name=x")
                .unwrap();
        assert_eq!(tls.mode(), SslMode::VerifyCa);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_application_name(), Some("x"));
        let (_, tls) = parse("host=db user=u sslmode=require").unwrap();
        assert_eq!(tls.mode(), SslMode::Require);
        assert!(matches!(
            parse("postgres://u@h/db?sslmode=sometimes"),
            Err(TlsConfigError::Mode(_))
        ));
        assert!(matches!(
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem"),
            Err(TlsConfigError::RootCert { .. })
        ));
    }
}

//! A PostgreSQL replication-protocol client on `postgres-protocol`
//! (tokio-postgres has no replication support). Enough for one logical
//! slot: startup with `replication=database`; trust, cleartext, MD5 and
//! SCRAM-SHA-256 authentication; TLS with libpq's `sslmode` meanings (the
//! same [`crate::pg::tls::PgTls`] as every other connection); simple queries
//! (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, …); and the CopyBoth
//! stream of `START_REPLICATION`: XLogData (`w`) and primary keepalive
//! (`k`) in, standby status updates (`r`) out. Framing is our own because
//! postgres-protocol's backend parser does not know CopyBothResponse (`W`).
//!
//! Errors carry PostgreSQL's SQLSTATE and message, never a password.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use crate::capture::pgoutput::Lsn;
use crate::pg::tls::{Db, SslMode};

/// A frame larger than this is a protocol error, not an allocation.
const MAX_FRAME: usize = 1 << 30;
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("PostgreSQL error {code}: {message}")]
    Server { code: String, message: String },
    #[error("replication protocol: {0}")]
    Protocol(String),
}

impl ReplError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// How the server let us in (reported in logs and asserted by the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    Cleartext,
    Md5,
    ScramSha256,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One message of the replication stream.
#[derive(Debug)]
pub enum CopyMessage {
    XLogData {
        start: Lsn,
        end: Lsn,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
    /// The server ended the stream (CopyDone).
    Done,
}

pub struct ReplConn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub tls: bool,
    pub auth: AuthMethod,
}

impl std::fmt::Debug for ReplConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplConn")
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .finish()
    }
}

fn server_error(body: &[u8]) -> ReplError {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some(nul) = tail.iter().position(|b| *b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&tail[..nul]).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = &tail[nul + 1..];
    }
    ReplError::Server { code, message }
}

fn now_pg_micros() -> i64 {
    chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS
}

impl ReplConn {
    /// Opens a `replication=database` session with the settings of `db`
    /// (host, port, user, password, dbname, sslmode, sslrootcert).
    pub async fn connect(db: &Db) -> Result<ReplConn, ReplError> {
        let cfg = &db.config;
        let hosts = cfg.get_hosts();
        let ports = cfg.get_ports();
        let mut last = None;
        for (i, host) in hosts.iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match Self::connect_host(db, host, port).await {
                Ok(c) => return Ok(c),
                Err(e @ ReplError::Connect { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ReplError::Protocol("the database URL names no host".into())))
    }

    async fn connect_host(db: &Db, host: &Host, port: u16) -> Result<ReplConn, ReplError> {
        let mode = db.tls.mode();
        let (io, tls): (Box<dyn Io>, bool) = match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| ReplError::Connect {
                        target: path.display().to_string(),
                        source,
                    })?;
                if matches!(
                    mode,
                    SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
                ) {
                    return Err(ReplError::Tls(
                        "a Unix socket has no TLS; use sslmode=disable or prefer".into(),
                    ));
                }
                (Box::new(s), false)
            }
            Host::Tcp(name) => {
                let target = format!("{name}:{port}");
                let mut s = tokio::net::TcpStream::connect((name.as_str(), port))
                    .await
                    .map_err(|source| ReplError::Connect {
                        target: target.clone(),
                        source,
                    })?;
                let _ = s.set_nodelay(true);
                if mode == SslMode::Disable {
                    (Box::new(s), false)
                } else {
                    let mut req = BytesMut::new();
                    frontend::ssl_request(&mut req);
                    s.write_all(&req).await?;
                    let answer = s.read_u8().await?;
                    if answer == b'S' {
                        let server = rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(|_| {
                                ReplError::Tls(format!("{name} is not a valid TLS server name"))
                            })?;
                        let t = tokio_rustls::TlsConnector::from(db.tls.client_config())
                            .connect(server, s)
                            .await
                            .map_err(|e| ReplError::Tls(e.to_string()))?;
                        (Box::new(t), true)
                    } else if mode == SslMode::Prefer {
                        (Box::new(s), false)
                    } else {
                        return Err(ReplError::Tls(format!(
                            "the server at {target} does not offer TLS (sslmode requires it)"
                        )));
                    }
                }
            }
        };
        let mut conn = ReplConn {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            tls,
            auth: AuthMethod::Trust,
        };
        conn.startup(db).await?;
        Ok(conn)
    }

    async fn send(&mut self) -> Result<(), ReplError> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn startup(&mut self, db: &Db) -> Result<(), ReplError> {
        let cfg = &db.config;
        let user = cfg
            .get_user()
            .ok_or_else(|| ReplError::Auth("the database URL names no user".into()))?
            .to_string();
        let dbname = cfg.get_dbname().unwrap_or(&user).to_string();
        let app = cfg.get_application_name().unwrap_or("godata-bridge");
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("database", dbname.as_str()),
                ("replication", "database"),
                ("application_name", app),
                ("client_encoding", "UTF8"),
                // Row images are parsed from the output functions' text:
                // dates in ISO form whatever the server's default.
                ("DateStyle", "ISO"),
            ],
            &mut self.wbuf,
        )?;
        self.send().await?;
        let password = cfg.get_password();
        let need_password = || {
            password.ok_or_else(|| {
                ReplError::Auth(
                    "the server asks for a password and the database URL has none".into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'R' => {
                    let mut b = body.clone();
                    if b.remaining() < 4 {
                        return Err(ReplError::Protocol("short authentication request".into()));
                    }
                    match b.get_i32() {
                        0 => {}
                        3 => {
                            self.auth = AuthMethod::Cleartext;
                            frontend::password_message(need_password()?, &mut self.wbuf)?;
                            self.send().await?;
                        }
                        5 => {
                            self.auth = AuthMethod::Md5;
                            if b.remaining() < 4 {
                                return Err(ReplError::Protocol("short MD5 salt".into()));
                            }
                            let salt = [b[0], b[1], b[2], b[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                need_password()?,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.send().await?;
                        }
                        10 => {
                            let mechanisms: Vec<&[u8]> =
                                b.chunk().split(|c| *c == 0).filter(|m| !m.is_empty()).collect();
                            if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                                return Err(ReplError::Auth(
                                    "the server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                                ));
                            }
                            self.auth = AuthMethod::ScramSha256;
                            // No channel binding: `n,,` (the server accepts
                            // it unless the client asks for binding).
                            let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)?;
                            self.send().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("SASL continue without SASL start".into())
                            })?;
                            s.update(b.chunk())
                                .map_err(|e| ReplError::Auth(format!("SCRAM: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.send().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("SASL final without SASL start".into())
                            })?;
                            s.finish(b.chunk())
                                .map_err(|e| ReplError::Auth(format!("SCRAM server proof: {e}")))?;
                        }
                        other => {
                            return Err(ReplError::Auth(format!(
                                "the server asks for authentication method {other}, which the replication client does not speak"
                            )))
                        }
                    }
                }
                b'E' => {
                    let e = server_error(&body);
                    return Err(match e {
                        ReplError::Server { code, message } if code.starts_with("28") => {
                            ReplError::Auth(format!("{code}: {message}"))
                        }
                        other => other,
                    });
                }
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, notices.
                b'S' | b'K' | b'N' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        char::from(other)
                    )))
                }
            }
        }
    }

    /// True when a whole frame is already buffered (no read needed).
    pub fn has_frame(&self) -> bool {
        if self.rbuf.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        usize::try_from(len).is_ok_and(|l| self.rbuf.len() > l)
    }

    async fn read_frame(&mut self) -> Result<(u8, Bytes), ReplError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| (4..MAX_FRAME).contains(l))
                    .ok_or_else(|| ReplError::Protocol(format!("bad frame length {len}")))?;
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(1 + len).freeze();
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok((tag, frame));
                }
                self.rbuf.reserve(1 + len - self.rbuf.len());
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// Runs one simple query; returns its rows as text (NULL as `None`).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send().await?;
        let mut rows = vec![];
        let mut error = None;
        loop {
            let (tag, mut body) = self.read_frame().await?;
            match tag {
                b'D' => {
                    if body.remaining() < 2 {
                        return Err(ReplError::Protocol("short data row".into()));
                    }
                    let n = body.get_i16();
                    let mut row = vec![];
                    for _ in 0..n.max(0) {
                        if body.remaining() < 4 {
                            return Err(ReplError::Protocol("short data row".into()));
                        }
                        let len = body.get_i32();
                        match usize::try_from(len) {
                            Ok(l) if l <= body.remaining() => row.push(Some(
                                String::from_utf8_lossy(&body.split_to(l)).into_owned(),
                            )),
                            Ok(_) => return Err(ReplError::Protocol("short data row".into())),
                            Err(_) => row.push(None),
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(&body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                // RowDescription, CommandComplete, EmptyQuery, notices,
                // parameter changes.
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} after a query",
                        char::from(other)
                    )))
                }
            }
        }
    }

    /// `START_REPLICATION SLOT … LOGICAL 0/0 (…)`: from the slot's
    /// confirmed position. Names must be plain identifiers (checked by the
    /// config); they are quoted here all the same.
    pub async fn start_logical(&mut self, slot: &str, publication: &str) -> Result<(), ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {}, messages 'true')",
            crate::pg::quote_ident(slot),
            crate::pg::quote_literal(&crate::pg::quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.send().await?;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = server_error(&body);
                    // The ReadyForQuery after the error.
                    let _ = self.read_frame().await;
                    return Err(e);
                }
                b'N' | b'S' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        char::from(other)
                    )))
                }
            }
        }
    }

    /// The next message of the replication stream.
    pub async fn next_message(&mut self) -> Result<CopyMessage, ReplError> {
        loop {
            let (tag, mut body) = self.read_frame().await?;
            match tag {
                b'd' => {
                    if body.is_empty() {
                        return Err(ReplError::Protocol("empty CopyData".into()));
                    }
                    match body.get_u8() {
                        b'w' if body.remaining() >= 24 => {
                            let start = body.get_u64();
                            let end = body.get_u64();
                            let _sent = body.get_i64();
                            return Ok(CopyMessage::XLogData {
                                start,
                                end,
                                data: body,
                            });
                        }
                        b'k' if body.remaining() >= 17 => {
                            let wal_end = body.get_u64();
                            let _sent = body.get_i64();
                            return Ok(CopyMessage::Keepalive {
                                wal_end,
                                reply_requested: body.get_u8() == 1,
                            });
                        }
                        other => {
                            return Err(ReplError::Protocol(format!(
                                "unknown or short CopyData message {:?}",
                                char::from(other)
                            )))
                        }
                    }
                }
                // CopyDone, or the CommandComplete that follows it.
                b'c' | b'C' => return Ok(CopyMessage::Done),
                b'E' => return Err(server_error(&body)),
                b'N' | b'S' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} in the replication stream",
                        char::from(other)
                    )))
                }
            }
        }
    }

    /// Standby status update: `flush` is what the slot may forget.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> Result<(), ReplError> {
        let mut m = BytesMut::with_capacity(34);
        m.extend_from_slice(b"r");
        m.extend_from_slice(&write.to_be_bytes());
        m.extend_from_slice(&flush.to_be_bytes());
        m.extend_from_slice(&flush.to_be_bytes());
        m.extend_from_slice(&now_pg_micros().to_be_bytes());
        m.extend_from_slice(&[u8::from(reply)]);
        frontend::CopyData::new(m.freeze())?.write(&mut self.wbuf);
        self.send().await
    }
}

//! High availability: several instances may run against one HMIS; the one
//! holding a PostgreSQL advisory lock on its own dedicated session works,
//! the others wait (`pg_advisory_lock` blocks until the holder's session
//! ends: the process died or its connection was cut) and then take over.
//! Losing the session means losing leadership: the instance stops working
//! at once and stands by again (`commands::run`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The leader lock (distinct from the "awake" lock the capture uses).
pub const LEADER_LOCK_KEY: i64 = 7_205_759_403_792_793_602;

static LEADER: AtomicBool = AtomicBool::new(false);

/// Is this process the working instance?
pub fn is_leader() -> bool {
    LEADER.load(Ordering::SeqCst)
}

/// Leadership, held as long as this value and its session live.
pub struct Leadership {
    _client: tokio_postgres::Client,
    /// Ends when the lock session ends.
    pub lost: tokio::task::JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        LEADER.store(false, Ordering::SeqCst);
    }
}

/// Waits until this instance holds the leader lock. TCP keepalives make a
/// cut network end the session (and free the lock) within seconds.
pub async fn acquire(db: &crate::pg::tls::Db) -> Result<Leadership, tokio_postgres::Error> {
    let mut cfg = db.clone();
    cfg.config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .application_name("godata-bridge leader");
    let (client, conn) = cfg.connect().await?;
    let lost = crate::task::spawn("leader-session", async move {
        let _ = conn.await;
    });
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LEADER_LOCK_KEY])
        .await?;
    LEADER.store(true, Ordering::SeqCst);
    Ok(Leadership {
        _client: client,
        lost,
    })
}

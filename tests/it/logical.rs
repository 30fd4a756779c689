//! Logical capture specifics: the slot's confirmed position, idle WAL,
//! TOAST, key changes, TRUNCATE, and the replication client's
//! authentication and TLS. (The shared behaviour suite runs in both modes
//! in deliver_e2e, cli and writeback_e2e.)

use std::time::Duration;

use godata_bridge::capture::pgoutput::{self, Datum, Message};
use godata_bridge::capture::replication::{AuthMethod, ReplConn, ReplError};
use godata_bridge::config::TruncatePolicy;
use godata_bridge::pg::cluster::{Cluster, ClusterOptions};
use godata_bridge::pg::tls::Db;
use godata_sim::Faults;
use serde_json::json;

use crate::deliver_e2e::{case_in, count, outbox_len, prepare, start_bridge};
use crate::support::{both_modes, fresh_db, settled, start_sim, wait_for, wal_mark, Mode};

const INSERT: &str =
    "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ";

#[tokio::test]
async fn the_slot_never_confirms_a_change_go_data_has_not_acknowledged() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, Mode::Logical).await;
    config.delivery.max_backoff_secs = 1;
    let slot = config.capture.slot.clone();
    let bridge = start_bridge(&sim, config.clone(), db.config.clone());
    c.batch_execute(&format!("{INSERT} ('K-1', 'A', now(), 'suspected')"))
        .await
        .unwrap();
    let mark = wal_mark(&c).await;
    wait_for(
        "K-1 delivered and confirmed",
        Duration::from_secs(20),
        || async { settled(&c, &mark).await },
    )
    .await;
    // Go.Data answers 500 to everything from now on.
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    c.batch_execute(&format!("{INSERT} ('K-2', 'B', now(), 'suspected')"))
        .await
        .unwrap();
    wait_for("K-2 failing twice", Duration::from_secs(20), || {
        let failed = sim.requests().iter().filter(|r| r.status == 503).count();
        async move { failed >= 2 }
    })
    .await;
    assert_eq!(outbox_len(&c).await, 0, "logical mode writes no outbox row");
    // Stop the bridge (it sends its last status) and read what the slot
    // still holds past its confirmed position.
    bridge.stop.send(true).unwrap();
    bridge.task.await.unwrap();
    wait_for("the slot released", Duration::from_secs(20), || async {
        !c.query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                    'proto_version', '1', 'publication_names', $2)",
            &[&slot, &config.capture.publication],
        )
        .await
        .unwrap();
    let inserted: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            match pgoutput::decode(&bytes::Bytes::from(r.get::<_, Vec<u8>>(0))).ok()? {
                Message::Insert { new, .. } => new.first().and_then(Datum::text).map(String::from),
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        inserted,
        vec!["K-2".to_string()],
        "the slot still holds K-2 (unacknowledged) and no longer K-1"
    );
    // Go.Data back, bridge back: K-2 arrives once, K-1 is not sent again.
    sim.set_faults(Faults::default());
    let bridge = start_bridge(&sim, config, db.config.clone());
    let mark = wal_mark(&c).await;
    wait_for("K-2 delivered", Duration::from_secs(30), || async {
        settled(&c, &mark).await
    })
    .await;
    assert_eq!(count(&sim, "cases", |_| true), 2);
    let creates = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/cases") && r.status < 300)
        .count();
    assert_eq!(creates, 2, "each case created once");
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

#[tokio::test]
async fn a_transaction_larger_than_a_batch_is_written_in_parts_and_arrives_whole() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Logical).await;
    let bridge = start_bridge(&sim, config, db.config.clone());
    // 2,500 rows in one transaction: more than two outbox writes' worth.
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         SELECT 'BIG-' || g, 'P' || g, 'SL-BO', now(), 'suspected' FROM generate_series(1, 2500) g",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for(
        "the whole transaction delivered",
        Duration::from_secs(120),
        || async { settled(&c, &mark).await },
    )
    .await;
    assert_eq!(count(&sim, "cases", |_| true), 2500);
    let creates = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/cases") && r.status < 300)
        .count();
    assert_eq!(creates, 2500, "each case created once");
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

#[tokio::test]
async fn an_idle_hmis_does_not_hold_wal_written_by_other_databases() {
    // Its own cluster: the test checkpoints and measures cluster-wide WAL.
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()).unwrap())
            .await
            .unwrap();
    let sim = start_sim().await;
    let pg = cluster.config("postgres");
    let (c, config) = prepare(&sim, &pg, &cluster.url("postgres"), Mode::Logical).await;
    let slot = config.capture.slot.clone();
    let bridge = start_bridge(&sim, config, pg.clone());
    c.batch_execute("CREATE DATABASE other").await.unwrap();
    let other = crate::support::session(&cluster.config("other")).await;
    // About 40 MB of WAL in another database; the HMIS stays idle.
    other
        .batch_execute(
            "CREATE TABLE junk (x text);
             INSERT INTO junk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 40000) g;",
        )
        .await
        .unwrap();
    let mark = wal_mark(&other).await;
    let written: i64 = c
        .query_one(
            "SELECT ($1::text::pg_lsn - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $2",
            &[&mark, &slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(written > 30 << 20, "the load wrote {written} bytes of WAL");
    // Checkpoints log the running transactions that let the slot's
    // restart position move once the bridge confirms past them.
    wait_for(
        "the slot confirmed past the other database's WAL and released it",
        Duration::from_secs(60),
        || {
            let (c, other, mark, slot) = (&c, &other, &mark, &slot);
            async move {
                other.batch_execute("CHECKPOINT").await.unwrap();
                let r = c
                    .query_one(
                        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn,
                                (pg_current_wal_lsn() - restart_lsn)::bigint
                           FROM pg_replication_slots WHERE slot_name = $2",
                        &[mark, slot],
                    )
                    .await
                    .unwrap();
                r.get::<_, bool>(0) && r.get::<_, i64>(1) < 8 << 20
            }
        },
    )
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
    drop((c, other));
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

async fn a_large_toasted_value_survives_an_update_of_another_column(mode: Mode) {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, mode).await;
    let bridge = start_bridge(&sim, config.clone(), db.config.clone());
    // 100 kB of hex: compresses to well over the TOAST threshold, so it is
    // stored out of line and an update of another column leaves it
    // "unchanged TOAST" in the WAL.
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         SELECT 'T-1', 'A', string_agg(md5(g::text), ''), now(), 'suspected' FROM generate_series(1, 3200) g",
    )
    .await
    .unwrap();
    let stored: i32 = c
        .query_one(
            "SELECT pg_column_size(last_name) FROM hmis.cases WHERE case_id = 'T-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored > 2032, "stored out of line ({stored} bytes)");
    let big: String = c
        .query_one(
            "SELECT last_name FROM hmis.cases WHERE case_id = 'T-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id = crate::support::ids(&c)
        .await
        .id("hmis.cases", &json!({"case_id": "T-1"}))
        .to_string();
    wait_for("the case", Duration::from_secs(20), || {
        let ok = case_in(&sim, &id).is_some();
        async move { ok }
    })
    .await;
    c.batch_execute("UPDATE hmis.cases SET first_name = 'B' WHERE case_id = 'T-1'")
        .await
        .unwrap();
    wait_for("the update", Duration::from_secs(20), || {
        let ok = case_in(&sim, &id).is_some_and(|c| c["firstName"] == "B");
        async move { ok }
    })
    .await;
    assert_eq!(
        case_in(&sim, &id).unwrap()["lastName"].as_str(),
        Some(big.as_str()),
        "Go.Data keeps the large value"
    );
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

async fn an_update_of_the_key_moves_the_record(mode: Mode) {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, mode).await;
    let bridge = start_bridge(&sim, config.clone(), db.config.clone());
    let ids = crate::support::ids(&c).await;
    let id = |k: &str| ids.id("hmis.cases", &json!({ "case_id": k })).to_string();
    c.batch_execute(&format!("{INSERT} ('KC-1', 'A', now(), 'suspected')"))
        .await
        .unwrap();
    wait_for("KC-1", Duration::from_secs(20), || {
        let ok = case_in(&sim, &id("KC-1")).is_some();
        async move { ok }
    })
    .await;
    c.batch_execute("UPDATE hmis.cases SET case_id = 'KC-2' WHERE case_id = 'KC-1'")
        .await
        .unwrap();
    wait_for(
        "KC-1 deleted, KC-2 created",
        Duration::from_secs(20),
        || {
            let ok = case_in(&sim, &id("KC-1")).is_some_and(|c| c["deleted"] == true)
                && case_in(&sim, &id("KC-2")).is_some_and(|c| c["deleted"] != true);
            async move { ok }
        },
    )
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

/// Deferrals of changes whose row read could not see their transaction.
fn not_visible_deferrals() -> f64 {
    godata_bridge::metrics::render(&[])
        .lines()
        .filter(|l| {
            l.starts_with("godata_bridge_changes_deferred_total")
                && l.contains("error_class=\"not_visible\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A session holding a snapshot from before whatever comes next.
async fn old_snapshot(db: &crate::support::TestDb) -> (tokio_postgres::Client, String) {
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let id: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    (holder, id)
}

/// The race behind the logical-mode loss, made deterministic: delivery's
/// row reads run (test hook) in a snapshot taken before the transactions
/// the stream already delivered, as a read does in the moment between a
/// commit reaching the stream and becoming visible. Such a read finds the
/// row "not there"; delivery must neither settle the change (the slot
/// keeps it, Go.Data keeps the old state) nor delete the record, and
/// deliver the committed state once reads see it.
#[tokio::test]
async fn a_read_that_cannot_see_the_transaction_neither_settles_nor_deletes() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Logical).await;
    let bridge = start_bridge(&sim, config.clone(), db.config.clone());
    let ids = crate::support::ids(&c).await;
    let id = |k: &str| ids.id("hmis.cases", &json!({ "case_id": k })).to_string();
    // 1. An update whose unchanged-TOAST column must be read.
    let (holder, snap) = old_snapshot(&db).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         SELECT 'R-1', 'A', string_agg(md5(g::text), ''), now(), 'suspected' FROM generate_series(1, 3200) g",
    )
    .await
    .unwrap();
    wait_for(
        "R-1 delivered from the stream",
        Duration::from_secs(20),
        || {
            let ok = case_in(&sim, &id("R-1")).is_some();
            async move { ok }
        },
    )
    .await;
    *bridge.read_snapshot.lock().unwrap() = Some(snap);
    let before = not_visible_deferrals();
    c.batch_execute("UPDATE hmis.cases SET first_name = 'B' WHERE case_id = 'R-1'")
        .await
        .unwrap();
    let mark = wal_mark(&c).await;
    wait_for(
        "the read without the update deferred",
        Duration::from_secs(30),
        || async { not_visible_deferrals() > before },
    )
    .await;
    let case = case_in(&sim, &id("R-1")).unwrap();
    assert_eq!(case["firstName"], "A", "nothing sent from the blind read");
    assert_ne!(case["deleted"], true, "not deleted");
    assert!(!settled(&c, &mark).await, "the slot keeps the update");
    *bridge.read_snapshot.lock().unwrap() = None;
    drop(holder);
    wait_for("the update delivered", Duration::from_secs(30), || async {
        settled(&c, &mark).await
    })
    .await;
    let case = case_in(&sim, &id("R-1")).unwrap();
    assert_eq!(case["firstName"], "B");
    assert_eq!(case["lastName"].as_str().map(str::len), Some(3200 * 32));

    // 2. A read by key (backfill, dead-letter retry) of a linked row.
    let (holder, snap) = old_snapshot(&db).await;
    c.batch_execute(&format!("{INSERT} ('R-2', 'C', now(), 'suspected')"))
        .await
        .unwrap();
    wait_for(
        "R-2 delivered from the stream",
        Duration::from_secs(20),
        || {
            let ok = case_in(&sim, &id("R-2")).is_some();
            async move { ok }
        },
    )
    .await;
    *bridge.read_snapshot.lock().unwrap() = Some(snap);
    let before = not_visible_deferrals();
    c.batch_execute(
        "INSERT INTO godata_bridge.outbox (table_name, op, row_key) VALUES ('hmis.cases', 'U', '{\"case_id\": \"R-2\"}');
         NOTIFY godata_bridge",
    )
    .await
    .unwrap();
    wait_for(
        "the blind read by key deferred",
        Duration::from_secs(30),
        || async { not_visible_deferrals() > before },
    )
    .await;
    assert_ne!(
        case_in(&sim, &id("R-2")).unwrap()["deleted"],
        true,
        "a row the read cannot see is not a row that is gone"
    );
    assert_eq!(outbox_len(&c).await, 1, "the change waits in the outbox");
    *bridge.read_snapshot.lock().unwrap() = None;
    drop(holder);
    wait_for("the outbox settled", Duration::from_secs(30), || async {
        outbox_len(&c).await == 0
    })
    .await;
    assert_ne!(case_in(&sim, &id("R-2")).unwrap()["deleted"], true);
    assert!(
        sim.requests().iter().all(|r| r.method != "DELETE"),
        "no delete ever sent"
    );
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

both_modes!(
    a_large_toasted_value_survives_an_update_of_another_column,
    an_update_of_the_key_moves_the_record,
);

#[tokio::test]
async fn truncate_deletes_in_go_data_only_when_configured() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, Mode::Logical).await;
    assert_eq!(
        config.capture.truncate,
        TruncatePolicy::Ignore,
        "the default"
    );
    config.capture.truncate = TruncatePolicy::Delete;
    let bridge = start_bridge(&sim, config, db.config.clone());
    c.batch_execute(&format!(
        "{INSERT} ('TR-1', 'A', now(), 'suspected'), ('TR-2', 'B', now(), 'suspected')"
    ))
    .await
    .unwrap();
    wait_for("two cases", Duration::from_secs(20), || {
        let n = count(&sim, "cases", |c| c["deleted"] != true);
        async move { n == 2 }
    })
    .await;
    c.batch_execute("TRUNCATE hmis.cases CASCADE")
        .await
        .unwrap();
    wait_for("both deleted", Duration::from_secs(20), || {
        let n = count(&sim, "cases", |c| c["deleted"] == true);
        async move { n == 2 }
    })
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;

    // The default: a TRUNCATE leaves Go.Data alone.
    let db = fresh_db().await;
    let sim = start_sim().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Logical).await;
    let bridge = start_bridge(&sim, config, db.config.clone());
    c.batch_execute(&format!("{INSERT} ('TR-3', 'A', now(), 'suspected')"))
        .await
        .unwrap();
    wait_for("the case", Duration::from_secs(20), || {
        let n = count(&sim, "cases", |_| true);
        async move { n == 1 }
    })
    .await;
    c.batch_execute("TRUNCATE hmis.cases CASCADE")
        .await
        .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("the truncate passed", Duration::from_secs(20), || async {
        settled(&c, &mark).await
    })
    .await;
    assert_eq!(outbox_len(&c).await, 0);
    assert_eq!(count(&sim, "cases", |c| c["deleted"] != true), 1);
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

#[tokio::test]
async fn replication_client_speaks_scram_md5_cleartext_and_tls() {
    let server = crate::tls::pki(&["localhost"]);
    let stranger = crate::tls::pki(&["localhost"]);
    // A logical replication connection (`replication=database`) matches
    // pg_hba.conf by its database name, not by the `replication` keyword.
    let hba = "local all all trust
host all scram_u 127.0.0.1/32 scram-sha-256
host all scram_u ::1/128 scram-sha-256
host all md5_u 127.0.0.1/32 md5
host all clear_u 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
";
    let (cluster, admin) = crate::tls::hba_cluster(&server, hba).await;
    admin
        .batch_execute(
            "CREATE ROLE scram_u LOGIN REPLICATION PASSWORD 'pw-scram';
             SET password_encryption = 'md5';
             CREATE ROLE md5_u LOGIN REPLICATION PASSWORD 'pw-md5';
             RESET password_encryption;
             CREATE ROLE clear_u LOGIN REPLICATION PASSWORD 'pw-clear';",
        )
        .await
        .unwrap();
    let port = cluster.port();
    let url = |user: &str, host: &str, q: &str| {
        format!("postgres://{user}@{host}:{port}/postgres?sslmode=disable{q}")
    };
    for (user, want) in [
        ("scram_u:pw-scram", AuthMethod::ScramSha256),
        ("md5_u:pw-md5", AuthMethod::Md5),
        ("clear_u:pw-clear", AuthMethod::Cleartext),
        ("postgres", AuthMethod::Trust),
    ] {
        let db = Db::from_url(&url(user, "127.0.0.1", "")).unwrap();
        let mut r = ReplConn::connect(&db).await.unwrap();
        assert_eq!(r.auth, want, "{user}");
        assert!(!r.tls);
        let rows = r.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), 4, "systemid, timeline, xlogpos, dbname");
        assert_eq!(rows[0][3].as_deref(), Some("postgres"));
    }
    for user in ["scram_u:wrong", "md5_u:wrong", "clear_u:wrong"] {
        let e = ReplConn::connect(&Db::from_url(&url(user, "127.0.0.1", "")).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ReplError::Auth(m) if m.contains("28P01")),
            "{user}: {e}"
        );
        assert!(!e.to_string().contains("wrong"), "no password in: {e}");
    }
    // TLS, verify-full against the test CA; SCRAM inside it.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, &stranger.ca_pem).unwrap();
    let tls_url = |root: &std::path::Path| {
        format!(
            "postgres://scram_u:pw-scram@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            root.display()
        )
    };
    let mut r = ReplConn::connect(&Db::from_url(&tls_url(&ca)).unwrap())
        .await
        .unwrap();
    assert!(r.tls);
    assert_eq!(r.auth, AuthMethod::ScramSha256);
    assert_eq!(
        r.simple_query("SHOW ssl").await.unwrap(),
        vec![vec![Some("on".to_string())]]
    );
    let e = ReplConn::connect(&Db::from_url(&tls_url(&other)).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ReplError::Tls(_)), "unknown CA refused: {e}");
    // require and prefer encrypt without checking the chain.
    for mode in ["require", "prefer"] {
        let r = ReplConn::connect(
            &Db::from_url(&format!(
                "postgres://scram_u:pw-scram@127.0.0.1:{port}/postgres?sslmode={mode}&sslrootcert={}",
                other.display()
            ))
            .unwrap(),
        )
        .await
        .unwrap();
        assert!(r.tls, "{mode}");
    }
    drop(admin);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

//! The capture SQL (`sql/install.sql`) on a real PostgreSQL.

use std::time::Duration;

use godata_bridge::capture::install::{self, SCHEMA_VERSION};
use serde_json::{json, Value};
use tokio_postgres::AsyncMessage;

use crate::support::{fresh_db, TestDb};

const HMIS: &str = include_str!("../../examples/hmis.sql");

async fn hmis_with_capture() -> (TestDb, tokio_postgres::Client) {
    let db = fresh_db().await;
    let mut c = db.client().await;
    c.batch_execute(HMIS).await.unwrap();
    install::install(&mut c).await.unwrap();
    install::track(&c, "hmis", "cases", &[]).await.unwrap();
    install::track(&c, "hmis", "contacts", &[]).await.unwrap();
    (db, c)
}

async fn outbox(c: &tokio_postgres::Client) -> Vec<(String, String, Value)> {
    c.query(
        "SELECT table_name, op::text, row_key FROM godata_bridge.outbox ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test]
async fn install_is_idempotent_and_versioned() {
    let db = fresh_db().await;
    let mut c = db.client().await;
    install::install(&mut c).await.unwrap();
    install::install(&mut c).await.unwrap();
    let v: i32 = c
        .query_one("SELECT max(version) FROM godata_bridge.schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, SCHEMA_VERSION);
    install::uninstall(&mut c).await.unwrap();
    install::uninstall(&mut c).await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'godata_bridge'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn inserts_updates_deletes_land_in_the_outbox() {
    let (_db, c) = hmis_with_capture().await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
              VALUES ('X-1', 'Aminata', '2024-05-01T10:00:00Z', 'suspected');
         UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id = 'X-1';
         DELETE FROM hmis.contacts WHERE contact_id = 'KEN-2024-0001-C2';",
    )
    .await
    .unwrap();
    let rows = outbox(&c).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("hmis.cases", "I")
    );
    assert_eq!(rows[0].2, json!({"case_id": "X-1"}));
    assert_eq!(rows[1].1, "U");
    // The outbox holds keys only; the current row comes from fetch_rows.
    let image: Value = c
        .query_one(
            "SELECT row_image FROM godata_bridge.fetch_rows('hmis.cases', ARRAY['{\"case_id\": \"X-1\"}'::jsonb])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(image["classification"], "confirmed");
    assert_eq!(image["first_name"], "Aminata");
    assert_eq!(
        (rows[2].0.as_str(), rows[2].1.as_str()),
        ("hmis.contacts", "D")
    );
    assert_eq!(rows[2].2, json!({"contact_id": "KEN-2024-0001-C2"}));
}

#[tokio::test]
async fn key_change_is_a_delete_and_an_upsert() {
    let (_db, c) = hmis_with_capture().await;
    c.batch_execute(
        "UPDATE hmis.cases SET case_id = 'WAU-2024-0099' WHERE case_id = 'WAU-2024-0002'",
    )
    .await
    .unwrap();
    let ops: Vec<(String, Value)> = outbox(&c).await.into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(
        ops,
        vec![
            ("D".to_string(), json!({"case_id": "WAU-2024-0002"})),
            ("U".to_string(), json!({"case_id": "WAU-2024-0099"})),
        ]
    );
}

#[tokio::test]
async fn bridge_writes_are_not_captured() {
    let (_db, mut c) = hmis_with_capture().await;
    let tx = c.transaction().await.unwrap();
    tx.batch_execute(
        "SET LOCAL godata_bridge.origin = 'godata';
         UPDATE hmis.cases SET outcome = 'recovered' WHERE case_id = 'KEN-2024-0002';",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        outbox(&c).await.is_empty(),
        "the write-back echoed into the outbox"
    );
    // The setting was transaction-local: the next change is captured.
    c.batch_execute("UPDATE hmis.cases SET outcome = 'alive' WHERE case_id = 'KEN-2024-0002'")
        .await
        .unwrap();
    assert_eq!(outbox(&c).await.len(), 1);
}

#[tokio::test]
async fn bulk_insert_is_captured_set_based() {
    let (_db, c) = hmis_with_capture().await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         SELECT 'BULK-' || g, 'P' || g, now(), 'suspected' FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
    let distinct_tx: i64 = c
        .query_one(
            "SELECT count(DISTINCT txid::text) FROM godata_bridge.outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct_tx, 1);
}

#[tokio::test]
async fn a_commit_notifies_once_without_payload() {
    let (db, c) = hmis_with_capture().await;
    let (listener, mut conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(n)) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN godata_bridge")
        .await
        .unwrap();
    c.batch_execute(
        "BEGIN;
         INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('N-1', 'A', now(), 'suspected');
         INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('N-2', 'B', now(), 'suspected');
         COMMIT;",
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ("godata_bridge".to_string(), String::new()));
    // A second, unrelated round trip on the listener: any further notice of
    // that transaction would have arrived before its answer.
    listener.batch_execute("SELECT 1").await.unwrap();
    assert!(rx.try_recv().is_err(), "one transaction, one wake-up");
}

#[tokio::test]
async fn hostile_identifiers_are_quoted() {
    let db = fresh_db().await;
    let mut c = db.client().await;
    install::install(&mut c).await.unwrap();
    c.batch_execute(
        r#"CREATE TABLE y (id int);
           CREATE TABLE "x""; drop table y; --" ("k""ey" text PRIMARY KEY, v text);"#,
    )
    .await
    .unwrap();
    install::track(&c, "public", "x\"; drop table y; --", &[])
        .await
        .unwrap();
    c.batch_execute(r#"INSERT INTO "x""; drop table y; --" VALUES ('a', 'b')"#)
        .await
        .unwrap();
    let rows = outbox(&c).await;
    assert_eq!(rows[0].0, r#"public."x""; drop table y; --""#);
    assert_eq!(rows[0].2, json!({"k\"ey": "a"}));
    let y: i64 = c
        .query_one("SELECT count(*) FROM pg_tables WHERE tablename = 'y'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(y, 1, "table y survived");
    // Unknown tables and key columns are refused with a message naming them.
    let e = install::track(&c, "public", "nope", &[]).await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("nope"), "{e}");
    let e = install::track(&c, "public", "y", &["idd".to_string()])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("has no column idd"),
        "{e}"
    );
    install::untrack(&c, "public", "x\"; drop table y; --")
        .await
        .unwrap();
    c.batch_execute(r#"INSERT INTO "x""; drop table y; --" VALUES ('c', 'd')"#)
        .await
        .unwrap();
    assert_eq!(
        outbox(&c).await.len(),
        1,
        "untracked tables are not captured"
    );
}

#[tokio::test]
async fn writers_skip_notify_while_the_bridge_is_awake() {
    let (db, c) = hmis_with_capture().await;
    let (listener, mut conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(AsyncMessage::Notification(_)) = msg {
                let _ = tx.send(());
            }
        }
    });
    listener
        .batch_execute("LISTEN godata_bridge")
        .await
        .unwrap();
    // The listener plays the bridge: it holds the "awake" lock.
    listener
        .batch_execute("SELECT pg_advisory_lock(godata_bridge.awake_lock_key())")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('A-1', 'A', now(), 'suspected')")
        .await
        .unwrap();
    listener.batch_execute("SELECT 1").await.unwrap();
    assert!(
        rx.try_recv().is_err(),
        "no NOTIFY while the bridge is awake"
    );
    assert_eq!(
        outbox(&c).await.len(),
        1,
        "the change is captured all the same"
    );
    listener
        .batch_execute("SELECT pg_advisory_unlock(godata_bridge.awake_lock_key())")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('A-2', 'B', now(), 'suspected')")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("NOTIFY once the bridge sleeps")
        .unwrap();
}

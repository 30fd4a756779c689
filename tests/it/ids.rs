//! Go.Data ids that cannot collide: Go.Data keeps person ids unique across
//! every outbreak and person type (reference §10), so ids derive from
//! (namespace, outbreak, table, key) with a namespace per installation;
//! installations from before keep their ids; an id that lives elsewhere is
//! a dead letter naming the cause, never a request loop.

use std::time::Duration;

use godata_bridge::config::{Config, Secret};
use godata_bridge::deliver::Deliverer;
use godata_bridge::godata::client::Client;
use godata_bridge::godata::ids::{IdScheme, LEGACY_NAMESPACE};
use godata_sim::{self as sim, Sim};
use serde_json::json;

use crate::deliver_e2e::prepare;
use crate::support::{fresh_db, settled, start_sim, wait_for, wal_mark, Mode};

const OUTBREAK_B: &str = "0b0b0b0b-0000-4000-8000-00000000000b";
const USER_B: (&str, &str) = ("second@godata.example", "second-password");

fn add_outbreak_b(sim: &Sim) {
    sim.with_store(|s| {
        s.add_outbreak(
            OUTBREAK_B,
            "Second outbreak",
            "CB-9999999999",
            "KB-9999999999",
        );
        s.add_user(USER_B.0, USER_B.1, Some(OUTBREAK_B.into()));
    });
}

/// Flow 1 for `config`, logged in as `user` into `outbreak`.
fn start(
    sim: &Sim,
    config: &Config,
    pg: &tokio_postgres::Config,
    user: (&str, &str),
    outbreak: &str,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = config.clone();
    config.godata.outbreak_id = outbreak.into();
    let client = Client::new(
        &sim.url(),
        user.0,
        Secret::new(user.1),
        outbreak,
        Duration::from_secs(10),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task =
        godata_bridge::flow1::spawn(Deliverer::new(config, client), pg.clone().into(), rx).task;
    (stop, task)
}

fn live_cases_in(sim: &Sim, outbreak: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sim.with_store(|s| {
        s.persons
            .values()
            .filter(|p| p["outbreakId"] == outbreak && p["deleted"] != true)
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["documents"][0]["number"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    });
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

async fn dead_letters(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT reason FROM godata_bridge.dead_letter", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The scenario: a bridge that pushed into one outbreak is pointed
/// at a second one; the same HMIS keys become a second set of records,
/// with no error.
#[tokio::test]
async fn the_same_keys_pushed_into_a_second_outbreak_are_new_records() {
    let sim = start_sim().await;
    add_outbreak_b(&sim);
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    let (stop, task) = start(
        &sim,
        &config,
        &db.config,
        (sim::DEFAULT_USER, sim::DEFAULT_PASSWORD),
        sim::DEFAULT_OUTBREAK_ID,
    );
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         SELECT 'K-' || g, 'P', now(), 'suspected' FROM generate_series(1, 3) g",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("outbreak A", Duration::from_secs(20), || async {
        settled(&c, &mark).await
    })
    .await;
    stop.send(true).unwrap();
    let _ = task.await;
    let in_a: Vec<(String, String)> = live_cases_in(&sim, sim::DEFAULT_OUTBREAK_ID)
        .into_iter()
        .filter(|(_, k)| k.starts_with("K-"))
        .collect();
    assert_eq!(in_a.len(), 3);

    // Pointed at outbreak B: the linked rows change, and one more comes.
    let (stop, task) = start(&sim, &config, &db.config, USER_B, OUTBREAK_B);
    c.batch_execute(
        "UPDATE hmis.cases SET first_name = 'Q' WHERE case_id LIKE 'K-%';
         INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('K-4', 'P', now(), 'suspected')",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("outbreak B", Duration::from_secs(20), || async {
        settled(&c, &mark).await
    })
    .await;
    stop.send(true).unwrap();
    let _ = task.await;
    let in_b = live_cases_in(&sim, OUTBREAK_B);
    assert_eq!(
        in_b.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        ["K-1", "K-2", "K-3", "K-4"]
    );
    for (id, _) in &in_b {
        assert!(
            !in_a.iter().any(|(a, _)| a == id),
            "ids differ per outbreak"
        );
    }
    assert_eq!(
        live_cases_in(&sim, sim::DEFAULT_OUTBREAK_ID)
            .iter()
            .filter(|(_, k)| k.starts_with("K-"))
            .count(),
        3,
        "outbreak A keeps its records"
    );
    assert!(dead_letters(&c).await.is_empty());
    // The links now point into outbreak B.
    let linked: i64 = c
        .query_one(
            "SELECT count(*) FROM godata_bridge.link WHERE outbreak_id = $1",
            &[&OUTBREAK_B],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(linked, 4);
}

/// Two installations on the default config, with overlapping keys, feeding
/// one outbreak: each has its own namespace, so two records, no clash.
#[tokio::test]
async fn two_installations_with_overlapping_keys_get_distinct_ids() {
    let sim = start_sim().await;
    sim.with_store(|s| {
        s.add_user(USER_B.0, USER_B.1, Some(sim::DEFAULT_OUTBREAK_ID.into()));
    });
    let mut hmis = vec![];
    for user in [(sim::DEFAULT_USER, sim::DEFAULT_PASSWORD), USER_B] {
        let db = fresh_db().await;
        let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
        assert_eq!(config.godata.id_namespace, None, "the default config");
        let running = start(&sim, &config, &db.config, user, sim::DEFAULT_OUTBREAK_ID);
        c.batch_execute(
            "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
             VALUES ('SAME-1', 'P', now(), 'suspected')",
        )
        .await
        .unwrap();
        hmis.push((db, c, running));
    }
    for (_, c, _) in &hmis {
        let mark = wal_mark(c).await;
        wait_for("delivered", Duration::from_secs(20), || async {
            settled(c, &mark).await
        })
        .await;
    }
    let schemes: Vec<IdScheme> =
        futures_util::future::join_all(hmis.iter().map(|(_, c, _)| crate::support::ids(c))).await;
    assert_ne!(schemes[0].namespace, schemes[1].namespace);
    assert!(schemes.iter().all(|s| s.namespace != LEGACY_NAMESPACE));
    let same: Vec<(String, String)> = live_cases_in(&sim, sim::DEFAULT_OUTBREAK_ID)
        .into_iter()
        .filter(|(_, k)| k == "SAME-1")
        .collect();
    assert_eq!(same.len(), 2, "{same:?}");
    for (_, c, (stop, _)) in &hmis {
        assert!(dead_letters(c).await.is_empty());
        stop.send(true).unwrap();
    }
}

/// An installation from before scheme 2 (it had a schema version): running
/// `install` again keeps scheme 1 and the namespace of earlier releases,
/// so its records keep their ids; a fresh one gets scheme 2.
#[tokio::test]
async fn an_existing_installation_keeps_its_ids() {
    let db = fresh_db().await;
    let mut c = db.client().await;
    godata_bridge::capture::install::install(&mut c)
        .await
        .unwrap();
    let fresh = IdScheme::load(&c, "ob", None).await.unwrap();
    assert_eq!(fresh.outbreak.as_deref(), Some("ob"), "scheme 2");
    // As a release before scheme 2 left it.
    c.batch_execute("DELETE FROM godata_bridge.state WHERE name = 'id_scheme'")
        .await
        .unwrap();
    godata_bridge::capture::install::install(&mut c)
        .await
        .unwrap();
    let kept = IdScheme::load(&c, "ob", None).await.unwrap();
    assert_eq!(
        kept,
        IdScheme {
            namespace: LEGACY_NAMESPACE,
            outbreak: None
        }
    );
    let key = json!({"case_id": "A"});
    assert_eq!(
        kept.id("hmis.cases", &key),
        godata_bridge::godata::ids::godata_id(LEGACY_NAMESPACE, "hmis.cases", &key)
    );
    // Running install again changes nothing; an explicit namespace wins.
    godata_bridge::capture::install::install(&mut c)
        .await
        .unwrap();
    assert_eq!(IdScheme::load(&c, "ob", None).await.unwrap(), kept);
    let mine = uuid::Uuid::new_v4();
    assert_eq!(
        IdScheme::load(&c, "ob", Some(mine))
            .await
            .unwrap()
            .namespace,
        mine
    );
}

/// Scheme 1 pointed at a second outbreak: the id lives in the first. The
/// change is a dead letter naming the cause after a bounded number of
/// requests, never a loop.
#[tokio::test]
async fn an_id_living_in_another_outbreak_is_a_dead_letter_not_a_loop() {
    let sim = start_sim().await;
    add_outbreak_b(&sim);
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    c.batch_execute(
        "UPDATE godata_bridge.state SET value = jsonb_build_object('version', 1, 'namespace', $$6f1c2b8e-5a43-4d0e-9b3c-7e2a1d5f0c91$$)
          WHERE name = 'id_scheme'",
    )
    .await
    .unwrap();
    let (stop, task) = start(
        &sim,
        &config,
        &db.config,
        (sim::DEFAULT_USER, sim::DEFAULT_PASSWORD),
        sim::DEFAULT_OUTBREAK_ID,
    );
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('E-1', 'P', now(), 'suspected')",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("outbreak A", Duration::from_secs(20), || async {
        settled(&c, &mark).await
    })
    .await;
    stop.send(true).unwrap();
    let _ = task.await;
    let before = sim.requests().len();
    let (stop, task) = start(&sim, &config, &db.config, USER_B, OUTBREAK_B);
    c.batch_execute("UPDATE hmis.cases SET first_name = 'Q' WHERE case_id = 'E-1'")
        .await
        .unwrap();
    wait_for("the dead letter", Duration::from_secs(20), || {
        let c = &c;
        async move { !dead_letters(c).await.is_empty() }
    })
    .await;
    stop.send(true).unwrap();
    let _ = task.await;
    let reasons = dead_letters(&c).await;
    assert!(
        reasons[0].contains("another outbreak or record type"),
        "{reasons:?}"
    );
    let person_requests = sim.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("/cases"))
        .count();
    assert!(
        person_requests <= 8,
        "{person_requests} requests for one change"
    );
}

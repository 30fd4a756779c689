//! The randomized convergence test: HMIS writes (inserts, updates, deletes,
//! key changes, discarded ↔ confirmed flips, contacts), tracer edits,
//! creates and deletes in Go.Data, SIGKILLs of the bridge and emulator
//! faults (5xx, dropped connections, expired tokens), interleaved at
//! random. When the bridge has settled, `reconcile` must find no
//! difference in either direction; then differences made on purpose are
//! named exactly, and `--repair` fixes them.
//!
//! Seeded and replayable: the seed is printed; `CONVERGENCE_SEED=N`
//! replays it, `CONVERGENCE_STEPS=N` makes a longer soak (CI runs a short
//! one in both capture modes).

use std::time::Duration;

use godata_sim::Faults;
use serde_json::{json, Value};

use crate::reconcile::{behind_the_bridge, named, reconcile, set, sim_with_auditor, until_in_sync};
use crate::support::bin::{bridge_cmd, free_port, reference_hmis_in, spawn_run_at, EXAMPLE};
use crate::support::{both_modes, ob, Mode};
use crate::writeback_e2e::tracer;

const CLASSES: &[&str] = &["suspected", "confirmed", "discarded", "probable"];
const GODATA_CLASSES: &[&str] = &[
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT",
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_PROBABLE",
];

/// HMIS case keys in play, with their contacts' keys.
#[derive(Default)]
struct World {
    cases: Vec<(String, Vec<String>)>,
    /// Cases a tracer created in Go.Data (ids).
    tracer_cases: Vec<String>,
    next: u32,
}

impl World {
    fn key(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}-{}", self.next)
    }
}

fn seed() -> u64 {
    std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn steps() -> usize {
    std::env::var("CONVERGENCE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

async fn as_tracer(
    api: &mut godata_sim::testing::Api,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    api.call_as(
        crate::writeback_e2e::TRACER,
        "tracer-password",
        method,
        path,
        body,
    )
    .await
}

async fn hmis(c: &tokio_postgres::Client, sql: &str) {
    // A statement the schema refuses (a random key change racing a
    // contact) is part of the game: the HMIS just did not change.
    let _ = c.batch_execute(sql).await;
}

async fn converges_under_random_changes_kills_and_faults(mode: Mode) {
    let seed = seed();
    eprintln!("convergence ({mode:?}): CONVERGENCE_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = sim_with_auditor().await;
    let (db, c, env) = reference_hmis_in(&sim, mode).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(EXAMPLE)
            .unwrap()
            .replace("interval_secs = 5", "interval_secs = 1")
            .replace("max_backoff_secs = 60", "max_backoff_secs = 2"),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let (code, _, err) = bridge_cmd(&["install", "--config", &config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = bridge_cmd(&["backfill", "--config", &config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let start = || spawn_run_at(&config, &env, &format!("127.0.0.1:{}", free_port()));
    let mut bridge = start();
    let mut api = tracer(&sim).await;
    let mut w = World::default();
    for _ in 0..steps() {
        match rng.u32(0..100) {
            // A new case, sometimes with contacts.
            0..=19 => {
                let k = w.key("CV");
                let class = CLASSES[rng.usize(..CLASSES.len())];
                hmis(
                    &c,
                    &format!(
                        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
                         VALUES ('{k}', 'N{}', now(), '{class}')",
                        rng.u32(..1000)
                    ),
                )
                .await;
                let mut contacts = vec![];
                for _ in 0..rng.usize(0..3) {
                    let ck = w.key(&format!("{k}-C"));
                    hmis(
                        &c,
                        &format!(
                            "INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
                             VALUES ('{ck}', '{k}', 'C{}', current_date, 'family')",
                            rng.u32(..1000)
                        ),
                    )
                    .await;
                    contacts.push(ck);
                }
                w.cases.push((k, contacts));
            }
            // An update: a name, or a classification flip.
            20..=44 if !w.cases.is_empty() => {
                let (k, _) = &w.cases[rng.usize(..w.cases.len())];
                let set = match rng.bool() {
                    true => format!("first_name = 'U{}'", rng.u32(..1000)),
                    false => format!("classification = '{}'", CLASSES[rng.usize(..CLASSES.len())]),
                };
                hmis(
                    &c,
                    &format!(
                        "UPDATE hmis.cases SET {set}, updated_at = now() WHERE case_id = '{k}'"
                    ),
                )
                .await;
            }
            // A contact changes, or a new one comes.
            45..=54 if !w.cases.is_empty() => {
                let i = rng.usize(..w.cases.len());
                let (k, contacts) = &mut w.cases[i];
                match (contacts.is_empty(), rng.bool()) {
                    (false, true) => {
                        let ck = &contacts[rng.usize(..contacts.len())];
                        hmis(&c, &format!("UPDATE hmis.contacts SET first_name = 'V{}' WHERE contact_id = '{ck}'", rng.u32(..1000))).await;
                    }
                    _ => {
                        let ck = format!("{k}-C{}", rng.u32(1000..9999));
                        hmis(
                            &c,
                            &format!(
                                "INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
                                 VALUES ('{ck}', '{k}', 'C', current_date, 'friend')"
                            ),
                        )
                        .await;
                        contacts.push(ck);
                    }
                }
            }
            // A delete: a contact, or a case with its contacts.
            55..=62 if !w.cases.is_empty() => {
                let i = rng.usize(..w.cases.len());
                let (k, contacts) = w.cases.remove(i);
                hmis(
                    &c,
                    &format!(
                        "BEGIN; DELETE FROM hmis.contacts WHERE case_id = '{k}';
                         DELETE FROM hmis.cases WHERE case_id = '{k}'; COMMIT"
                    ),
                )
                .await;
                drop(contacts);
            }
            // A key change (a case without contacts, or a contact).
            63..=67 if !w.cases.is_empty() => {
                let i = rng.usize(..w.cases.len());
                let new = w.key("KC");
                let (k, contacts) = &mut w.cases[i];
                if contacts.is_empty() {
                    hmis(
                        &c,
                        &format!("UPDATE hmis.cases SET case_id = '{new}' WHERE case_id = '{k}'"),
                    )
                    .await;
                    *k = new;
                } else {
                    let j = rng.usize(..contacts.len());
                    let old = contacts[j].clone();
                    hmis(&c, &format!("UPDATE hmis.contacts SET contact_id = '{new}' WHERE contact_id = '{old}'")).await;
                    contacts[j] = new;
                }
            }
            // A tracer edits a case in Go.Data (fields both sides share).
            68..=77 => {
                let st = sim.state();
                let live: Vec<&Value> = st["cases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["deleted"] != true)
                    .collect();
                if !live.is_empty() {
                    let id = live[rng.usize(..live.len())]["id"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    let class = GODATA_CLASSES[rng.usize(..GODATA_CLASSES.len())];
                    let _ = as_tracer(
                        &mut api,
                        "PUT",
                        &ob(&format!("cases/{id}")),
                        Some(json!({ "classification": class })),
                    )
                    .await;
                }
            }
            // A tracer creates a case of their own, or deletes one.
            78..=84 => match (w.tracer_cases.is_empty(), rng.bool()) {
                (false, true) => {
                    let id = w.tracer_cases.remove(rng.usize(..w.tracer_cases.len()));
                    let _ = as_tracer(&mut api, "DELETE", &ob(&format!("cases/{id}")), None).await;
                }
                _ => {
                    let body = json!({
                        "firstName": format!("T{}", rng.u32(..1000)),
                        "classification": GODATA_CLASSES[0],
                        "dateOfReporting": "2024-05-01T00:00:00.000Z",
                    });
                    if let Some((200, b)) =
                        as_tracer(&mut api, "POST", &ob("cases"), Some(body)).await
                    {
                        w.tracer_cases.push(b["id"].as_str().unwrap().to_string());
                    }
                }
            },
            // SIGKILL, and a restart.
            85..=89 => {
                bridge.kill().await.unwrap();
                bridge = start();
            }
            // Faults on, off, or every token expired.
            90..=94 => sim.set_faults(match rng.u32(0..3) {
                0 => Faults::default(),
                1 => Faults {
                    error_rate: 0.2,
                    ..Faults::default()
                },
                _ => Faults {
                    drop_rate: 0.1,
                    drop_after_rate: 0.1,
                    ..Faults::default()
                },
            }),
            95..=99 => {
                sim.expire_tokens();
            }
            _ => {}
        }
        // Let a few of the changes meet the bridge mid-flight.
        if rng.u32(0..4) == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(u64::from(rng.u32(0..50)))).await;
        }
    }
    sim.set_faults(Faults::default());
    // Settled: reconcile finds nothing (a condition, polled).
    let context = format!("CONVERGENCE_SEED={seed} ({mode:?})");
    until_in_sync(&env, Duration::from_secs(120), &context).await;
    // Differences made on purpose are named exactly, and repaired.
    // (A case without contacts: deleting a case in Go.Data takes its
    // relationships along, which changes its contacts' Bundles without
    // changing their `updatedAt`; see README, reconcile.)
    let Some((k, _)) = w
        .cases
        .iter()
        .find(|(k, contacts)| k.starts_with("CV-") && contacts.is_empty())
        .cloned()
    else {
        return;
    };
    let gid = godata_sim::testing::live_case_by_document(&sim, &k)
        .map(|c| c["id"].as_str().unwrap().to_string());
    bridge.kill().await.unwrap();
    if let Some(gid) = &gid {
        let done = as_tracer(&mut api, "DELETE", &ob(&format!("cases/{gid}")), None).await;
        assert!(done.as_ref().is_some_and(|(s, _)| *s < 300), "{done:?}");
    }
    let other = w.cases.iter().map(|(k, _)| k.clone()).find(|o| *o != k);
    if let Some(o) = &other {
        behind_the_bridge(
            &db,
            &env,
            mode,
            &format!("UPDATE hmis.cases SET first_name = 'Behind' WHERE case_id = '{o}'"),
        )
        .await;
    }
    let (code, report) = reconcile(&env, &["--direction", "push"]).await;
    let missing = named(&report, "push", "hmis.cases", "missing_in_godata", "key");
    let stale = named(&report, "push", "hmis.cases", "stale", "key");
    if gid.is_some() {
        assert_eq!(code, Some(1), "CONVERGENCE_SEED={seed}: {report}");
        assert_eq!(missing, set(&[&k]), "CONVERGENCE_SEED={seed}: {report}");
    }
    if let Some(o) = &other {
        assert_eq!(stale, set(&[o]), "CONVERGENCE_SEED={seed}: {report}");
    }
    let _bridge = start();
    let (_, report) = reconcile(&env, &["--repair"]).await;
    assert!(
        report["repaired"]["actions"]["enqueued"].as_u64()
            >= Some(u64::from(gid.is_some()) + u64::from(other.is_some())),
        "CONVERGENCE_SEED={seed}: {report}"
    );
    // What the repair enqueued is delivered (and what it sets moving, such
    // as contacts waiting on a repaired case): in sync again.
    until_in_sync(
        &env,
        Duration::from_secs(60),
        &format!("{context} after the repair"),
    )
    .await;
}

both_modes!(converges_under_random_changes_kills_and_faults);

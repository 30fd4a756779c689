//! The bridge's Go.Data client against the emulator: upsert by
//! deterministic id, restore of soft-deleted records, shared re-login,
//! contacts through their case, and the failure classification.

use std::sync::Arc;
use std::time::Duration;

use godata_bridge::config::Secret;
use godata_bridge::godata::client::{Client, Disposition, GodataError};
use godata_sim::{self as sim, Faults, Sim};
use serde_json::json;
use uuid::Uuid;

use crate::support::start_sim;

fn client(sim: &Sim) -> Client {
    Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(10),
    )
}

fn logins(sim: &Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/api/users/login")
        .count()
}

#[tokio::test]
async fn upsert_creates_then_updates_the_same_record() {
    let sim = start_sim().await;
    let c = client(&sim);
    let id = Uuid::new_v4();
    let created = c
        .upsert_case(id, &json!({"firstName": "Aminata", "lastName": "Kamara"}))
        .await
        .unwrap();
    assert_eq!(created["id"], id.to_string());
    let updated = c
        .upsert_case(id, &json!({"lastName": "Koroma"}))
        .await
        .unwrap();
    assert_eq!(
        (updated["firstName"].as_str(), updated["lastName"].as_str()),
        (Some("Aminata"), Some("Koroma"))
    );
    assert_eq!(sim.state()["cases"].as_array().unwrap().len(), 1);
    let calls: Vec<(String, u16)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/cases"))
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("PUT".into(), 404),
            ("POST".into(), 200),
            ("PUT".into(), 200)
        ]
    );
    assert_eq!(logins(&sim), 1);
}

#[tokio::test]
async fn soft_deleted_record_is_restored_then_updated() {
    let sim = start_sim().await;
    let c = client(&sim);
    let id = Uuid::new_v4();
    c.upsert_case(id, &json!({"firstName": "A"})).await.unwrap();
    c.delete("cases", id).await.unwrap();
    c.delete("cases", id)
        .await
        .expect("deleting twice is success");
    let back = c.upsert_case(id, &json!({"firstName": "B"})).await.unwrap();
    assert_eq!(
        (back["deleted"].as_bool(), back["firstName"].as_str()),
        (Some(false), Some("B"))
    );
    assert_eq!(sim.state()["cases"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn expired_token_means_one_shared_relogin() {
    let sim = start_sim().await;
    let c = Arc::new(client(&sim));
    c.upsert_case(Uuid::new_v4(), &json!({"firstName": "first"}))
        .await
        .unwrap();
    sim.expire_tokens();
    let mut tasks = vec![];
    for i in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.upsert_case(Uuid::new_v4(), &json!({"firstName": format!("p{i}")}))
                .await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every write succeeds after the re-login");
    }
    assert_eq!(logins(&sim), 2, "one login, then exactly one re-login");
    assert_eq!(sim.state()["cases"].as_array().unwrap().len(), 17);
}

#[tokio::test]
async fn contacts_wait_for_their_case_and_are_created_through_it() {
    let sim = start_sim().await;
    let c = client(&sim);
    let (case_id, contact_id) = (Uuid::new_v4(), Uuid::new_v4());
    let rel = json!({"contactDate": "2024-05-02T00:00:00.000Z", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"});
    let e = c
        .upsert_contact(
            contact_id,
            case_id,
            &json!({"firstName": "Sahr"}),
            None,
            &rel,
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GodataError::CaseMissing));
    assert_eq!(e.disposition(), Disposition::Retry);
    c.upsert_case(case_id, &json!({"firstName": "Aminata"}))
        .await
        .unwrap();
    let k = c
        .upsert_contact(
            contact_id,
            case_id,
            &json!({"firstName": "Sahr"}),
            None,
            &rel,
            false,
        )
        .await
        .unwrap();
    assert_eq!(k["id"], contact_id.to_string());
    let k = c
        .upsert_contact(
            contact_id,
            case_id,
            &json!({"lastName": "Kamara"}),
            None,
            &rel,
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        (k["firstName"].as_str(), k["lastName"].as_str()),
        (Some("Sahr"), Some("Kamara"))
    );
    let st = sim.state();
    assert_eq!(st["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(
        st["relationships"][0]["persons"][0]["id"],
        case_id.to_string()
    );
    assert_eq!(
        st["relationships"][0]["certaintyLevelId"],
        "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"
    );
}

#[tokio::test]
async fn failures_are_classified() {
    let sim = start_sim().await;
    let c = client(&sim);
    let usual =
        json!({"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE"});
    let e = c
        .upsert_case(Uuid::new_v4(), &json!({"addresses": [usual, usual]}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(422), Some("ADDRESS_MULTIPLE_USUAL_PLACE_OF_RESIDENCE"))
    );
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let e = c.upsert_case(Uuid::new_v4(), &json!({})).await.unwrap_err();
    assert_eq!(
        (e.status(), e.disposition()),
        (Some(503), Disposition::Retry)
    );
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let e = c.upsert_case(Uuid::new_v4(), &json!({})).await.unwrap_err();
    assert!(matches!(e, GodataError::Transport { .. }), "{e}");
    assert_eq!(e.disposition(), Disposition::Retry);
    sim.set_faults(Faults::default());
    let wrong = Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new("nope"),
        sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(5),
    );
    let e = wrong
        .upsert_case(Uuid::new_v4(), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.disposition()),
        (Some("LOGIN_FAILED"), Disposition::Operator)
    );
    assert!(
        !format!("{e:?}{wrong:?}").contains("nope"),
        "the password leaked into Debug"
    );
    let other = Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        sim::OTHER_OUTBREAK_ID,
        Duration::from_secs(5),
    );
    let e = other
        .upsert_case(Uuid::new_v4(), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.disposition()),
        (Some("ACCESS_DENIED"), Disposition::Operator)
    );
}

#[tokio::test]
async fn adoption_lookup_and_location_codes() {
    let sim = start_sim().await;
    let c = client(&sim);
    let id = Uuid::new_v4();
    c.upsert_case(id, &json!({"documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": "KEN-1"}]}))
        .await
        .unwrap();
    let found = c.find_case_by_external_id("KEN-1").await.unwrap().unwrap();
    assert_eq!(found["id"], id.to_string());
    assert!(c.find_case_by_external_id("KEN-2").await.unwrap().is_none());
    let codes = c.location_codes().await.unwrap();
    assert_eq!(codes.len(), 1 + sim::DEFAULT_DISTRICTS.len());
    assert!(codes.contains_key("SL-KE"));
    c.check_outbreak_access().await.unwrap();
}

#[tokio::test]
async fn a_hand_entered_case_is_adopted_by_its_external_id() {
    let sim = start_sim().await;
    let c = client(&sim);
    let by_hand = Uuid::new_v4();
    let doc = json!({"documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": "KEN-9"}]});
    c.upsert_case(
        by_hand,
        &json!({"firstName": "Typed", "documents": doc["documents"]}),
    )
    .await
    .unwrap();
    let derived = Uuid::new_v4();
    let (written, stored) = c
        .upsert_case_adopting(
            derived,
            Some("KEN-9"),
            &json!({"lastName": "Bridge", "documents": doc["documents"]}),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(written, by_hand, "the existing case was adopted");
    assert_eq!(
        (stored["firstName"].as_str(), stored["lastName"].as_str()),
        (Some("Typed"), Some("Bridge"))
    );
    assert_eq!(
        sim.state()["cases"].as_array().unwrap().len(),
        1,
        "no duplicate"
    );
}

#[tokio::test]
async fn outbreak_access_check_explains_the_active_outbreak_rule() {
    use godata_bridge::godata::client::AccessProblem;
    let sim = start_sim().await;
    client(&sim).check_outbreak_access().await.unwrap();
    let other = Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        sim::OTHER_OUTBREAK_ID,
        Duration::from_secs(5),
    );
    let e = other.check_outbreak_access().await.unwrap_err();
    assert!(matches!(e, AccessProblem::NotActive { .. }), "{e}");
    assert!(e.to_string().contains("active outbreak"), "{e}");
    let none = Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        "no-such",
        Duration::from_secs(5),
    );
    assert!(matches!(
        none.check_outbreak_access().await.unwrap_err(),
        AccessProblem::NoSuchOutbreak(_)
    ));
}

#[tokio::test]
async fn a_record_never_pushed_is_created_in_one_request() {
    let sim = start_sim().await;
    let c = client(&sim);
    let id = Uuid::new_v4();
    c.upsert_case_adopting(id, None, &json!({"firstName": "A"}), None, false)
        .await
        .unwrap();
    let calls = |sim: &Sim| -> Vec<(String, u16)> {
        sim.requests()
            .into_iter()
            .filter(|r| r.path.contains("/cases"))
            .map(|r| (r.method, r.status))
            .collect()
    };
    assert_eq!(calls(&sim), [("POST".into(), 200)]);
    // Believed new but already there (say, the link was lost in a crash):
    // the create is refused and the caller is told, never the whole row
    // written over it.
    let e = c
        .upsert_case_adopting(id, None, &json!({"firstName": "B"}), None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, GodataError::Exists), "{e}");
    assert_eq!(calls(&sim)[1..], [("POST".into(), 422)]);
    // A known record's update sends the delta; the whole record only when
    // it must be created again.
    let (_, stored) = c
        .upsert_case_adopting(
            id,
            None,
            &json!({"firstName": "C", "lastName": "Full"}),
            Some(&json!({"firstName": "C"})),
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        (stored["firstName"].as_str(), stored["lastName"].as_str()),
        (Some("C"), None),
        "only the delta was sent"
    );
    let put = sim.requests().into_iter().last().unwrap();
    assert_eq!(
        (put.method.as_str(), put.fields.clone()),
        ("PUT", vec!["firstName".to_string()])
    );
    assert_eq!(sim.state()["cases"].as_array().unwrap().len(), 1);
}

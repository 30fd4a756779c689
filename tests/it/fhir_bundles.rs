//! Go.Data records (shaped by the emulator) → FHIR R4 Bundles. Each Bundle
//! is checked here for what the offline validators miss, and written to
//! `$CARGO_TARGET_TMPDIR/fhir-bundles/` where `.ci/run` runs the R4 JSON
//! schema and fhir.resources 6.4.0 over every file.

use chrono::FixedOffset;
use godata_bridge::writeback::fhir::{case_bundle, check_bundle, contact_bundle, FhirOptions};
use serde_json::{json, Value};

use crate::support::{ob, start_sim, Api};

const T: &str = "LNG_REFERENCE_DATA_CATEGORY_";

fn out_dir() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fhir-bundles");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn keep(name: &str, bundle: &Value) {
    let problems = check_bundle(bundle);
    assert!(problems.is_empty(), "{name}: {problems:?}");
    std::fs::write(
        out_dir().join(format!("{name}.json")),
        serde_json::to_vec_pretty(bundle).unwrap(),
    )
    .unwrap();
}

fn resource<'a>(b: &'a Value, kind: &str) -> &'a Value {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == kind)
        .unwrap()
}

#[tokio::test]
async fn case_edge_cases_make_valid_bundles() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let usual = json!({"typeId": format!("{T}ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE"), "addressLine1": "12 Hangha Road",
                       "city": "Kenema", "locationId": "loc-ke", "phoneNumber": "+232 (76) 123-456",
                       "emailAddress": "a@example.org", "geoLocation": {"lat": 7.87, "lng": -11.19}});
    let previous = json!({"typeId": format!("{T}ADDRESS_TYPE_PREVIOUS_USUAL_PLACE_OF_RESIDENCE"), "city": "Bo",
                          "date": "2020-01-01", "phoneNumber": "00232 78 555 010"});
    let cases = [
        (
            "full",
            json!({"firstName": "Aminata", "middleName": "Sia", "lastName": "Kamara", "gender": format!("{T}GENDER_FEMALE"),
            "dob": "1990-04-12", "classification": format!("{T}CASE_CLASSIFICATION_CONFIRMED"), "dateOfOnset": "2024-05-01",
            "dateOfReporting": "2024-05-03T09:15:00Z", "visualId": "CA-0000000001",
            "documents": [{"type": format!("{T}DOCUMENT_TYPE_NATIONAL_ID_CARD"), "number": "NID-1"},
                          {"type": format!("{T}DOCUMENT_TYPE_EXTERNAL_ID"), "number": "KEN-2024-0001"}],
            "addresses": [usual.clone(), previous.clone()]}),
        ),
        (
            "age_only_no_dob",
            json!({"firstName": "Ibrahim", "age": {"years": 8, "months": 0},
            "classification": format!("{T}CASE_CLASSIFICATION_PROBABLE")}),
        ),
        (
            "deceased_with_date",
            json!({"lastName": "Bangura", "outcomeId": format!("{T}OUTCOME_DECEASED"),
            "dateOfOutcome": "2024-05-09", "classification": format!("{T}CASE_CLASSIFICATION_CONFIRMED")}),
        ),
        (
            "deceased_without_date",
            json!({"firstName": "X", "outcomeId": format!("{T}OUTCOME_DECEASED")}),
        ),
        (
            "recovered",
            json!({"firstName": "R", "outcomeId": format!("{T}OUTCOME_RECOVERED"), "dateOfOutcome": "2024-05-28",
            "classification": format!("{T}CASE_CLASSIFICATION_CONFIRMED")}),
        ),
        (
            "no_name_parts",
            json!({"classification": format!("{T}CASE_CLASSIFICATION_SUSPECT"), "gender": "CUSTOM_GENDER"}),
        ),
        (
            "discarded",
            json!({"firstName": "D", "classification": format!("{T}CASE_CLASSIFICATION_NOT_A_CASE_DISCARDED")}),
        ),
        (
            "odd_phone",
            json!({"firstName": "P", "addresses": [{"typeId": format!("{T}ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE"),
            "phoneNumber": "ask the neighbour"}]}),
        ),
    ];
    let o = FhirOptions {
        disease: "Ebola virus disease".into(),
        ..FhirOptions::default()
    };
    for (name, body) in cases {
        let (s, stored) = api.post(&ob("cases"), body).await;
        assert_eq!(s, 200, "{name}: {stored}");
        keep(&format!("case_{name}"), &case_bundle(&stored, &o));
    }
    // Spot checks of the mapping itself.
    let (_, all) = api.get(&ob("cases")).await;
    let find = |f: &dyn Fn(&Value) -> bool| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|c| f(c))
            .unwrap()
            .clone()
    };
    let full = find(&|c| c["middleName"] == "Sia");
    let b = case_bundle(&full, &o);
    let p = resource(&b, "Patient");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1990-04-12");
    assert_eq!(
        p["name"][0],
        json!({"use": "official", "family": "Kamara", "given": ["Aminata", "Sia"]})
    );
    assert_eq!(p["telecom"][0]["value"], "+23276123456");
    assert_eq!(p["telecom"][2]["value"], "+23278555010");
    assert_eq!(p["address"].as_array().unwrap().len(), 2);
    assert_eq!(p["address"][1]["use"], "old");
    assert!(p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["system"] == "urn:hmis:key" && i["value"] == "KEN-2024-0001"));
    assert!(p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["type"]["coding"][0]["code"] == "NI"));
    let c = resource(&b, "Condition");
    assert_eq!(c["verificationStatus"]["coding"][0]["code"], "confirmed");
    assert_eq!(c["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(c["subject"]["reference"], b["entry"][0]["fullUrl"]);
    assert_eq!(
        b["entry"][0]["request"]["url"],
        format!(
            "Patient?identifier=urn:godata:case|{}",
            full["id"].as_str().unwrap()
        )
    );
    let age_only = case_bundle(&find(&|c| c["firstName"] == "Ibrahim"), &o);
    assert!(
        resource(&age_only, "Patient").get("birthDate").is_none(),
        "no invented birth date"
    );
    let dead = case_bundle(&find(&|c| c["lastName"] == "Bangura"), &o);
    assert_eq!(resource(&dead, "Patient")["deceasedDateTime"], "2024-05-09");
    let dead2 = case_bundle(&find(&|c| c["firstName"] == "X"), &o);
    assert_eq!(resource(&dead2, "Patient")["deceasedBoolean"], true);
    let rec = case_bundle(&find(&|c| c["firstName"] == "R"), &o);
    assert_eq!(
        resource(&rec, "Condition")["clinicalStatus"]["coding"][0]["code"],
        "resolved"
    );
    assert_eq!(
        resource(&rec, "Condition")["abatementDateTime"],
        "2024-05-28"
    );
    assert_eq!(
        resource(
            &case_bundle(&find(&|c| c["firstName"] == "D"), &o),
            "Condition"
        )["verificationStatus"]["coding"][0]["code"],
        "refuted"
    );
    // A Go.Data server in UTC+01:00 stores 1990-04-12 local as 23:00 UTC the day before.
    let tz = FhirOptions {
        timezone: FixedOffset::east_opt(3600).unwrap(),
        ..o.clone()
    };
    let (_, shifted) = api
        .post(
            &ob("cases"),
            json!({"firstName": "TZ", "dob": "1990-04-11T23:00:00.000Z"}),
        )
        .await;
    let b = case_bundle(&shifted, &tz);
    assert_eq!(resource(&b, "Patient")["birthDate"], "1990-04-12");
    keep("case_non_utc_server", &b);
    // A soft-deleted case: inactive Patient, entered-in-error Condition.
    let id = full["id"].as_str().unwrap();
    api.delete(&ob(&format!("cases/{id}"))).await;
    let (_, gone) = api
        .list(&ob("cases"), json!({"where": {"id": id}, "deleted": true}))
        .await;
    let b = case_bundle(&gone[0], &o);
    assert_eq!(resource(&b, "Patient")["active"], false);
    assert!(resource(&b, "Condition").get("clinicalStatus").is_none());
    keep("case_deleted", &b);
}

#[tokio::test]
async fn contact_bundle_links_to_the_case() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    api.post(&ob("cases"), json!({"id": "case-1", "firstName": "A"}))
        .await;
    let (s, out) = api
        .post(
            &ob("cases/case-1/contacts"),
            json!([{"contact": {"id": "k-1", "firstName": "Sahr", "gender": format!("{T}GENDER_MALE")},
                    "relationship": {"contactDate": "2024-05-02", "socialRelationshipTypeId": format!("{T}CONTEXT_OF_TRANSMISSION_FAMILY")}}]),
        )
        .await;
    assert_eq!(s, 200);
    let o = FhirOptions::default();
    let b = contact_bundle(&out[0]["contact"], "case-1", &out[0]["relationship"], &o);
    let rp = resource(&b, "RelatedPerson");
    assert_eq!(
        rp["patient"]["reference"],
        "Patient?identifier=urn:godata:case|case-1"
    );
    assert_eq!(rp["relationship"][0]["coding"][0]["code"], "FAMMEMB");
    assert_eq!(rp["period"]["start"], "2024-05-02");
    assert_eq!(
        resource(&b, "Patient")["identifier"][0]["system"],
        "urn:godata:contact"
    );
    keep("contact_family", &b);
}

/// Lab results (created through the emulator's lab-result routes) →
/// [Observation, Specimen], for a case and for a contact.
#[tokio::test]
async fn lab_results_make_valid_observation_and_specimen_bundles() {
    use godata_bridge::writeback::fhir::lab_result_bundle;
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let (s, _) = api
        .post(
            &ob("cases"),
            json!({"id": "lab-case", "firstName": "Aminata"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .post(
            &ob("cases/lab-case/contacts"),
            json!([{"contact": {"id": "lab-contact", "firstName": "Musu"},
                    "relationship": {"contactDate": "2024-05-02", "certaintyLevelId": format!("{T}CERTAINTY_LEVEL_3_HIGH")}}]),
        )
        .await;
    assert_eq!(s, 200);
    let labs = [
        (
            "cases/lab-case",
            "positive_completed",
            json!({"sampleIdentifier": "KEN-LAB-001", "sampleType": format!("{T}TYPE_OF_SAMPLE_BLOOD"),
                   "testType": format!("{T}TYPE_OF_LAB_TEST_RT_PCR"), "result": format!("{T}LAB_TEST_RESULT_POSITIVE"),
                   "status": format!("{T}LAB_TEST_RESULT_STATUS_COMPLETED"), "testedFor": "Ebola virus",
                   "dateSampleTaken": "2024-05-02", "dateSampleDelivered": "2024-05-03", "dateTesting": "2024-05-03",
                   "dateOfResult": "2024-05-04T10:30:00Z", "quantitativeResult": "Ct 24", "labName": "Kenema lab",
                   "notes": "repeat in a week"}),
        ),
        (
            "cases/lab-case",
            "negative_no_status",
            json!({"testType": format!("{T}TYPE_OF_LAB_TEST_PCR"), "result": format!("{T}LAB_TEST_RESULT_NEGATIVE")}),
        ),
        (
            "cases/lab-case",
            "in_progress_quantitative_only",
            json!({"status": format!("{T}LAB_TEST_RESULT_STATUS_IN_PROGRESS"), "quantitativeResult": "pending count",
                   "sampleType": "CUSTOM_SAMPLE"}),
        ),
        (
            "contacts/lab-contact",
            "contact_inconclusive",
            json!({"result": format!("{T}LAB_TEST_RESULT_INCONCLUSIVE"), "dateSampleTaken": "2024-05-05"}),
        ),
    ];
    let o = FhirOptions::default();
    let mut made = std::collections::BTreeMap::new();
    for (person, name, body) in labs {
        let (s, stored) = api.post(&ob(&format!("{person}/lab-results")), body).await;
        assert_eq!(s, 200, "{name}: {stored}");
        let b = lab_result_bundle(&stored, &o);
        keep(&format!("lab_{name}"), &b);
        made.insert(name, b);
    }
    let b = &made["positive_completed"];
    let obs = resource(b, "Observation");
    assert_eq!(obs["status"], "final");
    assert_eq!(obs["valueCodeableConcept"]["coding"][0]["code"], "10828004");
    assert_eq!(obs["code"]["text"], "RT PCR for Ebola virus");
    assert_eq!(
        obs["subject"]["reference"],
        "Patient?identifier=urn:godata:case|lab-case"
    );
    assert_eq!(obs["effectiveDateTime"], "2024-05-03");
    assert_eq!(obs["issued"], "2024-05-04T10:30:00.000Z");
    assert_eq!(obs["note"][0]["text"], "Quantitative result: Ct 24");
    let sp = resource(b, "Specimen");
    assert_eq!(sp["accessionIdentifier"]["value"], "KEN-LAB-001");
    assert_eq!(sp["collection"]["collectedDateTime"], "2024-05-02");
    assert_eq!(sp["receivedTime"], "2024-05-03");
    assert_eq!(sp["type"]["coding"][0]["code"], "BLOOD");
    assert_eq!(obs["specimen"]["reference"], b["entry"][1]["fullUrl"]);
    let neg = resource(&made["negative_no_status"], "Observation");
    assert_eq!(
        (
            neg["status"].clone(),
            neg["valueCodeableConcept"]["coding"][0]["code"].clone()
        ),
        (json!("final"), json!("260385009"))
    );
    let prog = resource(&made["in_progress_quantitative_only"], "Observation");
    assert_eq!(
        (prog["status"].clone(), prog["valueString"].clone()),
        (json!("registered"), json!("pending count"))
    );
    let contact = resource(&made["contact_inconclusive"], "Observation");
    assert_eq!(
        contact["subject"]["reference"],
        "Patient?identifier=urn:godata:contact|lab-contact"
    );
    assert_eq!(
        contact["valueCodeableConcept"]["coding"][0]["code"],
        "419984006"
    );
    // Deleted with its person: entered in error.
    let (s, _) = api.delete(&ob("cases/lab-case")).await;
    assert_eq!(s, 204);
    let (_, agg) = api
        .list(
            &ob("lab-results/aggregate"),
            json!({"where": {"personId": "lab-case"}, "deleted": true}),
        )
        .await;
    let gone = lab_result_bundle(&agg[0], &o);
    keep("lab_deleted_with_its_case", &gone);
    assert_eq!(resource(&gone, "Observation")["status"], "entered-in-error");
    assert_eq!(resource(&gone, "Specimen")["status"], "entered-in-error");
}

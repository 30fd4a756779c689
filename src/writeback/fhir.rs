//! Go.Data case/contact → HL7 FHIR R4 (4.0.1) `transaction` Bundle, after
//! `docs/reference/fhir-mapping.md` §1 and §4:
//! - a case is a Patient and a Condition (classification →
//!   `verificationStatus`, outcome → `clinicalStatus`/`deceased[x]`/
//!   abatement); a contact is its own Patient plus a RelatedPerson linking
//!   it to its case's Patient;
//! - dates are converted to the Go.Data server's timezone before they are
//!   cut to `YYYY-MM-DD`; no birth date is ever invented from an age;
//! - gender codes are the closed set `male|female|other|unknown`;
//! - entries have `urn:uuid` fullUrls (stable: UUIDv5 of the Go.Data id) and
//!   conditional `PUT <Type>?identifier=system|value` requests, so the same
//!   Bundle can be POSTed to a FHIR server unchanged.
//!
//! [`check_bundle`] asserts what the offline validators do not catch
//! (`fhir-mapping.md` §3): every transaction entry has a request (bdl-3),
//! deceased[x] is one choice, con-4 and con-5 hold.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::godata::client::EXTERNAL_ID_DOCUMENT;

const VER_STATUS: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";
const GEOLOCATION: &str = "http://hl7.org/fhir/StructureDefinition/geolocation";
const TOKEN_PREFIX: &str = "LNG_REFERENCE_DATA_CATEGORY_";

/// Identifier systems and context of the transform.
#[derive(Debug, Clone)]
pub struct FhirOptions {
    /// The Go.Data server's timezone (Go.Data's `config.json` `timezone`,
    /// as a fixed offset; UTC by default).
    pub timezone: FixedOffset,
    /// Base of the identifier systems this bridge owns, e.g.
    /// `urn:godata` → `urn:godata:case`, `urn:godata:contact`, …
    pub system_base: String,
    /// System of the HMIS key (the EXTERNAL_ID document).
    pub hmis_key_system: String,
    /// The outbreak's disease, as `Condition.code.text`.
    pub disease: String,
    /// Region (ISO 3166-1 alpha-2) of phone numbers written without a
    /// country code, for addresses without a `country` of their own.
    pub default_region: Option<String>,
    /// `meta.source`: where the record came from.
    pub source: String,
    /// Namespace of the fullUrl UUIDs.
    pub namespace: Uuid,
}

impl Default for FhirOptions {
    fn default() -> Self {
        FhirOptions {
            timezone: FixedOffset::east_opt(0).expect("zero offset"),
            system_base: "urn:godata".into(),
            hmis_key_system: "urn:hmis:key".into(),
            disease: "Outbreak disease".into(),
            default_region: None,
            source: "urn:godata".into(),
            namespace: crate::config::DEFAULT_ID_NAMESPACE,
        }
    }
}

impl FhirOptions {
    fn system(&self, what: &str) -> String {
        format!("{}:{}", self.system_base, what)
    }

    fn full_url(&self, resource: &str, id: &str) -> String {
        format!(
            "urn:uuid:{}",
            Uuid::new_v5(&self.namespace, format!("{resource}/{id}").as_bytes())
        )
    }

    /// A Go.Data date (ISO instant) as a FHIR `date` in the server timezone.
    pub fn date(&self, v: &Value) -> Option<String> {
        let s = v.as_str()?;
        let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
        Some(
            t.with_timezone(&self.timezone)
                .format("%Y-%m-%d")
                .to_string(),
        )
    }
}

fn token<'a>(v: &'a Value, category: &str) -> Option<&'a str> {
    v.as_str()?
        .strip_prefix(TOKEN_PREFIX)?
        .strip_prefix(category)
}

/// Go.Data gender token → AdministrativeGender (§4.5).
pub fn gender(v: &Value) -> Option<&'static str> {
    match v.as_str() {
        None | Some("") => None,
        Some(_) => Some(match token(v, "GENDER_") {
            Some("MALE") => "male",
            Some("FEMALE") => "female",
            Some("UNKNOWN") | Some("NOT_KNOWN") => "unknown",
            _ => "other",
        }),
    }
}

/// Phone as E.164 where libphonenumber's rules (the `phonenumber` crate)
/// find a valid number: with a country code (`+`, or an international
/// `00`), or national in `region` (ISO 3166-1 alpha-2: the address's
/// country, else `fhir.default_region`). Anything else is kept as written
/// (trimmed), never dropped.
pub fn phone(s: &str, region: Option<&str>) -> String {
    let written = s.trim();
    let text = match written.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => written.to_string(),
    };
    let region = region.and_then(|r| {
        r.trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .ok()
    });
    match phonenumber::parse(region, &text) {
        Ok(n) if phonenumber::is_valid(&n) => n.format().mode(phonenumber::Mode::E164).to_string(),
        _ => written.to_string(),
    }
}

fn non_empty(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Identifiers of a person: the Go.Data id, the visualId, the documents
/// (EXTERNAL_ID back to the HMIS key; ARCHIVED_ID is history, skipped).
fn identifiers(rec: &Value, kind: &str, o: &FhirOptions) -> Vec<Value> {
    let mut out = vec![json!({ "use": "official", "system": o.system(kind), "value": rec["id"] })];
    if let Some(v) = non_empty(&rec["visualId"]) {
        out.push(json!({ "use": "secondary", "system": o.system("visual-id"), "value": v }));
    }
    for d in rec["documents"].as_array().into_iter().flatten() {
        let Some(number) = non_empty(&d["number"]) else {
            continue;
        };
        let t = d["type"].as_str().unwrap_or_default();
        let ident = match token(&d["type"], "DOCUMENT_TYPE_") {
            _ if t == EXTERNAL_ID_DOCUMENT => {
                json!({ "use": "usual", "system": o.hmis_key_system, "value": number })
            }
            Some("ARCHIVED_ID") => continue,
            Some("NATIONAL_ID_CARD") => json!({
                "type": { "coding": [{ "system": V2_0203, "code": "NI" }], "text": "National ID card" },
                "system": o.system("national-id"), "value": number }),
            Some("PASSPORT") => json!({
                "type": { "coding": [{ "system": V2_0203, "code": "PPN" }], "text": "Passport" },
                "system": o.system("passport"), "value": number }),
            Some(other) => {
                json!({ "type": { "text": other.to_lowercase() }, "system": o.system("document"), "value": number })
            }
            None => json!({ "system": o.system("document"), "value": number }),
        };
        out.push(ident);
    }
    out
}

fn name(rec: &Value) -> Option<Value> {
    let given: Vec<&str> = [non_empty(&rec["firstName"]), non_empty(&rec["middleName"])]
        .into_iter()
        .flatten()
        .collect();
    let family = non_empty(&rec["lastName"]);
    if given.is_empty() && family.is_none() {
        return None;
    }
    let mut n = Map::new();
    n.insert("use".into(), json!("official"));
    if let Some(f) = family {
        n.insert("family".into(), json!(f));
    }
    if !given.is_empty() {
        n.insert("given".into(), json!(given));
    }
    Some(Value::Object(n))
}

fn telecom_and_addresses(rec: &Value, o: &FhirOptions) -> (Vec<Value>, Vec<Value>) {
    let mut telecom = vec![];
    let mut addresses = vec![];
    for a in rec["addresses"].as_array().into_iter().flatten() {
        if let Some(p) = non_empty(&a["phoneNumber"]) {
            let region = non_empty(&a["country"]).or(o.default_region.as_deref());
            telecom.push(json!({ "system": "phone", "value": phone(p, region), "use": "mobile" }));
        }
        if let Some(e) = non_empty(&a["emailAddress"]) {
            telecom.push(json!({ "system": "email", "value": e }));
        }
        let mut addr = Map::new();
        let use_ = match token(&a["typeId"], "ADDRESS_TYPE_") {
            Some("PREVIOUS_USUAL_PLACE_OF_RESIDENCE") => Some("old"),
            Some("OTHER") => Some("temp"),
            _ if a["typeId"].is_null() => Some("home"),
            Some("USUAL_PLACE_OF_RESIDENCE") => Some("home"),
            _ => None,
        };
        if let Some(u) = use_ {
            addr.insert("use".into(), json!(u));
        }
        if let Some(l) = non_empty(&a["addressLine1"]) {
            addr.insert("line".into(), json!([l]));
        }
        for (from, to) in [
            ("city", "city"),
            ("postalCode", "postalCode"),
            ("country", "country"),
        ] {
            if let Some(v) = non_empty(&a[from]) {
                addr.insert(to.into(), json!(v));
            }
        }
        let mut ext = vec![];
        if let Some(loc) = non_empty(&a["locationId"]) {
            ext.push(json!({ "url": o.system("location-id"), "valueString": loc }));
        }
        if let (Some(lat), Some(lng)) = (
            a["geoLocation"]["lat"].as_f64(),
            a["geoLocation"]["lng"].as_f64(),
        ) {
            ext.push(json!({ "url": GEOLOCATION, "extension": [
                { "url": "latitude", "valueDecimal": lat },
                { "url": "longitude", "valueDecimal": lng },
            ]}));
        }
        if !ext.is_empty() {
            addr.insert("extension".into(), json!(ext));
        }
        if addr.len() > usize::from(addr.contains_key("use")) {
            addresses.push(Value::Object(addr));
        }
    }
    (telecom, addresses)
}

fn patient(rec: &Value, kind: &str, o: &FhirOptions) -> Value {
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("meta".into(), json!({ "source": o.source }));
    p.insert("identifier".into(), json!(identifiers(rec, kind, o)));
    p.insert("active".into(), json!(rec["deleted"] != true));
    if let Some(n) = name(rec) {
        p.insert("name".into(), json!([n]));
    }
    let (telecom, addresses) = telecom_and_addresses(rec, o);
    if !telecom.is_empty() {
        p.insert("telecom".into(), json!(telecom));
    }
    if let Some(g) = gender(&rec["gender"]) {
        p.insert("gender".into(), json!(g));
    }
    // Only a real date of birth; an age never becomes a birth date.
    if let Some(d) = o.date(&rec["dob"]) {
        p.insert("birthDate".into(), json!(d));
    }
    match token(&rec["outcomeId"], "OUTCOME_") {
        Some("DECEASED") => match o.date(&rec["dateOfOutcome"]) {
            Some(d) => p.insert("deceasedDateTime".into(), json!(d)),
            None => p.insert("deceasedBoolean".into(), json!(true)),
        },
        Some("ALIVE") | Some("RECOVERED") => p.insert("deceasedBoolean".into(), json!(false)),
        _ => None,
    };
    if !addresses.is_empty() {
        p.insert("address".into(), json!(addresses));
    }
    Value::Object(p)
}

fn coding(system: &str, code: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code }] })
}

fn condition(rec: &Value, patient_url: &str, o: &FhirOptions) -> Value {
    let deleted = rec["deleted"] == true;
    let verification = if deleted {
        "entered-in-error"
    } else {
        match token(&rec["classification"], "CASE_CLASSIFICATION_") {
            Some("CONFIRMED") => "confirmed",
            Some("PROBABLE") | Some("SUSPECT") => "provisional",
            Some("NOT_A_CASE_DISCARDED") => "refuted",
            _ => "unconfirmed",
        }
    };
    let outcome = token(&rec["outcomeId"], "OUTCOME_");
    let mut c = Map::new();
    c.insert("resourceType".into(), json!("Condition"));
    c.insert("meta".into(), json!({ "source": o.source }));
    c.insert(
        "identifier".into(),
        json!([{ "system": o.system("case-condition"), "value": rec["id"] }]),
    );
    // con-5: no clinicalStatus on entered-in-error; a refuted case is not a
    // clinical state to report either.
    if !matches!(verification, "entered-in-error" | "refuted") {
        let clinical = if outcome == Some("RECOVERED") {
            "resolved"
        } else {
            "active"
        };
        c.insert("clinicalStatus".into(), coding(CLINICAL, clinical));
    }
    c.insert(
        "verificationStatus".into(),
        coding(VER_STATUS, verification),
    );
    c.insert("code".into(), json!({ "text": o.disease }));
    c.insert("subject".into(), json!({ "reference": patient_url }));
    if let Some(d) = o.date(&rec["dateOfOnset"]) {
        c.insert("onsetDateTime".into(), json!(d));
    }
    // con-4: abated only when resolved.
    if outcome == Some("RECOVERED") && c.contains_key("clinicalStatus") {
        if let Some(d) = o.date(&rec["dateOfOutcome"]) {
            c.insert("abatementDateTime".into(), json!(d));
        }
    }
    if let Some(d) = o.date(&rec["dateOfReporting"]) {
        c.insert("recordedDate".into(), json!(d));
    }
    if let Some(t) = rec["classification"].as_str() {
        c.insert(
            "extension".into(),
            json!([{ "url": o.system("classification"), "valueCoding": { "system": o.system("reference-data"), "code": t } }]),
        );
    }
    Value::Object(c)
}

fn entry(full_url: &str, resource: Value, system: &str, value: &Value) -> Value {
    let kind = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    json!({
        "fullUrl": full_url,
        "resource": resource,
        "request": { "method": "PUT", "url": format!("{kind}?identifier={system}|{}", value.as_str().unwrap_or_default()) },
    })
}

/// A Go.Data case → `transaction` Bundle [Patient, Condition].
pub fn case_bundle(case: &Value, o: &FhirOptions) -> Value {
    let id = case["id"].as_str().unwrap_or_default();
    let patient_url = o.full_url("Patient", id);
    let condition_url = o.full_url("Condition", id);
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(&patient_url, patient(case, "case", o), &o.system("case"), &case["id"]),
            entry(&condition_url, condition(case, &patient_url, o), &o.system("case-condition"), &case["id"]),
        ],
    })
}

const SNOMED: &str = "http://snomed.info/sct";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// A Go.Data lab result → `transaction` Bundle [Observation, Specimen],
/// the Observation's `subject` the person's Patient (by conditional
/// reference: the Patient comes from the person's own Bundle).
///
/// - `status`: entered-in-error when deleted; `…_STATUS_COMPLETED` final;
///   `…_STATUS_IN_PROGRESS` preliminary with a result, registered without;
///   no status: final with a result, registered without.
/// - `code`: Go.Data's test type (`…_TYPE_OF_LAB_TEST_*`) as a coding of
///   the bridge's own system and as text, with `testedFor`. No LOINC code:
///   a LOINC code names the analyte and the method together (SARS-CoV-2
///   RNA by NAA, Ebola virus RNA by NAA, …), while Go.Data's test type
///   names only the method, the pathogen being the outbreak's; a fixed
///   method → LOINC table would state a pathogen Go.Data did not record.
/// - `valueCodeableConcept`: SNOMED CT 10828004 Positive, 260385009
///   Negative, 419984006 Inconclusive; any other result as text.
///   `quantitativeResult` is the value (`valueString`) when there is no
///   qualitative result, else a note, as are `notes`.
/// - `effectiveDateTime` from `dateTesting`, `issued` (an instant) from
///   `dateOfResult`.
/// - Specimen: `type` from `sampleType`, `collection.collectedDateTime`
///   from `dateSampleTaken`, `receivedTime` from `dateSampleDelivered`,
///   `accessionIdentifier` from `sampleIdentifier`.
pub fn lab_result_bundle(lab: &Value, o: &FhirOptions) -> Value {
    let id = lab["id"].as_str().unwrap_or_default();
    let deleted = lab["deleted"] == true;
    let person_kind = match token(&lab["personType"], "PERSON_TYPE_") {
        Some("CONTACT") => "contact",
        _ => "case",
    };
    let subject = json!({ "reference": format!(
        "Patient?identifier={}|{}",
        o.system(person_kind),
        lab["personId"].as_str().unwrap_or_default()
    ) });
    let observation_url = o.full_url("Observation", id);
    let specimen_url = o.full_url("Specimen", id);
    let result = token(&lab["result"], "LAB_TEST_RESULT_");
    let has_result = non_empty(&lab["result"]).is_some();
    let status = match (deleted, token(&lab["status"], "LAB_TEST_RESULT_STATUS_")) {
        (true, _) => "entered-in-error",
        (_, Some("COMPLETED")) => "final",
        (_, Some("IN_PROGRESS")) if has_result => "preliminary",
        (_, Some("IN_PROGRESS")) => "registered",
        _ if has_result => "final",
        _ => "registered",
    };
    let mut obs = Map::new();
    obs.insert("resourceType".into(), json!("Observation"));
    obs.insert("meta".into(), json!({ "source": o.source }));
    obs.insert(
        "identifier".into(),
        json!([{ "system": o.system("lab-result"), "value": id }]),
    );
    obs.insert("status".into(), json!(status));
    obs.insert(
        "category".into(),
        json!([{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory" }] }]),
    );
    let test = token(&lab["testType"], "TYPE_OF_LAB_TEST_");
    let mut code = Map::new();
    if let Some(t) = test {
        code.insert(
            "coding".into(),
            json!([{ "system": o.system("lab-test-type"), "code": t }]),
        );
    }
    let tested_for = non_empty(&lab["testedFor"]);
    let text = match (test.map(|t| t.replace('_', " ")), tested_for) {
        (Some(t), Some(f)) => format!("{t} for {f}"),
        (Some(t), None) => t,
        (None, Some(f)) => format!("Laboratory test for {f}"),
        (None, None) => "Laboratory test".to_string(),
    };
    code.insert("text".into(), json!(text));
    obs.insert("code".into(), Value::Object(code));
    obs.insert("subject".into(), subject.clone());
    if let Some(d) = o.date(&lab["dateTesting"]) {
        obs.insert("effectiveDateTime".into(), json!(d));
    }
    if let Some(t) = lab["dateOfResult"]
        .as_str()
        .filter(|t| DateTime::parse_from_rfc3339(t).is_ok())
    {
        obs.insert("issued".into(), json!(t));
    }
    let quantitative = non_empty(&lab["quantitativeResult"]);
    let mut notes = vec![];
    match (result, has_result) {
        (Some("POSITIVE"), _) => {
            obs.insert("valueCodeableConcept".into(), json!({ "coding": [{ "system": SNOMED, "code": "10828004", "display": "Positive" }], "text": "Positive" }));
        }
        (Some("NEGATIVE"), _) => {
            obs.insert("valueCodeableConcept".into(), json!({ "coding": [{ "system": SNOMED, "code": "260385009", "display": "Negative" }], "text": "Negative" }));
        }
        (Some("INCONCLUSIVE"), _) => {
            obs.insert("valueCodeableConcept".into(), json!({ "coding": [{ "system": SNOMED, "code": "419984006", "display": "Inconclusive" }], "text": "Inconclusive" }));
        }
        (_, true) => {
            let t = result
                .map(|r| r.replace('_', " "))
                .unwrap_or_else(|| non_empty(&lab["result"]).unwrap_or_default().to_string());
            obs.insert("valueCodeableConcept".into(), json!({ "text": t }));
        }
        (_, false) => {
            if let Some(q) = quantitative {
                obs.insert("valueString".into(), json!(q));
            }
        }
    }
    if has_result {
        if let Some(q) = quantitative {
            notes.push(json!({ "text": format!("Quantitative result: {q}") }));
        }
    }
    if let Some(n) = non_empty(&lab["notes"]) {
        notes.push(json!({ "text": n }));
    }
    if !notes.is_empty() {
        obs.insert("note".into(), json!(notes));
    }
    obs.insert("specimen".into(), json!({ "reference": specimen_url }));
    let mut sp = Map::new();
    sp.insert("resourceType".into(), json!("Specimen"));
    sp.insert("meta".into(), json!({ "source": o.source }));
    sp.insert(
        "identifier".into(),
        json!([{ "system": o.system("lab-specimen"), "value": id }]),
    );
    if let Some(a) = non_empty(&lab["sampleIdentifier"]) {
        sp.insert("accessionIdentifier".into(), json!({ "value": a }));
    }
    sp.insert(
        "status".into(),
        json!(if deleted {
            "entered-in-error"
        } else {
            "available"
        }),
    );
    if let Some(t) = token(&lab["sampleType"], "TYPE_OF_SAMPLE_") {
        sp.insert(
            "type".into(),
            json!({ "coding": [{ "system": o.system("sample-type"), "code": t }], "text": t.replace('_', " ") }),
        );
    }
    sp.insert("subject".into(), subject);
    if let Some(d) = o.date(&lab["dateSampleDelivered"]) {
        sp.insert("receivedTime".into(), json!(d));
    }
    if let Some(d) = o.date(&lab["dateSampleTaken"]) {
        sp.insert("collection".into(), json!({ "collectedDateTime": d }));
    }
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(&observation_url, Value::Object(obs), &o.system("lab-result"), &lab["id"]),
            entry(&specimen_url, Value::Object(sp), &o.system("lab-specimen"), &lab["id"]),
        ],
    })
}

/// Go.Data social relationship → v3-RoleCode where one fits.
fn role(social: &Value) -> Option<(&'static str, &'static str)> {
    let t = social.as_str()?;
    let upper = t.to_ascii_uppercase();
    Some(if upper.contains("FAMILY") {
        ("FAMMEMB", "family member")
    } else if upper.contains("FRIEND") {
        ("FRND", "unrelated friend")
    } else if upper.contains("NEIGHBOUR") || upper.contains("NEIGHBOR") {
        ("NBOR", "neighbor")
    } else {
        return None;
    })
}

/// A Go.Data contact and its relationship to `case_id` → `transaction`
/// Bundle [Patient (the contact), RelatedPerson (the link to the case's
/// Patient, by conditional reference: the case's Patient comes from its
/// own Bundle)].
pub fn contact_bundle(
    contact: &Value,
    case_id: &str,
    relationship: &Value,
    o: &FhirOptions,
) -> Value {
    let id = contact["id"].as_str().unwrap_or_default();
    let patient_url = o.full_url("Patient", id);
    let related_url = o.full_url("RelatedPerson", id);
    let person = patient(contact, "contact", o);
    let mut rp = Map::new();
    rp.insert("resourceType".into(), json!("RelatedPerson"));
    rp.insert("meta".into(), json!({ "source": o.source }));
    rp.insert(
        "identifier".into(),
        json!([{ "system": o.system("contact-link"), "value": id }]),
    );
    rp.insert(
        "active".into(),
        json!(contact["deleted"] != true && relationship["deleted"] != true),
    );
    rp.insert(
        "patient".into(),
        json!({ "reference": format!("Patient?identifier={}|{case_id}", o.system("case")) }),
    );
    let mut rel = Map::new();
    if let Some((code, display)) = role(&relationship["socialRelationshipTypeId"]) {
        rel.insert(
            "coding".into(),
            json!([{ "system": ROLE_CODE, "code": code, "display": display }]),
        );
    }
    if let Some(t) = relationship["socialRelationshipTypeId"].as_str() {
        rel.insert("text".into(), json!(t));
    }
    if !rel.is_empty() {
        rp.insert("relationship".into(), json!([rel]));
    }
    for k in ["name", "telecom", "gender", "birthDate", "address"] {
        if let Some(v) = person.get(k) {
            rp.insert(k.into(), v.clone());
        }
    }
    if let Some(d) = o.date(&relationship["contactDate"]) {
        rp.insert("period".into(), json!({ "start": d }));
    }
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(&patient_url, person, &o.system("contact"), &contact["id"]),
            entry(&related_url, Value::Object(rp), &o.system("contact-link"), &contact["id"]),
        ],
    })
}

/// What the offline validators miss (`fhir-mapping.md` §3): returns the
/// broken rules, empty when the Bundle is sound.
pub fn check_bundle(b: &Value) -> Vec<String> {
    let mut out = vec![];
    if b["type"] != "transaction" {
        out.push("Bundle.type is not transaction".to_string());
    }
    for (i, e) in b["entry"].as_array().into_iter().flatten().enumerate() {
        let at = format!("entry[{i}]");
        if !e["fullUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("urn:uuid:"))
        {
            out.push(format!("{at}: fullUrl is not a urn:uuid"));
        }
        let (m, u) = (&e["request"]["method"], &e["request"]["url"]);
        if m.is_null() || u.is_null() {
            out.push(format!("{at}: transaction entry without request (bdl-3)"));
        }
        let r = &e["resource"];
        if r.get("deceasedBoolean").is_some() && r.get("deceasedDateTime").is_some() {
            out.push(format!(
                "{at}: deceasedBoolean and deceasedDateTime both set"
            ));
        }
        if r["resourceType"] == "Condition" {
            let ver = &r["verificationStatus"]["coding"][0]["code"];
            let clin = r["clinicalStatus"]["coding"][0]["code"].as_str();
            if ver == "entered-in-error" && clin.is_some() {
                out.push(format!(
                    "{at}: clinicalStatus with entered-in-error (con-5)"
                ));
            }
            if r.get("abatementDateTime").is_some()
                && !matches!(clin, Some("inactive" | "resolved" | "remission"))
            {
                out.push(format!(
                    "{at}: abated but clinicalStatus not inactive/resolved/remission (con-4)"
                ));
            }
            if r["subject"]["reference"].is_null() {
                out.push(format!("{at}: Condition without subject"));
            }
        }
        if let Some(d) = r["birthDate"].as_str() {
            if d.len() != 10 {
                out.push(format!("{at}: birthDate is not YYYY-MM-DD"));
            }
        }
        if let Some(g) = r["gender"].as_str() {
            if !matches!(g, "male" | "female" | "other" | "unknown") {
                out.push(format!(
                    "{at}: gender `{g}` is not an AdministrativeGender code"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        // The example: a Nigerian mobile number written nationally.
        assert_eq!(phone("0803 123 4567", Some("NG")), "+2348031234567");
        assert_eq!(phone("0803 123 4567", Some("ng")), "+2348031234567");
        // With a country code, the region does not matter.
        assert_eq!(phone("+232 76 123-456", None), "+23276123456");
        assert_eq!(phone("00232 (76) 123456", Some("NG")), "+23276123456");
        // National without a region: kept as written, never dropped.
        assert_eq!(phone("0803 123 4567", None), "0803 123 4567");
        assert_eq!(phone("076.123.456", Some("SL")), "+23276123456");
        // Not a number, or not valid there: kept as written.
        assert_eq!(phone(" call me ", Some("NG")), "call me");
        assert_eq!(phone("12", Some("NG")), "12");
    }

    #[test]
    fn the_address_country_comes_before_the_default_region() {
        let case = |country: Option<&str>| {
            let mut a = json!({ "phoneNumber": "0803 123 4567", "typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE" });
            if let Some(c) = country {
                a["country"] = json!(c);
            }
            json!({ "id": "c1", "addresses": [a] })
        };
        let phone_of =
            |rec: &Value, o: &FhirOptions| telecom_and_addresses(rec, o).0[0]["value"].clone();
        let mut o = FhirOptions::default();
        assert_eq!(phone_of(&case(Some("NG")), &o), "+2348031234567");
        assert_eq!(
            phone_of(&case(None), &o),
            "0803 123 4567",
            "no region: as written"
        );
        o.default_region = Some("NG".into());
        assert_eq!(
            phone_of(&case(None), &o),
            "+2348031234567",
            "the configured region"
        );
        o.default_region = Some("SL".into());
        assert_eq!(
            phone_of(&case(Some("NG")), &o),
            "+2348031234567",
            "the address's own country first"
        );
    }

    #[test]
    fn dates_use_the_server_timezone() {
        let mut o = FhirOptions::default();
        let v = json!("1990-04-11T23:30:00.000Z");
        assert_eq!(o.date(&v).as_deref(), Some("1990-04-11"));
        o.timezone = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(
            o.date(&v).as_deref(),
            Some("1990-04-12"),
            "midnight in UTC+1 is the 12th"
        );
    }

    #[test]
    fn genders() {
        assert_eq!(
            gender(&json!("LNG_REFERENCE_DATA_CATEGORY_GENDER_MALE")),
            Some("male")
        );
        assert_eq!(
            gender(&json!("LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE")),
            Some("female")
        );
        assert_eq!(
            gender(&json!("LNG_REFERENCE_DATA_CATEGORY_GENDER_TRANS")),
            Some("other")
        );
        assert_eq!(gender(&json!(null)), None);
    }
}

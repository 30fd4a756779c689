//! Lab results, as GoDataSource-API 2.50.3 keeps them (checked against the
//! real server, `docs/conformance.md`):
//! - created under their person, `POST …/cases|contacts/{id}/lab-results`;
//!   a client `id` is dropped (`allowCustomIDsOnCreate` is false) and the
//!   server assigns one; `personId` comes from the URL whatever the body
//!   says; `personType` is the body's if sent, else the person's type;
//! - `GET`/`PUT` (partial)/`DELETE` (soft, 204) `…/lab-results/{id}`,
//!   `POST …/lab-results/{id}/restore`; a deleted one answers 404 "No
//!   instance with id X found for labResult";
//! - the outbreak-wide list is `GET /outbreaks/{id}/lab-results/aggregate`
//!   (LoopBack filter, each with its `person` embedded; contacts' lab
//!   results left out while the outbreak's `isContactLabResultsActive` is
//!   false — creating them still works); the plain `GET
//!   /outbreaks/{id}/lab-results` does not exist;
//! - deleting the person deletes its lab results (`deletedByParent`), and
//!   restoring it restores them.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::ApiError;
use crate::filter::Filter;
use crate::store::{
    body_object, normalize_dates, restore, soft_delete, stamp_new, stamp_update, strip_read_only,
    Kind, Store, PERSON_TYPE_CONTACT,
};

/// Date properties of a lab result.
const LAB_DATES: &[&str] = &[
    "dateSampleTaken",
    "dateSampleDelivered",
    "dateTesting",
    "dateOfResult",
    "sequence.dateSampleSent",
    "sequence.dateResult",
];

const MODEL: &str = "labResult";

impl Store {
    fn live_lab(&self, outbreak_id: &str, person: &str, id: &str) -> Option<&Value> {
        self.lab_results.get(id).filter(|l| {
            l["outbreakId"] == outbreak_id && l["personId"] == person && l["deleted"] != true
        })
    }

    /// `POST …/{cases|contacts}/{person}/lab-results`.
    pub fn create_lab_result(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        person: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        if self.live_person(outbreak_id, kind, person).is_none() {
            return Err(ApiError::no_instance(person, kind.model()));
        }
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        data.remove("id");
        normalize_dates(MODEL, &mut data, LAB_DATES)?;
        let id = Uuid::new_v4().to_string();
        data.insert("personId".into(), json!(person));
        data.entry("personType")
            .or_insert_with(|| json!(kind.type_token()));
        data.insert("outbreakId".into(), json!(outbreak_id));
        data.insert("id".into(), json!(id));
        let now = self.stamp();
        stamp_new(&mut data, &now, user_id);
        let doc = Value::Object(data);
        self.lab_results.insert(id, doc.clone());
        Ok(doc)
    }

    /// `GET …/{person}/lab-results/{id}`.
    pub fn get_lab_result(
        &self,
        outbreak_id: &str,
        person: &str,
        id: &str,
    ) -> Result<Value, ApiError> {
        self.live_lab(outbreak_id, person, id)
            .cloned()
            .ok_or_else(|| ApiError::no_instance(id, MODEL))
    }

    /// `GET …/{person}/lab-results` (a LoopBack filter).
    pub fn list_person_lab_results(
        &self,
        outbreak_id: &str,
        person: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ApiError> {
        let docs: Vec<Value> = self
            .lab_results
            .values()
            .filter(|l| l["outbreakId"] == outbreak_id && l["personId"] == person)
            .filter(|l| filter.include_deleted || l["deleted"] != true)
            .cloned()
            .collect();
        filter.apply(docs, &[("createdAt", false)])
    }

    /// `PUT …/{person}/lab-results/{id}`: a partial update.
    pub fn update_lab_result(
        &mut self,
        outbreak_id: &str,
        person: &str,
        id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        if self.live_lab(outbreak_id, person, id).is_none() {
            return Err(ApiError::no_instance(id, MODEL));
        }
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        for k in ["id", "personId", "outbreakId"] {
            data.remove(k);
        }
        normalize_dates(MODEL, &mut data, LAB_DATES)?;
        let now = self.stamp();
        let obj = self
            .lab_results
            .get_mut(id)
            .and_then(Value::as_object_mut)
            .expect("checked above");
        for (k, v) in data {
            obj.insert(k, v);
        }
        stamp_update(obj, &now, user_id);
        Ok(Value::Object(obj.clone()))
    }

    /// `DELETE …/{person}/lab-results/{id}`: soft.
    pub fn delete_lab_result(
        &mut self,
        outbreak_id: &str,
        person: &str,
        id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        if self.live_lab(outbreak_id, person, id).is_none() {
            return Err(ApiError::no_instance(id, MODEL));
        }
        let now = self.stamp();
        soft_delete(
            self.lab_results.get_mut(id).expect("checked"),
            &now,
            user_id,
            None,
        );
        Ok(())
    }

    /// `POST …/{person}/lab-results/{id}/restore`.
    pub fn restore_lab_result(
        &mut self,
        outbreak_id: &str,
        person: &str,
        id: &str,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let deleted = self.lab_results.get(id).is_some_and(|l| {
            l["outbreakId"] == outbreak_id && l["personId"] == person && l["deleted"] == true
        });
        if !deleted {
            return Err(ApiError::model_not_found(MODEL, id));
        }
        let now = self.stamp();
        let doc = self.lab_results.get_mut(id).expect("checked");
        restore(doc, &now, user_id);
        Ok(doc.clone())
    }

    /// `GET /outbreaks/{id}/lab-results/aggregate`: every lab result of the
    /// outbreak with its `person`, contacts' only while the outbreak's
    /// `isContactLabResultsActive` is true.
    pub fn aggregate_lab_results(
        &self,
        outbreak_id: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ApiError> {
        let contacts_too = self
            .outbreak(outbreak_id)
            .is_some_and(|o| o["isContactLabResultsActive"] == true);
        // `where`, order and paging on references, the person embedded in
        // the page only (a `where` on `person.…` is not supported here).
        let mut refs = Vec::new();
        for l in self.lab_results.values() {
            if l["outbreakId"] == outbreak_id
                && (filter.include_deleted || l["deleted"] != true)
                && (contacts_too || l["personType"] != PERSON_TYPE_CONTACT)
                && filter.matches(l)?
            {
                refs.push(l);
            }
        }
        let page: Vec<Value> = filter
            .page(refs, &[("createdAt", false)])
            .into_iter()
            .map(|l| {
                let mut l = l.clone();
                let person = l["personId"]
                    .as_str()
                    .and_then(|p| self.persons.get(p))
                    .cloned();
                if let (Some(o), Some(p)) = (l.as_object_mut(), person) {
                    o.insert("person".into(), p);
                }
                l
            })
            .collect();
        Ok(filter.project_all(page))
    }
}

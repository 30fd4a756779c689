//! The kinds of Go.Data record the bridge moves, and everything that
//! follows from the kind: how the config spells it, its collection in the
//! API, its pull cursor.

use serde::Deserialize;

/// A kind of Go.Data record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Cases. In the write-back: Bundle [Patient, Condition].
    #[default]
    Case,
    /// Contacts (of a case). In the write-back: Bundle [Patient,
    /// RelatedPerson → the case's Patient].
    Contact,
    /// Lab results (of a case or contact); pulled only so far. In the
    /// write-back: Bundle [Observation, Specimen].
    LabResult,
}

impl Resource {
    /// As the config and `godata_bridge.link.resource` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Case => "case",
            Resource::Contact => "contact",
            Resource::LabResult => "lab_result",
        }
    }

    /// The FHIR resources its write-back Bundle carries.
    pub fn carried(self) -> &'static str {
        match self {
            Resource::Case => "Patient, Condition",
            Resource::Contact => "Patient, RelatedPerson",
            Resource::LabResult => "Observation, Specimen",
        }
    }

    /// The collection under `/outbreaks/{id}/`.
    pub fn collection(self) -> &'static str {
        match self {
            Resource::Case => "cases",
            Resource::Contact => "contacts",
            // The outbreak-wide list of lab results (the plain one does not
            // exist).
            Resource::LabResult => "lab-results/aggregate",
        }
    }

    /// The `godata_bridge.state` row of its pull cursor.
    pub fn cursor_key(self) -> &'static str {
        match self {
            Resource::Case => crate::store::state::PULL_CURSOR_CASE,
            Resource::Contact => crate::store::state::PULL_CURSOR_CONTACT,
            Resource::LabResult => crate::store::state::PULL_CURSOR_LAB_RESULT,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

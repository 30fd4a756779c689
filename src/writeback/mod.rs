//! Flow 2, Go.Data → HMIS. So far: the FHIR R4 transform of Go.Data
//! records ([`fhir`]). The cursor pull and the staged upsert come next.

pub mod dead_letter;
pub mod fhir;
pub mod pull;
pub mod target;

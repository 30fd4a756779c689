//! Flow 2, Go.Data → HMIS: the cursor pull ([`pull`]), the FHIR R4
//! transform of Go.Data records ([`fhir`]) and the staged upsert into HMIS
//! tables ([`target`]). Its dead letters are kept by
//! [`crate::store::writeback_dead_letter`].

pub mod fhir;
pub mod pull;
pub mod target;

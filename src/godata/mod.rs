//! The Go.Data side: a REST client that logs in once (one shared token,
//! re-login on 401, never two logins at once: every login revokes the
//! account's other tokens) and upserts/deletes cases and contacts by their
//! deterministic ids, as DESIGN.md §Identity says.

pub mod client;
pub mod ids;

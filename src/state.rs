//! The names of the rows of `godata_bridge.state` (small named values), in
//! one place: every reader and writer uses these.

/// The case pull's cursor (`{"dbUpdatedAt", "id"}`).
pub const PULL_CURSOR_CASE: &str = "pull_cursor:case";
/// The contact pull's cursor.
pub const PULL_CURSOR_CONTACT: &str = "pull_cursor:contact";
/// When `dead-letter retry` last ran (the running bridge then re-reads
/// Go.Data's locations).
pub const DEAD_LETTER_RETRY: &str = "dead_letter_retry";
/// Logical mode: the running bridge's in-memory window, for `status`.
pub const LOGICAL_WINDOW: &str = "logical_window";
/// The running bridge's Go.Data login, for `status`.
pub const GODATA_LOGIN: &str = "godata_login";
/// How Go.Data ids are derived (written by `sql/install.sql`).
pub const ID_SCHEME: &str = "id_scheme";

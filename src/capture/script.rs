//! The SQL a DBA runs or reviews: `install --print` writes it whole, and
//! `install` applies its parts (tracking of the `[[push]]` tables, the
//! bridge role's grants). Names come from the config and are quoted here.

use crate::capture::install as capture;
use crate::config::{CaptureMode, Config};
use crate::pg::{quote_ident, quote_literal as literal, TableName};

/// `schema.table` of the config as a regclass expression.
fn regclass(table: &TableName) -> String {
    format!(
        "format('%I.%I', {}, {})::regclass",
        literal(table.schema()),
        literal(table.name())
    )
}

/// Tracking of every `[[push]]` table: triggers in trigger mode; in
/// logical mode only the key columns (and any trigger of an earlier
/// trigger-mode install removed).
pub fn track_sql(config: &Config) -> String {
    let logical = config.capture.mode == CaptureMode::Logical;
    let mut out = String::new();
    for p in &config.push {
        let keys = if p.key.is_empty() {
            "NULL".to_string()
        } else {
            format!(
                "ARRAY[{}]::text[]",
                p.key
                    .iter()
                    .map(|k| literal(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let t = regclass(&p.table);
        if logical {
            out.push_str(&format!(
                "SELECT godata_bridge.untrack({t});\nSELECT godata_bridge.track_keys({t}, {keys});\n"
            ));
        } else {
            out.push_str(&format!("SELECT godata_bridge.track({t}, {keys});\n"));
        }
    }
    out
}

/// The least-privilege role: its own schema and the tracked tables (via
/// `godata_bridge.grant_bridge`), plus each write-back target: SELECT,
/// INSERT and UPDATE for upserts, UPDATE of the listed columns only for
/// update-only targets, DELETE where `on_delete = "delete"`.
pub fn grant_sql(config: &Config, role: &str) -> String {
    use crate::writeback::target::{Mode, OnDelete};
    let r = quote_ident(role);
    let mut sql = format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {r} LOGIN; END IF;
         END $$;
         SELECT godata_bridge.grant_bridge({lit});\n",
        lit = literal(role)
    );
    if config.capture.mode == CaptureMode::Logical {
        // Streaming needs the REPLICATION attribute; the write-back session
        // marks its transactions with the bridge's replication origin.
        sql.push_str(&format!(
            "ALTER ROLE {r} REPLICATION;
             GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {r};
             GRANT EXECUTE ON FUNCTION pg_replication_origin_session_is_setup() TO {r};\n"
        ));
    }
    for t in &config.pull.target {
        let schema = t.table.schema();
        let qt = t.table.quoted();
        sql.push_str(&format!(
            "GRANT USAGE ON SCHEMA {} TO {r}; GRANT SELECT ON {qt} TO {r};\n",
            quote_ident(schema)
        ));
        match t.mode {
            Mode::Upsert => sql.push_str(&format!("GRANT INSERT, UPDATE ON {qt} TO {r};\n")),
            Mode::UpdateOnly => {
                let cols: Vec<String> = t
                    .columns
                    .iter()
                    .filter(|c| c.column != t.key)
                    .map(|c| quote_ident(&c.column))
                    .collect();
                if !cols.is_empty() {
                    sql.push_str(&format!(
                        "GRANT UPDATE ({}) ON {qt} TO {r};\n",
                        cols.join(", ")
                    ));
                }
            }
        }
        if t.on_delete == OnDelete::Delete {
            sql.push_str(&format!("GRANT DELETE ON {qt} TO {r};\n"));
        }
    }
    sql
}

/// Everything `install` does, as one script for a DBA to review and run
/// with `psql` (`install --print`): the schema, the tracking of every
/// `[[push]]` table, in logical mode the publication, the write-back
/// origin and (after the commit: PostgreSQL creates a slot only outside a
/// transaction that wrote) the slot, and the role's grants.
pub fn install_script(config: &Config, role: Option<&str>) -> String {
    let mut out = String::from(
        "-- godata-bridge install script (godata-bridge install --print).\n\
         -- Run it as a superuser or the tracked tables' owner: psql -v ON_ERROR_STOP=1 -f <this file>\n\
         BEGIN;\n",
    );
    out.push_str(capture::INSTALL_SQL);
    out.push_str("\n-- The [[push]] tables.\n");
    out.push_str(&track_sql(config));
    let c = &config.capture;
    if config.capture.mode == CaptureMode::Logical {
        out.push_str(&format!(
            "-- Logical capture: the publication and the write-back's replication origin.\n\
             SELECT godata_bridge.publish({pub_});\n\
             SELECT pg_replication_origin_create({slot}) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = {slot});\n",
            pub_ = literal(&c.publication),
            slot = literal(&c.slot),
        ));
    }
    if let Some(role) = role {
        out.push_str("-- The bridge's own role (set its password yourself).\n");
        out.push_str(&grant_sql(config, role));
    }
    out.push_str("COMMIT;\n");
    if config.capture.mode == CaptureMode::Logical {
        out.push_str(&format!(
            "-- The slot, last: every row committed before it is read by `godata-bridge backfill`,\n\
             -- every change after it is streamed.\n\
             SELECT pg_create_logical_replication_slot({slot}, 'pgoutput')\n \
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot});\n",
            slot = literal(&c.slot),
        ));
    }
    out
}

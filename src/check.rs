//! The catalog checks that `check`, `install` and `run` share: every
//! configured table and column exists, and write-back columns that may be
//! too narrow for what Go.Data holds. Output names tables and columns,
//! never row values.

use tokio_postgres::GenericClient;

use crate::config::Config;

/// The columns of `schema.table` (none when there is no such table).
async fn table_columns(
    pg: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT a.attname::text FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `[[pull.target]]` columns of a limited length (`varchar(n)`,
/// `char(n)`): a value longer than that is a write-back dead letter, never
/// cut. One warning per column whose mapping can produce more than fits,
/// or that takes free text (then a long value may come).
pub async fn narrow_columns(
    pg: &impl GenericClient,
    config: &Config,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = vec![];
    for (i, t) in config.pull.target.iter().enumerate() {
        let (schema, table) = (t.table.schema(), t.table.name());
        for (j, c) in t.columns.iter().enumerate() {
            let r = pg
                .query_opt(
                    "SELECT a.atttypmod - 4, format_type(a.atttypid, a.atttypmod)
                       FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
                       JOIN pg_namespace n ON n.oid = r.relnamespace
                      WHERE n.nspname = $1 AND r.relname = $2 AND a.attname = $3
                        AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND a.atttypmod > 4",
                    &[&schema, &table, &c.column],
                )
                .await?;
            let Some(r) = r else { continue };
            let (limit, ty): (i32, String) = (r.get(0), r.get(1));
            let at = format!("pull.target[{i}].columns[{j}] ({}.{})", t.table, c.column);
            match c.max_chars() {
                Some(n) if n <= usize::try_from(limit).unwrap_or(0) => {}
                Some(n) => out.push(format!(
                    "{at}: the column is {ty}, the mapping can produce {n} characters; longer values become write-back dead letters"
                )),
                None => out.push(format!(
                    "{at}: the column is {ty} and takes free text ({}); a longer value becomes a write-back dead letter, never a cut one",
                    c.from
                )),
            }
        }
    }
    Ok(out)
}

/// Checks every `[[push]]` table and column against the catalog. Each
/// problem names the config field and the database object.
pub async fn catalog_problems(
    pg: &impl GenericClient,
    config: &Config,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = vec![];
    for (i, p) in config.push.iter().enumerate() {
        let (schema, table) = (p.table.schema(), p.table.name());
        let cols = table_columns(pg, schema, table).await?;
        if cols.is_empty() {
            out.push(format!(
                "push[{i}].table: no table {} in the HMIS database",
                p.table
            ));
            continue;
        }
        let mut need: Vec<(String, &str)> = vec![];
        for (k, key) in p.key.iter().enumerate() {
            need.push((format!("push[{i}].key[{k}]"), key));
        }
        if let Some(c) = &p.person {
            need.push((format!("push[{i}].person.column"), &c.column));
        }
        if let Some(c) = &p.case {
            need.push((format!("push[{i}].case.column"), &c.column));
        }
        for (j, rule) in p.map.iter().enumerate() {
            for col in rule.columns() {
                need.push((format!("push[{i}].map[{j}] (to = {})", rule.to), col));
            }
        }
        for (field, col) in need {
            if !cols.iter().any(|c| c == col) {
                out.push(format!("{field}: table {} has no column `{col}`", p.table));
            }
        }
    }
    for (i, t) in config.pull.target.iter().enumerate() {
        let (schema, table) = (t.table.schema(), t.table.name());
        let cols = table_columns(pg, schema, table).await?;
        if cols.is_empty() {
            out.push(format!(
                "pull.target[{i}].table: no table {} in the HMIS database",
                t.table
            ));
            continue;
        }
        for (j, c) in t.columns.iter().enumerate() {
            if !cols.contains(&c.column) {
                out.push(format!(
                    "pull.target[{i}].columns[{j}]: table {} has no column `{}`",
                    t.table, c.column
                ));
            }
        }
    }
    Ok(out)
}

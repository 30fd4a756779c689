//! `[[pull.target]]`: FHIR elements (by path) → columns of an HMIS table,
//! written as a staged upsert: the page goes to the server as text arrays,
//! one per column, in binary Binds of 500 rows pipelined in the page's
//! transaction, each an
//! `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE … WHERE` (or an `UPDATE …
//! FROM` for update-only targets) that changes a row only when the incoming
//! record is newer and different. Runs inside the caller's transaction,
//! which carries `godata_bridge.origin = 'godata'` so capture skips it.
//!
//! Paths: `Patient.name[0].family`, `Patient.identifier[system=urn:hmis:key].value`
//! (first element whose field equals the value), `godata.<field>` (the raw
//! Go.Data record), `bundle` (the whole Bundle); `a | b` falls back to `b`
//! when `a` is absent.

use std::collections::BTreeMap;

use chrono::FixedOffset;
use serde::Deserialize;
use serde_json::Value;

/// What happens to a target row when its Go.Data record is soft-deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Write the record as usual (its mapping shows it inactive:
    /// `Patient.active` is false, the Condition entered-in-error).
    #[default]
    MarkInactive,
    /// Delete the target row.
    Delete,
    /// Leave the target row alone.
    Ignore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Insert new rows, update existing ones.
    #[default]
    Upsert,
    /// Only update rows that exist (e.g. Go.Data-owned columns of a table
    /// the HMIS owns otherwise).
    UpdateOnly,
}

/// How a value is rendered for its column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum As {
    /// Strings as they are, other JSON as JSON text.
    #[default]
    Text,
    /// A HumanName as "given… family".
    FullName,
    /// An Address as "line, city, postalCode, country".
    AddressText,
    /// A Go.Data date, as a date in the Go.Data server's timezone.
    Date,
    /// `deceased[x]`: true for `deceasedBoolean: true` or any date.
    Deceased,
}

/// One column of a target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub column: String,
    pub from: String,
    #[serde(default, rename = "as")]
    pub render: As,
    /// Value map: source value → column value (a missing entry leaves the
    /// column NULL).
    #[serde(default)]
    pub values: Option<BTreeMap<String, String>>,
    /// Who wins when the row already exists; the target's
    /// `system_of_record` unless set.
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// The system of record of a column: who wins on an existing row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Go.Data's value is written, even over an HMIS change not yet pushed
    /// (pair it with `create_only` on the push rule of that field).
    #[default]
    Godata,
    /// The HMIS keeps its value: written only when the row is inserted.
    Hmis,
    /// The newer side wins: Go.Data's `updatedAt` against the row's
    /// `hmis_updated_column`; a row whose HMIS change is not pushed yet is
    /// newer by definition.
    Newest,
}

/// Which Go.Data records a target takes (cases by default).
pub use crate::resource::Resource;

/// One `[[pull.target]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `schema.table`.
    pub table: crate::pg::TableName,
    #[serde(default)]
    pub resource: Resource,
    /// The key column (it must have a unique index for upserts).
    pub key: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub on_delete: OnDelete,
    /// A timestamptz column holding Go.Data's `updatedAt`: a row is only
    /// changed by a newer record.
    #[serde(default)]
    pub updated_column: Option<String>,
    /// Default owner of the columns (see [`Owner`]).
    #[serde(default)]
    pub system_of_record: Owner,
    /// The HMIS's own last-change timestamp column (for `newest`).
    #[serde(default)]
    pub hmis_updated_column: Option<String>,
    pub columns: Vec<Column>,
}

impl Column {
    pub fn owner(&self, target: &Target) -> Owner {
        self.owner.unwrap_or(target.system_of_record)
    }
}

impl Target {
    pub fn problems(&self) -> Vec<String> {
        let mut out = vec![];
        if !self.table.is_valid() {
            out.push(format!("table: `{}` is not `schema.table`", self.table));
        }
        if !self.columns.iter().any(|c| c.column == self.key) {
            out.push(format!("key: `{}` is not one of the columns", self.key));
        }
        if let Some(u) = &self.updated_column {
            if !self.columns.iter().any(|c| &c.column == u) {
                out.push(format!("updated_column: `{u}` is not one of the columns"));
            }
        }
        if self.columns.iter().any(|c| c.owner(self) == Owner::Newest)
            && self.hmis_updated_column.is_none()
        {
            out.push("hmis_updated_column: needed when a column's owner is `newest`".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            if let Err(e) = check_path(&c.from, self.resource) {
                out.push(format!("columns[{i}].from (column `{}`): {e}", c.column));
            }
        }
        out
    }
}

impl Column {
    /// The most characters this column's mapping can produce, where that
    /// can be told (a value map, a date, an id); `None` for free text.
    pub fn max_chars(&self) -> Option<usize> {
        if let Some(map) = &self.values {
            return map.values().map(|v| v.chars().count()).max();
        }
        match self.render {
            As::Date => return Some(10),
            As::Deceased => return Some(5),
            As::Text | As::FullName | As::AddressText => {}
        }
        // Each alternative must be known.
        self.from
            .split('|')
            .map(|alt| match alt.trim() {
                "godata.id" => Some(36),
                "Patient.gender" | "RelatedPerson.gender" => Some(7),
                "Patient.active" | "RelatedPerson.active" => Some(5),
                p if p.ends_with("birthDate") || p.ends_with("recordedDate") => Some(10),
                _ => None,
            })
            .try_fold(0, |m, n| n.map(|n| m.max(n)))
    }
}

/// The elements of the FHIR R4 resources a Bundle of `resource` carries
/// (what a path after `Patient.` and so on may start with).
fn fhir_elements(root: &str, resource: Resource) -> Option<&'static [&'static str]> {
    const PATIENT: &[&str] = &[
        "resourceType",
        "id",
        "meta",
        "text",
        "extension",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "address",
        "maritalStatus",
        "multipleBirthBoolean",
        "multipleBirthInteger",
        "photo",
        "contact",
        "communication",
        "generalPractitioner",
        "managingOrganization",
        "link",
    ];
    const CONDITION: &[&str] = &[
        "resourceType",
        "id",
        "meta",
        "text",
        "extension",
        "identifier",
        "clinicalStatus",
        "verificationStatus",
        "category",
        "severity",
        "code",
        "bodySite",
        "subject",
        "encounter",
        "onsetDateTime",
        "onsetAge",
        "onsetPeriod",
        "onsetRange",
        "onsetString",
        "abatementDateTime",
        "abatementAge",
        "abatementPeriod",
        "abatementRange",
        "abatementString",
        "recordedDate",
        "recorder",
        "asserter",
        "stage",
        "evidence",
        "note",
    ];
    const RELATED_PERSON: &[&str] = &[
        "resourceType",
        "id",
        "meta",
        "text",
        "extension",
        "identifier",
        "active",
        "patient",
        "relationship",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "address",
        "photo",
        "period",
        "communication",
    ];
    const OBSERVATION: &[&str] = &[
        "resourceType",
        "id",
        "meta",
        "identifier",
        "status",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "issued",
        "valueCodeableConcept",
        "valueString",
        "note",
        "specimen",
    ];
    const SPECIMEN: &[&str] = &[
        "resourceType",
        "id",
        "meta",
        "identifier",
        "accessionIdentifier",
        "status",
        "type",
        "subject",
        "receivedTime",
        "collection",
    ];
    match (root, resource) {
        ("Patient", Resource::Case | Resource::Contact) => Some(PATIENT),
        ("Observation", Resource::LabResult) => Some(OBSERVATION),
        ("Specimen", Resource::LabResult) => Some(SPECIMEN),
        ("Condition", Resource::Case) => Some(CONDITION),
        ("RelatedPerson", Resource::Contact) => Some(RELATED_PERSON),
        _ => None,
    }
}

/// Checks a `from` path (`a | b` alternatives) against the grammar of
/// [`Sources::get`] and the resources the target's Bundle carries, so a
/// typo is a config error rather than a column silently written NULL.
pub fn check_path(path: &str, resource: Resource) -> Result<(), String> {
    for alt in path.split('|').map(str::trim) {
        if alt.is_empty() {
            return Err(format!("`{path}` has an empty alternative"));
        }
        if alt == "bundle" {
            continue;
        }
        let (root, rest) = alt.split_once('.').unwrap_or((alt, ""));
        let elements = if root == "godata" {
            if rest.is_empty() {
                return Err(format!("`{alt}`: name a Go.Data field, e.g. `godata.id`"));
            }
            None
        } else {
            let Some(e) = fhir_elements(root, resource) else {
                let carried = resource.carried();
                return Err(format!(
                    "`{alt}`: starts with `{root}`; a path starts with godata, bundle or a resource the {resource} Bundle carries ({carried})"
                ));
            };
            Some(e)
        };
        for (n, seg) in rest.split('.').enumerate() {
            if seg.is_empty() {
                if rest.is_empty() && elements.is_some() {
                    break;
                }
                return Err(format!("`{alt}`: an empty step"));
            }
            let (name, mut sel) = match seg.find('[') {
                Some(i) => (&seg[..i], &seg[i..]),
                None => (seg, ""),
            };
            if name.is_empty() || name.contains(']') {
                return Err(format!("`{alt}`: step `{seg}` has no field name"));
            }
            if n == 0 {
                if let Some(e) = elements {
                    if !e.contains(&name) {
                        return Err(format!(
                            "`{alt}`: `{root}` has no element `{name}` in FHIR R4"
                        ));
                    }
                }
            }
            while !sel.is_empty() {
                let Some(r) = sel.strip_prefix('[') else {
                    return Err(format!("`{alt}`: unexpected `{sel}` after a selector"));
                };
                let Some(end) = r.find(']') else {
                    return Err(format!("`{alt}`: `[` without `]`"));
                };
                let inner = &r[..end];
                let ok = match inner.split_once('=') {
                    Some((f, v)) => !f.is_empty() && !v.is_empty(),
                    None => inner.parse::<usize>().is_ok(),
                };
                if !ok {
                    return Err(format!(
                        "`{alt}`: selector `[{inner}]` is neither an index nor `field=value`"
                    ));
                }
                sel = &r[end + 1..];
            }
        }
    }
    Ok(())
}

/// The documents a path can start from.
pub struct Sources<'a> {
    pub bundle: &'a Value,
    pub godata: &'a Value,
}

impl Sources<'_> {
    fn resource(&self, kind: &str) -> Option<&Value> {
        self.bundle["entry"]
            .as_array()?
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["resourceType"] == kind)
    }

    /// Resolves `a | b | …` to the first present, non-null value.
    pub fn get(&self, path: &str) -> Option<Value> {
        path.split('|').find_map(|alt| self.get_one(alt.trim()))
    }

    fn get_one(&self, path: &str) -> Option<Value> {
        if path == "bundle" {
            return Some(self.bundle.clone());
        }
        let (root, rest) = path.split_once('.').unwrap_or((path, ""));
        let mut cur = if root == "godata" {
            self.godata
        } else {
            self.resource(root)?
        };
        for seg in rest.split('.').filter(|s| !s.is_empty()) {
            let (name, selectors) = match seg.find('[') {
                Some(i) => (&seg[..i], &seg[i..]),
                None => (seg, ""),
            };
            cur = cur.get(name)?;
            let mut sel = selectors;
            while let Some(r) = sel.strip_prefix('[') {
                let end = r.find(']')?;
                let inner = &r[..end];
                cur = match inner.split_once('=') {
                    Some((field, want)) => cur.as_array()?.iter().find(|e| e[field] == want)?,
                    None => cur.get(inner.parse::<usize>().ok()?)?,
                };
                sel = &r[end + 1..];
            }
        }
        (!cur.is_null()).then(|| cur.clone())
    }
}

fn render(v: &Value, how: As, tz: FixedOffset) -> Option<String> {
    Some(match how {
        As::Text => match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        As::FullName => {
            let mut parts: Vec<&str> = v["given"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if let Some(f) = v["family"].as_str() {
                parts.push(f);
            }
            if parts.is_empty() {
                return None;
            }
            parts.join(" ")
        }
        As::AddressText => {
            let mut parts: Vec<&str> = v["line"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for k in ["city", "postalCode", "country"] {
                if let Some(s) = v[k].as_str() {
                    parts.push(s);
                }
            }
            if parts.is_empty() {
                return None;
            }
            parts.join(", ")
        }
        As::Date => {
            let s = v.as_str()?;
            match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
                Err(_) => s.to_string(),
            }
        }
        As::Deceased => match v {
            Value::Bool(b) => b.to_string(),
            Value::String(_) => "true".into(),
            _ => return None,
        },
    })
}

/// The row a record gives a target: one optional text per column, then
/// the record's Go.Data `updatedAt` (staged, never written). A value that
/// a column's value map does not know gives NULL here; [`row_checked`]
/// refuses it instead.
pub fn row(target: &Target, src: &Sources<'_>, tz: FixedOffset) -> Vec<Option<String>> {
    row_checked(target, src, tz).unwrap_or_else(|r| r.row)
}

/// A record's row with a value its column's value map has no entry for.
#[derive(Debug)]
pub struct MapMiss {
    /// The column.
    pub column: String,
    /// The row, that column NULL.
    pub row: Vec<Option<String>>,
}

/// [`row`], refusing a value that a column's value map does not know (it
/// would become NULL: a lost value, or a NOT NULL violation).
pub fn row_checked(
    target: &Target,
    src: &Sources<'_>,
    tz: FixedOffset,
) -> Result<Vec<Option<String>>, MapMiss> {
    let updated = src.godata["updatedAt"].as_str().map(String::from);
    let mut missed = None;
    let row = target
        .columns
        .iter()
        .map(|c| {
            let v = src.get(&c.from)?;
            let text = render(&v, c.render, tz)?;
            match &c.values {
                Some(map) => {
                    let mapped = map.get(&text).cloned();
                    if mapped.is_none() && missed.is_none() {
                        missed = Some(c.column.clone());
                    }
                    mapped
                }
                None => Some(text),
            }
        })
        .chain(std::iter::once(updated))
        .collect();
    match missed {
        Some(column) => Err(MapMiss { column, row }),
        None => Ok(row),
    }
}

use crate::pg::{quote_ident as qi, quote_literal, TableName};

/// Each column of `table` with its type as SQL spells it, without the
/// type modifier: values are cast to the base type (`character varying`,
/// not `character varying(40)`) and the column's own assignment then
/// refuses what does not fit (SQLSTATE 22001) where an explicit cast to
/// `varchar(40)` would cut the value silently.
pub(crate) async fn column_types(
    tx: &impl tokio_postgres::GenericClient,
    table: &TableName,
) -> Result<BTreeMap<String, String>, tokio_postgres::Error> {
    Ok(tx
        .query(
            "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute
              WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Makes lz4 the TOAST compression of values written in the current
/// transaction, where the server has it (PostgreSQL 14+ built with lz4).
pub const LZ4_FOR_THIS_TRANSACTION: &str =
    "SELECT set_config('default_toast_compression', 'lz4', true) FROM pg_settings
      WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)";

/// Rows per statement of a page's write (see [`write`]).
const WRITE_CHUNK: usize = 500;

/// The staged column carrying each record's Go.Data `updatedAt`.
const STAGED_UPDATED: &str = "godata_bridge_updated";

/// A target table that flow 1 also pushes (by the same one-column key):
/// its link rows keep the row's pushed columns as they were at the last
/// sync (`link.synced`), so the write-back can tell, column by column,
/// whether the HMIS changed a value since.
#[derive(Debug, Clone)]
pub struct TwoWay {
    /// The table as `godata_bridge.link` names it.
    pub link_name: String,
    /// Columns that push rules read → the Go.Data field they write.
    pub fields: BTreeMap<String, String>,
}

/// Writes `rows` (from [`row`]; and deletes `deleted_keys`) into the
/// target, inside `tx`. Returns how many rows changed.
///
/// HMIS changes flow 1 holds but has not delivered yet, where the outbox
/// does not show them (logical capture keeps them in memory): the
/// write-back must not overwrite those rows with older Go.Data state.
pub trait PendingHmis: Send + Sync {
    /// Keys (`{"column": value}`) of `table` with an undelivered change.
    fn keys(&self, table: &str) -> Vec<Value>;
    /// Whether every HMIS change committed before WAL position `lsn` has
    /// reached flow 1.
    fn caught_up(&self, lsn: u64) -> bool;
}

/// On a [`TwoWay`] table, a column owned by `newest` or `godata` that the
/// push also carries is decided per column on rows with a synced state:
/// changed only in Go.Data (the HMIS value is the synced one): Go.Data's
/// value; changed only in the HMIS: the HMIS's (its push sends it); changed
/// on both sides: the owner decides (`newest`: the later of the row's
/// `hmis_updated_column` and Go.Data's `updatedAt`), and when Go.Data wins
/// the conflict is logged. Where the HMIS now holds Go.Data's value, the
/// synced state takes it. Rows without a synced state keep the row rule.
pub async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    target: &Target,
    rows: &[Vec<Option<String>>],
    deleted_keys: &[String],
    two_way: Option<&TwoWay>,
    held: Option<&dyn PendingHmis>,
) -> Result<u64, tokio_postgres::Error> {
    let table = target.table.quoted();
    let cols: Vec<String> = target.columns.iter().map(|c| qi(&c.column)).collect();
    let col_list = cols.join(", ");
    let key = qi(&target.key);
    let mut changed = 0;
    if !deleted_keys.is_empty() {
        changed += tx
            .execute(
                &format!("DELETE FROM {table} WHERE {key}::text = ANY($1)"),
                &[&deleted_keys],
            )
            .await?;
    }
    let key_at = target
        .columns
        .iter()
        .position(|c| c.column == target.key)
        .expect("validated");
    // One row per key, the last one of the page (a page can carry a record
    // twice when it changed while the page was read).
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(k) = r[key_at].as_deref() {
            last.insert(k, i);
        }
    }
    if last.is_empty() {
        return Ok(changed);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    // The page goes as text arrays, one per column (binary Binds), cast to
    // the column's type on the server: no temporary table, no CSV.
    let width = target.columns.len() + 1;
    let types = column_types(tx, &target.table).await?;
    let casts = target
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = types.get(&c.column).map(String::as_str).unwrap_or("text");
            format!("u.c{i}::{ty} AS {}", qi(&c.column))
        })
        .chain(std::iter::once(format!(
            "u.c{}::timestamptz AS {STAGED_UPDATED}",
            width - 1
        )))
        .collect::<Vec<_>>()
        .join(", ");
    // unnest() in the select list runs the arrays in step and streams
    // (unnest in FROM would first copy the whole page into a tuplestore).
    let stage = format!(
        "(SELECT {casts} FROM (SELECT {}) AS u) AS s",
        (0..width)
            .map(|i| format!("unnest(${}::text[]) AS c{i}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Values the bridge writes are compressed with lz4 where the server
    // has it (PostgreSQL 14+): pglz costs about a quarter of the write of
    // a page of Bundles. Columns with their own COMPRESSION keep it.
    tx.batch_execute(LZ4_FOR_THIS_TRANSACTION).await?;

    // Per column, on an existing row: Go.Data's value, the HMIS's, or the
    // newer side's. `src` is the staged row (`s`), or EXCLUDED in an upsert,
    // which carries the record's updatedAt only through `updated_column`.
    let hmis_updated = target.hmis_updated_column.as_deref().map(qi);
    let staged_updated = |src: &str| match (src, &target.updated_column) {
        ("s", _) => format!("s.{STAGED_UPDATED}"),
        (_, Some(u)) => format!("{src}.{}", qi(u)),
        (_, None) => "NULL::timestamptz".to_string(),
    };
    // Columns decided per column from the synced state (see above), and
    // the synced state of the row (`alias` is the target row's alias).
    let per_field: Vec<&Column> = match two_way {
        Some(tw) => target
            .columns
            .iter()
            .filter(|c| {
                c.column != target.key
                    && c.owner(target) != Owner::Hmis
                    && tw.fields.contains_key(&c.column)
            })
            .collect(),
        None => vec![],
    };
    let link_name = quote_literal(two_way.map_or("", |tw| &tw.link_name));
    let key_lit = quote_literal(&target.key);
    let synced_of = |alias: &str| {
        format!(
            "(SELECT l.synced FROM godata_bridge.link l WHERE l.table_name = {} AND l.row_key = jsonb_build_object({key_lit}, {alias}.{key}))",
            link_name
        )
    };
    // The HMIS's (`t`) or Go.Data's (`src`) value of column `c` equals the
    // synced one.
    let same = |alias: &str, c: &Column, syn: &str| {
        format!(
            "coalesce(to_jsonb({alias}.{}), 'null') = coalesce({syn}->{}, 'null')",
            qi(&c.column),
            quote_literal(&c.column)
        )
    };
    let godata_newer = |src: &str| {
        format!(
            "(t.{hu} IS NULL OR {gu} IS NULL OR t.{hu} < {gu})",
            hu = hmis_updated.as_deref().expect("validated: newest needs it"),
            gu = staged_updated(src),
        )
    };
    let assign = |src: &str, syn: &str| -> Vec<String> {
        target
            .columns
            .iter()
            .filter(|c| c.column != target.key)
            .map(|c| {
                let col = qi(&c.column);
                let row_rule = match c.owner(target) {
                    Owner::Godata => format!("{src}.{col}"),
                    Owner::Hmis => format!("t.{col}"),
                    Owner::Newest => format!(
                        "CASE WHEN {} THEN {src}.{col} ELSE t.{col} END",
                        godata_newer(src)
                    ),
                };
                if !per_field.iter().any(|p| p.column == c.column) {
                    return format!("{col} = {row_rule}");
                }
                let both = match c.owner(target) {
                    Owner::Newest => format!(
                        "CASE WHEN {} THEN {src}.{col} ELSE t.{col} END",
                        godata_newer(src)
                    ),
                    _ => format!("{src}.{col}"),
                };
                format!(
                    "{col} = CASE WHEN {syn} IS NULL THEN {row_rule}
                                  WHEN {} THEN {src}.{col}
                                  WHEN {} THEN t.{col}
                                  ELSE {both} END",
                    same("t", c, syn),
                    same(src, c, syn),
                )
            })
            .collect()
    };
    // Only columns the pull may change count as a difference.
    let comparable: Vec<String> = target
        .columns
        .iter()
        .filter(|c| c.column != target.key && c.owner(target) != Owner::Hmis)
        .map(|c| qi(&c.column))
        .collect();
    let differs = |src: &str| {
        if comparable.is_empty() {
            return "false".to_string();
        }
        format!(
            "({}) IS DISTINCT FROM ({})",
            comparable
                .iter()
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            comparable
                .iter()
                .map(|c| format!("{src}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // Only a newer record changes a row (`src` as for `assign`).
    let newer = |src: &str| match &target.updated_column {
        Some(u) => format!(
            " AND (t.{0} IS NULL OR {src}.{0} IS NULL OR t.{0} <= {src}.{0})",
            qi(u)
        ),
        None => String::new(),
    };
    let reads_outbox = target
        .columns
        .iter()
        .any(|c| c.owner(target) == Owner::Newest);
    // A row whose own HMIS change is still on its way to Go.Data is newer
    // than what Go.Data sent: `pending(alias)` says so of a target row. The
    // outbox's name for the table is resolved once here: as a STABLE call
    // in the filter it ran once per outbox row (1.2 s for a 200k-row
    // backlog; a literal, ~30 ms).
    let mut held_keys: Vec<Value> = Vec::new();
    let pending = if reads_outbox {
        let outbox_name = crate::store::link::qualified_table(tx, &target.table).await?;
        if let Some(h) = held {
            held_keys = h.keys(&outbox_name);
        }
        let (name, k, col) = (
            quote_literal(&outbox_name),
            quote_literal(&target.key),
            key.clone(),
        );
        Some(move |alias: &str| {
            format!("o.table_name = {name} AND o.row_key = jsonb_build_object({k}, {alias}.{col})")
        })
    } else {
        None
    };
    // Logical capture holds undelivered HMIS changes in memory, not in
    // the outbox: their keys come as the statement's last parameter.
    let held_param = width + 1;
    let held_of = |alias: &str| {
        format!(
            "jsonb_build_object({}, {alias}.{key}) = ANY(${held_param}::jsonb[])",
            quote_literal(&target.key)
        )
    };
    let sql = match target.mode {
        Mode::UpdateOnly => {
            let syn = "ls.synced";
            let mut guard = newer("s");
            if let Some(pending) = &pending {
                // Rows with a synced state are decided per column instead.
                let skip_synced = if per_field.is_empty() {
                    String::new()
                } else {
                    format!("{syn} IS NOT NULL OR ")
                };
                guard.push_str(&format!(
                    " AND ({skip_synced}(NOT EXISTS (SELECT 1 FROM godata_bridge.outbox o WHERE {}) AND NOT {}))",
                    pending("t"),
                    held_of("t")
                ));
            }
            let link_join = if per_field.is_empty() {
                String::new()
            } else {
                format!(
                    " LEFT JOIN godata_bridge.link ls ON ls.table_name = {} AND ls.row_key = jsonb_build_object({key_lit}, s.{key})",
                    link_name
                )
            };
            format!(
                "UPDATE {table} AS t SET {} FROM {stage}{link_join} WHERE t.{key} = s.{key} AND {}{guard}",
                assign("s", syn).join(", "),
                differs("s")
            )
        }
        Mode::Upsert => {
            let guard = newer("EXCLUDED");
            // Staged rows whose target row has a pending change are left
            // out before the insert: as part of the ON CONFLICT filter the
            // check ran once per conflicting row, each a scan of the outbox
            // (10 s for 100 rows against a 200k-row outbox; here one hash
            // anti-join per statement, 0.2 s).
            let skip = match &pending {
                Some(pending) => {
                    let unsynced = if per_field.is_empty() {
                        String::new()
                    } else {
                        format!(" AND {} IS NULL", synced_of("p"))
                    };
                    format!(
                        " WHERE NOT EXISTS (SELECT 1 FROM {table} AS p JOIN godata_bridge.outbox o ON {}
                                             WHERE p.{key} = s.{key}{unsynced})
                            AND NOT EXISTS (SELECT 1 FROM {table} AS p
                                             WHERE p.{key} = s.{key}{unsynced} AND {})",
                        pending("p"),
                        held_of("p")
                    )
                }
                None => String::new(),
            };
            format!(
                "INSERT INTO {table} AS t ({col_list}) SELECT {col_list} FROM {stage}{skip}
                 ON CONFLICT ({key}) DO UPDATE SET {} WHERE {}{guard}",
                assign("EXCLUDED", &synced_of("t")).join(", "),
                differs("EXCLUDED")
            )
        }
    };
    // Per-column decisions also log the conflicts Go.Data won and move the
    // synced state to the values both sides now hold, in the same
    // statement (its parts all see the rows as they were before it).
    let sql = if per_field.is_empty() {
        sql
    } else {
        let tw = two_way.expect("per-field columns come from it");
        let name = &link_name;
        let hmis_time = match &hmis_updated {
            Some(hu) => format!("t.{hu}"),
            None => "NULL::timestamptz".into(),
        };
        let conflicts = per_field
            .iter()
            .map(|c| {
                let won = match c.owner(target) {
                    Owner::Newest => godata_newer("s"),
                    _ => "true".into(),
                };
                format!(
                    "({}, NOT {} AND NOT {} AND {won})",
                    quote_literal(&tw.fields[&c.column]),
                    same("t", c, "l.synced"),
                    same("s", c, "l.synced"),
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let returned = per_field
            .iter()
            .enumerate()
            .map(|(i, c)| format!(", t.{} AS v{i}", qi(&c.column)))
            .collect::<String>();
        let agreed = per_field
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "({}, w.v{i} IS NOT DISTINCT FROM s.{}, to_jsonb(w.v{i}))",
                    quote_literal(&c.column),
                    qi(&c.column)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH c AS (
                INSERT INTO godata_bridge.conflict (table_name, row_key, godata_id, field, hmis_changed_at, godata_updated_at, winner)
                SELECT l.table_name, l.row_key, l.godata_id, x.f, {hmis_time}, s.{STAGED_UPDATED}, 'godata'
                  FROM {stage} JOIN {table} AS t ON t.{key} = s.{key}
                  JOIN godata_bridge.link l ON l.table_name = {name} AND l.row_key = jsonb_build_object({key_lit}, t.{key})
                  CROSS JOIN LATERAL (VALUES {conflicts}) AS x(f, hit)
                 WHERE l.synced IS NOT NULL AND x.hit
                ON CONFLICT DO NOTHING
                RETURNING 1
             ),
             w AS ({sql} RETURNING t.{key} AS k{returned}),
             y AS (
                UPDATE godata_bridge.link l
                   SET synced = l.synced || (SELECT coalesce(jsonb_object_agg(z.n, z.v), '{{}}'::jsonb)
                                               FROM (VALUES {agreed}) AS z(n, ok, v) WHERE z.ok)
                  FROM w JOIN {stage} ON s.{key} = w.k
                 WHERE l.table_name = {name} AND l.row_key = jsonb_build_object({key_lit}, w.k)
                   AND l.synced IS NOT NULL
             )
             SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM c)"
        )
    };
    // The page goes in chunks, pipelined on the connection: the server
    // writes one chunk while the next is encoded and sent, and no array
    // is larger than a chunk. A guard that reads the outbox hashes all of
    // it per statement, so such a page goes whole.
    let statement = tx.prepare(&sql).await?;
    let chunk = if reads_outbox {
        keep.len()
    } else {
        WRITE_CHUNK
    };
    let chunks: Vec<Vec<Vec<Option<&str>>>> = keep
        .chunks(chunk)
        .map(|part| {
            (0..width)
                .map(|c| part.iter().map(|&i| rows[i][c].as_deref()).collect())
                .collect()
        })
        .collect();
    let writes = chunks.iter().map(|arrays| {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        if pending.is_some() {
            params.push(&held_keys);
        }
        let statement = &statement;
        let counted = !per_field.is_empty();
        async move {
            if counted {
                let r = tx.query_one(statement, &params).await?;
                let (n, conflicts): (i64, i64) = (r.get(0), r.get(1));
                if conflicts > 0 {
                    crate::metrics::inc(
                        crate::metrics::CONFLICTS,
                        &[("winner", "godata")],
                        conflicts as f64,
                    );
                }
                Ok(u64::try_from(n).unwrap_or(0))
            } else {
                tx.execute(statement, &params).await
            }
        }
    });
    for n in futures_util::future::try_join_all(writes).await? {
        changed += n;
    }
    Ok(changed)
}

/// A row of a page that the target refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The row's index in the page.
    pub index: usize,
    pub sqlstate: String,
    pub constraint: Option<String>,
    pub column: Option<String>,
    /// A unique value this row would take is another row's: that row's
    /// Go.Data id, where the target keeps one (its key or a `godata.id`
    /// column).
    pub other_godata_id: Option<String>,
    /// The server's message with values left out (SQLSTATE and what
    /// failed; see [`crate::pg::error::describe`]).
    pub reason: String,
}

/// A row-level refusal: a data exception (class 22: too long, out of
/// range, bad encoding, invalid date) or an integrity violation (class 23:
/// NOT NULL, unique, check, foreign key). Anything else (a lost
/// connection, a missing privilege) stops the page.
fn refusal_code(e: &tokio_postgres::Error) -> Option<String> {
    let code = e.code()?.code();
    (code.starts_with("22") || code.starts_with("23")).then(|| code.to_string())
}

/// [`write`], but a row the target refuses does not fail the page: the
/// page is written in one statement as usual; only when that fails with a
/// row-level error (see [`refusal_code`]) is it bisected, under
/// savepoints, down to the rows that fail alone. Those are returned; every
/// other row is written. A page that needs no bisection costs two
/// savepoint commands more than [`write`].
pub async fn write_guarded(
    tx: &tokio_postgres::Transaction<'_>,
    target: &Target,
    rows: &[Vec<Option<String>>],
    deleted_keys: &[String],
    two_way: Option<&TwoWay>,
    held: Option<&dyn PendingHmis>,
) -> Result<(u64, Vec<Refusal>), tokio_postgres::Error> {
    let mut refused = vec![];
    let mut changed = 0;
    // Deletes first, on their own: a refused delete (a foreign key) stops
    // the page, as it needs the operator.
    if !deleted_keys.is_empty() {
        changed += write(tx, target, &[], deleted_keys, two_way, held).await?;
    }
    let all: Vec<usize> = (0..rows.len()).collect();
    let mut todo = vec![all.as_slice()];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        tx.batch_execute("SAVEPOINT godata_bridge_part").await?;
        // The whole page as it is (the fast path); a part as a copy.
        let picked: Vec<Vec<Option<String>>> = if part.len() == rows.len() {
            vec![]
        } else {
            part.iter().map(|&i| rows[i].clone()).collect()
        };
        let these = if part.len() == rows.len() {
            rows
        } else {
            &picked
        };
        match write(tx, target, these, &[], two_way, held).await {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT godata_bridge_part")
                    .await?;
                changed += n;
            }
            Err(e) => {
                let Some(code) = refusal_code(&e) else {
                    return Err(e);
                };
                tx.batch_execute("ROLLBACK TO SAVEPOINT godata_bridge_part; RELEASE SAVEPOINT godata_bridge_part")
                    .await?;
                if let [index] = part {
                    let db = e.as_db_error();
                    let constraint = db.and_then(|d| d.constraint()).map(String::from);
                    let other_godata_id = match (&constraint, code.as_str()) {
                        (Some(c), "23505") => holder(tx, target, &rows[*index], c).await?,
                        _ => None,
                    };
                    refused.push(Refusal {
                        index: *index,
                        sqlstate: code,
                        constraint,
                        column: db.and_then(|d| d.column()).map(String::from),
                        other_godata_id,
                        reason: crate::pg::error::describe(&e),
                    });
                } else {
                    // Later halves are popped last: rows keep their order.
                    let (a, b) = part.split_at(part.len() / 2);
                    todo.push(b);
                    todo.push(a);
                }
            }
        }
    }
    refused.sort_by_key(|r| r.index);
    Ok((changed, refused))
}

/// The Go.Data id of the row already holding the unique value (of index or
/// constraint `constraint`) that `row` would take, where the target keeps
/// Go.Data ids (its key, or a column from `godata.id`) and the unique
/// columns are all target columns.
async fn holder(
    tx: &tokio_postgres::Transaction<'_>,
    target: &Target,
    row: &[Option<String>],
    constraint: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let Some(id_col) = target
        .columns
        .iter()
        .find(|c| c.from.trim() == "godata.id")
        .map(|c| c.column.clone())
    else {
        return Ok(None);
    };
    let unique: Vec<String> = tx
        .query(
            "SELECT a.attname::text
               FROM pg_index x
               JOIN pg_class i ON i.oid = x.indexrelid
               CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
              WHERE x.indrelid = $1::text::regclass AND i.relname = $2
              ORDER BY k.ord",
            &[&target.table.quoted(), &constraint],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let types = column_types(tx, &target.table).await?;
    let mut conds = vec![];
    let mut params: Vec<Option<&str>> = vec![];
    for u in &unique {
        let Some(i) = target.columns.iter().position(|c| &c.column == u) else {
            return Ok(None);
        };
        params.push(row[i].as_deref());
        conds.push(format!(
            "t.{} = ${}::text::{}",
            qi(u),
            params.len(),
            types.get(u).map(String::as_str).unwrap_or("text")
        ));
    }
    if conds.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT t.{}::text FROM {} t WHERE {} LIMIT 1",
        qi(&id_col),
        target.table.quoted(),
        conds.join(" AND ")
    );
    let p: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    Ok(tx.query_opt(&sql, &p).await?.and_then(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_checked_against_the_grammar_and_fhir() {
        for ok in [
            "Patient.identifier[system=urn:hmis:key].value | godata.id",
            "Patient.name[0]",
            "Condition.verificationStatus.coding[0].code",
            "godata.documents[type=X].number",
            "bundle",
            "Patient",
        ] {
            assert_eq!(check_path(ok, Resource::Case), Ok(()), "{ok}");
        }
        assert_eq!(
            check_path("RelatedPerson.relationship[0].text", Resource::Contact),
            Ok(())
        );
        for (bad, says) in [
            ("Patient.nmae[0]", "no element `nmae`"),
            ("Patient.name[0.family", "without `]`"),
            ("Patient.name[x]", "neither an index"),
            ("Patient..name", "empty step"),
            ("godata", "name a Go.Data field"),
            ("Observation.code", "starts with `Observation`"),
            ("RelatedPerson.patient", "Patient, Condition"),
            ("Patient.name | ", "empty alternative"),
        ] {
            let e = check_path(bad, Resource::Case).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn paths_with_selectors_and_fallbacks() {
        let bundle = json!({"entry": [{"resource": {"resourceType": "Patient",
            "identifier": [{"system": "urn:godata:case", "value": "g1"}, {"system": "urn:hmis:key", "value": "KEN-1"}],
            "name": [{"given": ["Aminata", "Sia"], "family": "Kamara"}]}}]});
        let godata = json!({"id": "g1", "visualId": null});
        let s = Sources {
            bundle: &bundle,
            godata: &godata,
        };
        assert_eq!(
            s.get("Patient.identifier[system=urn:hmis:key].value"),
            Some(json!("KEN-1"))
        );
        assert_eq!(s.get("godata.visualId | godata.id"), Some(json!("g1")));
        assert_eq!(s.get("Patient.name[0].family"), Some(json!("Kamara")));
        assert_eq!(s.get("Condition.code"), None);
        let tz = FixedOffset::east_opt(0).unwrap();
        assert_eq!(
            render(&s.get("Patient.name[0]").unwrap(), As::FullName, tz).as_deref(),
            Some("Aminata Sia Kamara")
        );
    }
}

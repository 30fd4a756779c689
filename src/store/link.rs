//! Links (`godata_bridge.link`): which Go.Data record each HMIS row is,
//! what was last sent and acknowledged (content hash, synced columns,
//! Go.Data's `updatedAt`), and the conflict log written with them; and the
//! tracked tables' key columns (`godata_bridge.tracked`).

use std::collections::HashMap;

use serde_json::Value;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// One acknowledged upsert, as [`record`] stores it.
pub struct LinkRow<'a> {
    pub table: &'a str,
    pub key: &'a Value,
    /// `case` or `contact`.
    pub resource: &'static str,
    pub godata_id: Uuid,
    pub hash: &'a str,
    pub updated_at: Option<&'a str>,
    /// The mapped columns as Go.Data acknowledged them.
    pub synced: &'a Value,
    /// The synced state this push started from (None: a first push).
    pub prev: Option<&'a Value>,
}

/// One field both systems changed, for the conflict log.
pub struct ConflictRow<'a> {
    pub table: &'a str,
    pub key: &'a Value,
    pub godata_id: Uuid,
    pub field: &'a str,
    pub hmis_changed_at: &'a str,
    pub godata_updated_at: Option<&'a str>,
    pub winner: &'static str,
    pub prev: Option<&'a Value>,
    /// The HMIS columns the field is mapped from (a JSON array).
    pub columns: Value,
}

/// What one batch's acknowledgements change, column by column (the
/// statement takes arrays).
#[derive(Default)]
pub struct Acks<'a> {
    tables: Vec<&'a str>,
    keys: Vec<&'a Value>,
    kinds: Vec<&'static str>,
    resources: Vec<Option<&'static str>>,
    gids: Vec<Option<Uuid>>,
    hashes: Vec<Option<&'a str>>,
    updated: Vec<Option<&'a str>>,
    synced: Vec<Option<&'a Value>>,
    prevs: Vec<Option<&'a Value>>,
    c_tables: Vec<&'a str>,
    c_keys: Vec<&'a Value>,
    c_ids: Vec<Uuid>,
    c_fields: Vec<&'a str>,
    c_hmis: Vec<&'a str>,
    c_godata: Vec<Option<&'a str>>,
    c_winners: Vec<&'static str>,
    c_prev: Vec<Option<&'a Value>>,
    c_cols: Vec<Value>,
}

impl<'a> Acks<'a> {
    /// The record was deleted in Go.Data: its link goes.
    pub fn deleted(&mut self, table: &'a str, key: &'a Value) {
        self.row(table, key, "d", None, None, None, None, None, None);
    }

    pub fn upserted(&mut self, r: LinkRow<'a>) {
        self.row(
            r.table,
            r.key,
            "u",
            Some(r.resource),
            Some(r.godata_id),
            Some(r.hash),
            r.updated_at,
            Some(r.synced),
            r.prev,
        );
    }

    pub fn conflict(&mut self, c: ConflictRow<'a>) {
        self.c_tables.push(c.table);
        self.c_keys.push(c.key);
        self.c_ids.push(c.godata_id);
        self.c_fields.push(c.field);
        self.c_hmis.push(c.hmis_changed_at);
        self.c_godata.push(c.godata_updated_at);
        self.c_winners.push(c.winner);
        self.c_prev.push(c.prev);
        self.c_cols.push(c.columns);
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        table: &'a str,
        key: &'a Value,
        kind: &'static str,
        resource: Option<&'static str>,
        gid: Option<Uuid>,
        hash: Option<&'a str>,
        updated: Option<&'a str>,
        synced: Option<&'a Value>,
        prev: Option<&'a Value>,
    ) {
        self.tables.push(table);
        self.keys.push(key);
        self.kinds.push(kind);
        self.resources.push(resource);
        self.gids.push(gid);
        self.hashes.push(hash);
        self.updated.push(updated);
        self.synced.push(synced);
        self.prevs.push(prev);
    }
}

/// Stores a batch's acknowledgements and removes `outbox_ids` (trigger
/// mode: the acknowledged changes' outbox rows), in one statement.
/// Returns the winner (`hmis`/`godata`) of each conflict logged.
///
/// The synced columns go back column by column where the write-back did
/// not change them since this push read them (it may have written
/// Go.Data's value meanwhile: that one stands). A conflict stands only
/// where its columns are untouched likewise; the write-back logs the
/// conflicts it settles itself. Every part sees the links as they were
/// before the statement.
pub async fn record(
    pg: &impl GenericClient,
    outbreak_id: &str,
    a: &Acks<'_>,
    outbox_ids: &[i64],
) -> Result<Vec<String>, tokio_postgres::Error> {
    if a.tables.is_empty() && outbox_ids.is_empty() {
        return Ok(vec![]);
    }
    let logged = pg
        .query(
            "WITH s AS (SELECT * FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::text[], $5::uuid[], $6::text[],
                                             $7::text[], $9::jsonb[], $10::jsonb[])
                          AS s(t, k, kind, res, gid, hash, upd, syn, prev)),
                  gone AS (DELETE FROM godata_bridge.outbox WHERE id = ANY($8)),
                  unlinked AS (DELETE FROM godata_bridge.link l USING s
                                WHERE s.kind = 'd' AND l.table_name = s.t AND l.row_key = s.k),
                  conf AS (INSERT INTO godata_bridge.conflict
                                  (table_name, row_key, godata_id, field, hmis_changed_at, godata_updated_at, winner)
                           SELECT c.t, c.k, c.g, c.f, c.h::timestamptz, c.u::timestamptz, c.w
                             FROM unnest($11::text[], $12::jsonb[], $13::uuid[], $14::text[], $15::text[],
                                         $16::text[], $17::text[], $18::jsonb[], $19::jsonb[])
                                  AS c(t, k, g, f, h, u, w, prev, cols)
                             LEFT JOIN godata_bridge.link l ON l.table_name = c.t AND l.row_key = c.k
                            WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(c.cols) AS col
                                               WHERE l.synced->col IS DISTINCT FROM c.prev->col)
                           ON CONFLICT DO NOTHING
                           RETURNING winner),
                  upd AS (UPDATE godata_bridge.link l
                             SET godata_id = s.gid, content_hash = s.hash,
                                 godata_updated_at = coalesce(s.upd::timestamptz, l.godata_updated_at),
                                 pushed_at = now(), outbreak_id = $20,
                                 synced = CASE WHEN l.synced IS NULL OR s.prev IS NULL THEN s.syn
                                               ELSE (SELECT coalesce(jsonb_object_agg(x.k, x.v), '{}')
                                                       FROM (SELECT ks.k, CASE WHEN l.synced->ks.k IS NOT DISTINCT FROM s.prev->ks.k
                                                                               THEN s.syn->ks.k ELSE l.synced->ks.k END AS v
                                                               FROM (SELECT jsonb_object_keys(s.syn)
                                                                     UNION SELECT jsonb_object_keys(s.prev)
                                                                     UNION SELECT jsonb_object_keys(l.synced)) AS ks(k)) AS x
                                                      WHERE x.v IS NOT NULL) END
                            FROM s WHERE s.kind = 'u' AND l.table_name = s.t AND l.row_key = s.k
                           RETURNING l.table_name, l.row_key),
                  ins AS (INSERT INTO godata_bridge.link
                                 (table_name, row_key, resource, godata_id, content_hash, godata_updated_at, pushed_at, synced, outbreak_id)
                          SELECT t, k, res, gid, hash, upd::timestamptz, now(), syn, $20 FROM s
                           WHERE kind = 'u'
                             AND NOT EXISTS (SELECT 1 FROM upd WHERE upd.table_name = s.t AND upd.row_key = s.k)
                          ON CONFLICT (table_name, row_key) DO NOTHING)
             SELECT winner FROM conf",
            &[
                &a.tables, &a.keys, &a.kinds, &a.resources, &a.gids, &a.hashes, &a.updated,
                &outbox_ids, &a.synced, &a.prevs, &a.c_tables, &a.c_keys, &a.c_ids, &a.c_fields,
                &a.c_hmis, &a.c_godata, &a.c_winners, &a.c_prev, &a.c_cols, &outbreak_id,
            ],
        )
        .await?;
    Ok(logged.iter().map(|r| r.get(0)).collect())
}

/// Key columns of every tracked table, by the table's qualified name.
pub async fn tracked_keys(
    pg: &impl GenericClient,
) -> Result<HashMap<String, Vec<String>>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT table_name, key_columns FROM godata_bridge.tracked",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Key columns of one tracked table (named as the config names it).
pub async fn tracked_keys_of(
    pg: &impl GenericClient,
    table: &str,
) -> Result<Option<(String, Vec<String>)>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT tr.table_name, tr.key_columns FROM godata_bridge.tracked tr
              WHERE tr.table_name = godata_bridge.qualified(to_regclass($1))",
            &[&table],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// The qualified name of relation `oid`, as `godata_bridge.tracked` and
/// the links name tables.
pub async fn qualified_name(
    pg: &impl GenericClient,
    oid: u32,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(pg
        .query_one("SELECT godata_bridge.qualified($1::oid::regclass)", &[&oid])
        .await?
        .get(0))
}

/// Links of `table` to any of the Go.Data ids `ids`: (Go.Data id, row key).
pub async fn linked_to(
    pg: &impl GenericClient,
    table: &str,
    ids: &[String],
) -> Result<Vec<(String, Value)>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT l.godata_id::text, l.row_key FROM godata_bridge.link l
              WHERE l.table_name = godata_bridge.qualified(to_regclass($1))
                AND l.godata_id::text = ANY($2::text[])",
            &[&table, &ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A merge in Go.Data: the links of `table` to any of `merged` now point
/// to `survivor` (and are sent again in full on the next change).
pub async fn relink_merged(
    pg: &impl GenericClient,
    table: &str,
    merged: &[String],
    survivor: Uuid,
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "UPDATE godata_bridge.link SET godata_id = $3, content_hash = NULL
          WHERE table_name = godata_bridge.qualified(to_regclass($1))
            AND godata_id::text = ANY($2::text[])",
        &[&table, &merged, &survivor],
    )
    .await?;
    Ok(())
}

/// A link as delivery reads it.
pub struct Linked {
    pub table: String,
    pub key: Value,
    pub godata_id: Uuid,
    pub content_hash: Option<String>,
    pub synced: Option<Value>,
}

/// The links of (table, key) pairs into `outbreak_id` (or into no outbreak
/// in particular: links from before outbreaks were recorded), in one query.
pub async fn links_of(
    pg: &impl GenericClient,
    tables: &[&str],
    keys: &[&Value],
    outbreak_id: &str,
) -> Result<Vec<Linked>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT l.table_name, l.row_key, l.godata_id, l.content_hash, l.synced
               FROM unnest($1::text[], $2::jsonb[]) AS w(t, k)
               JOIN godata_bridge.link l ON l.table_name = w.t AND l.row_key = w.k
              WHERE l.outbreak_id IS NULL OR l.outbreak_id = $3",
            &[&tables, &keys, &outbreak_id],
        )
        .await?
        .iter()
        .map(|r| Linked {
            table: r.get(0),
            key: r.get(1),
            godata_id: r.get(2),
            content_hash: r.get(3),
            synced: r.get(4),
        })
        .collect())
}

/// Rows of an HMIS table by key as `to_jsonb` images, through the
/// capture's `fetch_rows`, with the snapshot the read ran in
/// (`pg_current_snapshot()` as text): (snapshot, [(key, image)]).
pub async fn fetch_rows(
    pg: &impl GenericClient,
    table: &str,
    keys: &[&Value],
) -> Result<(Option<String>, Vec<(Value, Value)>), tokio_postgres::Error> {
    let rows = pg
        .query(
            "SELECT s::text, f.row_key, f.row_image
               FROM pg_current_snapshot() AS s
               LEFT JOIN LATERAL godata_bridge.fetch_rows($1::text::regclass, $2) AS f ON true",
            &[&table, &keys],
        )
        .await?;
    let snap = rows.first().map(|r| r.get::<_, String>(0));
    let found = rows
        .iter()
        .filter_map(|r| {
            let key: Option<Value> = r.get(1);
            let image: Option<Value> = r.get(2);
            match (key, image) {
                (Some(k), Some(m @ Value::Object(_))) => Some((k, m)),
                _ => None,
            }
        })
        .collect();
    Ok((snap, found))
}

/// An operator's decision (`dead-letter link`, `retry --create`): the row
/// is linked to `godata_id` in `outbreak_id`, and its next push sends the
/// whole record.
pub async fn set(
    pg: &impl GenericClient,
    table: &str,
    key: &Value,
    resource: &str,
    godata_id: Uuid,
    outbreak_id: &str,
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO godata_bridge.link (table_name, row_key, resource, godata_id, outbreak_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (table_name, row_key) DO UPDATE
            SET godata_id = EXCLUDED.godata_id, outbreak_id = EXCLUDED.outbreak_id,
                content_hash = NULL, synced = NULL, resource = EXCLUDED.resource",
        &[&table, key, &resource, &godata_id, &outbreak_id],
    )
    .await?;
    Ok(())
}

/// Each tracked table with its replica identity (`d`, `i`, `f`, `n`), the
/// columns that identity carries, and its key columns.
pub async fn tracked_identities(
    pg: &impl GenericClient,
) -> Result<Vec<(String, String, Vec<String>, Vec<String>)>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT t.table_name, c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text)
                                FROM pg_index i
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                               WHERE i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary)
                                   OR (c.relreplident = 'i' AND i.indisreplident))), '{}') AS ident,
                    t.key_columns
               FROM godata_bridge.tracked t
               JOIN pg_class c ON c.oid = to_regclass(t.table_name)
              ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Tracked tables that `publication` does not carry.
pub async fn unpublished_tables(
    pg: &impl GenericClient,
    publication: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT coalesce(array_agg(t.table_name ORDER BY t.table_name), '{}')
               FROM godata_bridge.tracked t
              WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                                 WHERE p.pubname = $1
                                   AND format('%I.%I', p.schemaname, p.tablename) = t.table_name)",
            &[&publication],
        )
        .await?
        .get(0))
}

/// `table` (as the config names it) as links and the outbox name it.
pub async fn qualified_table(
    pg: &impl GenericClient,
    table: &crate::pg::TableName,
) -> Result<String, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT godata_bridge.qualified($1::text::regclass)",
            &[&table.quoted()],
        )
        .await?
        .get(0))
}

/// Forgets what was last sent for these rows of `table`: their next push
/// reads the Go.Data record and sends what differs (restoring a record
/// deleted there), instead of trusting the content hash (`reconcile
/// --repair`: the record changed behind the bridge's back).
pub async fn forget_sent(
    pg: &impl GenericClient,
    table: &str,
    keys: &[Value],
) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "UPDATE godata_bridge.link SET content_hash = NULL, synced = NULL
          WHERE table_name = $1 AND row_key = ANY($2::jsonb[])",
        &[&table, &keys],
    )
    .await
}

-- godata-bridge capture schema, version 4.
--
-- Idempotent: running it twice changes nothing. A later release migrates
-- from `godata_bridge.schema_version`.
--
-- What it creates (schema godata_bridge):
--   outbox        one row per captured row change; the bridge deletes a row
--                 only after Go.Data acknowledged it or after moving it to
--                 dead_letter. The outbox is the truth; NOTIFY only wakes.
--   dead_letter   changes Go.Data refused for good, with the reason
--   writeback_dead_letter  Go.Data records a write-back target refused
--                 (SQLSTATE, constraint, column; never values)
--   link          HMIS row <-> Go.Data record (ids, content hash, timestamps,
--                 the row's pushed columns at the last sync)
--   conflict      fields both sides changed since the last sync, and who won
--   tracked       which tables are captured, by which key columns
--   state         small named values (cursors, leader info)
--   track(table, key_columns) / untrack(table)
--   grant_bridge(role)  least-privilege grants for the bridge's own role
--
-- Capture is statement-level with transition tables (one trigger call per
-- statement, one set-based INSERT … SELECT into the outbox), and the outbox
-- holds only (table, op, key): the bridge reads the row's current state when
-- it delivers (a claim check). track() generates each table's trigger
-- functions with its key columns inlined, so no row is turned into jsonb on
-- the HMIS's write path. Measured on PostgreSQL 15, 100k-row INSERT … SELECT:
-- 0.45 s without capture, 3.5 s with a generic trigger storing row images,
-- 1.4 s with this design (README, "Capture cost"). Rows written with
-- `SET LOCAL godata_bridge.origin = 'godata'` (the bridge's write-back) are
-- not captured, so two-way sync does not echo.

CREATE SCHEMA IF NOT EXISTS godata_bridge;

CREATE TABLE IF NOT EXISTS godata_bridge.schema_version (
    version      int PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS godata_bridge.state (
    name       text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- How Go.Data ids are derived (src/godata/ids.rs), decided once: Go.Data
-- keeps person ids unique across all outbreaks, so a new installation
-- derives them from (namespace, outbreak, table, key) with a namespace of
-- its own (scheme 2). An installation that existed before (it has a schema
-- version already) keeps scheme 1 and the fixed namespace of earlier
-- releases: its records in Go.Data keep their ids, linked or not.
INSERT INTO godata_bridge.state (name, value)
SELECT 'id_scheme', CASE WHEN EXISTS (SELECT 1 FROM godata_bridge.schema_version)
    THEN jsonb_build_object('version', 1, 'namespace', '6f1c2b8e-5a43-4d0e-9b3c-7e2a1d5f0c91')
    ELSE jsonb_build_object('version', 2, 'namespace', gen_random_uuid()::text) END
ON CONFLICT (name) DO NOTHING;
INSERT INTO godata_bridge.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
-- Version 2: link.synced (per-field push) and the conflict log.
INSERT INTO godata_bridge.schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
-- Version 3: write-back dead letters, the id scheme.
INSERT INTO godata_bridge.schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
-- Version 4: lab results (links of resource lab_result).
INSERT INTO godata_bridge.schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS godata_bridge.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name   text NOT NULL,                 -- schema-qualified, quoted as regclass prints it
    op           "char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
    row_key      jsonb NOT NULL,                -- {"key column": value, …}
    txid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    captured_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error   text                           -- status and Go.Data code, never row values
);
-- No index on (table_name, row_key): every index entry is paid by the
-- HMIS's own writes (a 100k-row insert took 1.06 s with one, 0.52 s
-- without; 0.28 s uncaptured). The bridge settles rows by id.
DROP INDEX IF EXISTS godata_bridge.outbox_row_idx;

CREATE TABLE IF NOT EXISTS godata_bridge.dead_letter (
    id           bigint PRIMARY KEY,            -- the outbox id it had
    table_name   text NOT NULL,
    op           "char" NOT NULL,
    row_key      jsonb NOT NULL,
    txid         xid8 NOT NULL,
    captured_at  timestamptz NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    attempts     int NOT NULL,
    http_status  int,
    godata_code  text,
    reason       text NOT NULL
);

-- Go.Data records a `[[pull.target]]` refused (a data or constraint error,
-- a value no value map knows): set aside so the rest of the page is
-- written and the cursor moves on. One entry per (target, record); the
-- pull retries it whenever Go.Data changes the record, `dead-letter retry`
-- at once. Ids, SQLSTATE, constraint and column: never values.
CREATE TABLE IF NOT EXISTS godata_bridge.writeback_dead_letter (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_table      text NOT NULL,
    resource          text NOT NULL,
    godata_id         text NOT NULL,
    godata_updated_at timestamptz,             -- the version refused
    sqlstate          text,                    -- NULL: refused before the write (value map)
    constraint_name   text,
    column_name       text,
    other_godata_id   text,                    -- a unique value another record already holds
    reason            text NOT NULL,
    first_failed_at   timestamptz NOT NULL DEFAULT now(),
    failed_at         timestamptz NOT NULL DEFAULT now(),
    attempts          int NOT NULL DEFAULT 1,
    retry_requested_at timestamptz,            -- `dead-letter retry`: the running pull re-reads it
    UNIQUE (target_table, godata_id)
);

-- The link is bookkeeping the bridge can rebuild, so it is UNLOGGED: it
-- writes no WAL (logical capture would otherwise add a link row's WAL to
-- every new record's, 1.5x the record's own), and a crash or a failover to
-- a standby empties it. What that costs, and why it is safe: README,
-- "The link table".
CREATE UNLOGGED TABLE IF NOT EXISTS godata_bridge.link (
    table_name        text NOT NULL,
    row_key           jsonb NOT NULL,
    resource          text NOT NULL,
    godata_id         uuid NOT NULL,
    content_hash      text,
    godata_updated_at timestamptz,
    pushed_at         timestamptz,
    PRIMARY KEY (table_name, row_key)
);
-- Not unique: when a person merges two records in Go.Data, the HMIS rows
-- of both point to the one that survives.
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                WHERE i.relname = 'link_godata_id_idx' AND x.indisunique
                  AND i.relnamespace = 'godata_bridge'::regnamespace) THEN
        DROP INDEX godata_bridge.link_godata_id_idx;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS link_godata_id_idx ON godata_bridge.link (godata_id);
-- Version 4: lab results are linked too (to the id Go.Data assigned).
ALTER TABLE godata_bridge.link DROP CONSTRAINT IF EXISTS link_resource_check;
ALTER TABLE godata_bridge.link ADD CONSTRAINT link_resource_check
    CHECK (resource IN ('case', 'contact', 'lab_result'));
-- The HMIS row's pushed columns (as to_jsonb gives them) when Go.Data last
-- agreed with them: a push sends only the fields mapped from columns that
-- changed since; the write-back sees which of its columns have an HMIS
-- change not yet pushed. NULL for links made before version 2.
ALTER TABLE godata_bridge.link ADD COLUMN IF NOT EXISTS synced jsonb;
-- The outbreak the linked record lives in: a bridge pointed at another
-- outbreak ignores links into the old one (Go.Data ids are unique across
-- outbreaks, so those records cannot be updated there). NULL for links
-- made before version 3: taken as the current outbreak.
ALTER TABLE godata_bridge.link ADD COLUMN IF NOT EXISTS outbreak_id text;
DO $$ BEGIN
    IF (SELECT relpersistence FROM pg_class WHERE oid = 'godata_bridge.link'::regclass) = 'p' THEN
        ALTER TABLE godata_bridge.link SET UNLOGGED;
    END IF;
END $$;

-- One row per field that the HMIS and Go.Data both changed since the last
-- sync: ids, the Go.Data field's name, both change times and the side whose
-- value now stands (the field's system of record decided). Never values.
CREATE TABLE IF NOT EXISTS godata_bridge.conflict (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    logged_at         timestamptz NOT NULL DEFAULT now(),
    table_name        text NOT NULL,
    row_key           jsonb NOT NULL,
    godata_id         uuid NOT NULL,
    field             text NOT NULL,
    hmis_changed_at   timestamptz,
    godata_updated_at timestamptz,
    winner            text NOT NULL CHECK (winner IN ('hmis', 'godata'))
);
-- One entry per HMIS change of a field: the push and the write-back may
-- both meet the same conflict, whichever settles it first records it.
CREATE UNIQUE INDEX IF NOT EXISTS conflict_change_idx
    ON godata_bridge.conflict (table_name, row_key, field, coalesce(hmis_changed_at, '-infinity'::timestamptz));

CREATE TABLE IF NOT EXISTS godata_bridge.tracked (
    table_name   text PRIMARY KEY,
    key_columns  text[] NOT NULL,
    tracked_at   timestamptz NOT NULL DEFAULT now()
);

-- "schema"."table" of a relation, quoted only where needed (the outbox's
-- table_name form, independent of search_path).
CREATE OR REPLACE FUNCTION godata_bridge.qualified(tbl regclass)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

-- True when the current transaction is the bridge's own write-back.
CREATE OR REPLACE FUNCTION godata_bridge.is_bridge_write()
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('godata_bridge.origin', true), '') = 'godata'
$$;

-- NOTIFY takes a cluster-wide lock at commit, so writers notify only when
-- the bridge may be asleep. While it drains, the bridge holds this advisory
-- lock exclusively and a writer's shared try-lock fails: the writer skips
-- NOTIFY. After releasing the lock, the bridge waits for every transaction
-- that was in progress at that moment (any skipper is one of them) and
-- drains again, so a skipped wake-up is never lost (src/deliver.rs).
CREATE OR REPLACE FUNCTION godata_bridge.awake_lock_key()
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT 7205759403792793601::bigint $$;

CREATE OR REPLACE FUNCTION godata_bridge.bridge_asleep()
RETURNS boolean LANGUAGE sql VOLATILE AS $$
    SELECT pg_try_advisory_xact_lock_shared(godata_bridge.awake_lock_key())
$$;

-- jsonb_build_object('k1', <alias>.k1, …) for key columns `keys`.
CREATE OR REPLACE FUNCTION godata_bridge.key_expr(keys text[], alias text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'jsonb_build_object(' || string_agg(format('%L, %s.%I', k, alias, k), ', ' ORDER BY i) || ')'
      FROM unnest(keys) WITH ORDINALITY AS u(k, i)
$$;

-- Name of a tracked table's generated trigger function (`op`: i, u, d).
CREATE OR REPLACE FUNCTION godata_bridge.capture_function(tbl regclass, op text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format('godata_bridge.%I', 'capture_' || tbl::oid || '_' || op)
$$;

-- Records `tbl` as tracked by `key_columns` (default: the primary key) and
-- returns the key columns. No triggers: logical capture uses only this.
CREATE OR REPLACE FUNCTION godata_bridge.track_keys(tbl regclass, key_columns text[] DEFAULT NULL)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := key_columns;
    col text;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'godata_bridge.track: % is not a table', tbl;
    END IF;
    IF keys IS NULL OR cardinality(keys) = 0 THEN
        SELECT array_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum))
          INTO keys
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = tbl AND i.indisprimary;
        IF keys IS NULL THEN
            RAISE EXCEPTION 'godata_bridge.track: % has no primary key; name its key columns', tbl;
        END IF;
    END IF;
    FOREACH col IN ARRAY keys LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'godata_bridge.track: table % has no column %', tbl, quote_ident(col);
        END IF;
    END LOOP;
    INSERT INTO godata_bridge.tracked (table_name, key_columns)
    VALUES (godata_bridge.qualified(tbl), keys)
    ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns, tracked_at = now();
    RETURN keys;
END
$$;

-- Starts capturing `tbl` with triggers. `key_columns` default to the primary key.
CREATE OR REPLACE FUNCTION godata_bridge.track(tbl regclass, key_columns text[] DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := godata_bridge.track_keys(tbl, key_columns);
    name text := godata_bridge.qualified(tbl);
BEGIN
    -- The capture functions run as their owner (who installed the bridge),
    -- so the HMIS application's roles need no rights on godata_bridge.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF godata_bridge.is_bridge_write() THEN RETURN NULL; END IF;
            INSERT INTO godata_bridge.outbox (table_name, op, row_key)
            SELECT %L, 'I', %s FROM new_rows n;
            IF FOUND AND godata_bridge.bridge_asleep() THEN PERFORM pg_notify('godata_bridge', ''); END IF;
            RETURN NULL;
        END $b$ $f$, godata_bridge.capture_function(tbl, 'i'), name, godata_bridge.key_expr(keys, 'n'));
    -- An update that changes the key is a delete of the old key plus an upsert.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF godata_bridge.is_bridge_write() THEN RETURN NULL; END IF;
            WITH nk AS (SELECT %s AS k FROM new_rows n), ok AS (SELECT %s AS k FROM old_rows o)
            INSERT INTO godata_bridge.outbox (table_name, op, row_key)
            SELECT %L, 'D', ok.k FROM ok WHERE NOT EXISTS (SELECT 1 FROM nk WHERE nk.k = ok.k)
            UNION ALL
            SELECT %L, 'U', nk.k FROM nk;
            IF FOUND AND godata_bridge.bridge_asleep() THEN PERFORM pg_notify('godata_bridge', ''); END IF;
            RETURN NULL;
        END $b$ $f$, godata_bridge.capture_function(tbl, 'u'), godata_bridge.key_expr(keys, 'n'),
           godata_bridge.key_expr(keys, 'o'), name, name);
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF godata_bridge.is_bridge_write() THEN RETURN NULL; END IF;
            INSERT INTO godata_bridge.outbox (table_name, op, row_key)
            SELECT %L, 'D', %s FROM old_rows o;
            IF FOUND AND godata_bridge.bridge_asleep() THEN PERFORM pg_notify('godata_bridge', ''); END IF;
            RETURN NULL;
        END $b$ $f$, godata_bridge.capture_function(tbl, 'd'), name, godata_bridge.key_expr(keys, 'o'));
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_delete ON %s', tbl);
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   tbl, godata_bridge.capture_function(tbl, 'i'));
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   tbl, godata_bridge.capture_function(tbl, 'u'));
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   tbl, godata_bridge.capture_function(tbl, 'd'));
END
$$;

-- Stops capturing `tbl`. Pending outbox rows stay and are still delivered.
CREATE OR REPLACE FUNCTION godata_bridge.untrack(tbl regclass)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_delete ON %s', tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', godata_bridge.capture_function(tbl, 'i'));
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', godata_bridge.capture_function(tbl, 'u'));
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', godata_bridge.capture_function(tbl, 'd'));
    DELETE FROM godata_bridge.tracked WHERE table_name = godata_bridge.qualified(tbl);
END
$$;

-- The key columns of `tbl` as `t.k1, t.k2` and, from the jsonb `source`,
-- the same values cast to the columns' types: `(source->>'k1')::type, …`.
CREATE OR REPLACE FUNCTION godata_bridge.key_lists(tbl regclass, keys text[], source text,
                                                   OUT cols text, OUT vals text)
LANGUAGE sql STABLE AS $$
    SELECT string_agg(format('t.%I', u.k), ', ' ORDER BY u.i),
           string_agg(format('(%s->>%L)::%s', source, u.k, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY u.i)
      FROM unnest(keys) WITH ORDINALITY AS u(k, i)
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.k
$$;

-- Backfill: enqueues up to `chunk` existing rows of a tracked table whose
-- key is after `after` (NULL: from the start), in key order, as upserts.
-- Returns how many rows it enqueued and the last key, for the next call.
-- Keyset paging on the key columns, so each chunk is an index range scan.
CREATE OR REPLACE FUNCTION godata_bridge.backfill_chunk(tbl regclass, after jsonb, chunk int)
RETURNS TABLE (enqueued bigint, last_key jsonb) LANGUAGE plpgsql AS $$
DECLARE
    keys text[];
    cols text;
    vals text;
BEGIN
    SELECT key_columns INTO keys FROM godata_bridge.tracked WHERE table_name = godata_bridge.qualified(tbl);
    IF keys IS NULL THEN
        RAISE EXCEPTION 'godata_bridge.backfill: % is not tracked', tbl;
    END IF;
    SELECT k.cols, k.vals INTO cols, vals FROM godata_bridge.key_lists(tbl, keys, '$1') k;
    RETURN QUERY EXECUTE format(
        'WITH chunk AS (SELECT %s AS k FROM %s t %s ORDER BY %s LIMIT %s),
              ins AS (INSERT INTO godata_bridge.outbox (table_name, op, row_key)
                      SELECT %L, ''U'', k FROM chunk
                      RETURNING id, row_key)
         SELECT count(*), (SELECT row_key FROM ins ORDER BY id DESC LIMIT 1) FROM ins',
        godata_bridge.key_expr(keys, 't'), tbl,
        CASE WHEN after IS NULL THEN '' ELSE format('WHERE (%s) > (%s)', cols, vals) END,
        cols, chunk, godata_bridge.qualified(tbl))
    USING after;
    PERFORM pg_notify('godata_bridge', '');
END
$$;

-- The current rows of a tracked table for the given keys (the claim check
-- behind each outbox row): (row_key, row as jsonb). Keys of rows that no
-- longer exist are absent from the result.
CREATE OR REPLACE FUNCTION godata_bridge.fetch_rows(tbl regclass, wanted jsonb[])
RETURNS TABLE (row_key jsonb, row_image jsonb) LANGUAGE plpgsql STABLE AS $$
DECLARE
    keys text[];
    cols text;
    vals text;
BEGIN
    SELECT key_columns INTO keys FROM godata_bridge.tracked WHERE table_name = godata_bridge.qualified(tbl);
    IF keys IS NULL THEN
        RAISE EXCEPTION 'godata_bridge.fetch_rows: % is not tracked', tbl;
    END IF;
    SELECT k.cols, k.vals INTO cols, vals FROM godata_bridge.key_lists(tbl, keys, 'w') k;
    RETURN QUERY EXECUTE format(
        'SELECT %s, to_jsonb(t) FROM %s t WHERE (%s) IN (SELECT %s FROM unnest($1) AS w)',
        godata_bridge.key_expr(keys, 't'), tbl, cols, vals)
    USING wanted;
END
$$;

-- Logical capture: enqueues changes read from the replication slot. `raw`
-- holds each key as text ({"column": "text form"}, as pgoutput sends it);
-- the values are cast to the key columns' types here, so the outbox key is
-- the same jsonb trigger capture writes. Returns the highest id enqueued.
CREATE OR REPLACE FUNCTION godata_bridge.enqueue(tbl regclass, ops text[], raw jsonb[], captured timestamptz[])
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    keys text[];
    typed text;
    top bigint;
BEGIN
    SELECT key_columns INTO keys FROM godata_bridge.tracked WHERE table_name = godata_bridge.qualified(tbl);
    IF keys IS NULL THEN
        RAISE EXCEPTION 'godata_bridge.enqueue: % is not tracked', tbl;
    END IF;
    SELECT 'jsonb_build_object(' || string_agg(format('%L, (w->>%L)::%s', u.k, u.k, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY u.i) || ')'
      INTO typed
      FROM unnest(keys) WITH ORDINALITY AS u(k, i)
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.k;
    EXECUTE format(
        'WITH ins AS (INSERT INTO godata_bridge.outbox (table_name, op, row_key, captured_at)
                      SELECT %L, o::"char", %s, c FROM unnest($1, $2, $3) WITH ORDINALITY AS x(o, w, c, n)
                      ORDER BY n RETURNING id)
         SELECT max(id) FROM ins', godata_bridge.qualified(tbl), typed)
    INTO top USING ops, raw, captured;
    RETURN top;
END
$$;

-- Logical capture, TRUNCATE with `truncate = "delete"`: a delete for every
-- row of `tbl` that Go.Data holds. Returns the highest id enqueued.
CREATE OR REPLACE FUNCTION godata_bridge.enqueue_truncate(tbl regclass, at timestamptz)
RETURNS bigint LANGUAGE sql AS $$
    WITH ins AS (INSERT INTO godata_bridge.outbox (table_name, op, row_key, captured_at)
                 SELECT table_name, 'D', row_key, at FROM godata_bridge.link
                  WHERE table_name = godata_bridge.qualified(tbl)
                 RETURNING id)
    SELECT max(id) FROM ins
$$;

-- Logical capture: the publication `p` holds exactly the tracked tables.
CREATE OR REPLACE FUNCTION godata_bridge.publish(p name)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    tables text;
BEGIN
    SELECT string_agg(table_name, ', ' ORDER BY table_name) INTO tables FROM godata_bridge.tracked;
    IF tables IS NULL THEN
        RAISE EXCEPTION 'godata_bridge.publish: no table is tracked';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = p) THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', p, tables);
    ELSE
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s', p, tables);
    END IF;
END
$$;

-- Least privilege for the bridge's role (create it yourself, LOGIN, with a
-- password from your secret store): its own schema, reading the tracked
-- tables. Write-back targets are granted when they are configured.
CREATE OR REPLACE FUNCTION godata_bridge.grant_bridge(r name)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA godata_bridge TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA godata_bridge TO %I', r);
    -- Logical mode numbers its dead letters from the outbox's sequence.
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA godata_bridge TO %I', r);
    FOR t IN SELECT table_name FROM godata_bridge.tracked LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', (parse_ident(t))[1], r);
        EXECUTE format('GRANT SELECT ON %s TO %I', t, r);
    END LOOP;
END
$$;

-- godata-bridge capture schema, version 1.
--
-- Idempotent: running it twice changes nothing. A later release migrates
-- from `godata_bridge.schema_version`.
--
-- What it creates (schema godata_bridge):
--   outbox        one row per captured row change; the bridge deletes a row
--                 only after Go.Data acknowledged it or after moving it to
--                 dead_letter. The outbox is the truth; NOTIFY only wakes.
--   dead_letter   changes Go.Data refused for good, with the reason
--   link          HMIS row <-> Go.Data record (ids, content hash, timestamps)
--   tracked       which tables are captured, by which key columns
--   state         small named values (cursors, leader info)
--   track(table, key_columns) / untrack(table)
--   grant_bridge(role)  least-privilege grants for the bridge's own role
--
-- Capture is statement-level with transition tables: one trigger call per
-- statement, set-based inserts into the outbox, so a 100k-row bulk load is
-- one INSERT … SELECT rather than 100k trigger calls. Rows written with
-- `SET LOCAL godata_bridge.origin = 'godata'` (the bridge's write-back) are
-- not captured, so two-way sync does not echo.

CREATE SCHEMA IF NOT EXISTS godata_bridge;

CREATE TABLE IF NOT EXISTS godata_bridge.schema_version (
    version      int PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO godata_bridge.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS godata_bridge.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name   text NOT NULL,                 -- schema-qualified, quoted as regclass prints it
    op           "char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
    row_key      jsonb NOT NULL,                -- {"key column": value, …}
    row_image    jsonb,                         -- the new row (I/U) or the old row (D)
    txid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    captured_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error   text                           -- status and Go.Data code, never row values
);
CREATE INDEX IF NOT EXISTS outbox_row_idx ON godata_bridge.outbox (table_name, row_key, id);

CREATE TABLE IF NOT EXISTS godata_bridge.dead_letter (
    id           bigint PRIMARY KEY,            -- the outbox id it had
    table_name   text NOT NULL,
    op           "char" NOT NULL,
    row_key      jsonb NOT NULL,
    row_image    jsonb,
    txid         xid8 NOT NULL,
    captured_at  timestamptz NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    attempts     int NOT NULL,
    http_status  int,
    godata_code  text,
    reason       text NOT NULL
);

CREATE TABLE IF NOT EXISTS godata_bridge.link (
    table_name        text NOT NULL,
    row_key           jsonb NOT NULL,
    resource          text NOT NULL CHECK (resource IN ('case', 'contact')),
    godata_id         uuid NOT NULL,
    content_hash      text,
    godata_updated_at timestamptz,
    pushed_at         timestamptz,
    PRIMARY KEY (table_name, row_key)
);
CREATE UNIQUE INDEX IF NOT EXISTS link_godata_id_idx ON godata_bridge.link (godata_id);

CREATE TABLE IF NOT EXISTS godata_bridge.tracked (
    table_name   text PRIMARY KEY,
    key_columns  text[] NOT NULL,
    tracked_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS godata_bridge.state (
    name       text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- "schema"."table" of a relation, quoted only where needed (the outbox's
-- table_name form, independent of search_path).
CREATE OR REPLACE FUNCTION godata_bridge.qualified(tbl regclass)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

-- {"col": value} of `r` for the key columns `keys` (a JSON array of names).
CREATE OR REPLACE FUNCTION godata_bridge.row_key(r jsonb, keys jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_object_agg(k, r -> k) FROM jsonb_array_elements_text(keys) AS k
$$;

-- True when the current transaction is the bridge's own write-back.
CREATE OR REPLACE FUNCTION godata_bridge.is_bridge_write()
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('godata_bridge.origin', true), '') = 'godata'
$$;

-- TG_ARGV[0]: the key columns as a JSON array.
CREATE OR REPLACE FUNCTION godata_bridge.capture_insert()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF godata_bridge.is_bridge_write() THEN
        RETURN NULL;
    END IF;
    INSERT INTO godata_bridge.outbox (table_name, op, row_key, row_image)
    SELECT format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'I',
           godata_bridge.row_key(s.r, TG_ARGV[0]::jsonb), s.r
      FROM (SELECT to_jsonb(n) AS r FROM new_rows n) s;
    IF FOUND THEN
        PERFORM pg_notify('godata_bridge', '');
    END IF;
    RETURN NULL;
END
$$;

-- An update that changes the key is a delete of the old key plus an upsert.
CREATE OR REPLACE FUNCTION godata_bridge.capture_update()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF godata_bridge.is_bridge_write() THEN
        RETURN NULL;
    END IF;
    WITH n AS (
        SELECT to_jsonb(x) AS r, godata_bridge.row_key(to_jsonb(x), TG_ARGV[0]::jsonb) AS k FROM new_rows x
    ), o AS (
        SELECT to_jsonb(x) AS r, godata_bridge.row_key(to_jsonb(x), TG_ARGV[0]::jsonb) AS k FROM old_rows x
    )
    INSERT INTO godata_bridge.outbox (table_name, op, row_key, row_image)
    SELECT format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'D', o.k, o.r
      FROM o WHERE NOT EXISTS (SELECT 1 FROM n WHERE n.k = o.k)
    UNION ALL
    SELECT format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'U', n.k, n.r FROM n;
    IF FOUND THEN
        PERFORM pg_notify('godata_bridge', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION godata_bridge.capture_delete()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF godata_bridge.is_bridge_write() THEN
        RETURN NULL;
    END IF;
    INSERT INTO godata_bridge.outbox (table_name, op, row_key, row_image)
    SELECT format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'D',
           godata_bridge.row_key(s.r, TG_ARGV[0]::jsonb), s.r
      FROM (SELECT to_jsonb(o) AS r FROM old_rows o) s;
    IF FOUND THEN
        PERFORM pg_notify('godata_bridge', '');
    END IF;
    RETURN NULL;
END
$$;

-- Starts capturing `tbl`. `key_columns` default to the primary key.
CREATE OR REPLACE FUNCTION godata_bridge.track(tbl regclass, key_columns text[] DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    keys text[] := key_columns;
    col text;
    keys_json text;
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
    keys_json := to_jsonb(keys)::text;
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_delete ON %s', tbl);
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION godata_bridge.capture_insert(%L)', tbl, keys_json);
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION godata_bridge.capture_update(%L)', tbl, keys_json);
    EXECUTE format('CREATE TRIGGER godata_bridge_capture_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT '
                   'EXECUTE FUNCTION godata_bridge.capture_delete(%L)', tbl, keys_json);
    INSERT INTO godata_bridge.tracked (table_name, key_columns)
    VALUES (godata_bridge.qualified(tbl), keys)
    ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns, tracked_at = now();
END
$$;

-- Stops capturing `tbl`. Pending outbox rows stay and are still delivered.
CREATE OR REPLACE FUNCTION godata_bridge.untrack(tbl regclass)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_delete ON %s', tbl);
    DELETE FROM godata_bridge.tracked WHERE table_name = godata_bridge.qualified(tbl);
END
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
    SELECT string_agg(format('t.%I', u.k), ', ' ORDER BY u.i),
           string_agg(format('($1->>%L)::%s', u.k, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY u.i)
      INTO cols, vals
      FROM unnest(keys) WITH ORDINALITY AS u(k, i)
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = u.k;
    RETURN QUERY EXECUTE format(
        'WITH chunk AS (SELECT to_jsonb(t) AS r FROM %s t %s ORDER BY %s LIMIT %s),
              ins AS (INSERT INTO godata_bridge.outbox (table_name, op, row_key, row_image)
                      SELECT %L, ''U'', godata_bridge.row_key(r, %L::jsonb), r FROM chunk
                      RETURNING id, row_key)
         SELECT count(*), (SELECT row_key FROM ins ORDER BY id DESC LIMIT 1) FROM ins',
        tbl,
        CASE WHEN after IS NULL THEN '' ELSE format('WHERE (%s) > (%s)', cols, vals) END,
        cols, chunk, godata_bridge.qualified(tbl), to_jsonb(keys)::text)
    USING after;
    PERFORM pg_notify('godata_bridge', '');
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
    FOR t IN SELECT table_name FROM godata_bridge.tracked LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', (parse_ident(t))[1], r);
        EXECUTE format('GRANT SELECT ON %s TO %I', t, r);
    END LOOP;
END
$$;

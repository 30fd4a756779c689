-- Removes everything install.sql created: the capture triggers on every
-- tracked table, then the godata_bridge schema (outbox, dead letters, links,
-- state). Pending changes are lost: drain the outbox first.
DO $$
DECLARE
    t text;
BEGIN
    IF to_regclass('godata_bridge.tracked') IS NOT NULL THEN
        FOR t IN SELECT table_name FROM godata_bridge.tracked LOOP
            IF to_regclass(t) IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_insert ON %s', t);
                EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_update ON %s', t);
                EXECUTE format('DROP TRIGGER IF EXISTS godata_bridge_capture_delete ON %s', t);
            END IF;
        END LOOP;
    END IF;
END
$$;
DROP SCHEMA IF EXISTS godata_bridge CASCADE;

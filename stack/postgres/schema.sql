-- The demo neighbourhood schema: what the local stack, the demo and the tests use.
-- Idempotent: applied on every `python -m stack up`.
--
--   posts     REPLICA IDENTITY DEFAULT  (deletes carry only the primary key; updates
--                                        carry no `before`; a large body is TOASTed)
--   comments  REPLICA IDENTITY FULL     (`before` is the true old row)
--   profiles  REPLICA IDENTITY DEFAULT  (uuid primary key, decimal and timestamp columns)
--
-- Every table carries `system_version`, bumped by a BEFORE UPDATE trigger.

CREATE OR REPLACE FUNCTION bump_system_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.system_version := OLD.system_version + 1;
    RETURN NEW;
END;
$$;

CREATE TABLE IF NOT EXISTS posts (
    id               bigserial PRIMARY KEY,
    neighborhood_id  bigint      NOT NULL,
    author_id        bigint      NOT NULL,
    title            text        NOT NULL,
    body             text        NOT NULL DEFAULT '',
    score            numeric(12, 2) NOT NULL DEFAULT 0,
    metadata         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS comments (
    id               bigserial PRIMARY KEY,
    post_id          bigint      NOT NULL,
    neighborhood_id  bigint      NOT NULL,
    author_id        bigint      NOT NULL,
    body             text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS profiles (
    user_id          uuid        PRIMARY KEY,
    neighborhood_id  bigint      NOT NULL,
    display_name     text        NOT NULL,
    karma            numeric(10, 2) NOT NULL DEFAULT 0,
    birthday         date,
    updated_at       timestamp   NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT 1
);

-- Debezium writes this row on every heartbeat (heartbeat.action.query): the change
-- travels through the WAL like any other, so its commit time tells the reconciler how
-- far Debezium has read (the freshness watermark of quiet partitions).
CREATE TABLE IF NOT EXISTS debezium_heartbeat (
    id  integer     PRIMARY KEY,
    ts  timestamptz NOT NULL
);

ALTER TABLE posts    REPLICA IDENTITY DEFAULT;
ALTER TABLE comments REPLICA IDENTITY FULL;
ALTER TABLE profiles REPLICA IDENTITY DEFAULT;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['posts', 'comments', 'profiles'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                       WHERE tgname = t || '_bump_system_version' AND NOT tgisinternal) THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %I
                            FOR EACH ROW EXECUTE FUNCTION bump_system_version()',
                           t || '_bump_system_version', t);
        END IF;
    END LOOP;
END;
$$;

-- The publication Debezium streams (created here by the owner, so the replication
-- role needs no CREATE privilege: the connector runs with publication.autocreate.mode
-- = disabled).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'nd_publication') THEN
        CREATE PUBLICATION nd_publication FOR TABLE posts, comments, profiles, debezium_heartbeat;
    END IF;
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication_tables
                   WHERE pubname = 'nd_publication' AND tablename = 'debezium_heartbeat') THEN
        ALTER PUBLICATION nd_publication ADD TABLE debezium_heartbeat;
    END IF;
END;
$$;

-- Least privilege: Debezium reads (SELECT for the snapshot) and replicates; it writes
-- only its heartbeat row.
GRANT USAGE ON SCHEMA public TO debezium;
GRANT SELECT ON posts, comments, profiles, debezium_heartbeat TO debezium;
GRANT INSERT, UPDATE ON debezium_heartbeat TO debezium;
-- The reconciler's own role (audit, doctor): read-only.
GRANT USAGE ON SCHEMA public TO reconciler;
GRANT SELECT ON posts, comments, profiles TO reconciler;

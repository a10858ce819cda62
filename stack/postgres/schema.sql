-- The demo neighbourhood schema: what the local stack, the demo and the tests use.
-- Idempotent: applied on every `python -m stack up` (as one transaction).
--
--   posts     REPLICA IDENTITY DEFAULT  (deletes carry only the primary key; updates
--                                        carry no `before`; a large body is TOASTed)
--   comments  REPLICA IDENTITY FULL     (`before` is the true old row)
--   profiles  REPLICA IDENTITY DEFAULT  (uuid primary key, decimal and timestamp columns)
--   events    partitioned by month of `day` (leaves events_2026_11, events_2026_12 and
--             events_default); primary key (id, day). The nd database publishes it per
--             leaf partition (topics nd.public.events_<leaf>); a database whose
--             publication says publish_via_partition_root (nd2, `python -m stack up
--             connect-nd2`) publishes it as public.events.
--
-- Every table carries `system_version`, set from the table's own sequence on every
-- INSERT and UPDATE (a BEFORE INSERT OR UPDATE trigger; the column's default is the
-- same sequence). Versions never go back, not even across a delete and a re-insert
-- of the same key: the delete fence and cached entries are compared with the new
-- row's versions (SPEC §2). `DEFAULT 1` with `OLD.system_version + 1` on UPDATE, the
-- first version of this schema, restarted a re-inserted row at 1; the block below
-- moves a database made with it (rows keep their versions, each sequence starts above
-- its table's highest).

CREATE OR REPLACE FUNCTION next_system_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.system_version := nextval(TG_ARGV[0]::regclass);  -- TG_ARGV[0]: the sequence
    RETURN NEW;
END;
$$;

CREATE SEQUENCE IF NOT EXISTS posts_system_version_seq;
CREATE SEQUENCE IF NOT EXISTS comments_system_version_seq;
CREATE SEQUENCE IF NOT EXISTS profiles_system_version_seq;
CREATE SEQUENCE IF NOT EXISTS events_system_version_seq;

CREATE TABLE IF NOT EXISTS posts (
    id               bigserial PRIMARY KEY,
    neighborhood_id  bigint      NOT NULL,
    author_id        bigint      NOT NULL,
    title            text        NOT NULL,
    body             text        NOT NULL DEFAULT '',
    score            numeric(12, 2) NOT NULL DEFAULT 0,
    metadata         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT nextval('posts_system_version_seq')
);

CREATE TABLE IF NOT EXISTS comments (
    id               bigserial PRIMARY KEY,
    post_id          bigint      NOT NULL,
    neighborhood_id  bigint      NOT NULL,
    author_id        bigint      NOT NULL,
    body             text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT nextval('comments_system_version_seq')
);

CREATE TABLE IF NOT EXISTS profiles (
    user_id          uuid        PRIMARY KEY,
    neighborhood_id  bigint      NOT NULL,
    display_name     text        NOT NULL,
    karma            numeric(10, 2) NOT NULL DEFAULT 0,
    birthday         date,
    updated_at       timestamp   NOT NULL DEFAULT now(),
    system_version   bigint      NOT NULL DEFAULT nextval('profiles_system_version_seq')
);

CREATE TABLE IF NOT EXISTS events (
    id               bigserial,
    day              date        NOT NULL,
    neighborhood_id  bigint      NOT NULL,
    kind             text        NOT NULL,
    system_version   bigint      NOT NULL DEFAULT nextval('events_system_version_seq'),
    PRIMARY KEY (id, day)
) PARTITION BY RANGE (day);
CREATE TABLE IF NOT EXISTS events_2026_11 PARTITION OF events
    FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
CREATE TABLE IF NOT EXISTS events_2026_12 PARTITION OF events
    FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT;

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

-- Each table: its sequence above every version it holds (writes blocked meanwhile),
-- the sequence as the column's default, and the trigger; the old OLD + 1 trigger goes.
-- Done once: a table that has the trigger is left alone (no lock on later runs).
DO $$
DECLARE
    t    text;
    seq  text;
    top  bigint;
    last bigint;
BEGIN
    FOREACH t IN ARRAY ARRAY['posts', 'comments', 'profiles', 'events'] LOOP
        seq := t || '_system_version_seq';
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger
                              WHERE tgrelid = t::regclass AND NOT tgisinternal
                                AND tgname = t || '_next_system_version');
        EXECUTE format('LOCK TABLE %I IN SHARE ROW EXCLUSIVE MODE', t);
        EXECUTE format('SELECT max(system_version) FROM %I', t) INTO top;
        EXECUTE format('SELECT last_value FROM %I', seq) INTO last;
        IF top IS NOT NULL AND top >= last THEN
            PERFORM setval(seq, top);  -- the next version is top + 1
        END IF;
        EXECUTE format('ALTER SEQUENCE %I OWNED BY %I.system_version', seq, t);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN system_version SET DEFAULT nextval(%L)',
                       t, seq);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_bump_system_version', t);
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION next_system_version(%L)',
                       t || '_next_system_version', t, seq);
    END LOOP;
END;
$$;

DROP FUNCTION IF EXISTS bump_system_version();

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

-- The partitioned table, by its root (pg_publication_rel: pg_publication_tables lists
-- its leaves, or the root under publish_via_partition_root).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r
                   JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'nd_publication' AND r.prrelid = 'events'::regclass) THEN
        ALTER PUBLICATION nd_publication ADD TABLE events;
    END IF;
END;
$$;

-- Least privilege: Debezium reads (SELECT for the snapshot) and replicates; it writes
-- only its heartbeat row.
GRANT USAGE ON SCHEMA public TO debezium;
GRANT SELECT ON posts, comments, profiles, debezium_heartbeat TO debezium;
-- Per leaf publishing, Debezium snapshots the leaves themselves.
GRANT SELECT ON events, events_2026_11, events_2026_12, events_default TO debezium;
GRANT INSERT, UPDATE ON debezium_heartbeat TO debezium;
-- The reconciler's own role (audit, doctor): read-only.
GRANT USAGE ON SCHEMA public TO reconciler;
GRANT SELECT ON posts, comments, profiles, events TO reconciler;

"""Doctor's reading of a version column's default and triggers: can a row deleted and
re-inserted start again below its old version? (SPEC §2, "Versions never go back".)"""

from __future__ import annotations

import pytest

from connectors.postgres import Column, Table, Trigger
from reconciler.ops.doctor.checklist import OK, WARN
from reconciler.ops.doctor.postgres import _reinsert, sequence_fix

OLD_PLUS_ONE = "BEGIN NEW.system_version := OLD.system_version + 1; RETURN NEW; END"
NEXTVAL = "BEGIN NEW.system_version := nextval(TG_ARGV[0]::regclass); RETURN NEW; END"


def trigger(name: str, source: str, *, insert: bool = False, update: bool = True,
            enabled: bool = True, args: tuple[str, ...] = ()) -> Trigger:
    return Trigger(name=name, enabled=enabled, before=True, row=True, on_update=update,
                   function=f"public.{name}_fn", language="plpgsql", source=source,
                   args=args, on_insert=insert)


def table(default: str | None, *triggers: Trigger, identity: bool = False) -> Table:
    columns = {"id": Column("id", "bigint", "int8", True),
               "system_version": Column("system_version", "bigint", "int8", True, default,
                                        identity)}
    return Table("public", "posts", columns, ("id",), "default", ("id",),
                 tuple(sorted(triggers, key=lambda t: t.name)), True)


@pytest.mark.parametrize(("default", "triggers", "identity"), [
    # the stack's schema and README's recommendation: one trigger on INSERT and UPDATE
    ("nextval('posts_system_version_seq'::regclass)",
     [trigger("posts_next", NEXTVAL, insert=True, args=("posts_system_version_seq",))], False),
    # a sequence default (bigserial), and updates from the same sequence
    ("nextval('posts_system_version_seq'::regclass)",
     [trigger("bump", "BEGIN NEW.system_version = nextval('posts_system_version_seq'); "
                      "RETURN NEW; END")], False),
    # an identity column, and updates from the transaction id
    (None, [trigger("bump", "BEGIN NEW.system_version := txid_current(); RETURN NEW; END")],
     True),
    # a generic function told the column, calling nextval
    ("nextval('s'::regclass)",
     [trigger("bump", "BEGIN NEW := jsonb_populate_record(NEW, jsonb_build_object("
                      "TG_ARGV[0], nextval('s'))); RETURN NEW; END", insert=True,
              args=("system_version",))], False),
    # the old trigger still there, but the sequence trigger fires after it (name order)
    ("nextval('s'::regclass)",
     [trigger("a_bump", OLD_PLUS_ONE), trigger("b_next", NEXTVAL, insert=True)], False),
])
def test_versions_from_a_sequence_pass(default: str | None, triggers: list[Trigger],
                                       identity: bool) -> None:
    check = _reinsert("public.posts", "system_version", table(default, *triggers,
                                                              identity=identity))
    assert check is not None and check.status == OK, check
    assert check.detail.startswith("system_version never goes back (INSERT")


@pytest.mark.parametrize(("default", "triggers", "problem"), [
    # the old recommendation
    ("1", [trigger("bump", OLD_PLUS_ONE)], "a row deleted and re-inserted starts again at "
                                           "DEFAULT 1"),
    # a sequence on INSERT, but OLD + 1 on UPDATE: a re-insert can land below
    ("nextval('s'::regclass)", [trigger("bump", OLD_PLUS_ONE)],
     "updates do not take system_version from the sequence"),
    # an INSERT trigger that resets it, whatever the default
    ("nextval('s'::regclass)",
     [trigger("reset", "BEGIN NEW.system_version := 1; RETURN NEW; END", insert=True,
              update=False), trigger("z_next", NEXTVAL)],
     "starts again at trigger reset"),
    # the sequence trigger disabled: only the old one fires
    ("1", [trigger("bump", OLD_PLUS_ONE), trigger("next", NEXTVAL, insert=True,
                                                  enabled=False)],
     "starts again at DEFAULT 1"),
    # no default at all: the application's value
    (None, [trigger("bump", NEXTVAL)], "starts again at no DEFAULT"),
    # the old trigger fires last and overwrites the sequence's value
    ("nextval('s'::regclass)",
     [trigger("a_next", NEXTVAL, insert=True), trigger("b_bump", OLD_PLUS_ONE)],
     "updates do not take system_version from the sequence"),
])
def test_a_version_that_can_restart_warns_with_the_fix(
        default: str | None, triggers: list[Trigger], problem: str) -> None:
    check = _reinsert("public.posts", "system_version", table(default, *triggers))
    assert check is not None and check.status == WARN, check
    assert problem in check.detail.split(" (INSERT")[0], check.detail
    assert "versions must never go back" in check.detail
    assert check.fix.startswith("BEGIN; CREATE SEQUENCE IF NOT EXISTS ")
    assert "BEFORE INSERT OR UPDATE ON public.posts FOR EACH ROW" in check.fix


def test_the_fix_reuses_the_defaults_sequence_and_drops_only_the_triggers_that_go_back(
        ) -> None:
    found = table("nextval('\"Odd seq\"'::regclass)", trigger("bump", OLD_PLUS_ONE),
                  trigger("audit_log", "BEGIN INSERT INTO log VALUES (NEW.id); RETURN NEW; END"))
    fix = sequence_fix(found, "system_version")
    assert fix.startswith('BEGIN; CREATE SEQUENCE IF NOT EXISTS "Odd seq"; LOCK TABLE ')
    assert "OWNED BY" not in fix  # the default's sequence: perhaps another table's too
    fresh = sequence_fix(table("1", trigger("bump", OLD_PLUS_ONE)), "system_version")
    assert fresh.startswith("BEGIN; CREATE SEQUENCE IF NOT EXISTS public.posts_system_version_seq;"
                            " ALTER SEQUENCE public.posts_system_version_seq OWNED BY "
                            "public.posts.system_version; ")
    assert "LOCK TABLE public.posts IN SHARE ROW EXCLUSIVE MODE" in fix
    assert "SET DEFAULT nextval('\"Odd seq\"')" in fix
    assert "DROP TRIGGER IF EXISTS bump ON public.posts;" in fix
    assert "audit_log" not in fix
    assert fix.endswith("EXECUTE FUNCTION public.next_system_version('\"Odd seq\"'); COMMIT;")


def test_no_line_when_the_version_column_is_missing_or_not_an_integer() -> None:
    found = table("1", trigger("bump", OLD_PLUS_ONE))
    assert _reinsert("public.posts", "version", found) is None

"""Reading the file (`load_shard_map`) and following it (`ShardMapWatcher`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shard_map import ShardMap, ShardMapError, ShardMapWatcher, load_shard_map, parse_shard_map
from tests.unit.shard_map.maps import EXAMPLE_YAML

# The example at another version: a good change.
NEXT_YAML = EXAMPLE_YAML.replace("version: 7", "version: 8")
# A well-formed file that breaks a rule: a bad change.
BAD_YAML = EXAMPLE_YAML.replace("{from: 501, to: 1000", "{from: 450, to: 1000")
# Another bad file, different content.
WORSE_YAML = EXAMPLE_YAML.replace("version: 7", "version: -7")


def write(path: Path, text: str) -> None:
    """Replace `path` atomically, as editors and kubectl do (a new inode every time)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def problems_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(ShardMapError) as info:
        load_shard_map(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


# --- load_shard_map -----------------------------------------------------------------


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, EXAMPLE_YAML)
    shard_map = load_shard_map(path)
    assert shard_map.version == 7
    assert load_shard_map(str(path)) == shard_map


def test_missing_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == ("file not found",)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path)
    assert problem.startswith("cannot read the file: ")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, EXAMPLE_YAML.replace("  - {from: 501, to: 1000, shard: b}", "  - {from: 501, to"))
    (problem,) = problems_of(path)
    assert problem.startswith("not valid YAML: line 8, column ")


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, EXAMPLE_YAML.replace('  b: {url: "valkey://127.0.0.1:6380/0"}', '  a: {url: "x"}'))
    (problem,) = problems_of(path)
    assert problem == (
        "not valid YAML: line 4, column 3: found duplicate key 'a' (first at line 3) "
        "(while constructing a mapping)"
    )


def test_duplicate_keys_inside_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, EXAMPLE_YAML.replace("{from: 1,   to: 500,", "{from: 1, to: 500, to: 600,"))
    (problem,) = problems_of(path)
    assert "line 6" in problem and "found duplicate key 'to'" in problem


def test_merge_keys_may_override_without_being_duplicates() -> None:
    text = """
version: 1
shards:
  a: &base {url: "valkey://h:1/0"}
  b: {<<: *base, url: "valkey://h:2/0"}
default: a
"""
    assert parse_shard_map(text).endpoint("b").url == "valkey://h:2/0"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- 1\n", "the top level must be a mapping"),
        (
            "version: 7\n---\nversion: 8\n",
            "not valid YAML: line 2, column 1: found another document",
        ),
    ],
)
def test_not_a_shard_map_document(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, text)
    (found,) = problems_of(path)
    assert found.startswith(problem)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    path.write_bytes(b"version: 7\nshards: {\xff: 1}\n")
    (problem,) = problems_of(path)
    assert problem.startswith("not valid YAML: ")


def test_absurdly_deep_nesting_is_a_clean_error() -> None:
    with pytest.raises(ShardMapError, match="nested too deeply"):
        parse_shard_map("x: " + "[" * 100_000, "deep.yaml")


def test_parse_names_the_given_path() -> None:
    with pytest.raises(ShardMapError, match=r"^invalid shard map cm/shard_map\.yaml: "):
        parse_shard_map("[]", "cm/shard_map.yaml")


# --- ShardMapWatcher ---------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "shard_map.yaml"
    write(path, EXAMPLE_YAML)
    return path


def test_a_bad_initial_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "shard_map.yaml"
    write(path, BAD_YAML)
    with pytest.raises(ShardMapError, match="overlaps"):
        ShardMapWatcher(path)
    with pytest.raises(ShardMapError, match="file not found"):
        ShardMapWatcher(tmp_path / "nope.yaml")


def test_unchanged_file_gives_none(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    assert watcher.path == str(path)
    assert watcher.current.version == 7
    assert watcher.poll() is None
    assert watcher.poll() is None


def test_same_content_with_a_new_stat_gives_none(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    os.utime(path, ns=(1, 1))  # touched
    assert watcher.poll() is None
    write(path, EXAMPLE_YAML)  # rewritten: new inode, same content
    assert watcher.poll() is None


def test_a_good_change_becomes_current(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    old = watcher.current
    write(path, NEXT_YAML)
    result = watcher.poll()
    assert result is not None
    assert result.ok and result.error is None
    assert result.shard_map.version == 8
    assert watcher.current is result.shard_map
    assert watcher.current is not old
    assert watcher.poll() is None


def test_a_bad_change_keeps_the_old_map_and_is_reported_once(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    old = watcher.current
    write(path, BAD_YAML)
    result = watcher.poll()
    assert result is not None
    assert not result.ok
    assert result.shard_map is old
    assert watcher.current is old
    assert isinstance(result.error, ShardMapError)
    assert result.error.path == str(path)
    assert "ranges[1] {from: 450, to: 1000, shard: b} overlaps ranges[0]" in str(result.error)
    assert watcher.poll() is None  # the same bad content: not again
    os.utime(path, ns=(5, 5))
    assert watcher.poll() is None  # touched, still the same bad content
    write(path, BAD_YAML)
    assert watcher.poll() is None  # rewritten, still the same bad content
    assert watcher.current is old


def test_a_different_bad_change_is_reported_too(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    write(path, BAD_YAML)
    assert watcher.poll() is not None
    write(path, WORSE_YAML)
    result = watcher.poll()
    assert result is not None and not result.ok
    assert result.error is not None and "version must be 0 or more" in str(result.error)


def test_a_fix_after_a_bad_change_is_loaded(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    write(path, BAD_YAML)
    watcher.poll()
    write(path, NEXT_YAML)
    result = watcher.poll()
    assert result is not None and result.ok
    assert watcher.current.version == 8


def test_going_back_to_the_current_content_reports_ok_with_the_same_map(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    old = watcher.current
    write(path, BAD_YAML)
    watcher.poll()
    write(path, EXAMPLE_YAML)
    result = watcher.poll()
    assert result is not None and result.ok
    assert result.shard_map is old is watcher.current


def test_a_vanished_file_is_reported_once_and_the_map_kept(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    old = watcher.current
    path.unlink()
    result = watcher.poll()
    assert result is not None and not result.ok
    assert result.shard_map is old
    assert result.error is not None and result.error.problems == ("file not found",)
    assert watcher.poll() is None
    assert watcher.poll() is None
    write(path, NEXT_YAML)
    result = watcher.poll()
    assert result is not None and result.ok and watcher.current.version == 8


class ConfigMapVolume:
    """A Kubernetes ConfigMap volume: ``key -> ..data/key``, ``..data -> ..<timestamp>``.

    kubelet writes a new timestamped folder, points ``..data_tmp`` at it and renames it
    over ``..data`` (one atomic swap), then removes the old folder.
    """

    def __init__(self, root: Path, key: str, text: str) -> None:
        self.root = root
        self.generation = 0
        self._current = self._write_folder(key, text)
        os.symlink(self._current.name, root / "..data")
        os.symlink(f"..data/{key}", root / key)
        self.path = root / key

    def _write_folder(self, key: str, text: str) -> Path:
        self.generation += 1
        folder = self.root / f"..2026_01_01_00_00_00.{self.generation:04d}"
        folder.mkdir()
        (folder / key).write_text(text, encoding="utf-8")
        # The same mtime in every generation: only the inode tells them apart.
        os.utime(folder / key, ns=(10**18, 10**18))
        return folder

    def update(self, text: str) -> None:
        old = self._current
        self._current = self._write_folder(self.path.name, text)
        os.symlink(self._current.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")
        (old / self.path.name).unlink()
        old.rmdir()


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path, "shard_map.yaml", EXAMPLE_YAML)
    watcher = ShardMapWatcher(volume.path)
    assert watcher.poll() is None
    volume.update(NEXT_YAML)  # same size and mtime as before
    result = watcher.poll()
    assert result is not None and result.ok
    assert watcher.current.version == 8
    volume.update(NEXT_YAML)  # kubelet re-projects the same content
    assert watcher.poll() is None
    volume.update(BAD_YAML)
    result = watcher.poll()
    assert result is not None and not result.ok and watcher.current.version == 8
    assert watcher.poll() is None
    volume.update(EXAMPLE_YAML)
    result = watcher.poll()
    assert result is not None and result.ok and watcher.current.version == 7


def test_results_carry_a_shard_map(path: Path) -> None:
    watcher = ShardMapWatcher(path)
    write(path, NEXT_YAML)
    result = watcher.poll()
    assert result is not None
    assert isinstance(result.shard_map, ShardMap)

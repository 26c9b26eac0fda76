"""The exactly-once part store behind ``cprs batch`` (plain files, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cprs_integrations.batch_store import BatchInputError, PartStore, plan_blocks, read_block


def write_jsonl(path: Path, rows: list[dict], blank_lines: bool = False) -> Path:
    separator = "\n\n" if blank_lines else "\n"
    path.write_text(separator.join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def test_blocks_cover_every_record_once_by_byte_range(tmp_path: Path) -> None:
    rows = [{"id": index, "text": f"record {index} é"} for index in range(11)]
    path = write_jsonl(tmp_path / "in.jsonl", rows, blank_lines=True)

    plan = plan_blocks(path, "id", 4)

    assert [block.records for block in plan.blocks] == [4, 4, 3]
    assert plan.records == 11 and plan.size == path.stat().st_size
    assert [record for block in plan.blocks for record in read_block(path, block.start, block.end)] == rows


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1}\n{"id": 1}\n', "in.jsonl:2: id 1 repeats line 1"),
        ('{"id": 1}\n{"text": "no id"}\n', "in.jsonl:2: no 'id' field"),
        ('{"id": 1}\nnot json\n', "in.jsonl:2: not valid JSON"),
        ('{"id": 1}\n{"id": 2, "x": ' + "[" * 5000 + "]" * 5000 + '}\n', "in.jsonl:2: not valid JSON: maximum recursion"),
        ('{"id": ' + "9" * 5000 + '}\n', "in.jsonl:1: not valid JSON: Exceeds the limit"),
        ('[1, 2]\n', "in.jsonl:1: a JSON list"),
    ],
)
def test_bad_input_is_refused_with_its_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(BatchInputError, match=message):
        plan_blocks(path, "id", 2)


def test_ids_compare_as_json_values(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}, {"id": "1"}])
    assert plan_blocks(path, "id", 1).records == 2


def test_commits_are_idempotent_and_the_merge_writes_each_id_once(tmp_path: Path) -> None:
    store = PartStore(tmp_path / "out.jsonl")
    assert store.open({"job": 1}) == set()
    store.commit(1, '{"id": "b", "error": {"type": "EmptyContextError"}}\n')
    store.commit(0, '{"id": "a", "error": null}\n')
    store.commit(1, '{"id": "b", "error": {"type": "EmptyContextError"}}\n')

    assert store.open({"job": 1}) == {0, 1}
    assert store.finish(2, "id") == (2, 1)
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["a", "b"]
    assert not store.directory.exists()


def test_a_job_with_other_options_cannot_resume_these_parts(tmp_path: Path) -> None:
    store = PartStore(tmp_path / "out.jsonl")
    store.open({"input_bytes": 10, "batch_size": 4})
    with pytest.raises(BatchInputError, match="batch_size"):
        store.open({"input_bytes": 10, "batch_size": 8})


def test_merge_refuses_an_incomplete_job(tmp_path: Path) -> None:
    store = PartStore(tmp_path / "out.jsonl")
    store.open({})
    store.commit(0, '{"id": 1, "error": null}\n')
    with pytest.raises(BatchInputError, match=r"blocks \[1\]"):
        store.finish(2, "id")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_resume_with_other_options_names_each_differing_option(tmp_path: Path) -> None:
    manifest = {"batch_size": 16, "options": {"granularity": "sentence", "target_ratio": None, "query": "q"}}
    PartStore(tmp_path / "out.jsonl").open(manifest)
    changed = {"batch_size": 16, "options": {"granularity": "token", "target_ratio": 0.5, "query": "q"}}
    with pytest.raises(BatchInputError) as error:
        PartStore(tmp_path / "out.jsonl").open(changed)
    assert 'other options.granularity ("sentence" -> "token"); options.target_ratio (null -> 0.5); resume' in str(error.value)
    assert PartStore(tmp_path / "out.jsonl").open(manifest) == set()

"""``cprs batch`` on a local Ray instance (2 CPUs): results, ids, errors, a killed worker, an interrupted run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow  # a local Ray instance per module: minutes on 2 cores

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")

from cprs_core import CPRSCompressor  # noqa: E402
from cprs_integrations import ray_batch  # noqa: E402
from cprs_integrations.batch_store import BatchInputError  # noqa: E402

from .ray_actors import MapWorkerKiller  # noqa: E402

WINDOW = 128
QUERY = "Which numbers appear?"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def digit_records(count: int) -> list[dict]:
    """Records whose digits the digit tagger keeps; long enough to span several windows each."""
    return [
        {"id": f"doc-{index}", "text": f"Entry {index} has value {index * 37} and code {index * 11}. " * 12, "q": QUERY}
        for index in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected(compressor: CPRSCompressor, rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: compressor.compress(row["text"], row["q"]).to_dict() for row in rows}


def assert_complete(output: Path, compressor: CPRSCompressor, rows: list[dict]) -> None:
    """Each input id exactly once, in input order, with the result a local compression gives."""
    lines = read_output(output)
    assert [line["id"] for line in lines] == [row["id"] for row in rows]
    assert {line["id"]: line["result"] for line in lines} == expected(compressor, rows)


def test_results_equal_local_compression_with_ids_and_errors(
    tmp_path: Path, digit_tagger_dir: Path, digit_compressor: CPRSCompressor
) -> None:
    rows = digit_records(9)
    broken = [{"id": 1, "text": "   ", "q": QUERY}, {"id": "no-text", "q": QUERY}, {"id": "bad-query", "text": "7", "q": 3}]
    source = write_jsonl(tmp_path / "docs.jsonl", rows[:4] + broken + rows[4:])
    output = tmp_path / "out.jsonl"

    summary = ray_batch.compress_jsonl(
        source, output, query_field="q", model=str(digit_tagger_dir), window_size=WINDOW, num_actors=2, batch_size=2
    )

    lines = {json.dumps(line["id"]): line for line in read_output(output)}
    assert (summary.records, summary.errors, summary.blocks, summary.resumed_blocks) == (12, 3, 6, 0)
    assert list(lines) == [json.dumps(row["id"]) for row in rows[:4] + broken + rows[4:]]
    assert {row["id"]: lines[json.dumps(row["id"])]["result"] for row in rows} == expected(digit_compressor, rows)
    assert [lines[json.dumps(row["id"])]["error"]["type"] for row in broken] == [
        "EmptyContextError", "InvalidRecordError", "InvalidRecordError"
    ]
    assert not Path(f"{output}.parts").exists()


def test_a_killed_worker_loses_and_duplicates_no_record(
    tmp_path: Path, digit_tagger_dir: Path, digit_compressor: CPRSCompressor
) -> None:
    rows = digit_records(24)
    source = write_jsonl(tmp_path / "docs.jsonl", rows)
    with MapWorkerKiller() as killer:
        summary = ray_batch.compress_jsonl(
            source, tmp_path / "out.jsonl", query_field="q", model=str(digit_tagger_dir), window_size=WINDOW,
            num_actors=2, batch_size=2,
        )

    assert killer.pid is not None, "no worker was killed while the job ran"
    assert summary.records == 24
    assert_complete(tmp_path / "out.jsonl", digit_compressor, rows)


class Interrupted(Exception):
    """Stands for the driver being stopped (Ctrl-C, a lost head node) after some blocks were committed."""


def test_an_interrupted_run_resumes_without_redoing_committed_blocks(
    tmp_path: Path, digit_tagger_dir: Path, digit_compressor: CPRSCompressor
) -> None:
    rows = digit_records(12)
    source = write_jsonl(tmp_path / "docs.jsonl", rows)
    output = tmp_path / "out.jsonl"
    options = dict(query_field="q", model=str(digit_tagger_dir), window_size=WINDOW, num_actors=1, batch_size=2)

    def stop_after_first_block(done: int, total: int) -> None:
        if done:
            raise Interrupted

    with pytest.raises(Interrupted):
        ray_batch.compress_jsonl(source, output, progress=stop_after_first_block, **options)
    committed = sorted(Path(f"{output}.parts").glob("part-*.jsonl"))
    assert committed and not output.exists()

    with pytest.raises(BatchInputError, match="options"):
        ray_batch.compress_jsonl(source, output, **{**options, "granularity": "paragraph"})
    summary = ray_batch.compress_jsonl(source, output, **options)

    assert summary.resumed_blocks == len(committed) and summary.blocks == 6
    assert_complete(output, digit_compressor, rows)
    with pytest.raises(BatchInputError, match="already exists"):
        ray_batch.compress_jsonl(source, output, **options)


def test_cli_compresses_with_the_embedded_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": 1, "body": "The vault code is 4417. The weather was mild and the garden was quiet all day."},
        {"id": 2, "body": "Paris is the capital of France. Bananas are yellow and grow in warm places."},
    ]
    source = write_jsonl(tmp_path / "docs.jsonl", rows)
    output = tmp_path / "out.jsonl"
    parser = argparse.ArgumentParser()
    ray_batch.add_arguments(parser)

    status = ray_batch.run(parser.parse_args([
        "--input", str(source), "--output", str(output), "--query", "What is the vault code?",
        "--context-field", "body", "--granularity", "sentence",
    ]))

    captured = capsys.readouterr()
    assert status == 0, captured.err
    local = CPRSCompressor.from_pretrained(None)
    assert read_output(output) == [
        {"id": row["id"], "result": local.compress(row["body"], "What is the vault code?", granularity="sentence").to_dict(),
         "error": None}
        for row in rows
    ]
    assert "2 records (0 with errors)" in captured.out  # the summary is the command's output


def test_cli_reports_bad_input_without_starting_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', encoding="utf-8")
    parser = argparse.ArgumentParser()
    ray_batch.add_arguments(parser)

    status = ray_batch.run(parser.parse_args(["--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--query", "q"]))

    assert status == 1
    assert "repeats line 1" in capsys.readouterr().err


def test_the_output_never_replaces_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", digit_records(2))
    before = source.read_bytes()
    parser = argparse.ArgumentParser()
    ray_batch.add_arguments(parser)
    for output in (source, tmp_path / "sub" / ".." / "docs.jsonl"):  # also when spelled differently
        arguments = ["--input", str(source), "--output", str(output), "--query", QUERY, "--overwrite"]
        assert ray_batch.run(parser.parse_args(arguments)) == 1
        assert "would replace the input" in capsys.readouterr().err
    (tmp_path / "out.jsonl.parts").mkdir()
    inside = write_jsonl(tmp_path / "out.jsonl.parts" / "docs.jsonl", digit_records(2))
    arguments = ["--input", str(inside), "--output", str(tmp_path / "out.jsonl"), "--query", QUERY]
    assert ray_batch.run(parser.parse_args(arguments)) == 1  # the parts folder is removed when the job ends
    assert source.read_bytes() == before and inside.exists()


def batch_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cprs_integrations.cli", "batch", *arguments]


def subprocess_env(ray_tmp: Path) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}


def test_refusals_come_before_ray_starts(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", digit_records(2))
    (tmp_path / "out.jsonl").write_text("done\n", encoding="utf-8")
    finished = subprocess.run(
        batch_command("--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--query", QUERY),
        env=subprocess_env(tmp_path / "ray"), capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode == 1 and "already exists; pass overwrite=True (--overwrite)" in finished.stderr
    assert not (tmp_path / "ray").exists()  # no Ray session was started


@pytest.mark.slow
def test_sigterm_ends_cleanly_and_leaves_no_ray_processes(tmp_path: Path) -> None:
    rows = [{**row, "text": row["text"] * 20} for row in digit_records(40)]
    source = write_jsonl(tmp_path / "docs.jsonl", rows)
    output = tmp_path / "out.jsonl"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    job = subprocess.Popen(
        batch_command("--input", str(source), "--output", str(output), "--query", QUERY, "--batch-size", "1",
                      "--window-size", str(WINDOW)),
        env=subprocess_env(ray_tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    parts = Path(str(output) + ".parts")
    deadline = time.monotonic() + 240
    while not list(parts.glob("part-*")) and job.poll() is None:
        assert time.monotonic() < deadline, "no block was committed in time"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 143, err
    assert "interrupted\ncommitted blocks are kept" in err
    assert "Fatal Python error" not in err and "core dumped" not in err and "Traceback" not in err
    assert out == ""
    deadline = time.monotonic() + 30
    while _processes_using(ray_tmp):
        assert time.monotonic() < deadline, f"orphaned Ray processes: {_processes_using(ray_tmp)}"
        time.sleep(0.5)


def _processes_using(directory: Path) -> list[str]:
    """Command lines of live processes that mention ``directory`` (Ray's session processes do)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in command:
            found.append(command[:120])
    return found

"""Compress a JSONL corpus on a Ray cluster: ``cprs batch`` and :func:`compress_jsonl`.

Each input line is a JSON object with a unique id, a context and a query (or one query for all records). The
records are cut into blocks of ``batch_size`` (see :mod:`cprs_integrations.batch_store`); a Ray Data pipeline
sends the blocks to a fixed pool of actors, each holding one model (on its own GPU when ``num_gpus`` is set),
which compresses a block with one ``compress_batch`` call. The driver commits every finished block as a part
file, so output is exactly-once and a failed or interrupted job resumes where it stopped:

* a worker that dies (crash, OOM kill, lost node) is restarted by Ray Data and its blocks are retried; a block
  is committed only once its whole output reached the driver, and a block committed twice is the same file;
* re-running the same command after the driver itself stopped skips the committed blocks;
* a record whose compression raises :class:`cprs_core.CPRSError` (empty context, budget, too long, a missing
  field, ...) gets ``"error": {"type": ..., "message": ...}`` in its line; it does not stop the job.

Output lines are ``{"<id_field>": id, "result": CompressionResult.to_dict() | null, "error": {...} | null}``,
in input order. Actors read their blocks from the input file (rows carry only byte ranges), so on a multi-node
cluster it must be on storage every node mounts; only the driver writes output. Needs ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import ray
import ray.data

from cprs_core import DEFAULT_MODEL, INSTRUCTIONS, CompressionRequest, CompressionResult, Compressor, CPRSError
from cprs_core.errors import quoted
from cprs_core.validation import DEFAULT_GRANULARITY, Granularity, check_query, check_settings

from .batch_store import BatchInputError, Block, InputPlan, PartStore, plan_blocks, read_block
from .cli_options import add_output_options, add_precision_options
from .ray_model import ModelSpec

DEFAULT_BATCH_SIZE = 16
"""Records per block: one ``compress_batch`` call, one commit, the unit of retry and resume."""

BatchProgress = Callable[[int, int], None]
"""Called as ``progress(records_done, records_total)`` after each committed block (and once at the start)."""


class InvalidRecordError(CPRSError):
    """A record whose context, query or instruction field is missing or not a string."""


@dataclass(frozen=True)
class RecordSpec:
    """Which fields of a record hold what, and the compression options applied to every record.

    Exactly one of ``query_field`` (per-record query) and ``query`` (the same query for all) must be set; at
    most one of ``instruction`` and ``instruction_field``. The options are those of
    :meth:`cprs_core.CPRSCompressor.compress`.
    """

    query_field: str | None = None
    query: str | None = None
    context_field: str = "text"
    id_field: str = "id"
    instruction: str | None = None
    instruction_field: str | None = None
    granularity: Granularity = DEFAULT_GRANULARITY
    target_ratio: float | None = None
    target_tokens: int | None = None
    min_span_tokens: int = 1
    separator: str = "\n"

    def __post_init__(self) -> None:
        if (self.query_field is None) == (self.query is None):
            raise BatchInputError("give exactly one of query_field (a query per record) and query (one for all)")
        if self.instruction is not None and self.instruction_field is not None:
            raise BatchInputError("give instruction or instruction_field, not both")
        if self.query is not None:
            check_query(self.query)
        check_settings(
            self.instruction, self.granularity, self.target_ratio, self.target_tokens, self.min_span_tokens,
            self.separator,
        )

    def request(self, record: dict[str, Any]) -> CompressionRequest:
        """The compression request for ``record``.

        Raises:
            InvalidRecordError: a configured field is missing or not a string.
        """
        context = _text_field(record, self.context_field)
        query = self.query if self.query_field is None else _text_field(record, self.query_field)
        instruction = self.instruction
        if self.instruction_field is not None and record.get(self.instruction_field) is not None:
            instruction = _text_field(record, self.instruction_field)
        return CompressionRequest(
            context, query, instruction, self.granularity, self.target_ratio, self.target_tokens,
            self.min_span_tokens, self.separator,
        )


@dataclass(frozen=True)
class BatchSummary:
    """What a :func:`compress_jsonl` run did.

    Attributes:
        output: the JSONL file written.
        records: lines in it (one per input record).
        errors: lines that carry an ``error`` instead of a ``result``.
        blocks: blocks of the input; ``resumed_blocks`` of them were committed by an earlier run.
        seconds: wall time of this run, input scan and output merge included.
    """

    output: Path
    records: int
    errors: int
    blocks: int
    resumed_blocks: int
    seconds: float


def compress_records(compressor: Compressor, spec: RecordSpec, records: Sequence[dict[str, Any]]) -> str:
    """The output lines (newline-terminated JSONL) of ``records``, compressed in one ``compress_batch`` call."""
    slots: list[CompressionRequest | CPRSError] = []
    for record in records:
        try:
            slots.append(spec.request(record))
        except InvalidRecordError as error:
            slots.append(error)
    requests = [slot for slot in slots if isinstance(slot, CompressionRequest)]
    outcomes = iter(compressor.compress_batch(requests) if requests else [])
    lines = []
    for record, slot in zip(records, slots):
        outcome = next(outcomes) if isinstance(slot, CompressionRequest) else slot
        lines.append(_output_line(spec.id_field, record[spec.id_field], outcome))
    return "".join(lines)


class BlockCompressor:
    """The Ray Data UDF: loads one model per actor, then compresses whole blocks read from the input file.

    Rows in are ``{"block", "start", "end"}`` (a block's byte range); rows out are ``{"block", "lines"}``.
    """

    def __init__(self, path: str, model: ModelSpec, spec: RecordSpec) -> None:
        self.path = path
        self.spec = spec
        self.compressor = model.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [
            compress_records(self.compressor, self.spec, read_block(self.path, int(start), int(end)))
            for start, end in zip(batch["start"], batch["end"])
        ]
        return {"block": batch["block"], "lines": np.array(texts, dtype=object)}


def compress_jsonl(
    input: str | Path,
    output: str | Path,
    *,
    query_field: str | None = None,
    query: str | None = None,
    context_field: str = "text",
    id_field: str = "id",
    instruction: str | None = None,
    instruction_field: str | None = None,
    granularity: Granularity = DEFAULT_GRANULARITY,
    target_ratio: float | None = None,
    target_tokens: int | None = None,
    min_span_tokens: int = 1,
    separator: str = "\n",
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    window_size: int | None = None,
    num_gpus: float = 0,
    num_actors: int | None = None,
    cpus_per_actor: float = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overwrite: bool = False,
    progress: BatchProgress | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> BatchSummary:
    """Compress every record of the JSONL file ``input`` into ``output``, on Ray (see the module docstring).

    Every option, the input and the output are checked first; then the running Ray instance is used, or Ray
    is started (``ray.init(address)``: a cluster, ``$RAY_ADDRESS``, else a local one). Re-running with the
    same arguments after an interruption resumes: blocks already committed are not recomputed.

    Args:
        input: JSONL, one object per line, each with a unique ``id_field``.
        output: the JSONL to write; parts live in ``<output>.parts/`` until every block is done.
        query_field / query: the field holding each record's query, or one query for every record.
        context_field: the field holding the text to compress.
        instruction / instruction_field: the tagging instruction for all records, or a field holding one
            per record (records without it use the default).
        granularity, target_ratio, target_tokens, min_span_tokens, separator: as in
            :meth:`cprs_core.CPRSCompressor.compress`.
        model, device, dtype, window_size: each actor's model, as in
            :meth:`cprs_core.CPRSCompressor.from_pretrained` (``None`` = the embedded cprs-mini). A local
            path must be readable on every node.
        num_gpus: GPUs to use in all (0 = CPU actors). One actor per GPU unless ``num_actors`` says otherwise
            (then each actor gets ``num_gpus / num_actors``).
        num_actors: actors, each holding one model; default ``ceil(num_gpus)``, or 1 on CPU.
        cpus_per_actor: CPUs reserved per actor (CPU actors also use this many torch threads).
        batch_size: records per block (one ``compress_batch`` call, one commit).
        overwrite: replace an ``output`` left by an earlier, finished job (otherwise refused).
        progress: called with (records done, records total) after each committed block.
        address: the Ray cluster to join when Ray is not running yet.
        verbose: keep Ray's own log lines and progress bars (off: only errors).

    Raises:
        BatchInputError: bad input lines, repeated ids, an existing output without ``overwrite``, or a parts
            directory left by a job with other input or options.
        CPRSError: a wrong option (``QueryError``, ``BudgetError``, ...), before any worker starts.
        ray.exceptions.RayError: the pipeline failed (e.g. the model could not load); committed blocks stay,
            and a re-run resumes.
    """
    started = time.perf_counter()
    spec = RecordSpec(
        query_field, query, context_field, id_field, instruction, instruction_field, granularity,
        target_ratio, target_tokens, min_span_tokens, separator,
    )
    actors = num_actors if num_actors is not None else max(1, math.ceil(num_gpus))
    if actors < 1 or num_gpus < 0 or cpus_per_actor <= 0:
        raise BatchInputError(
            f"need num_actors >= 1, num_gpus >= 0 and cpus_per_actor > 0; got {actors}, {num_gpus}, {cpus_per_actor}"
        )
    gpus_per_actor = num_gpus / actors
    model_spec = ModelSpec.for_actors(model, device, dtype, window_size, gpus_per_actor, cpus_per_actor)
    store = PartStore(output)
    source = Path(input).resolve()
    if source == store.output.resolve() or store.directory.resolve() in source.parents:
        raise BatchInputError(f"the output {store.output} would replace the input {input}; write it elsewhere")
    if store.output.exists() and not store.directory.exists() and not overwrite:
        raise BatchInputError(f"{store.output} already exists; pass overwrite=True (--overwrite) to replace it")
    plan = plan_blocks(input, id_field, batch_size)
    committed = store.open(_manifest(plan, spec, model_spec, batch_size))
    pending = [block for block in plan.blocks if block.index not in committed]
    records_done = plan.records - sum(block.records for block in pending)
    if progress is not None:
        progress(records_done, plan.records)
    sizes = {block.index: block.records for block in pending}
    if pending:
        _start_ray(address, verbose)
    for index, text in _run_blocks(plan, pending, model_spec, spec, actors, gpus_per_actor, cpus_per_actor):
        store.commit(index, text)
        records_done += sizes.pop(index, 0)
        if progress is not None:
            progress(records_done, plan.records)
    records, errors = store.finish(len(plan.blocks), id_field)
    return BatchSummary(
        store.output, records, errors, len(plan.blocks), len(plan.blocks) - len(pending), time.perf_counter() - started
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cprs batch``."""
    parser.add_argument("--input", required=True, help="JSONL input, one object per line with a unique id")
    parser.add_argument("--output", required=True, help="JSONL output (parts in OUTPUT.parts/ until done)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query-field", help="field holding each record's query")
    query.add_argument("--query", help="one query for every record")
    parser.add_argument("--context-field", default="text", help="field holding the text to compress (default text)")
    parser.add_argument("--id-field", default="id", help="field holding the record's unique id (default id)")
    instruction = parser.add_mutually_exclusive_group()
    instruction.add_argument(
        "--instruction", help=f"tagging instruction for all records: a preset ({', '.join(INSTRUCTIONS)}) or free text"
    )
    instruction.add_argument("--instruction-field", help="field holding each record's instruction")
    add_output_options(parser)
    parser.add_argument("--model", help=f"checkpoint directory (on every node) or cached hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--device", help="cpu, cuda (default: cuda with --num-gpus, else cpu)")
    add_precision_options(parser)
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs to use, one actor (model) per GPU (default 0)")
    parser.add_argument("--num-actors", type=int, help="actors (models); default: one per GPU, or 1 on CPU")
    parser.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs (and CPU threads) per actor (default 1)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help=f"records per block: one compress_batch call and one commit (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if an earlier job finished it")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--progress", action="store_true", help="a progress bar over records on stderr")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own log lines and progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``cprs batch`` with parsed :func:`add_arguments` options; returns the exit status.

    SIGTERM ends it like Ctrl-C: committed blocks are kept, and a Ray instance it started is shut down.
    """
    started_ray = not ray.is_initialized()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        with _progress_bar(args.progress) as progress:
            summary = compress_jsonl(
                args.input, args.output, query_field=args.query_field, query=args.query,
                context_field=args.context_field, id_field=args.id_field, instruction=args.instruction,
                instruction_field=args.instruction_field, granularity=args.granularity,
                target_ratio=args.target_ratio, target_tokens=args.target_tokens,
                min_span_tokens=args.min_span_tokens, separator=args.separator, model=args.model,
                device=args.device, dtype=args.dtype, window_size=args.window_size, num_gpus=args.num_gpus,
                num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
                overwrite=args.overwrite, progress=progress, address=args.address, verbose=args.verbose,
            )
    except (CPRSError, OSError) as error:
        print(f"cprs batch: error: {error}", file=sys.stderr)
        return 1
    except (ray.exceptions.RayError, KeyboardInterrupt, _Terminated) as error:
        reason = "failed: " + str(error) if isinstance(error, ray.exceptions.RayError) else "interrupted"
        print(f"cprs batch: {reason}\ncommitted blocks are kept; run the same command again to resume", file=sys.stderr)
        return {KeyboardInterrupt: 130, _Terminated: 143}.get(type(error), 1)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if started_ray and ray.is_initialized():
            ray.shutdown()
    rate = summary.records / summary.seconds if summary.seconds else 0.0
    print(
        f"cprs batch: {summary.records} records ({summary.errors} with errors) -> {summary.output} in "
        f"{summary.seconds:.1f} s ({rate:.1f} records/s); {summary.resumed_blocks} of {summary.blocks} blocks "
        "were done by an earlier run"
    )
    return 0


class _Terminated(Exception):
    """SIGTERM arrived."""


def _terminate(signum: int, frame: Any) -> None:
    # stdout carries only the summary of a finished job; what Ray prints while its actors are stopped (task
    # retry warnings from the raylet) goes to stderr with the interruption message
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    raise _Terminated()


def _start_ray(address: str | None, verbose: bool) -> None:
    """Join or start Ray unless it runs; without ``verbose`` its log lines and progress bars stay off."""
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.ERROR)
    if not ray.is_initialized():
        sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(
            address=address, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
            include_dashboard=False,
        )
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)  # ray.init installs a native handler that aborts the process


def _run_blocks(
    plan: InputPlan,
    blocks: list[Block],
    model: ModelSpec,
    spec: RecordSpec,
    actors: int,
    gpus_per_actor: float,
    cpus_per_actor: float,
) -> Iterator[tuple[int, str]]:
    """(block index, output lines) of each block, as the actor pool finishes them (in no particular order)."""
    if not blocks:
        return
    rows = [{"block": block.index, "start": block.start, "end": block.end} for block in blocks]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        BlockCompressor,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        fn_constructor_kwargs={"path": str(plan.path.resolve()), "model": model, "spec": spec},
    )
    for row in dataset.iter_rows():
        yield int(row["block"]), str(row["lines"])


def _manifest(plan: InputPlan, spec: RecordSpec, model: ModelSpec, batch_size: int) -> dict[str, Any]:
    """What must not change between a job and its resumption (parallelism and devices may)."""
    return {
        "input_bytes": plan.size,
        "input_blake2b": plan.digest,
        "batch_size": batch_size,
        "options": asdict(spec),
        "model": model.model or DEFAULT_MODEL,
        "dtype": model.dtype,
        "window_size": model.window_size,
    }


def _output_line(id_field: str, record_id: Any, outcome: CompressionResult | CPRSError) -> str:
    if isinstance(outcome, CPRSError):
        row = {id_field: record_id, "result": None, "error": {"type": type(outcome).__name__, "message": str(outcome)}}
    else:
        row = {id_field: record_id, "result": outcome.to_dict(), "error": None}
    return json.dumps(row, ensure_ascii=False) + "\n"


def _text_field(record: dict[str, Any], field: str) -> str:
    if field not in record:
        raise InvalidRecordError(f"the record has no {quoted(field)} field")
    value = record[field]
    if not isinstance(value, str):
        raise InvalidRecordError(f"field {quoted(field)} must be a string, got {quoted(value)}")
    return value


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[BatchProgress | None]:
    """A tqdm bar on stderr over records, fed as a :data:`BatchProgress`; ``None`` when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc="compressing", unit="record", file=sys.stderr) as bar:
        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update

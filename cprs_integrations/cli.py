"""The ``cprs`` command line.

``cprs compress``: compress a file (or stdin) for a query, locally or on a cprs server.
``cprs serve``: serve a model over HTTP (upstream-compatible API plus ``/v1``), batching all clients together.
``cprs batch``: compress a corpus with Ray (needs ``pip install -e '.[ray]'``).

Only light modules are imported until a model is needed, so ``--help``, ``--version`` and argument errors
(ranges included) answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cprs_core.errors import CPRSError, WindowSizeError, quoted
from cprs_core.prompt import INSTRUCTIONS
from cprs_core.validation import (
    DEFAULT_MODEL,
    check_optional_int,
    check_query,
    check_server_url,
    check_settings,
    check_timeout,
)
from cprs_integrations.cli_options import add_keep_options, add_output_options, add_precision_options, keep_options

if TYPE_CHECKING:
    from cprs_core import CompressionResult, Compressor
    from cprs_core.engine import ProgressCallback

API_KEY_HELP = "the server's API key (default: $CPRS_API_KEY)"

PROGRESS_DELAY_S = 0.5
"""On a terminal, the progress bar appears only once a compression has taken this long."""


def build_parser() -> argparse.ArgumentParser:
    """The ``cprs`` parser (``batch`` takes its options from :mod:`cprs_integrations.ray_batch` when run)."""
    parser = argparse.ArgumentParser(prog="cprs", description="QwenLong-CPRS query-aware context compression.")
    parser.add_argument("--version", action="version", version=f"cprs {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = commands.add_parser(
        "compress", help="compress a text file or stdin for a query",
        description="Keep the parts of FILE (or stdin) that the critic tags for the query; print them. By default "
        "whole sentences holding tagged tokens are kept (--granularity sentence).",
    )
    compress.add_argument("file", nargs="?", default="-", help="UTF-8 text file; '-' or nothing reads piped stdin")
    compress.add_argument("-q", "--query", help="the question the kept text must answer (required)")
    compress.add_argument("--no-query", action="store_true",
                          help="compress without a question (query-free: keep what the critic tags on its own)")
    compress.add_argument(
        "-i", "--instruction",
        help=f"tagging instruction: a preset ({', '.join(INSTRUCTIONS)}; NAME-literal sends upstream's literal \\n "
             "form) or free text; default 'fact'",
    )
    add_output_options(compress)
    add_keep_options(compress)
    compress.add_argument("--format", choices=("text", "json"), default="text",
                          help="text: the kept text; json: text, spans with offsets, token counts")
    compress.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress bar on stderr (default: on a terminal, for long inputs)")
    source = compress.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"local checkpoint directory or cached hub id (default: {DEFAULT_MODEL})")
    source.add_argument("--server", metavar="URL", help="compress on a running `cprs serve` at URL instead")
    _add_local_model_options(compress)
    compress.add_argument("--timeout", type=_finite_float, default=600.0,
                          help="seconds to wait for --server (default 600)")
    compress.add_argument("--api-key", help=API_KEY_HELP)
    compress.set_defaults(handler=_compress, subparser=compress)

    serve = commands.add_parser(
        "serve", help="serve a model over HTTP",
        description="Serve upstream's /qwen_long_compress_server plus /v1/compress, /v1/compress_batch and /health; "
        "requests of all clients are batched together on the model.",
    )
    serve.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint directory or cached hub id (default: {DEFAULT_MODEL})")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all; default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8091, help="port (default 8091, as upstream)")
    _add_local_model_options(serve)
    serve.add_argument("--max-batch-requests", type=int, default=16,
                       help="requests computed at once, their windows interleaved (default 16)")
    serve.add_argument("--step-windows", type=int,
                       help="windows per forward batch: smaller is fairer to short requests (default 1 on CPU, 16 on GPU)")
    serve.add_argument("--max-wait-ms", type=_finite_float, default=10.0,
                       help="an idle server waits this long for company (default 10)")
    serve.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    serve.add_argument("--max-body-mb", type=_finite_float, default=32.0,
                       help="largest request body in MiB (default 32)")
    serve.add_argument("--request-timeout-s", type=_finite_float, default=300.0,
                       help="504 and cancel after this long (default 300)")
    serve.add_argument("--body-timeout-s", type=_finite_float, default=60.0,
                       help="408 when a request body takes longer to arrive (default 60)")
    serve.add_argument("--api-key", help=f"require this bearer key; {API_KEY_HELP}")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument("--compile", action="store_true",
                       help="torch.compile a QwenLong-CPRS critic's layers on CUDA: 15-25%% less time per request after a "
                            "first one that compiles (seconds); no effect on cprs-mini")
    serve.add_argument("--truncate-over-length", action="store_true",
                       help="compress the first 2,048,000 tokens of longer contexts, as upstream does, instead of "
                            "refusing them (results say metadata.truncated)")
    serve.set_defaults(handler=_serve)

    commands.add_parser(
        "batch", add_help=False, help="compress a corpus with Ray (pip install -e '.[ray]'; see `cprs batch --help`)",
    )
    commands.add_parser(
        "serve-ray", add_help=False,
        help="serve the same API from N Ray Serve replicas (pip install -e '.[ray]'; see `cprs serve-ray --help`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``cprs`` with ``argv`` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command in RAY_COMMANDS:
        return _ray_command(args.command, extras)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        if args.command == "compress":
            _check_compress_options(args.subparser, args)
        return args.handler(args)
    except CPRSError as error:
        print(f"cprs {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's status for SIGINT
        print(f"cprs {args.command}: interrupted", file=sys.stderr)
        return 130


def _add_local_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    add_precision_options(parser)


def _finite_float(value: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` would break timeouts and sizes far from the option)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {quoted(value)}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {quoted(value)}")
    return number


def _version() -> str:
    try:
        return version("cprs")
    except PackageNotFoundError:
        return "(not installed)"


def _api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``$CPRS_API_KEY``; an empty ``--api-key ""`` is kept (the server refuses it: falling back
    to no key would serve without one)."""
    from cprs_core.remote import API_KEY_ENV

    return args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)


def _check_compress_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors exit 2; wrong values raise their ``CPRSError`` (exit 1), all before any model loads."""
    if args.query is None and not args.no_query:
        parser.error("the following arguments are required: -q/--query (or --no-query to compress without one)")
    if args.file == "-" and (sys.stdin is None or sys.stdin.isatty()):  # None: stdin closed (`<&-`)
        parser.error("no input: give a FILE, or pipe text into stdin (e.g. `cat book.txt | cprs compress -q ... -`)")
    check_query(args.query or "", args.no_query)
    check_settings(
        args.instruction, args.granularity, args.target_ratio, args.target_tokens, args.min_span_tokens, args.separator
    )
    check_optional_int("--window-size", args.window_size, 2, WindowSizeError)
    check_timeout("--timeout", args.timeout)
    if args.server is None:
        return
    check_server_url("--server", args.server)
    local = [f"--{name.replace('_', '-')}" for name in ("device", "dtype", "window_size") if getattr(args, name)]
    if local:
        parser.error(f"{', '.join(local)} configure a local model; --server uses the server's model")
    if args.progress:
        parser.error("--progress needs a local model; a server does not report progress")


UTF8_BOM = b"\xef\xbb\xbf"
"""The byte-order mark some editors (Windows Notepad) put at the start of a UTF-8 file; not part of the text."""


def _compress(args: argparse.Namespace) -> int:
    try:
        context = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        print(f"cprs compress: error: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 1
    context = context.removeprefix(UTF8_BOM)  # as Python's "utf-8-sig": offsets count from the text's first character
    forced = keep_options(args)  # before the model loads: a --budget-tokenizer that is not one fails at once
    compressor: Compressor
    if args.server:
        from cprs_core.remote import RemoteCompressor

        compressor = RemoteCompressor(args.server, timeout=args.timeout, api_key=_api_key(args))
    else:
        from cprs_core import CPRSCompressor

        compressor = CPRSCompressor.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, window_size=args.window_size
        )
    options: dict[str, Any] = dict(
        granularity=args.granularity, target_ratio=args.target_ratio, target_tokens=args.target_tokens,
        min_span_tokens=args.min_span_tokens, separator=args.separator, allow_empty_query=args.no_query,
    )
    show = args.progress if args.progress is not None else (not args.server and sys.stderr.isatty())
    try:
        with _progress_bar(show, delay=0.0 if args.progress else PROGRESS_DELAY_S) as progress:
            if progress is not None:
                options["progress"] = progress  # only a local CPRSCompressor reports progress
            result = compressor.compress(context, args.query or "", args.instruction, **options, **forced)
    except CPRSError as error:
        print(f"cprs compress: error: {'stdin' if args.file == '-' else args.file}: {error}", file=sys.stderr)
        return 1
    return _write_output(_render(result, args.format))


def _write_output(text: str) -> int:
    """Write ``text`` to stdout; a reader that quit early (``cprs compress ... | head``) or an output encoding that
    cannot write the text (a file on Windows: cp1252) is a one-line error."""
    try:
        sys.stdout.write(text)  # encoded as a whole first: nothing is written when a character does not fit
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's flush at exit fails again
        print("cprs compress: error: the output pipe closed before all the output was written", file=sys.stderr)
        return 1
    except UnicodeEncodeError as error:
        character = error.object[error.start]
        print(
            f"cprs compress: error: the output holds {character!r} (U+{ord(character):04X}), which stdout's encoding "
            f"{error.encoding} cannot write; set PYTHONIOENCODING=utf-8 to write UTF-8",
            file=sys.stderr,
        )
        return 1
    return 0


def _render(result: CompressionResult, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"
    return result.text + "\n"


@contextmanager
def _progress_bar(enabled: bool, delay: float) -> Iterator[ProgressCallback | None]:
    """A tqdm bar on stderr fed by the engine's ``progress(windows scored, windows total)``, or ``None``."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc="compressing", unit="window", file=sys.stderr, delay=delay) as bar:
        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


def _serve(args: argparse.Namespace) -> int:
    try:
        from cprs_core import CPRSCompressor
        from cprs_integrations.server import ServerSettings, create_app, serve
    except ImportError as error:
        print(f"cprs serve needs the server extra: pip install -e '.[server]' ({error})", file=sys.stderr)
        return 1
    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be a TCP port, 0 to 65535; got {args.port}")
        settings = ServerSettings(
            max_batch_requests=args.max_batch_requests, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            step_windows=args.step_windows, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            request_timeout_s=args.request_timeout_s, body_timeout_s=args.body_timeout_s, model_name=str(args.model),
            api_key=_api_key(args),
        )
    except ValueError as error:
        print(f"cprs serve: error: {error}", file=sys.stderr)
        return 2
    compressor = CPRSCompressor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, window_size=args.window_size, compile=args.compile,
        truncate_over_length=args.truncate_over_length,
    )
    print(f"cprs serve: model {args.model} loaded; serving on http://{args.host}:{args.port}", file=sys.stderr)
    serve(create_app(compressor, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


RAY_COMMANDS = {"batch": ("ray_batch", "Compress a corpus with Ray."),
                "serve-ray": ("ray_serve", "Serve the cprs HTTP API from Ray Serve replicas.")}


def _ray_command(command: str, argv: list[str]) -> int:
    """Hand ``cprs COMMAND ARGS`` to its Ray module (imported only now: Ray is optional)."""
    module_name, description = RAY_COMMANDS[command]
    try:
        module = importlib.import_module(f"cprs_integrations.{module_name}")
    except ImportError as error:
        print(f"cprs {command} needs Ray: pip install -e '.[ray]' ({error})", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog=f"cprs {command}", description=description)
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

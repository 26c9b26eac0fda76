"""Replicated serving on Ray Serve: the ``cprs serve`` HTTP API from N replicas, one model each.

Every replica loads its own model (on its own GPU with ``num_gpus_per_replica=1``) and serves the very app of
``cprs serve`` (:func:`cprs_integrations.server.create_app`): same endpoints, same JSON, same errors, and the
same dynamic batching of concurrent requests inside each replica. Ray Serve's proxy spreads requests over the
replicas. Needs ``pip install -e '.[ray,server]'``.

From Python::

    run_serve("/models/QwenLong-CPRS-7B", num_replicas=2, num_gpus_per_replica=1, port=8091)

From a shell, through :func:`add_arguments` / :func:`run` (``cprs serve-ray ...`` where the CLI wires them)::

    python -m cprs_integrations.ray_serve --model /models/QwenLong-CPRS-7B --num-replicas 2 --num-gpus-per-replica 1
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from cprs_core import DEFAULT_MODEL
from cprs_core.remote import API_KEY_ENV

from .cli_options import add_precision_options
from .ray_model import ModelSpec
from .server import ServerSettings, create_app

APP_NAME = "cprs"
DEPLOYMENT_NAME = "CPRSReplica"
DEFAULT_PORT = 8091
"""As ``cprs serve`` (and upstream)."""


def build_app(
    model: str | None = None,
    num_replicas: int = 1,
    num_gpus_per_replica: float = 0,
    settings: ServerSettings | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    window_size: int | None = None,
    num_cpus_per_replica: float = 1,
) -> Application:
    """The Serve application: ``num_replicas`` replicas of the ``cprs serve`` app.

    Args:
        model: checkpoint directory (readable on every node) or cached hub id; ``None`` = cprs-mini.
        num_replicas: replicas, each holding one model.
        num_gpus_per_replica: GPUs reserved per replica (0 = CPU replicas).
        settings: each replica's batching, queue, size, timeout and API-key settings (:class:`ServerSettings`).
        device, dtype, window_size: as in :meth:`cprs_core.CPRSCompressor.from_pretrained`.
        num_cpus_per_replica: CPUs reserved per replica (CPU replicas use this many torch threads).

    A replica takes up to ``2 * settings.max_batch_requests`` requests at once (as many computing, their
    windows interleaved, as waiting), so it stays busy while Serve still balances load across replicas.
    """
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    replica_settings = settings or ServerSettings(model_name=model or DEFAULT_MODEL)
    spec = ModelSpec.for_actors(model, device, dtype, window_size, num_gpus_per_replica, num_cpus_per_replica)

    def replica_app() -> FastAPI:
        """Run by each replica as it starts: load its model and build the ``cprs serve`` app around it."""
        return create_app(spec.load(), replica_settings)

    deployment = serve.deployment(
        serve.ingress(replica_app)(),
        name=DEPLOYMENT_NAME,
        num_replicas=num_replicas,
        max_ongoing_requests=2 * replica_settings.max_batch_requests,
        ray_actor_options={"num_cpus": num_cpus_per_replica, "num_gpus": num_gpus_per_replica},
    )
    return deployment.bind()


def run_serve(
    model: str | None = None,
    num_replicas: int = 1,
    num_gpus_per_replica: float = 0,
    settings: ServerSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    blocking: bool = True,
    **options: Any,
) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``host:port`` and deploy :func:`build_app` there.

    Uses the running Ray instance, or starts a local one. ``options`` go to :func:`build_app` (``device``,
    ``dtype``, ``window_size``, ``num_cpus_per_replica``). With ``blocking`` the call serves until interrupted;
    without it, it returns once every replica is up (stop with ``serve.shutdown()``).
    """
    serve.start(http_options={"host": host, "port": port})
    application = build_app(model, num_replicas, num_gpus_per_replica, settings, **options)
    return serve.run(application, name=APP_NAME, route_prefix="/", blocking=blocking)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cprs serve-ray``."""
    parser.add_argument("--model", help=f"checkpoint directory (on every node) or cached hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="address of Serve's HTTP proxy (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--num-replicas", type=int, default=1, help="replicas, one model each (default 1)")
    parser.add_argument("--num-gpus-per-replica", type=float, default=0, help="GPUs per replica (default 0: CPU)")
    parser.add_argument("--num-cpus-per-replica", type=float, default=1, help="CPUs per replica (default 1)")
    parser.add_argument("--device", help="cpu, cuda (default: cuda with GPUs per replica, else cpu)")
    add_precision_options(parser)
    defaults = ServerSettings()
    parser.add_argument("--max-batch-requests", type=int, default=defaults.max_batch_requests,
                        help=f"requests computed at once per replica (default {defaults.max_batch_requests})")
    parser.add_argument("--step-windows", type=int,
                        help="windows per forward batch (default 1 on CPU, 16 on GPU)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help=f"wait for a batch to fill (default {defaults.max_wait_ms})")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help=f"waiting requests per replica before 503 (default {defaults.max_queue})")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20,
                        help=f"largest request body in MiB (default {defaults.max_body_bytes / 2**20:g})")
    parser.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s,
                        help=f"504 after this long (default {defaults.request_timeout_s})")
    parser.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s,
                        help=f"408 when a request body takes longer to arrive (default {defaults.body_timeout_s})")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on compression endpoints (env {API_KEY_ENV})")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")


def run(args: argparse.Namespace) -> int:
    """Serve with parsed :func:`add_arguments` options until interrupted; returns the exit status."""
    try:
        settings = ServerSettings(
            max_batch_requests=args.max_batch_requests, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            step_windows=args.step_windows, max_body_bytes=int(args.max_body_mb * 2**20), request_timeout_s=args.request_timeout_s,
            body_timeout_s=args.body_timeout_s, model_name=args.model or DEFAULT_MODEL, api_key=args.api_key,
        )
    except ValueError as error:
        print(f"cprs serve-ray: error: {error}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        ray.init(address=args.address)
    print(f"cprs serve-ray: {args.num_replicas} replica(s) of {settings.model_name} on http://{args.host}:{args.port}",
          file=sys.stderr)
    try:
        run_serve(
            args.model, args.num_replicas, args.num_gpus_per_replica, settings, host=args.host, port=args.port,
            device=args.device, dtype=args.dtype, window_size=args.window_size,
            num_cpus_per_replica=args.num_cpus_per_replica,
        )
    except KeyboardInterrupt:
        serve.shutdown()
        return 130
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="cprs serve-ray", description="Serve the cprs HTTP API from Ray Serve replicas.")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))

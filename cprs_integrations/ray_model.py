"""What each Ray actor (a batch worker or a Serve replica) loads: one :class:`cprs_core.CPRSCompressor`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cprs_core import CPRSCompressor


@dataclass(frozen=True)
class ModelSpec:
    """A model as every actor must load it (see :meth:`cprs_core.CPRSCompressor.from_pretrained`).

    Attributes:
        model: checkpoint directory (readable on every node) or cached hub id; ``None`` = cprs-mini.
        device: ``None`` = the actor's GPU when it was given one, else CPU (see :meth:`for_actors`).
        cpu_threads: torch threads of a CPU actor (its reserved CPUs); ``None`` leaves torch's default.
    """

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    window_size: int | None = None
    cpu_threads: int | None = None

    @classmethod
    def for_actors(
        cls,
        model: str | None,
        device: str | None,
        dtype: str | None,
        window_size: int | None,
        gpus_per_actor: float,
        cpus_per_actor: float,
    ) -> "ModelSpec":
        """The spec for actors with these resources.

        A local model path becomes absolute (actors may run in another working directory). Actors without a
        GPU run on CPU with one torch thread per reserved CPU, so actors sharing a node do not oversubscribe it.
        """
        if model is not None and Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
        on_cpu = not gpus_per_actor
        return cls(
            model,
            device or ("cpu" if on_cpu else None),
            dtype,
            window_size,
            max(1, int(cpus_per_actor)) if on_cpu else None,
        )

    def load(self) -> CPRSCompressor:
        """Load the model (call once per actor)."""
        if self.cpu_threads is not None:
            import torch

            torch.set_num_threads(self.cpu_threads)
        return CPRSCompressor.from_pretrained(self.model, device=self.device, dtype=self.dtype, window_size=self.window_size)

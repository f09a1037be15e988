"""Callbacks that test runs add on the ``gcd`` command line (``--trainer.callbacks+=probes.<Name>``, with
``tests/`` on ``PYTHONPATH``) to record what was in effect inside a training subprocess."""

from __future__ import annotations

import json

import torch
from lightning.pytorch.callbacks import Callback

_FORWARDS: list[dict] = []


def _record_forward(module, args, output) -> None:
    _FORWARDS.append(
        {
            "compiling": bool(torch.compiler.is_compiling()),
            "autocast": torch.is_autocast_enabled("cpu"),
            "dtype": str(output.dtype),
        }
    )


class SpeedProbe(Callback):
    """Writes ``out`` (JSON) when training ends: for each forward pass of the network that ran Python code (eager
    calls, and dynamo's tracing of a compiled one), whether it was being compiled, whether CPU autocast was on and
    the output dtype; dynamo's frame counters; the type of the model's compiled network."""

    def __init__(self, out: str = "speed_probe.json") -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.net.register_forward_hook(_record_forward)

    def on_train_end(self, trainer, pl_module) -> None:
        from torch._dynamo.utils import counters

        with open(self.out, "w") as handle:
            json.dump(
                {
                    "forwards": _FORWARDS,
                    "dynamo_frames": dict(counters["frames"]),
                    "compiled_net": type(pl_module.__dict__.get("_compiled_net")).__name__,
                },
                handle,
            )

"""Model options that were removed because every measurement said they hurt and no user would reach for them.

A config that names one fails in one line (``gcd fit`` / ``validate``: the key, that it was removed and why);
a checkpoint saved while the option existed holds it among its hyperparameters and still loads: the key is
dropped with a warning (``drop_retired``; ``load_model`` and ``gcd fit --ckpt_path`` do it).

- ``x0_projection`` (voxel model, removed after 0.1.0): replaced every sampling step's predicted grid by the
  nearest valid grid. It emptied few-step samples: fcc, 10 steps, 12-16 of 32 atoms, where the
  unprojected sampler kept them (``experiments/crystals/RESULTS.md``, History: projection).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RETIRED", "RetiredOption", "drop_retired", "retired_in", "retired_message"]


@dataclass(frozen=True)
class RetiredOption:
    default: Any  # the value every checkpoint saved with the option's default holds
    why: str


RETIRED: dict[str, RetiredOption] = {
    "x0_projection": RetiredOption(
        default=False,
        why="projecting every sampling step's predicted grid onto the nearest valid grid emptied few-step samples "
        "(fcc, 10 steps: 12-16 of 32 atoms; experiments/crystals/RESULTS.md, History: projection)",
    ),
}


def retired_message(key: str) -> str:
    """One line: the key, that it was removed and why, and what to do."""
    return f"model option {key!r} was removed: {RETIRED[key].why}; delete it from the config"


def retired_in(text: str) -> list[str]:
    """The retired option names that ``text`` (a parser's error message) names, in ``RETIRED``'s order."""
    return [key for key in RETIRED if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text)]


def drop_retired(hparams: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``hparams`` without the retired options, with a warning for each one present (a checkpoint from before)."""
    kept = dict(hparams)
    for key, option in RETIRED.items():
        if key not in kept:
            continue
        value = kept.pop(key)
        if value == option.default:
            note = f"it holds the default ({value!r}), so nothing changes"
        else:
            note = f"it holds {value!r}, which is ignored: samples may differ from those made when it was saved"
        warnings.warn(
            f"{source}: model option {key!r} was removed ({RETIRED[key].why}); {note}", UserWarning, stacklevel=2
        )
    return kept

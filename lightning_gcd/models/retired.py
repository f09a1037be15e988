"""Model options that were removed because every measurement said they hurt and no user would reach for them.

A config that names one fails in one line (``gcd fit`` / ``validate``: the key, that it was removed and why);
a checkpoint saved while the option existed holds it among its hyperparameters and still loads: the key is
dropped with a warning (``drop_retired``; ``load_model`` and ``gcd fit --ckpt_path`` do it).

- ``x0_projection`` (voxel model, removed after 0.1.0): replaced every sampling step's predicted grid by the
  nearest valid grid. It emptied few-step samples: fcc, 10 steps, 12-16 of 32 atoms, where the
  unprojected sampler kept them (``experiments/crystals/RESULTS.md``, History: projection).

Options that moved out of the models (``MOVED``: the applications became plug-ins, issue #29) are handled the
same way, with what to write instead:

- ``spectrum_forward_ckpt`` (after 0.1.0): the ``val/spectrum_l2`` metric is the callback
  ``lightning_gcd.spectra.SpectrumL2``; a checkpoint holding the option samples as before.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MOVED", "RETIRED", "MovedOption", "RetiredOption", "drop_retired", "retired_in", "retired_message"]


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


@dataclass(frozen=True)
class MovedOption:
    what: str  # what became of it
    instead: str  # the config to write instead


#: model options that moved out of the models
MOVED: dict[str, MovedOption] = {
    "spectrum_forward_ckpt": MovedOption(
        what="the val/spectrum_l2 metric is a callback now",
        instead="trainer.callbacks: [{class_path: lightning_gcd.spectra.SpectrumL2, init_args: {forward_ckpt: PATH}}]",
    ),
}


def retired_message(key: str) -> str:
    """One line: the key, that it was removed (and why) or moved (and where), and what to do."""
    if key in MOVED:
        return f"model option {key!r} moved out of the model: {MOVED[key].what}; replace it by {MOVED[key].instead}"
    return f"model option {key!r} was removed: {RETIRED[key].why}; delete it from the config"


def retired_in(text: str) -> list[str]:
    """The retired or moved option names that ``text`` (a parser's error message) names, retired ones first."""
    return [key for key in (*RETIRED, *MOVED) if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text)]


def drop_retired(hparams: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``hparams`` without the retired and moved options, with a warning for each one present (a checkpoint
    from before)."""
    kept = dict(hparams)
    for key, moved in MOVED.items():
        if key in kept and kept.pop(key) is not None:  # unset (the default): nothing to move, nothing to say
            value = hparams[key]
            warnings.warn(
                f"{source}: model option {key}={value!r} moved out of the model and is ignored (sampling is "
                f"unchanged): {moved.what}; to train or validate on with it, add {moved.instead}",
                UserWarning,
                stacklevel=2,
            )
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

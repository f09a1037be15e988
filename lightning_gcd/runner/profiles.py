"""A study's profiles as YAML files, parsed and composed by jsonargparse, overridable with ``--set``.

A profile is a YAML file beside its study (``experiments/crystals/profiles/quick.yaml``). Its keys are
checked against the study's schema — a mapping from each key to ``None`` (any YAML value), a type (``str``:
jsonargparse would read a free-typed string such as ``"CPU: fast"`` as YAML again) or the schema of a nested
section — so a misspelt or removed key fails in one line naming it. A section may be written
inline or as the path of another YAML file (relative to the file that names it): that is how the
grain-boundary profiles take the crystal study's model sections, by reference, and how both crystal
profiles share one convergence budget. jsonargparse does the parsing and the composition (``ActionParser``
per section); a key the file does not give is absent from the result, never a default filled in here.

``--set KEY=VALUE`` overrides are applied to the loaded dict (``apply_overrides``): dotted keys reach into
sections, VALUE is parsed as JSON when it can be (``--set voxel.model.channel_mults=[1,2,2]``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Schema", "apply_overrides", "load_profile", "profile_names", "profile_path", "set_path"]

#: each key of a profile (or of a section) -> None (any value), a type, or the schema of a nested section
Schema = Mapping[str, "Schema | type | None"]


def _parser(schema: Schema):
    from jsonargparse import ActionParser, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    for key, section in schema.items():
        if section is None or isinstance(section, type):
            parser.add_argument(f"--{key}", type=section or Any, default=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{key}", action=ActionParser(parser=_parser(section)))
    return parser


def _plain(value: Any) -> Any:
    """jsonargparse's result as plain dicts and lists, without the ``__path__`` of each composed file."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_profile(path: str | Path, schema: Schema) -> dict[str, Any]:
    """The profile in ``path`` (its sections given by reference read in), checked against ``schema``."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"profile {path}: no such file")
    try:
        namespace = _parser(schema).parse_path(str(path))
    except (argparse.ArgumentError, ValueError, TypeError) as err:
        raise SystemExit(f"profile {path}: {str(err).splitlines()[0]}") from None
    return _plain(namespace.as_dict())


def profile_names(folder: str | Path) -> list[str]:
    """The profiles a study ships: the ``*.yaml`` files directly in its ``profiles`` folder, by name."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def profile_path(folder: str | Path, profile: str) -> Path:
    """``--profile``: a shipped profile's name (``quick`` -> ``<folder>/quick.yaml``) or a YAML file's path."""
    named = Path(folder) / f"{profile}.yaml"
    if named.is_file():
        return named
    if profile.endswith((".yaml", ".yml")):
        return Path(profile)
    raise SystemExit(f"--profile {profile}: not one of {', '.join(profile_names(folder))}, nor a YAML file")


def set_path(settings: dict[str, Any], key: str, raw: str) -> None:
    """``settings[k1][k2]... = value`` for the dotted ``key``; ``raw`` parsed as JSON when it can be, else kept
    as the string (sections that do not exist yet are created)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = settings
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def apply_overrides(settings: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """Each ``KEY=VALUE`` of ``--set`` applied to ``settings`` in turn (see ``set_path``); returns ``settings``."""
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        set_path(settings, key.strip(), raw)
    return settings

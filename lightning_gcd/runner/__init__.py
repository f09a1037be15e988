"""The experiment runner: what every study under ``experiments/`` shares, and nothing about any one study.

- ``runner.trainer``: a Lightning ``Trainer`` from a study's settings (one builder, the studies' defaults:
  one device, no logger, no progress bar, no validation unless asked), resumable checkpointing, quiet logs.
- ``runner.jobs``: independent runs as worker processes, a few at a time, each with its own log; a failed
  worker is named in one line with its log, the others' results are kept.
- ``runner.results``: atomic figures, the lock under which processes merge into one results folder, and
  reading results and curves back.
- ``runner.profiles``: a study's profiles as YAML files, parsed and composed by jsonargparse (a section may
  be the path of another YAML file), with ``--set KEY=VALUE`` overrides.
- ``runner.machine``: the machine a run ran on, for its results file.

Atomic JSON and text writes are ``lightning_gcd.io``'s. Helpers that belong to one application but serve
several study scripts are in ``lightning_gcd.studies``. A study script imports the package and this runner,
never another script: the scripts run as files (``python experiments/crystals/compare.py``), with no
``sys.path`` edits. See docs/studies.md.
"""

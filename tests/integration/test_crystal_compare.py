"""experiments/crystals/compare.py end to end on one phase with a tiny budget: results.json, results.md, PNGs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "experiments" / "crystals" / "compare.py"
FEW_STEP = REPO / "experiments" / "crystals" / "few_step.py"


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"crystals_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_compare():
    return _load_script(SCRIPT)


TINY = [
    "--phases",
    "fcc",
    "--steps",
    "20",
    "--samples",
    "2",
    "--count",
    "12",
    "--batch-size",
    "4",
    "--voxel-sample-steps",
    "4",
    "--particle-sample-steps",
    "4",
    "--particle-sampler",
    "pc",
    "--extra-samplers",
    "voxel:ddim-3",
    "voxel:ddpm-4+r1@0.5",
    "--set",
    "voxel.model.base_channels=8",
    "--set",
    "particle.model.hidden=16",
    "--set",
    "particle.model.layers=1",
    "--set",
    "particle_torus.model.hidden=16",
    "--set",
    "particle_torus.model.layers=1",
    "--set",
    "particle_torus.model.frequencies=4",
    "--set",
    "particle_torus.sample_steps=4",
    "--supercell-samples",
    "1",
    "--threads",
    "1",
    "--quiet",
]

RUN_FIELDS = (
    "phase_match",
    "phase_match_strict",
    "displacement_rms",
    "displacement_rms_strict",
    "rdf_l1",
    "n_atoms_mean",
    "n_atoms_error",
    "n_atoms_target",
    "n_atoms_hist",
    "min_distance_violations",
    "train_seconds",
    "sample_seconds",
    "steps",
    "batch_size",
    "sampler",
    "sample_steps",
    "parameters",
)


def test_compare_one_phase_end_to_end(tmp_path: Path) -> None:
    compare = _load_compare()
    out = tmp_path / "results"
    # the quick profile's two worker processes (one per run), each logging its own offline W&B run
    returned = compare.main([*TINY, "--workdir", str(tmp_path / "work"), "--out", str(out), "--wandb"])
    tasks = tmp_path / "work" / "tasks"
    assert sorted(p.name for p in tasks.glob("*.json")) == [
        "fcc-particle.json",
        "fcc-particle_torus.json",
        "fcc-voxel.json",
    ]
    runs = sorted((tmp_path / "work" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and all(list(r.glob("*.wandb")) for r in runs)
    assert (tasks / "fcc-voxel" / "rdf_fcc.png").is_file()  # the plots that worker's W&B run logged

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["profile"] == "quick" and results["settings"]["steps"] == 20
    for key in ("platform", "cpu_count", "torch", "torch_threads", "date"):
        assert key in results["machine"], key
    assert results["machine"]["torch_threads"] == 1
    fcc = results["phases"]["fcc"]
    assert fcc["element"] == "Cu"
    data = fcc["data"]
    assert data["n_atoms"] == 32 and data["phase_match"] == 1.0
    assert 0.03 < data["displacement_rms"] < 0.15  # σ = 0.05 Å per component: about σ√3
    # the torus model's headline budget is convergence: at equal steps its key says so
    assert set(fcc["models"]) == {"voxel", "particle", "particle_torus@steps"}
    for kind, run in fcc["models"].items():
        missing = [f for f in RUN_FIELDS if f not in run]
        assert not missing, f"{kind}: missing {missing}"
        assert run["steps"] == 20 and run["batch_size"] == 4, kind  # the same budget for both models
        assert sum(run["n_atoms_hist"].values()) == 2, kind
        assert 0.0 <= run["phase_match"] <= 1.0 and run["phase_match_strict"] <= run["phase_match"]
        assert run["train_seconds"] > 0 and run["sample_seconds"] > 0
    assert fcc["models"]["particle"]["n_atoms_hist"] == {"32": 2}  # the particle model's count is fixed
    torus = fcc["models"]["particle_torus@steps"]
    assert torus["n_atoms_hist"] == {"32": 2} and torus["budget"] == "steps" and torus["model"] == "particle_torus"
    assert torus["network_evaluations"] == 8  # predictor-corrector: two calls per level
    assert fcc["models"]["particle"]["network_evaluations"] == 8
    assert "tied to the training cell" in torus["supercell"]["na"]  # all pairs: no supercell
    big = fcc["models"]["voxel"]["supercell"]  # twice the cell: matched against the 2x2x2 ideal crystal (256 atoms)
    assert big["n_samples"] == 1 and big["n_atoms_target"] == 256 and 0.0 <= big["overlap_fraction"] <= 1.0
    assert fcc["models"]["particle"]["sampler"] == "pc" and fcc["models"]["voxel"]["sampler"] == "ddpm"
    variants = fcc["models"]["voxel"]["variants"]  # the same trained model, another sampler
    # without a suffix a variant keeps the profile's restart sampling (quick: 2 restarts back to 0.5 T)
    assert [(v["sampler"], v["sample_steps"], v["restarts"]) for v in variants] == [("ddim", 3, 2), ("ddpm", 4, 1)]
    # a restart back to 0.5 T repeats the chain's steps at or below it: 2 of DDPM-4's (999, 666, 333, 0)
    assert variants[1]["restart_t"] == 0.5 and variants[1]["network_evaluations"] == 4 + 2
    voxel = fcc["models"]["voxel"]
    assert voxel["restarts"] == 2 and voxel["network_evaluations"] == 4 + 2 * 2
    assert all(f in variants[0] for f in ("phase_match", "phase_match_strict", "displacement_rms", "n_atoms_hist"))
    assert fcc["models"]["particle"]["variants"] == []
    assert returned["phases"]["fcc"]["models"]["voxel"]["steps"] == 20

    md = (out / "results.md").read_text()
    assert "| phase | model | match 0.5 Å | match 0.2 Å |" in md
    assert md.count("| fcc Cu |") == 6  # training data, voxel (three samplers), particle, torus rows
    assert "particle (torus VE + all-pairs Fourier net) [equal steps, 20 steps], PC-4" in md
    assert "↳ same model, DDPM-4 +1 restarts @0.5T" in md and "GCDM voxel, DDPM-4 +2 restarts @0.5T" in md

    for name in ("phase_match.png", "rdf_fcc.png", "n_atoms_fcc.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # --replot rewrites the table and figures from the saved results, with notes
    (out / "rdf_fcc.png").unlink()
    compare.main(["--replot", "--out", str(out), "--note", "a measured remark"])
    assert "- a measured remark" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["notes"] == ["a measured remark"]
    assert (out / "rdf_fcc.png").is_file()
    assert Path(fcc["models"]["voxel"]["checkpoint"]).is_file()

    # the few-step study on the same work folder: the first sampler is the reference
    few_step = _load_script(FEW_STEP)
    few = few_step.main(
        [
            "--workdir",
            str(tmp_path / "work"),
            "--samplers",
            "ddpm-4",
            "dpm2m-sde-2@logsnr",
            "--samples",
            "2",
            "--out",
            str(tmp_path / "few"),
        ]
    )
    runs = few["phases"]["fcc"]["samplers"]
    assert runs["dpm2m-sde-2@logsnr"]["spacing"] == "logsnr" and "x0_projection" not in runs["ddpm-4"]
    assert few["summary"]["dpm2m-sde-2@logsnr"]["nfe_saving"] == 2.0
    assert json.loads((tmp_path / "few" / "few_step.json").read_text())["samplers"] == list(runs)
    assert (tmp_path / "few" / "few_step.png").read_bytes()[:4] == b"\x89PNG"
    assert few_step.parse_sampler("ddim-10@quadratic") == ("ddim", 10, "quadratic", (0, 0.3))
    assert few_step.parse_sampler("ddpm-10@logsnr+r2@0.4") == ("ddpm", 10, "logsnr", (2, 0.4))
    with pytest.raises(SystemExit, match=r"\+project \(x0_projection\) was removed: .*emptied few-step samples"):
        few_step.parse_sampler("ddpm-10@logsnr+project+r2@0.4")
    with pytest.raises(SystemExit, match="SAMPLER-STEPS"):
        few_step.parse_sampler("ddpm-10+proj")
    with pytest.raises(SystemExit, match="restart suffix"):
        few_step.parse_sampler("ddpm-10+r2")  # a restart needs its level


def test_profiles_and_overrides() -> None:
    compare = _load_compare()
    parser = compare.build_parser()
    quick = compare.resolve_settings(parser.parse_args([]))
    paper = compare.resolve_settings(parser.parse_args(["--profile", "paper"]))
    assert quick["phases"] == ["sc", "fcc", "bcc", "hcp", "diamond"]
    assert quick["models"] == ["voxel", "particle", "particle_torus"]
    assert quick["accelerator"] == "cpu" and paper["accelerator"] == "auto"
    assert quick["jobs"] == 2 and paper["jobs"] == 1  # one run per core on the CPU, one at a time on the GPU
    assert compare.resolve_settings(parser.parse_args(["--jobs", "1"]))["jobs"] == 1
    assert paper["steps"] > quick["steps"] and paper["samples"] > quick["samples"]
    s = compare.resolve_settings(
        parser.parse_args(
            ["--steps", "7", "--set", "particle.model.hidden=8", "--set", "voxel.model.channel_mults=[1,2,2]"]
        )
    )
    assert (
        s["steps"] == 7 and s["particle"]["model"]["hidden"] == 8 and s["voxel"]["model"]["channel_mults"] == [1, 2, 2]
    )
    with pytest.raises(SystemExit):
        compare.resolve_settings(parser.parse_args(["--samples", "0"]))
    assert compare.parse_variant("voxel:ddpm-100+r0") == ("voxel", "ddpm", 100, (0, 0.3))
    assert compare.parse_variant("voxel:ddim-50") == ("voxel", "ddim", 50, None)
    for bad in ("particle:pc-10+r1@0.3", "voxel:ddpm-100+r2@1.5"):
        with pytest.raises(SystemExit):
            compare.parse_variant(bad)
    # the voxel offsets are blended at the data's thermal scale, which --sigma moves along
    assert quick["voxel"]["model"]["offset_prediction"] == "blend"
    assert quick["voxel"]["model"]["offset_sigma_data"] == quick["thermal_sigma"]
    cold = compare.resolve_settings(parser.parse_args(["--sigma", "0.02"]))
    assert cold["thermal_sigma"] == 0.02 and cold["voxel"]["model"]["offset_sigma_data"] == 0.02


def test_compare_serial_path(tmp_path: Path) -> None:
    """``--jobs 1`` (the paper profile's GPU setting) trains in this process, one run after another."""
    compare = _load_compare()
    out = tmp_path / "results"
    results = compare.main(
        [
            *TINY,
            "--models",
            "voxel",
            "--steps",
            "5",
            "--samples",
            "1",
            "--extra-samplers",
            "--jobs",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert not (tmp_path / "work" / "tasks").exists()
    run = results["phases"]["fcc"]["models"]["voxel"]
    assert run["steps"] == 5 and sum(run["n_atoms_hist"].values()) == 1 and run["variants"] == []
    assert json.loads((out / "results.json").read_text())["settings"]["jobs"] == 1


def test_a_failed_worker_is_named_and_the_other_runs_are_kept(tmp_path: Path) -> None:
    compare = _load_compare()
    out = tmp_path / "results"
    with pytest.raises(SystemExit, match=r"fcc-particle: worker exited with 1; log .*fcc-particle\.log"):
        compare.main(
            [
                *TINY,
                "--steps",
                "2",
                "--samples",
                "1",
                "--extra-samplers",
                "--set",
                "particle.model.lr=-1",
                "--workdir",
                str(tmp_path / "work"),
                "--out",
                str(out),
            ]
        )
    results = json.loads((out / "results.json").read_text())
    assert list(results["phases"]["fcc"]["models"]) == ["voxel", "particle_torus@steps"]
    assert "Traceback" in (tmp_path / "work" / "tasks" / "fcc-particle.log").read_text()


def test_budgets_wall_time_and_convergence_merge_into_one_results_file(tmp_path: Path) -> None:
    """Equal steps, then the voxel model's wall time, then a convergence run stopped after a chunk and resumed:
    all in one results.json under their keys; the resumed run continues its validation history."""
    compare = _load_compare()
    out, work = tmp_path / "results", tmp_path / "work"
    base = [
        *TINY,
        "--phases",
        "sc",
        "--samples",
        "2",
        "--extra-samplers",
        "--supercell-samples",
        "0",
        "--jobs",
        "1",
        "--workdir",
        str(work),
        "--out",
        str(out),
    ]
    compare.main([*base, "--models", "voxel", "particle_torus", "--steps", "6"])
    with pytest.raises(SystemExit, match="run voxel with steps"):
        compare.main([*base, "--models", "voxel", "--budget", "walltime", "--merge"])
    # the budget: the time the voxel model takes for the profile's steps (6 here, as above)
    compare.main([*base, "--models", "particle_torus", "--budget", "walltime", "--merge", "--steps", "6"])
    converge = [
        *base,
        "--models",
        "particle_torus",
        "--budget",
        "converge",
        "--merge",
        "--set",
        "particle_torus.converge.steps.sc=12",
        "--set",
        "particle_torus.converge.val_every=3",
        "--set",
        "particle_torus.converge.val_samples=2",
        "--set",
        "particle_torus.converge.window=2",
        "--set",
        "particle_torus.converge.standard_errors=-1",  # never plateaus: runs to the cap
        "--save-weights",
        str(tmp_path / "weights"),
    ]
    with pytest.raises(SystemExit, match="chunk ended at step"):
        compare.main([*converge, "--chunk-minutes", "0.0001"])
    last = work / "runs" / "sc-particle_torus" / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (work / "runs" / "sc-particle_torus" / "finished.json").exists()
    compare.main(converge)
    results = json.loads((out / "results.json").read_text())
    models = results["phases"]["sc"]["models"]
    assert list(models) == ["voxel", "particle_torus@steps", "particle_torus@walltime", "particle_torus"]
    voxel, wall = models["voxel"], models["particle_torus@walltime"]
    budget = wall["wall_time"]  # both speeds timed in turn in that run; the budget is the voxel model's 6 steps
    assert budget["voxel_steps"] == voxel["steps"] == 6 and wall["budget"] == "walltime"
    assert [len(t) for t in budget["timings"].values()] == [2, 2]
    assert budget["voxel_seconds_per_step"] == min(budget["timings"]["voxel"])
    assert budget["seconds_per_step"] == min(budget["timings"]["particle_torus"])
    ratio = budget["voxel_seconds_per_step"] / budget["seconds_per_step"]
    assert wall["steps"] == budget["steps"] == max(1, round(6 * ratio))
    run = models["particle_torus"]
    assert run["budget"] == "converge" and run["steps"] == 12 and run["batch_size"] == 32
    history = run["convergence"]["validations"]
    assert [v["step"] for v in history] == [3, 6, 9, 12]  # the chunk's stray validation is not counted
    assert run["convergence"]["stopped"] == "step cap"
    budgets = [m["command"][m["command"].index("--budget") + 1] for m in results["merged"]]
    assert budgets == ["walltime", "converge"]  # the invocations that added runs (the chunk added none)
    from lightning_gcd.models.loading import load_model

    slim = tmp_path / "weights" / "sc-particle_torus.ckpt"
    assert slim.stat().st_size < last.stat().st_size  # no optimiser state
    assert (
        load_model(slim)
        .sample(load_model(slim).sample_template(1), steps=2, progress=False)[0]
        .get_chemical_symbols()[0]
        == "Po"
    )


def test_an_equal_steps_run_resumes_after_a_chunk_and_refuses_other_settings(tmp_path: Path) -> None:
    """An equal-steps run stopped after a chunk continues from its last.ckpt to the profile's steps; rerun, it
    samples again without training; a checkpoint made with other settings is not resumed."""
    compare = _load_compare()
    out, work = tmp_path / "results", tmp_path / "work"
    base = [*TINY, "--models", "voxel", "--extra-samplers", "--supercell-samples", "0", "--jobs", "1"]
    base += ["--workdir", str(work), "--out", str(out)]
    with pytest.raises(SystemExit, match="chunk ended at step"):
        compare.main([*base, "--chunk-minutes", "0.0001"])
    run = work / "runs" / "fcc-voxel"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "finished.json").exists()
    compare.main(base)
    finished = json.loads((run / "finished.json").read_text())
    first = json.loads((out / "results.json").read_text())["phases"]["fcc"]["models"]["voxel"]
    assert finished["steps"] == first["steps"] == 20
    compare.main(base)  # trained already: sampled again, same training record
    again = json.loads((out / "results.json").read_text())["phases"]["fcc"]["models"]["voxel"]
    assert again["train_seconds"] == first["train_seconds"] and again["steps"] == 20
    with pytest.raises(SystemExit, match=r"holds a run with other settings \(batch_size\)"):
        compare.main([*base, "--batch-size", "2"])


def test_a_results_folder_written_before_the_runner_is_replotted_and_merged_into(tmp_path: Path) -> None:
    """The shipped results.json and curves.json (written by compare.py before the runner and the YAML profiles)
    are read back: --replot redraws them, and --merge adds a run beside the earlier ones, which stay."""
    shipped = REPO / "experiments" / "crystals" / "results"
    out = tmp_path / "results"
    out.mkdir()
    for name in ("results.json", "curves.json"):
        (out / name).write_bytes((shipped / name).read_bytes())
    before = json.loads((out / "results.json").read_text())
    compare = _load_compare()
    compare.main(["--replot", "--out", str(out)])
    assert (out / "results.md").is_file() and (out / "rdf_sc.png").read_bytes()[:4] == b"\x89PNG"
    compare.main(
        [
            *TINY,
            "--models",
            "voxel",
            "--steps",
            "2",
            "--samples",
            "1",
            "--extra-samplers",
            "--supercell-samples",
            "0",
            "--jobs",
            "1",
            "--merge",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    after = json.loads((out / "results.json").read_text())
    assert after["settings"] == before["settings"] and len(after["merged"]) == len(before["merged"]) + 1
    assert after["phases"]["fcc"]["models"]["voxel"]["steps"] == 2
    for phase, entry in before["phases"].items():  # every earlier run is still there, unchanged but fcc-voxel
        for key, run in entry["models"].items():
            assert (phase, key) == ("fcc", "voxel") or after["phases"][phase]["models"][key] == run


def test_the_phase_match_figure_gives_each_bar_its_steps_where_a_series_trained_for_different_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A convergence series stops at a different step on each phase: its legend must not name one phase's
    steps for all of them, and each of its bars says its own under the axis."""
    compare = _load_compare()
    shipped = json.loads((REPO / "experiments" / "crystals" / "results" / "results.json").read_text())
    figures = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path, dpi: figures.append(fig))
    compare.plot_phase_match(shipped, tmp_path / "phase_match.png")
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    torus = [shipped["phases"][p]["models"]["particle_torus"]["steps"] for p in shipped["phases"]]
    assert len(set(torus)) > 1  # the shipped convergence runs stopped at different steps
    converge = [t for t in legend if "to convergence" in t]
    assert converge and all("steps below the bars" in t and str(torus[0]) not in t for t in converge)
    under_axis = {t.get_text() for t in ax.texts if t.get_position()[1] < 0}
    assert {f"{round(s / 1000, 1):g}k" for s in torus} <= under_axis
    voxel = [t for t in legend if t.startswith("GCDM voxel")]
    assert voxel and all("steps" not in t for t in voxel)  # the equal-steps model keeps its plain name

"""Launchers in docker/: the SLURM template and its renderer, torchrun.sh, the Dockerfile (text checks; no
Docker engine in CI), and `gcd fit` under a SLURM-style environment, through the rendered job script too.

Every subprocess runs in a tmp folder with a clean environment (no SLURM_*/torchelastic variables from
the machine running the tests), so nothing is written into the repository.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

DOCKER = REPO / "docker"
RENDER = DOCKER / "slurm" / "render.py"
TEMPLATE = DOCKER / "slurm" / "gcd_fit.sbatch.template"
SMOKE = REPO / "experiments" / "smoke" / "voxel.yaml"
QUICK_FIT = [
    "--trainer.max_epochs",
    "1",
    "--model.init_args.val_samples",
    "0",
    "--trainer.enable_progress_bar",
    "false",
]
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
)


def load_render():
    spec = importlib.util.spec_from_file_location("gcd_slurm_render", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without scheduler/launcher variables, one thread, the venv's bin first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SRUN_", "SBATCH_", "TORCHELASTIC_")) and k not in LAUNCHER_VARS
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.update(extra)
    return env


def slurm_env(**extra: str) -> dict[str, str]:
    """What srun sets for task 0 of a one-node, one-task job (job name not 'bash'/'interactive')."""
    job_id = str(random.randint(10000, 99999))  # Lightning's DDP port is 15000 + the job id's last 4 digits
    variables = dict(
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="gcd",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
        SLURM_JOB_NODELIST="localhost",
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_CPUS_PER_TASK="1",
    )
    return clean_env(**{**variables, **extra})


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def render(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(RENDER), "--workdir", str(tmp_path), *args], cwd=tmp_path)


def fake_slurm_bin(tmp_path: Path) -> Path:
    """`srun` that drops its own options and runs the command (or logs it); `scontrol` that logs and SIGTERMs."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [ $# -gt 0 ] && [[ "$1" == -* ]]; do shift; done\n'
        'if [ -n "${FAKE_SRUN_LOG:-}" ]; then printf "%s\\n" "$@" > "$FAKE_SRUN_LOG"; exit 0; fi\nexec "$@"\n'
    )
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$FAKE_SCONTROL_LOG"\nkill -TERM "$PPID"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("runs/**/*.ckpt"))


# ---------------------------------------------------------------------------------------------- render
def test_render_two_nodes_four_gpus(tmp_path: Path) -> None:
    res = render(
        tmp_path,
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "gpu",
        "--config",
        "experiments/quickstart.yaml",
        "--run-name",
        "qs-2x4",
        "--venv",
        "/opt/venvs/gcd",
        "--sbatch=--account=abc",
        "--",
        "--trainer.max_steps",
        "1000",
    )
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert "{{" not in script
    for directive in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--signal=SIGUSR1@90",
        "--requeue",
        "--job-name=qs-2x4",
        "--partition=gpu",
        f"--chdir={tmp_path}",
        "--account=abc",
    ):
        assert f"#SBATCH {directive}\n" in script, directive
    # sbatch reads directives only up to the first command
    header = script.split("\nset -euo pipefail", 1)[0]
    assert header.count("#SBATCH") == script.count("#SBATCH")
    command = " ".join(line.rstrip("\\").strip() for line in script.split("\nsrun ", 1)[1].splitlines())
    for piece in (
        "gcd fit",
        "--config experiments/quickstart.yaml",
        "--run_name qs-2x4",
        '--trainer.num_nodes "${SLURM_NNODES}"',
        "--trainer.devices 4",
        "--trainer.strategy ddp",
        "--trainer.accelerator gpu",
        "--trainer.max_steps 1000",
    ):
        assert piece in command, piece
    assert "source /opt/venvs/gcd/bin/activate" in script
    job = tmp_path / "job.sbatch"
    job.write_text(script)
    syntax = run(["bash", "-n", str(job)], cwd=tmp_path)
    assert syntax.returncode == 0, syntax.stderr


def test_render_containers(tmp_path: Path) -> None:
    base = ["--nodes", "1", "--gpus-per-node", "8", "--partition", "p", "--config", "c.yaml", "--run-name", "r"]
    pyxis = render(tmp_path, *base, "--pyxis", "registry#lightning-gcd:0.1.0")
    assert pyxis.returncode == 0, pyxis.stderr
    assert "--container-image='registry#lightning-gcd:0.1.0'" in pyxis.stdout
    apptainer = render(tmp_path, *base, "--apptainer", "gcd.sif", "--container-mount", "/scratch")
    assert apptainer.returncode == 0, apptainer.stderr
    assert f"apptainer exec --nv --bind {tmp_path},/scratch --pwd {tmp_path} gcd.sif gcd fit" in apptainer.stdout
    both = render(tmp_path, *base, "--pyxis", "a", "--venv", "b")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_template_placeholders_match_renderer() -> None:
    module = load_render()
    args = module.build_parser().parse_args(
        ["--nodes", "1", "--gpus-per-node", "1", "--partition", "p", "--config", "c.yaml", "--run-name", "r"]
    )
    args.extra = []
    assert module.placeholders(TEMPLATE.read_text()) == set(module.build_values(args))


def test_render_refuses_unknown_and_unfilled_placeholders(tmp_path: Path) -> None:
    module = load_render()
    with pytest.raises(module.RenderError, match=r"unknown placeholder.*\{\{bogus\}\}"):
        module.render("#SBATCH --nodes={{nodes}}\necho {{bogus}}\n", {"nodes": "2"})
    with pytest.raises(module.RenderError, match="not in the template: extra"):
        module.render("{{nodes}}", {"nodes": "2", "extra": "x"})
    with pytest.raises(module.RenderError, match="no value"):
        module.render("{{nodes}}", {"nodes": None})
    with pytest.raises(module.RenderError, match="malformed"):
        module.render("{{nodes}} {{ not-a-name }}", {"nodes": "2"})

    custom = tmp_path / "custom.template"
    custom.write_text(TEMPLATE.read_text() + "#{{bogus}}\n")
    base = [
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "p",
        "--config",
        "c.yaml",
        "--run-name",
        "r",
        "--template",
        str(custom),
    ]
    res = render(tmp_path, *base)
    assert res.returncode == 2 and "{{bogus}}" in res.stderr and res.stdout == ""
    res = render(tmp_path, *base, "--set", "bogus=filled")
    assert res.returncode == 0 and "#filled\n" in res.stdout
    res = render(tmp_path, *base[:-2], "--set", "bogus=x")  # the standard template has no {{bogus}}
    assert res.returncode == 2 and "not in the template: bogus" in res.stderr
    missing = render(tmp_path, "--gpus-per-node", "4", "--partition", "p", "--config", "c.yaml", "--run-name", "r")
    assert missing.returncode == 2 and "--nodes" in missing.stderr


@pytest.mark.parametrize(
    "option, value",
    [
        ("--run-name", "my run"),
        ("--run-name", "a/b"),
        ("--time", "soon"),
        ("--partition", "gpu;rm"),
        ("--nodes", "0"),
        ("--sbatch", "--x=a b"),
        ("--job-name", "interactive"),
    ],
)
def test_render_rejects_unsafe_values(tmp_path: Path, option: str, value: str) -> None:
    args = {"--nodes": "2", "--gpus-per-node": "4", "--partition": "p", "--config": "c.yaml", "--run-name": "r"}
    args[option] = value
    res = render(tmp_path, *[f"{k}={v}" for k, v in args.items()])
    assert res.returncode == 2, res.stdout
    assert res.stdout == ""


# ------------------------------------------------------------------------------------- torchrun, docker
def test_torchrun_script_syntax(tmp_path: Path) -> None:
    res = run(["bash", "-n", str(DOCKER / "torchrun.sh")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = (DOCKER / "torchrun.sh").read_text()
    assert "--rdzv-backend c10d" in text and "-m lightning_gcd.cli fit" in text


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_dockerfile_sanity() -> None:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # Python 3.10 (the package allows it): tomli, which pip vendors, is the same parser
        from pip._vendor import tomli as tomllib

    instructions = _dockerfile_instructions()
    froms = [rest for key, rest in instructions if key == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "pytorch/pytorch", froms[0]
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime", tag)
    assert match, f"FROM must pin a pytorch/pytorch:<torch>-cuda<x>-cudnn<y>-runtime tag, got {tag!r}"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_spec = next(d for d in project["dependencies"] if re.match(r"torch\b", d))
    low, high = re.fullmatch(r"torch>=([\d.]+),<([\d.]+)", torch_spec).groups()
    assert _version(low) <= _version(match.group(1)) < _version(high), (tag, torch_spec)

    entrypoints = [rest for key, rest in instructions if key == "ENTRYPOINT"]
    assert entrypoints == ['["gcd"]']
    users = [rest for key, rest in instructions if key == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(key == "WORKDIR" for key, _ in instructions)
    env = " ".join(rest for key, rest in instructions if key == "ENV")
    for name in ("WANDB_DIR", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "PIP_CONSTRAINT"):
        assert f"{name}=" in env, name

    runs = [rest for key, rest in instructions if key == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert any("--no-deps /opt/lightning_gcd" in r for r in installs), "the package must be installed with --no-deps"
    dep_install = next(r for r in installs if "--no-deps" not in r)
    listed = sorted(re.findall(r'"([^"]+)"', dep_install))
    expected = sorted(d for d in project["dependencies"] if not re.match(r"torch\b", d))
    assert listed == expected, "Dockerfile dependency list and pyproject.toml differ"
    assert not any(re.search(r"\btorch[=<>\s\"]", r) for r in installs), "no pip install may name torch"
    # every COPY source exists (the build context is the repository root)
    for key, rest in instructions:
        if key == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source


# ---------------------------------------------------------------------------------- SLURM environment
PROBE = """
import os
import lightning
from lightning.fabric.plugins.environments import SLURMEnvironment

def environment():
    trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    return type(trainer._accelerator_connector.cluster_environment).__name__

print(SLURMEnvironment.detect(), environment())
os.environ["SLURM_JOB_NAME"] = "interactive"  # an interactive allocation is not a SLURM-managed job
print(SLURMEnvironment.detect(), environment())
"""


def test_lightning_detects_slurm_environment(tmp_path: Path) -> None:
    res = run([sys.executable, "-c", PROBE], cwd=tmp_path, env=slurm_env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "SLURMEnvironment", "False", "LightningEnvironment"]


def test_gcd_fit_under_slurm_environment(tmp_path: Path) -> None:
    res = run(
        [sys.executable, "-m", "lightning_gcd.cli", "fit", "--config", str(SMOKE), *QUICK_FIT],
        cwd=tmp_path,
        env=slurm_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SLURM auto-requeueing enabled" in res.stdout + res.stderr
    assert checkpoints(tmp_path), "no checkpoint under runs/"


def test_rendered_job_script_runs_gcd_fit(tmp_path: Path) -> None:
    """The rendered script itself, with a stand-in `srun`: DDP (gloo, one rank) under SLURMEnvironment."""
    res = render(
        tmp_path,
        "--nodes",
        "1",
        "--gpus-per-node",
        "1",
        "--cpus-per-task",
        "1",
        "--partition",
        "debug",
        "--accelerator",
        "cpu",
        "--config",
        str(SMOKE),
        "--run-name",
        "slurm-smoke",
        "--out",
        "job.sbatch",
        "--",
        *QUICK_FIT,
    )
    assert res.returncode == 0, res.stderr
    bin_dir = fake_slurm_bin(tmp_path)
    env = slurm_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    job = run(["bash", "job.sbatch"], cwd=tmp_path, env=env, timeout=180)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-3000:]
    assert "SLURM auto-requeueing enabled" in output
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/1" in output
    assert (tmp_path / "runs" / "slurm-smoke" / "checkpoints" / "last.ckpt").exists()


def test_rendered_job_script_resumes_from_newest_requeue_checkpoint(tmp_path: Path) -> None:
    res = render(
        tmp_path,
        "--nodes",
        "1",
        "--gpus-per-node",
        "1",
        "--partition",
        "p",
        "--config",
        "c.yaml",
        "--run-name",
        "r",
        "--out",
        "job.sbatch",
    )
    assert res.returncode == 0, res.stderr
    bin_dir = fake_slurm_bin(tmp_path)
    env = slurm_env(FAKE_SRUN_LOG=str(tmp_path / "srun.log"))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    last, hpc1, hpc2 = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt", run_dir / "hpc_ckpt_2.ckpt"
    now = time.time()

    def command(*files: tuple[Path, float]) -> list[str]:
        for path, age in files:
            path.write_bytes(b"")
            os.utime(path, (now - age, now - age))
        res = run(["bash", "job.sbatch"], cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr
        return (tmp_path / "srun.log").read_text().splitlines()

    assert "--ckpt_path" not in command()  # fresh run
    assert "--ckpt_path" not in command((last, 10))  # gcd fit resumes from last.ckpt by itself
    args = command((hpc1, 5), (hpc2, 1))
    assert args[args.index("--ckpt_path") + 1] == "runs/r/hpc_ckpt_2.ckpt"
    assert "--ckpt_path" not in command((last, 0))  # last.ckpt is newer again


def test_sigusr1_saves_requeue_checkpoint_and_requeues(tmp_path: Path) -> None:
    """SLURM's `--signal=SIGUSR1@90`: Lightning saves hpc_ckpt_1.ckpt in the run dir and calls `scontrol requeue`."""
    bin_dir = fake_slurm_bin(tmp_path)
    env = slurm_env(FAKE_SCONTROL_LOG=str(tmp_path / "scontrol.log"))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cmd = [
        sys.executable,
        "-m",
        "lightning_gcd.cli",
        "fit",
        "--config",
        str(SMOKE),
        "--run_name",
        "pre",
        "--trainer.max_epochs",
        "10000",
        "--model.init_args.val_samples",
        "0",
        "--trainer.enable_progress_bar",
        "false",
    ]
    with open(tmp_path / "fit.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 90
            while not checkpoints(tmp_path) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            assert proc.poll() is None, (tmp_path / "fit.log").read_text()[-3000:]
            proc.send_signal(signal.SIGUSR1)
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = (tmp_path / "fit.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "runs" / "pre" / "hpc_ckpt_1.ckpt").exists(), output[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", env["SLURM_JOB_ID"]]


def test_torchrun_script_runs_gcd_fit(tmp_path: Path) -> None:
    env = clean_env(NPROC_PER_NODE="1", RDZV_ENDPOINT="localhost:0", RDZV_ID="test", ACCELERATOR="cpu")
    res = run(
        ["bash", str(DOCKER / "torchrun.sh"), str(SMOKE), "--run_name", "torchrun-smoke", *QUICK_FIT],
        cwd=tmp_path,
        env=env,
        timeout=180,
    )
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/1" in output
    assert (tmp_path / "runs" / "torchrun-smoke" / "checkpoints" / "last.ckpt").exists()

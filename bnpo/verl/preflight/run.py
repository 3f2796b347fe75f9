"""The run scripts' pre-flight: everything a real run of verl's ``main_ppo`` would stop on before it touches a GPU.

    python -m bnpo.verl.preflight [--dry-run] [--gpu CARD] [--config-path DIR] [--config-name NAME] [overrides ...]

1. Composes the run's config exactly as ``main_ppo`` does (Hydra, the recipe, the overrides) and runs what
   ``main_ppo`` runs first: ``auto_set_device`` and verl's ``validate_config`` (which bnpo's plugin extends with
   ``check_run_config``), and builds verl's rollout dataclass (its own checks).
2. Counts the GPUs (this machine's, or each node's of the Ray cluster in RAY_ADDRESS); when the overrides leave
   ``trainer.n_gpus_per_node`` alone, the run gets every GPU a node has.
3. Checks the attention setting, the GPU stack verl pins (torch, vllm, flash-attn, transformers; CUDA 13 and its
   driver), the data and model files, the checkpoint folder (resume, disk room) and, on a cluster, that every node
   sees them.
4. Prints the per-GPU memory plan (``memory_plan``) for the GPUs found or, without any, for a named card
   (``--gpu`` / BNPO_PLAN_GPU, default the paper's 80 GB), and refuses a plan that does not fit.

``--dry-run`` (the scripts' DRY_RUN=1) prints the composed config as YAML on stdout, like Hydra's ``--cfg job``,
and the checks on stderr; problems that only this machine has (no GPU, no data, no GPU stack) are reported but do
not fail it. Without it the launch overrides it decided (the GPU count) go to stdout for the script to append.
Exit status 2 when the run would fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Optional

from . import gpus, memory_plan, stack, storage
from .model_facts import UnknownModel, model_facts

RECIPE_DIR = memory_plan.RECIPE_DIR
PACKED_ATTENTION = ("flash_attention_2", "flash_attention_3")


class Report:
    """Lines for stderr, and the errors that make the run fail."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def say(self, text: str) -> None:
        print(f"bnpo preflight: {text}", file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        self.errors.append(text)
        print(f"error: {text}", file=sys.stderr, flush=True)

    def problem(self, text: str, fatal: bool) -> None:
        """An error, or (``fatal`` False: only this machine lacks it) a note."""
        if fatal:
            self.error(text)
        else:
            self.say(f"not on this machine (a run here would stop): {text}")


def overridden(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def compose(config_dir: str, name: str, overrides: list[str]):
    """The config ``main_ppo --config-path=config_dir --config-name=name overrides`` runs with."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def verl_checks(cfg: Any) -> None:
    """What main_ppo runs before Ray starts, and the rollout dataclass its workers build; raises on a bad config."""
    import verl  # noqa: F401  (loads the plugins: bnpo's check joins validate_config)
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils import config as verl_config
    from verl.utils.device import auto_set_device

    auto_set_device(cfg)
    verl_config.validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    verl_config.omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


def attention_problem(cfg: Any) -> str:
    model = cfg.actor_rollout_ref.model
    impl = (model.get("override_config", None) or {}).get("attn_implementation", "flash_attention_2")
    if model.get("use_remove_padding", False) and impl not in PACKED_ATTENTION:
        return (f"actor_rollout_ref.model.override_config.attn_implementation={impl} with "
                "actor_rollout_ref.model.use_remove_padding=true: verl packs the sequences of a micro-batch into one row, "
                f"which only {' / '.join(PACKED_ATTENTION)} keep apart ({impl} would let them attend to each other). "
                "Install flash-attn (docs/gpu.md) or set use_remove_padding=false.")
    return ""


def choose_card(found: gpus.Found, requested: str) -> tuple[str, float, float, str]:
    """(card name, total GiB, free GiB, how it was chosen) the plan is made for."""
    if found.gpus and not requested:
        least = min(found.gpus, key=lambda g: g.total_mib - g.used_mib)
        return (least.name, least.total_mib / 1024, (least.total_mib - least.used_mib) / 1024,
                f"this machine's GPU {least.index}, {least.used_mib} MiB already in use")
    name = requested or memory_plan.DEFAULT_CARD
    try:
        total = float(name) if name.replace(".", "", 1).isdigit() else memory_plan.CARDS_MIB[name.lower()] / 1024
    except KeyError:
        raise ValueError(f"BNPO_PLAN_GPU / --gpu={name}: not a card this plan knows ({', '.join(memory_plan.CARDS_MIB)}) "
                         "nor a number of GiB") from None
    label = name if not name.replace(".", "", 1).isdigit() else f"{name} GiB card"
    how = "named card" if requested else "no GPU here: the default card, --gpu / BNPO_PLAN_GPU to choose"
    return label, total, total, how


def memory(cfg: Any, found: gpus.Found, requested: str, rep: Report, json_path: Optional[str]) -> None:
    try:
        facts = model_facts(str(cfg.actor_rollout_ref.model.path))
    except UnknownModel as err:
        rep.say(f"no memory plan: {err}")
        return
    try:
        card, total, free, how = choose_card(found, requested)
    except ValueError as err:
        rep.error(str(err))
        return
    settings = memory_plan.RunSettings.from_config(cfg)
    plan = memory_plan.plan(facts, settings, total, card)
    print(memory_plan.render(plan, how), file=sys.stderr, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(plan.to_dict(), f, indent=1)
    if not plan.fits:
        rep.error("the memory plan does not fit; try: " + "; ".join(memory_plan.fixes(plan)))
    elif free < total and max(plan.peaks.values()) > free:
        rep.error(f"the plan needs {max(plan.peaks.values()):.1f} GiB per GPU, but only {free:.1f} GiB of {card} are free "
                  "(other processes hold the rest: nvidia-smi lists them)")


def checkpoint_report(cfg: Any, rep: Report, cluster: str) -> storage.Checkpoints:
    t = cfg.trainer
    ckpt = storage.checkpoints(str(t.default_local_dir))
    if int(t.get("save_freq", -1)) <= 0:
        rep.say("warning: trainer.save_freq <= 0: no checkpoints, a crash loses the run (SAVE_FREQ=<steps>)")
    resume = str(t.get("resume_mode", "auto"))
    if resume == "auto":
        state = (f"resumes from global_step_{ckpt.latest}" if ckpt.latest is not None else "no checkpoint yet: a fresh start")
        rep.say(f"checkpoints: {ckpt.folder} (trainer.default_local_dir; resume_mode=auto: {state})")
    else:
        rep.say(f"checkpoints: {ckpt.folder} (resume_mode={resume})")
    if cluster and not os.path.isabs(str(t.default_local_dir)):
        rep.error(f"trainer.default_local_dir={t.default_local_dir} is relative: on a Ray cluster it lands in Ray's "
                  "per-job folder of each node. Set CKPT_DIR to an absolute folder every node shares.")
    return ckpt


def disk_report(cfg: Any, ckpt: storage.Checkpoints, rep: Report) -> None:
    try:
        facts = model_facts(str(cfg.actor_rollout_ref.model.path))
    except UnknownModel:
        return
    keep = cfg.trainer.get("max_actor_ckpt_to_keep", None)
    if int(cfg.trainer.get("save_freq", -1)) <= 0 or ckpt.free_gib is None:
        return
    each = memory_plan.checkpoint_gib(facts)
    need = each * max(int(keep), 2 if int(keep) == 1 else 1) if keep else each
    if ckpt.free_gib < need:
        rep.say(f"warning: {ckpt.folder} has {ckpt.free_gib:.0f} GiB free; each checkpoint takes about {each:.0f} GiB and "
                f"{'verl keeps ' + str(keep) if keep else 'all are kept (trainer.max_actor_ckpt_to_keep)'}")


def run(args: argparse.Namespace, out) -> int:
    rep = Report()
    dry = args.dry_run
    found = gpus.find()
    cluster = gpus.cluster_address()
    launch = []
    if not overridden(args.overrides, "trainer.n_gpus_per_node") and found.per_node > 0 and not found.error:
        launch.append(f"trainer.n_gpus_per_node={found.per_node}")
    try:
        cfg = compose(args.config_path, args.config_name, [*args.overrides, *launch])
    except Exception as err:  # noqa: BLE001 -- Hydra's own message names the override
        rep.error(f"the config does not compose: {type(err).__name__}: {err}")
        return 2
    if dry:
        from omegaconf import OmegaConf

        out.write(OmegaConf.to_yaml(cfg))
        out.flush()
    try:
        verl_checks(cfg)
    except Exception as err:  # noqa: BLE001 -- verl's (or bnpo's) message is the report
        rep.error(f"verl refuses the config ({type(err).__name__}): {err}")
        return 2
    rep.say("verl's validate_config and bnpo's check_run_config passed")

    t = cfg.trainer
    nnodes, per_node = int(t.nnodes), int(t.n_gpus_per_node)
    have_gpus = bool(found.gpus) or any(found.nodes or [])
    count = gpus.count_problem(found, nnodes, per_node)
    if count:
        rep.problem(f"this run needs {nnodes} node(s) x {per_node} GPU(s) (trainer.nnodes, trainer.n_gpus_per_node), "
                    f"but {count}.\n  See the run's whole config and memory plan without GPUs:  DRY_RUN=1 bash {args.script}\n"
                    "  Run verl's trainer with bnpo on this CPU:  bash scripts/run_cpu_smoke.sh\n"
                    "  Fewer GPUs: N_GPUS_PER_NODE=<n>; skip these checks: BNPO_SKIP_PREFLIGHT=1", fatal=not dry or have_gpus)
    else:
        rep.say(f"GPUs: {nnodes} node(s) x {per_node} ({found.how})" + (", every GPU of the node" if launch else ""))
    attention = attention_problem(cfg)
    if attention:
        rep.error(attention)
    driver = gpus.driver_problem(found)
    if driver:
        rep.error(driver)
    local_gpus = bool(found.gpus)
    impl = (cfg.actor_rollout_ref.model.get("override_config", None) or {}).get("attn_implementation", "flash_attention_2")
    stack_problems = stack.problems(stack.wanted(), stack.installed(), need_flash_attn=impl in PACKED_ATTENTION)
    for problem in stack_problems:
        rep.problem(f"{problem} (docs/gpu.md: bash scripts/install_gpu.sh)", fatal=local_gpus)
    if not stack_problems:
        rep.say("GPU stack: the versions verl 0.9.1 pins (torch, vllm, flash-attn, transformers; CUDA 13)")
    for missing in storage.missing_inputs(cfg):
        rep.problem(missing, fatal=not dry and not cluster)
    ckpt = checkpoint_report(cfg, rep, cluster)
    disk_report(cfg, ckpt, rep)
    if cluster and not rep.errors:
        paths = storage.files(cfg.data.get("train_files")) + storage.files(cfg.data.get("val_files"))
        model = str(cfg.actor_rollout_ref.model.path)
        if model.startswith(("/", "~")):
            paths.append(os.path.expanduser(model))
        shared = storage.cluster_check(cluster, ckpt.folder, paths)
        if not shared.unseen:
            rep.say(f"shared storage: every node of the cluster ({shared.nodes}) sees {ckpt.folder}")
        for problem in shared.problems(ckpt.folder):
            rep.problem(problem, fatal=not dry)
    memory(cfg, found if local_gpus else gpus.Found([], None, found.how), args.gpu, rep, args.json)
    if rep.errors:
        return 2
    if not dry:
        out.write("".join(f"{o}\n" for o in launch))
    return 0


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnpo.verl.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the composed config; problems of this machine only warn")
    parser.add_argument("--config-path", default=RECIPE_DIR, help="folder of the run's Hydra config (default: the recipe)")
    parser.add_argument("--config-name", default="bnpo_trainer")
    parser.add_argument("--gpu", default=os.environ.get("BNPO_PLAN_GPU", ""),
                        help=f"plan for this card ({', '.join(memory_plan.CARDS_MIB)}) or this many GiB (BNPO_PLAN_GPU)")
    parser.add_argument("--json", default=None, help="also write the memory plan as JSON here")
    parser.add_argument("--script", default="scripts/run_qwen_math_7b.sh", help="the run script, for messages")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as main_ppo takes them")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """stdout carries the YAML (dry run) or the launch overrides only: whatever verl prints goes to stderr."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return run(parse(argv), out)


if __name__ == "__main__":
    sys.exit(main())

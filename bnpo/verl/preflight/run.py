"""The run scripts' pre-flight: what would stop verl's ``main_ppo`` on this run, found before it touches a GPU.

    python -m bnpo.verl.preflight [--dry-run] [--gpu CARD] [--config-path DIR] [--config-name NAME] [overrides ...]

**One rule** decides what stops the run (``Report.problem``): a problem the run would certainly fail on is an error;
one that only this machine has (its GPUs, packages, free memory, cluster storage) is a note in a dry run, which is
meant for another machine; what is estimated, or only may matter, is a warning. Exit status 2 on an error.

1. The config, composed as ``main_ppo`` composes it (Hydra, the recipe, the overrides), and verl's rollout
   dataclass (its workers build it only after loading the model). A dry run also runs what ``main_ppo`` runs
   first, ``auto_set_device`` and verl's ``validate_config`` (with bnpo's ``check_run_config``); a real run leaves
   that to ``main_ppo`` (``verl/trainer/main_ppo.py:174-181``), and the GPU count and data files to verl's trainer,
   which checks them before any GPU work (``trainer/ppo/v1/trainer_base.py:226-231``).
2. The GPUs (this machine's, or each node's of the Ray cluster in RAY_ADDRESS): unless the overrides set
   ``trainer.n_gpus_per_node``, the run gets every GPU of a node.
3. The attention (packed sequences need flash-attn), the GPU stack (``stack``), the checkpoint folder (resume, disk
   room) and, on a cluster, whether every node sees it, the data and a local model (``storage``).
4. The per-GPU memory plan (``memory_plan``), for this machine's fullest GPU or a named card (``--gpu``).

``--dry-run`` prints the composed config as YAML on stdout (like Hydra's ``--cfg job``) and the checks on stderr;
without it the launch overrides it decided (the GPU count) go to stdout for the script to append.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Optional

from ...recipe import CONFIG_DIR, CONFIG_NAME
from . import gpus, memory_plan, stack, storage
from .model_facts import UnknownModel, model_facts

PACKED_ATTENTION = ("flash_attention_2", "flash_attention_3")


class Report:
    """Lines for stderr, and the errors that make the run fail."""

    def __init__(self, dry: bool) -> None:
        self.dry, self.errors = dry, []

    def say(self, text: str) -> None:
        print(f"bnpo preflight: {text}", file=sys.stderr, flush=True)

    def problem(self, text: str, certain: bool = True, machine: bool = False) -> None:
        """The one rule: certain -> error, except one of this machine's in a dry run -> note; else a warning."""
        if certain and not (machine and self.dry):
            self.errors.append(text)
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            self.say(("not on this machine (a run here would stop): " if certain else "warning: ") + text)


def compose(config_dir: str, name: str, overrides: list[str]):
    """The config ``main_ppo --config-path=config_dir --config-name=name overrides`` runs with."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides))


def verl_checks(cfg: Any, dry: bool) -> None:
    """What main_ppo runs first (dry run only) and the rollout dataclass its workers build; raises on a bad config."""
    import verl  # noqa: F401  (loads the plugins: bnpo's check joins validate_config)
    from verl.utils import config as verl_config

    if dry:
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.device import auto_set_device

        auto_set_device(cfg)
        verl_config.validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg),
                                    use_critic=need_critic(cfg))
    verl_config.omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


def memory(cfg: Any, facts, found: gpus.Found, requested: str, flash_ce: bool, rep: Report, json_path: Optional[str]):
    """The memory plan for this machine's fullest GPU, else for the named (or default) card."""
    if found.gpus and not requested:
        fullest = min(found.gpus, key=lambda g: g.cuda_mib - g.used_mib)
        card, total, free = fullest.name, fullest.cuda_mib / 1024, (fullest.cuda_mib - fullest.used_mib) / 1024
        how = f"this machine's GPU {fullest.index}, {fullest.used_mib} MiB already in use"
    else:
        card = requested or memory_plan.DEFAULT_CARD
        try:
            total, free = memory_plan.card_gib(card), None
        except ValueError as err:
            rep.problem(f"BNPO_PLAN_GPU / --gpu={err}")
            return
        how = "named card" if requested else "no GPU here: the default card, --gpu / BNPO_PLAN_GPU to choose"
    p = memory_plan.plan(facts, memory_plan.RunSettings.from_config(cfg, flash_ce), total, card, free)
    print(memory_plan.render(p, how), file=sys.stderr, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(p.to_dict(), f, indent=1)
    for text in p.problems:
        rep.problem(text)
    for text in p.busy:
        rep.problem(text, machine=True)
    if p.problems or p.warnings or p.busy:
        rep.say("the memory plan's overrides to try: " + "; ".join(memory_plan.fixes(p)))


def files(cfg: Any, facts, ckpt: storage.Checkpoints, cluster: str, rep: Report) -> None:
    """The checkpoint folder (resume, room) and, on a cluster, what every node sees."""
    t = cfg.trainer
    keep, save, resume = t.get("max_actor_ckpt_to_keep", None), int(t.get("save_freq", -1)), t.get("resume_mode", "auto")
    state = f"resumes from global_step_{ckpt.latest}" if ckpt.latest is not None else "no checkpoint yet: a fresh start"
    each = memory_plan.checkpoint_gib(facts) if facts else None
    rep.say(f"checkpoints: {ckpt.folder} (trainer.default_local_dir; resume_mode={resume}" + (f": {state}" if resume ==
            "auto" else "") + ")" + (f", about {each:.0f} GiB each (fp32 parameters and Adam moments)" if each else ""))
    if save <= 0:
        rep.problem("trainer.save_freq <= 0: no checkpoints, a crash loses the run (SAVE_FREQ=<steps>)", certain=False)
    elif each and ckpt.free_gib is not None and ckpt.free_gib < each * (max(2, int(keep)) if keep else 1):
        rep.problem(f"{ckpt.folder} has {ckpt.free_gib:.0f} GiB free; each checkpoint takes about {each:.0f} GiB and "
                    f"{'verl keeps ' + str(keep) + ' (and writes one before deleting one)' if keep else 'all are kept'}",
                    certain=False)
    if not cluster:
        return
    if not os.path.isabs(str(t.default_local_dir)):
        rep.problem(f"trainer.default_local_dir={t.default_local_dir} is relative: on a Ray cluster it lands in Ray's "
                    "per-job folder of each node. Set CKPT_DIR to an absolute folder every node shares.")
    if rep.errors:
        return
    paths = storage.files(cfg.data.get("train_files")) + storage.files(cfg.data.get("val_files"))
    model = str(cfg.actor_rollout_ref.model.path)
    shared = storage.cluster_check(cluster, ckpt.folder, paths + ([os.path.expanduser(model)] if model.startswith(("/", "~")) else []))
    if not shared.unseen:
        rep.say(f"shared storage: every node of the cluster ({shared.nodes}) sees {ckpt.folder}")
    if not shared.bnpo:
        rep.say(f"bnpo: its estimators register in verl on every node of the cluster ({shared.nodes})")
    for text in shared.problems(ckpt.folder):
        rep.problem(text, machine=True)


def run(args: argparse.Namespace, out) -> int:
    rep = Report(args.dry_run)
    found, cluster = gpus.find(), gpus.cluster_address()
    if found.error:
        rep.problem(found.error, certain=bool(cluster), machine=True)
    told = any(o.lstrip("+~").split("=", 1)[0] == "trainer.n_gpus_per_node" for o in args.overrides)
    launch = [f"trainer.n_gpus_per_node={found.per_node}"] if not told and found.per_node > 0 else []
    try:
        cfg = compose(args.config_path, args.config_name, [*args.overrides, *launch])
    except Exception as err:  # noqa: BLE001 -- Hydra's own message names the override
        rep.problem(f"the config does not compose: {type(err).__name__}: {err}")
        return 2
    if args.dry_run:
        from omegaconf import OmegaConf

        out.write(OmegaConf.to_yaml(cfg))
        out.flush()
    try:
        verl_checks(cfg, args.dry_run)
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
    for text, certain in stack.problems(stack.wanted() if installed else {}, installed,
                                        need_flash_attn=impl in PACKED_ATTENTION, gpus=found.gpus):
        rep.problem(f"{text} (docs/gpu.md: bash scripts/install_gpu.sh)", certain, machine=True)
    facts = None
    try:
        facts = model_facts(str(model.path))
    except UnknownModel as err:
        rep.say(f"no memory plan: {err}")
    files(cfg, facts, storage.checkpoints(str(t.default_local_dir)), cluster, rep)
    # verl's in-place cross-entropy needs flash-attn: there when the attention needs it, else if it imports here
    if facts:
        memory(cfg, facts, found, args.gpu, impl in PACKED_ATTENTION or "error" not in installed.get("flash-attn", {}),
               rep, args.json)
    if rep.errors:
        return 2
    if not args.dry_run:
        out.write("".join(f"{o}\n" for o in launch))
    return 0


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnpo.verl.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the composed config; this machine's problems are notes")
    parser.add_argument("--config-path", default=CONFIG_DIR, help="folder of the run's Hydra config (default: the packaged recipe)")
    parser.add_argument("--config-name", default=CONFIG_NAME)
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

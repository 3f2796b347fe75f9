"""Per-GPU memory plan of a verl 0.9.1 PPO run: FSDP actor and vLLM rollout sharing each GPU (verl's hybrid engine).

What lives on one GPU, read from verl 0.9.1's code:

- **Actor (FSDP, every GPU holds 1/N):** fp32 parameters (``_build_module`` trains in fp32), fp32 gradients during
  the update, AdamW's two fp32 moments from the first optimizer step on. verl moves the parameters to the CPU only
  with ``fsdp_config.param_offload`` and the Adam state only with ``optimizer_offload`` (``BaseEngineCtx``,
  ``workers/engine/base.py``); otherwise both stay on the GPU while vLLM generates
  (``update_weights``, ``workers/engine_workers.py``).
- **Rollout (vLLM):** ``gpu_memory_utilization`` is the share of the GPU's *total* memory one vLLM engine may use
  (weights, activations, CUDA graphs, and a KV cache that fills the rest). With ``free_cache_engine`` verl puts
  vLLM to sleep during training (weights and KV cache released) and wakes it before each rollout, when the
  whole budget must fit beside the actor's resident state.
- **Training passes (vLLM asleep):** the old-log-prob pass (no gradients, ``calculate_entropy=True``: the logits,
  their softmax and their product, ``entropy_from_logits``) and the update pass (gradients, activation checkpoints,
  one layer recomputed, the logits and their gradient), each over up to ``*_max_token_len_per_gpu`` tokens.

Weights, gradients, optimizer state, vLLM's budget and the KV cache follow from the shapes. Activations, logits
working sets, CUDA contexts and what a sleeping vLLM keeps are estimates (the constants below, each with its
reason); ``scripts/gpu_check.sh`` measures the CUDA context on a real device. Never imports verl (torch only for
``--device``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .model_facts import ModelFacts

# the checkout's recipe config folder (bnpo/verl/preflight/ -> the checkout's root)
RECIPE_DIR = os.path.join(os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3)), "recipe", "bnpo", "config")

GIB = 2**30
MIB = 2**20

# Cards a plan can be made for without one (nvidia-smi's memory.total, MiB). The default is the paper's 80 GB card.
CARDS_MIB = {"h100-80gb": 81559, "a100-80gb": 81920, "a100-40gb": 40960, "h200-141gb": 143771}
DEFAULT_CARD = "h100-80gb"

# Estimates (GiB unless named otherwise), checked against a real run the day one is made (docs/gpu.md).
CUDA_CONTEXT_GIB = 0.6  # one process's CUDA context with torch loaded (Hopper, lazy module loading)
NCCL_BUFFERS_GIB = 0.5  # the actor's NCCL communicators (FSDP all-gather / reduce-scatter)
VLLM_ASLEEP_GIB = 1.0  # what a sleeping vLLM engine keeps besides its context (CUDA graph pool, allocator)
VLLM_CUDA_GRAPHS_GIB = 1.0  # CUDA graphs captured inside vLLM's budget (none with enforce_eager)
LAYER_ACTIVATION_FACTOR = (6, 4)  # one decoder layer's live activations per token: 6 x hidden + 4 x intermediate
LOGIT_COPIES_LOG_PROB = 3  # logits, softmax, softmax * logits (entropy_from_logits, no gradients)
LOGIT_COPIES_UPDATE = 2  # logits and their gradient
GATHERED_LAYERS = 2  # FSDP keeps the current decoder layer and the prefetched next one unsharded
BF16, FP32 = 2, 4
ADAM_MOMENTS = 2
SPARE_WARNING = 0.05  # a plan with less than this share of the card spare fits, but is flagged


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run that decide its memory (each named by its verl key in ``from_config``)."""

    n_gpus: int
    n_gpus_per_node: int
    rollout_tp: int
    train_batch_size: int
    rollout_n: int
    prompt_length: int
    response_length: int
    max_model_len: Optional[int]
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    update_tokens_per_gpu: int
    log_prob_tokens_per_gpu: int
    param_offload: bool
    optimizer_offload: bool
    free_cache_engine: bool
    gradient_checkpointing: bool
    enforce_eager: bool
    save_freq: int = -1
    max_ckpt_to_keep: Optional[int] = None

    @classmethod
    def from_config(cls, cfg: Any) -> "RunSettings":
        """From a composed verl config (OmegaConf or nested dicts with the keys of verl's ppo_trainer)."""
        t, arr = cfg["trainer"], cfg["actor_rollout_ref"]
        actor, rollout, model = arr["actor"], arr["rollout"], arr["model"]
        fsdp = actor.get("fsdp_config") or {}
        dynamic = bool(actor.get("use_dynamic_bsz", False))
        prompt, response = int(cfg["data"]["max_prompt_length"]), int(cfg["data"]["max_response_length"])
        # without dynamic batch sizes verl packs micro-batches of whole sequences
        per_seq = prompt + response
        update_tokens = int(actor["ppo_max_token_len_per_gpu"]) if dynamic else (
            int(actor.get("ppo_micro_batch_size_per_gpu") or 1) * per_seq)
        log_prob_tokens = int(rollout["log_prob_max_token_len_per_gpu"]) if rollout.get("log_prob_use_dynamic_bsz") \
            else int(rollout.get("log_prob_micro_batch_size_per_gpu") or 1) * per_seq
        return cls(
            n_gpus=int(t["nnodes"]) * int(t["n_gpus_per_node"]), n_gpus_per_node=int(t["n_gpus_per_node"]),
            rollout_tp=int(rollout["tensor_model_parallel_size"]), train_batch_size=int(cfg["data"]["train_batch_size"]),
            rollout_n=int(rollout["n"]), prompt_length=prompt, response_length=response,
            max_model_len=None if rollout.get("max_model_len") is None else int(rollout["max_model_len"]),
            max_num_seqs=int(rollout["max_num_seqs"]), max_num_batched_tokens=int(rollout["max_num_batched_tokens"]),
            gpu_memory_utilization=float(rollout["gpu_memory_utilization"]),
            update_tokens_per_gpu=update_tokens, log_prob_tokens_per_gpu=log_prob_tokens,
            param_offload=bool(fsdp.get("param_offload", False)),
            optimizer_offload=bool(fsdp.get("optimizer_offload", False)),
            free_cache_engine=bool(rollout.get("free_cache_engine", True)),
            gradient_checkpointing=bool(model.get("enable_gradient_checkpointing", False)),
            enforce_eager=bool(rollout.get("enforce_eager", False)),
            save_freq=int(t.get("save_freq", -1)),
            max_ckpt_to_keep=None if t.get("max_actor_ckpt_to_keep") is None else int(t["max_actor_ckpt_to_keep"]),
        )


@dataclass
class Plan:
    """One GPU's plan: GiB per item and phase, the peaks, and why it does not fit (``problems``)."""

    model: str
    params: int
    card: str
    total_gib: float
    settings: RunSettings
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)
    vllm: dict[str, float] = field(default_factory=dict)
    checkpoint_gib: float = 0.0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def spare_gib(self) -> float:
        return self.total_gib - max(self.peaks.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [{"item": item, **values} for item, values in self.rows]
        out.update(fits=self.fits, spare_gib=round(self.spare_gib, 3))
        return out


PHASES = ("rollout", "log_prob", "update")


def plan(facts: ModelFacts, s: RunSettings, total_gib: float, card: str) -> Plan:
    """The per-GPU plan of the run ``s`` of model ``facts`` on GPUs of ``total_gib`` GiB (``card`` names them)."""
    p = Plan(model=facts.name, params=facts.params, card=card, total_gib=total_gib, settings=s)
    n, P = s.n_gpus, facts.params
    shard = P / n / GIB

    def row(item: str, rollout: float = 0.0, log_prob: float = 0.0, update: float = 0.0) -> None:
        p.rows.append((item, {"rollout": rollout, "log_prob": log_prob, "update": update}))

    params = FP32 * shard
    adam = ADAM_MOMENTS * FP32 * shard
    row(f"actor: fp32 parameters (FSDP, 1/{n} each)" + (", on CPU during rollout" if s.param_offload else ""),
        0.0 if s.param_offload else params, params, params)
    row("actor: fp32 gradients", update=FP32 * shard)
    row("actor: Adam moments" + (" (on CPU outside the update)" if s.optimizer_offload else ""),
        0.0 if s.optimizer_offload else adam, 0.0 if s.optimizer_offload else adam, adam)
    gathered = BF16 * (facts.embedding_params + GATHERED_LAYERS * facts.layer_params) / GIB
    row("actor: gathered bf16 embeddings and layers", log_prob=gathered, update=gathered)
    layer = (LAYER_ACTIVATION_FACTOR[0] * facts.hidden + LAYER_ACTIVATION_FACTOR[1] * facts.intermediate) * BF16
    tokens = s.update_tokens_per_gpu
    if s.gradient_checkpointing:
        row(f"actor: activation checkpoints ({tokens} tokens)", update=tokens * facts.hidden * BF16 * facts.layers / GIB)
        row("actor: one layer recomputed", update=tokens * layer / GIB)
    else:
        row(f"actor: activations of every layer ({tokens} tokens)", update=tokens * layer * facts.layers / GIB)
    logits = facts.vocab * BF16 / GIB
    row(f"actor: logits ({s.log_prob_tokens_per_gpu} / {tokens} tokens x {facts.vocab})",
        log_prob=LOGIT_COPIES_LOG_PROB * logits * s.log_prob_tokens_per_gpu, update=LOGIT_COPIES_UPDATE * logits * tokens)

    # vLLM: one engine per tensor-parallel group; the budget is a share of the card's total memory
    budget = s.gpu_memory_utilization * total_gib
    weights = BF16 * P / s.rollout_tp / GIB
    activations = (s.max_num_batched_tokens * layer + s.max_num_seqs * facts.vocab * FP32) / GIB
    activations += 0.0 if s.enforce_eager else VLLM_CUDA_GRAPHS_GIB
    kv_available = budget - weights - activations
    replicas = max(1, n // s.rollout_tp)
    seqs = math.ceil(s.train_batch_size * s.rollout_n / replicas)
    seq_len = s.prompt_length + s.response_length
    max_model_len = s.max_model_len or facts.max_positions
    kv_needed = seqs * min(seq_len, max_model_len) * facts.kv_bytes_per_token / s.rollout_tp / GIB
    p.vllm = {"budget": budget, "weights": weights, "activations": activations, "kv_available": kv_available,
              "kv_needed": kv_needed, "sequences_per_engine": seqs, "max_model_len": max_model_len}
    asleep = budget if not s.free_cache_engine else VLLM_ASLEEP_GIB
    row(f"vLLM: budget {s.gpu_memory_utilization:g} x {total_gib:.1f} GiB" + ("" if s.free_cache_engine else
        ", kept during training (free_cache_engine=false)"), budget, asleep, asleep)
    overhead = 2 * CUDA_CONTEXT_GIB + NCCL_BUFFERS_GIB
    row("CUDA contexts (actor, vLLM) and NCCL buffers", overhead, overhead, overhead)
    p.peaks = {phase: sum(values[phase] for _, values in p.rows) for phase in PHASES}
    p.checkpoint_gib = checkpoint_gib(facts)

    for phase, peak in p.peaks.items():
        if peak > total_gib:
            p.problems.append(f"the {phase.replace('_', '-')} phase needs {peak:.1f} GiB per GPU, more than the "
                              f"{total_gib:.1f} GiB of a {card} GPU")
    if kv_available * GIB < max_model_len * facts.kv_bytes_per_token / s.rollout_tp:
        p.problems.append(f"vLLM's budget leaves {kv_available:.1f} GiB for the KV cache, less than one sequence of "
                          f"max_model_len={max_model_len} tokens: vLLM refuses to start")
    elif kv_available < kv_needed:
        p.warnings.append(f"vLLM's KV cache ({kv_available:.1f} GiB) holds fewer than all {seqs} sequences of its "
                          f"share at full length ({kv_needed:.1f} GiB): vLLM queues the rest (slower, same samples)")
    if p.fits and p.spare_gib < SPARE_WARNING * total_gib:
        p.warnings.append(f"only {p.spare_gib:.1f} GiB ({p.spare_gib / total_gib:.0%}) spare at the peak: the "
                          "estimated items (activations, contexts) may use it up")
    return p


def checkpoint_gib(facts: ModelFacts) -> float:
    """One verl checkpoint of the actor: its fp32 parameters and Adam moments (verl's default save_contents)."""
    return (FP32 + ADAM_MOMENTS * FP32) * facts.params / GIB


def fixes(p: Plan) -> list[str]:
    """What would make a plan that does not fit fit, as overrides to try (most specific first)."""
    s, out = p.settings, []
    rollout_over = p.peaks["rollout"] > p.total_gib
    if rollout_over and not s.optimizer_offload:
        out.append("actor_rollout_ref.actor.fsdp_config.optimizer_offload=true (Adam state on the CPU during rollout)")
    if rollout_over or p.vllm["kv_available"] < 0:
        need = p.vllm["weights"] + p.vllm["activations"] + p.vllm["kv_needed"]
        util = math.ceil(100 * need / p.total_gib) / 100
        if util < s.gpu_memory_utilization:
            out.append(f"actor_rollout_ref.rollout.gpu_memory_utilization={util:.2f} (vLLM's weights, activations and "
                       f"the KV cache of its {p.vllm['sequences_per_engine']} sequences)")
    if max(p.peaks["update"], p.peaks["log_prob"]) > p.total_gib:
        out.append(f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={s.update_tokens_per_gpu // 2} (MAX_TOKEN_LEN_PER_GPU; "
                   "also sets log_prob_max_token_len_per_gpu and vLLM's max_num_batched_tokens in the recipe)")
    if rollout_over and not s.param_offload:
        out.append("actor_rollout_ref.actor.fsdp_config.param_offload=true (parameters on the CPU during rollout)")
    out.append("more GPUs (N_GPUS_PER_NODE, NNODES): every actor state shrinks by 1/N")
    return out


def render(p: Plan, where: str) -> str:
    """The plan as the text the dry run prints (``where``: how the card was chosen)."""
    s = p.settings
    lines = [
        f"memory plan: {p.model} ({p.params / 1e9:.2f}B parameters) on {s.n_gpus} GPU(s), {s.n_gpus_per_node} per node; "
        f"{p.card}, {p.total_gib:.1f} GiB each ({where})",
        f"  {'per GPU, GiB':<62}{'rollout':>9}{'log-prob':>10}{'update':>9}",
    ]
    for item, values in p.rows:
        cells = "".join(f"{values[ph]:>{w}.1f}" if values[ph] else f"{'-':>{w}}" for ph, w in zip(PHASES, (9, 10, 9)))
        lines.append(f"  {item:<62}{cells}")
    lines.append(f"  {'total':<62}" + "".join(f"{p.peaks[ph]:>{w}.1f}" for ph, w in zip(PHASES, (9, 10, 9))))
    v = p.vllm
    lines.append(
        f"  vLLM budget {v['budget']:.1f} GiB = weights {v['weights']:.1f} + activations {v['activations']:.1f} + KV cache "
        f"{v['kv_available']:.1f}; the run needs {v['kv_needed']:.1f} GiB of KV cache ({v['sequences_per_engine']} "
        f"sequences x {min(s.prompt_length + s.response_length, v['max_model_len'])} tokens per engine)")
    if s.save_freq > 0:
        keep = s.max_ckpt_to_keep
        lines.append(f"  checkpoints: every {s.save_freq} steps, {p.checkpoint_gib:.0f} GiB each (fp32 parameters and "
                     f"Adam moments), {'all' if not keep else keep} kept")
    verdict = (f"fits: {p.spare_gib:.1f} GiB ({p.spare_gib / p.total_gib:.0%}) spare at the peak" if p.fits
               else "DOES NOT FIT: " + "; ".join(p.problems))
    lines.append(f"  {verdict}")
    lines += [f"  warning: {w}" for w in p.warnings]
    return "\n".join(lines)


def recipe_settings(path: str, model: str, n_gpus: int, n_gpus_per_node: int) -> RunSettings:
    """The recipe YAML's settings without verl or Hydra (the plan's keys are all in the file; ``${a.b}`` references
    to other keys of the file are followed), for ``model`` on ``n_gpus`` GPUs."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)

    def lookup(dotted: str) -> Any:
        node = raw
        for part in dotted.split("."):
            node = node[part]
        return resolve(node)

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
            return lookup(value[2:-1])
        return value

    cfg = resolve(raw)
    cfg["actor_rollout_ref"]["model"]["path"] = model
    cfg["trainer"].update(nnodes=n_gpus // n_gpus_per_node, n_gpus_per_node=n_gpus_per_node)
    return RunSettings.from_config(cfg)


def device_memory() -> list[tuple[str, float, float]]:
    """(name, total GiB, free GiB) of each CUDA device torch sees."""
    import torch

    out = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        out.append((torch.cuda.get_device_name(index), total / GIB, free / GIB))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m bnpo.verl.preflight.memory_plan``: the recipe's plan for a model on N GPUs of a named card or of this machine."""
    import argparse
    import json
    import sys

    from .model_facts import model_facts

    parser = argparse.ArgumentParser(prog="python -m bnpo.verl.preflight.memory_plan", description=main.__doc__)
    parser.add_argument("--recipe", default=os.path.join(RECIPE_DIR, "bnpo_trainer.yaml"))
    parser.add_argument("--model", default="Qwen/Qwen2.5-Math-7B")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs of one node (default: the paper's 4)")
    parser.add_argument("--gpu", default=DEFAULT_CARD, help=f"a card ({', '.join(CARDS_MIB)}) or GiB")
    parser.add_argument("--device", action="store_true", help="plan for this machine's CUDA devices (their real free memory)")
    parser.add_argument("--json", default=None, help="write the plan here")
    args = parser.parse_args(argv)
    facts = model_facts(args.model)
    if args.device:
        devices = device_memory()
        if not devices:
            print("error: --device: torch sees no CUDA device", file=sys.stderr)
            return 2
        name, total, free = min(devices, key=lambda d: d[2])
        how = f"this machine's {len(devices)} device(s), {free:.1f} GiB free on the fullest"
    else:
        name, total = args.gpu, float(args.gpu) if args.gpu.replace(".", "", 1).isdigit() else CARDS_MIB[args.gpu] / 1024
        free, how = total, "named card"
    settings = recipe_settings(args.recipe, args.model, args.gpus, args.gpus)
    p = plan(facts, settings, total, name)
    print(render(p, how))
    fits_free = max(p.peaks.values()) <= free
    if not fits_free:
        print(f"error: the peak {max(p.peaks.values()):.1f} GiB is more than the {free:.1f} GiB free", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**p.to_dict(), "free_gib": free, "fits_free_memory": fits_free, "fixes": [] if p.fits else fixes(p)},
                      f, indent=1)
    return 0 if p.fits and fits_free else 2


if __name__ == "__main__":
    import sys

    sys.exit(main())

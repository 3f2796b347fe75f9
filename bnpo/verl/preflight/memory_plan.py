"""Per-GPU memory plan of a verl 0.9.1 run: the FSDP actor and vLLM sharing each GPU (verl's hybrid engine), phase by
phase. An estimate: nothing of this recipe has run on a GPU. What each phase holds and why, with verl 0.9.1's and
vLLM 0.24.0's file:line for each figure: docs/gpu.md, "The memory plan". Exact items alone over the card, and a vLLM
budget that cannot hold one sequence, are certain failures (``problems``); an estimate over the card is a warning.
Pure Python (OmegaConf for the recipe file): ``python -m bnpo.verl.preflight.memory_plan`` needs no verl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

GIB = 2**30
BF16, FP32 = 2, 4

# CUDA-visible totals (MiB), what vLLM's budget is a share of: nvidia-smi's memory.total less memory.reserved, as
# measured on the H200 and as torch reports the others (docs/gpu.md). On a GPU machine the pre-flight reads its own.
CARDS_MIB = {"h100-80gb": 81089, "a100-80gb": 81050, "a100-40gb": 40536, "h200-141gb": 143155}
DEFAULT_CARD = "h100-80gb"

# Estimates, each with its relative uncertainty (U_*); the measurements (H200) and verl's code behind them: docs/gpu.md
CUDA_CONTEXT_GIB = 0.6  # torch 2.11's CUDA context: 0.61 GiB measured
NCCL_BUFFERS_GIB = 0.5  # the actor's NCCL communicators
VLLM_ASLEEP_GIB = 1.0  # what a sleeping vLLM keeps besides its context (graph pool, allocator)
VLLM_CUDA_GRAPHS_GIB = 1.0  # CUDA graphs inside vLLM's budget (none with enforce_eager)
LAYER_BACKWARD = (10, 6)  # one Qwen2 layer's recompute and backward per token, in bf16 values of (hidden, intermediate)
LAYER_FORWARD = (2, 3)  # its forward without gradients (both measured)
# bf16 copies of the logits. No gradients: 1 with verl's compiled entropy, 7 eager (measured). The update: 1 without
# entropy (flash-attn's cross-entropy writes the gradient into the logits), 4 without flash-attn, 2 + the above with.
LOGITS_ENTROPY_EXTRA = {True: 0, False: 6}
LOGITS_UPDATE_NO_FLASH_CE = 4
U_CONTEXT, U_ACTIVATIONS, U_GATHERED, U_ASLEEP = 0.5, 0.25, 0.5, 1.0


@dataclass(frozen=True)
class ModelFacts:
    """A decoder-only transformer's shape (Qwen2 / Llama layout). ``qkv_bias``: Qwen2's q, k and v have biases."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    qkv_bias: bool = True
    head_dim: Optional[int] = None

    @property
    def layer_params(self) -> int:
        """One decoder layer: attention (q, k, v, o and their biases), gated MLP, two norms."""
        d = self.head_dim or self.hidden // self.heads
        q, kv = self.heads * d, self.kv_heads * d
        return 2 * self.hidden * (q + kv) + (q + 2 * kv) * self.qkv_bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        """Input embeddings and, if untied, the output head."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden  # and the final norm


# The recipe's models, from their config.json on the Hugging Face hub (parameter counts: tests/test_memory_plan.py)
KNOWN_MODELS = {m.name: m for m in (
    ModelFacts("Qwen/Qwen2.5-Math-7B", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
               tied_embeddings=False, max_positions=4096),
    ModelFacts("Qwen/Qwen2.5-Math-1.5B", layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
               tied_embeddings=True, max_positions=4096),
)}


class UnknownModel(ValueError):
    """Neither one of ``KNOWN_MODELS`` nor a local folder with a readable config.json."""


def model_facts(path: str) -> ModelFacts:
    """Facts of ``actor_rollout_ref.model.path``: a local folder's config.json wins, else a known hub id."""
    config_file = os.path.join(os.path.expanduser(path), "config.json")
    if not os.path.isfile(config_file):
        if path in KNOWN_MODELS:
            return KNOWN_MODELS[path]
        raise UnknownModel(f"actor_rollout_ref.model.path={path}: not a local folder with a config.json, and not one "
                           f"of the models known without their files ({', '.join(KNOWN_MODELS)}). Download it "
                           "(MODEL_PATH=/local/copy) to plan for it.")
    try:
        with open(config_file) as f:
            c = json.load(f)
        return ModelFacts(
            path, layers=int(c["num_hidden_layers"]), hidden=int(c["hidden_size"]), heads=int(c["num_attention_heads"]),
            kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
            intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
            tied_embeddings=bool(c.get("tie_word_embeddings", False)),
            max_positions=int(c.get("max_position_embeddings", 0)),
            qkv_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)), head_dim=c.get("head_dim"))
    except (OSError, KeyError, TypeError, ValueError) as err:  # unreadable, not JSON, a key missing or garbled
        raise UnknownModel(f"actor_rollout_ref.model.path={path}: {config_file} is not a decoder-only transformer's "
                           f"config ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run that decide its memory (each named by its verl key in ``from_config``)."""

    n_gpus: int
    n_gpus_per_node: int
    rollout_tp: int
    samples: int  # per step: prompts x responses per prompt
    sequence_length: int  # prompt and response, at most
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
    reference: bool = False
    update_entropy: bool = False
    compiled_entropy: bool = True
    flash_ce: bool = True

    @classmethod
    def from_config(cls, cfg: Any, flash_ce: bool = True) -> "RunSettings":
        """From a verl config (composed by Hydra, or the recipe file read by OmegaConf)."""
        t, arr, data = cfg["trainer"], cfg["actor_rollout_ref"], cfg["data"]
        actor, rollout, model = arr["actor"], arr["rollout"], arr["model"]
        fsdp = actor.get("fsdp_config") or {}
        length = int(data["max_prompt_length"]) + int(data["max_response_length"])
        # without dynamic batch sizes verl packs micro-batches of whole sequences
        update = int(actor["ppo_max_token_len_per_gpu"]) if actor.get("use_dynamic_bsz") else \
            int(actor.get("ppo_micro_batch_size_per_gpu") or 1) * length
        log_prob = int(rollout["log_prob_max_token_len_per_gpu"]) if rollout.get("log_prob_use_dynamic_bsz") else \
            int(rollout.get("log_prob_micro_batch_size_per_gpu") or 1) * length
        return cls(
            n_gpus=int(t["nnodes"]) * int(t["n_gpus_per_node"]), n_gpus_per_node=int(t["n_gpus_per_node"]),
            rollout_tp=int(rollout["tensor_model_parallel_size"]), samples=int(data["train_batch_size"]) * int(rollout["n"]),
            sequence_length=length,
            max_model_len=None if rollout.get("max_model_len") is None else int(rollout["max_model_len"]),
            max_num_seqs=int(rollout["max_num_seqs"]), max_num_batched_tokens=int(rollout["max_num_batched_tokens"]),
            gpu_memory_utilization=float(rollout["gpu_memory_utilization"]),
            update_tokens_per_gpu=update, log_prob_tokens_per_gpu=log_prob,
            param_offload=bool(fsdp.get("param_offload", False)), optimizer_offload=bool(fsdp.get("optimizer_offload", False)),
            free_cache_engine=bool(rollout.get("free_cache_engine", True)), enforce_eager=bool(rollout.get("enforce_eager", False)),
            gradient_checkpointing=bool(model.get("enable_gradient_checkpointing", False)),
            # verl's need_reference_policy (trainer/ppo/utils.py:79) and the update's entropy (trainer_base.py:1831)
            reference=bool(cfg["algorithm"].get("use_kl_in_reward", False) or actor.get("use_kl_loss", False)),
            update_entropy=bool(actor.get("calculate_entropy", False) or float(actor.get("entropy_coeff", 0)) != 0),
            compiled_entropy=bool(fsdp.get("use_torch_compile", True)), flash_ce=flash_ce,
        )


@dataclass
class Plan:
    """One GPU's plan: GiB per item and phase (``rows``: item, values, uncertainty), the peaks, certain failures on this
    card (``problems``) or on this GPU as busy as it is now (``busy``), and warnings."""

    model: str
    params: int
    card: str
    total_gib: float
    settings: RunSettings
    phases: list[str] = field(default_factory=list)
    rows: list[tuple[str, dict[str, float], float]] = field(default_factory=list)
    exact: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)
    vllm: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


def plan(facts: ModelFacts, s: RunSettings, total_gib: float, card: str, free_gib: Optional[float] = None) -> Plan:
    """The per-GPU plan of run ``s`` of model ``facts`` on ``card`` GPUs of ``total_gib`` CUDA-visible GiB (and,
    on a real GPU, ``free_gib`` free now)."""
    phases = ["rollout", "log_prob"] + (["ref"] if s.reference else []) + ["update"]
    p = Plan(model=facts.name, params=facts.params, card=card, total_gib=total_gib, settings=s, phases=phases)
    n, shard = s.n_gpus, facts.params / s.n_gpus / GIB

    def row(item: str, uncertainty: float = 0.0, **values: float) -> None:
        p.rows.append((item, {ph: values.get(ph, 0.0) for ph in phases}, uncertainty))

    # off the GPU only when offloaded; the reference model's parameters always (docs/gpu.md: the phases)
    params, adam = FP32 * shard, 2 * FP32 * shard
    resident = 0.0 if s.optimizer_offload else adam
    row(f"actor: fp32 parameters (FSDP, 1/{n} each)", rollout=0.0 if s.param_offload else params, log_prob=params,
        ref=0.0 if s.param_offload else params, update=params)
    row("actor: fp32 gradients", update=FP32 * shard)
    row("actor: Adam moments" + (" (on the CPU outside the update)" if s.optimizer_offload else ""),
        rollout=resident, log_prob=resident, ref=resident, update=adam)
    gathered = BF16 * (facts.embedding_params + 2 * facts.layer_params) / GIB  # the unit in use and the next
    row("gathered bf16 embeddings and two layers", U_GATHERED, log_prob=gathered, ref=gathered, update=gathered)
    per_token = lambda hi: BF16 * (hi[0] * facts.hidden + hi[1] * facts.intermediate)  # noqa: E731
    up, lp = s.update_tokens_per_gpu, s.log_prob_tokens_per_gpu
    if s.gradient_checkpointing:  # each layer's input kept; the one recomputed is the working set's
        row(f"actor: activation checkpoints ({up} tokens)", U_ACTIVATIONS, update=up * facts.hidden * BF16 * facts.layers / GIB)
        layer_update = up * per_token(LAYER_BACKWARD) / GIB
    else:  # every layer's activations kept beside the logits
        row(f"actor: activations of every layer ({up} tokens)", U_ACTIVATIONS,
            update=up * per_token(LAYER_BACKWARD) * facts.layers / GIB)
        layer_update = 0.0
    # the logits or one recomputed layer, never both: the lm-head's backward frees the logits first
    logits = facts.vocab * BF16 / GIB
    entropy = LOGITS_ENTROPY_EXTRA[s.compiled_entropy]
    copies_update = (1 if s.flash_ce else LOGITS_UPDATE_NO_FLASH_CE) if not s.update_entropy else 2 + entropy
    forward = per_token(LAYER_FORWARD) / GIB
    row(f"working set: logits or one layer ({lp} / {up} tokens)", U_ACTIVATIONS,
        log_prob=max((1 + entropy) * logits * lp, forward * lp), ref=max(logits * lp, forward * lp),
        update=max(copies_update * logits * up, layer_update))

    # vLLM: one engine per tensor-parallel group, its budget a share of the card's total (vllm/v1/worker/utils.py:410)
    budget = s.gpu_memory_utilization * total_gib
    weights = BF16 * facts.params / s.rollout_tp / GIB
    activations = (s.max_num_batched_tokens * per_token(LAYER_FORWARD) + s.max_num_seqs * facts.vocab * FP32) / GIB
    activations += 0.0 if s.enforce_eager else VLLM_CUDA_GRAPHS_GIB
    seqs = math.ceil(s.samples / max(1, n // s.rollout_tp))
    max_model_len = s.max_model_len or facts.max_positions
    head = facts.head_dim or facts.hidden // facts.heads
    kv_token = 2 * facts.layers * facts.kv_heads * head * BF16 / s.rollout_tp / GIB  # K and V of every layer
    p.vllm = {"budget": budget, "weights": weights, "activations": activations,
              "kv_available": budget - weights - activations, "one_sequence": max_model_len * kv_token,
              "kv_needed": seqs * min(s.sequence_length, max_model_len) * kv_token,
              "sequences_per_engine": seqs, "max_model_len": max_model_len}
    asleep = {} if s.free_cache_engine else {ph: budget for ph in phases[1:]}
    row(f"vLLM: budget {s.gpu_memory_utilization:g} x {total_gib:.1f} GiB" + ("" if s.free_cache_engine else
        " (free_cache_engine=false: kept during training)"), rollout=budget, **asleep)
    if s.free_cache_engine:
        row("vLLM asleep (graph pool, allocator)", U_ASLEEP, **{ph: VLLM_ASLEEP_GIB for ph in phases[1:]})
    contexts = 2 * CUDA_CONTEXT_GIB + NCCL_BUFFERS_GIB
    row("CUDA contexts (actor, vLLM) and NCCL buffers", U_CONTEXT, **{ph: contexts for ph in phases})

    for ph in phases:
        p.exact[ph] = sum(v[ph] for _, v, u in p.rows if not u)
        p.peaks[ph] = sum(v[ph] for _, v, _ in p.rows)
        p.high[ph] = sum(v[ph] * (1 + u) for _, v, u in p.rows)
        p.low[ph] = sum(v[ph] * (1 - u) for _, v, u in p.rows)
        name = ph.replace("_", "-")
        if p.exact[ph] > total_gib:
            p.problems.append(f"the {name} phase's exact items (parameters, gradients, Adam moments, vLLM's budget) "
                              f"alone need {p.exact[ph]:.1f} GiB per GPU, more than the {total_gib:.1f} GiB of a {card}")
        elif p.high[ph] > total_gib:
            p.warnings.append(f"the {name} phase is estimated at {p.peaks[ph]:.1f} GiB per GPU (range {p.low[ph]:.1f}-"
                              f"{p.high[ph]:.1f}: {p.exact[ph]:.1f} exact, the rest estimated), "
                              f"{'more than' if p.peaks[ph] > total_gib else 'within the uncertainty of'} the "
                              f"{total_gib:.1f} GiB of a {card}: it may run out of memory")
    v = p.vllm
    if v["kv_available"] < v["one_sequence"]:  # vllm/v1/core/kv_cache_utils.py:733-760 raises
        p.problems.append(f"vLLM's budget {budget:.1f} GiB less its weights {weights:.1f} and activations "
                          f"{activations:.1f} (estimated) leaves {v['kv_available']:.1f} GiB of KV cache, less than one "
                          f"sequence of max_model_len={max_model_len} tokens ({v['one_sequence']:.2f} GiB): vLLM refuses to start")
    elif v["kv_available"] < v["kv_needed"]:
        p.warnings.append(f"vLLM's KV cache ({v['kv_available']:.1f} GiB) holds fewer than all {seqs} sequences of its "
                          f"share at full length ({v['kv_needed']:.1f} GiB): vLLM queues the rest (slower, same samples)")
    if free_gib is not None and budget > free_gib:  # vllm/v1/worker/utils.py:414-423 request_memory
        p.busy.append(f"vLLM asks for {budget:.1f} GiB ({s.gpu_memory_utilization:g} x {total_gib:.1f}) but only "
                      f"{free_gib:.1f} GiB of the {card} are free: vLLM refuses to start (nvidia-smi lists the processes)")
    elif free_gib is not None and max(p.peaks.values()) > free_gib:
        p.warnings.append(f"the estimated peak {max(p.peaks.values()):.1f} GiB is more than the {free_gib:.1f} GiB free "
                          "on this GPU now (other processes hold the rest: nvidia-smi lists them)")
    return p


def fixes(p: Plan) -> list[str]:
    """Overrides to try when a plan does not fit or may not (most specific first)."""
    s, v, out = p.settings, p.vllm, []
    rollout_over = p.high["rollout"] > p.total_gib
    if rollout_over and not s.optimizer_offload:
        out.append("actor_rollout_ref.actor.fsdp_config.optimizer_offload=true (Adam state on the CPU during rollout)")
    need = v["weights"] + v["activations"] + (v["one_sequence"] if v["kv_available"] < v["one_sequence"] else v["kv_needed"])
    util = math.ceil(100 * need / p.total_gib) / 100
    if (rollout_over and util < s.gpu_memory_utilization) or (v["kv_available"] < v["one_sequence"] and util <= 0.95):
        out.append(f"actor_rollout_ref.rollout.gpu_memory_utilization={util:.2f} (vLLM's weights, activations and KV cache)")
    if max(p.high[ph] for ph in p.phases if ph != "rollout") > p.total_gib:
        out.append(f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={s.update_tokens_per_gpu // 2} (MAX_TOKEN_LEN_PER_GPU; "
                   "also sets log_prob_max_token_len_per_gpu and vLLM's max_num_batched_tokens in the recipe)")
    if rollout_over and not s.param_offload:
        out.append("actor_rollout_ref.actor.fsdp_config.param_offload=true (parameters on the CPU during rollout)")
    return out + ["more GPUs (N_GPUS_PER_NODE, NNODES): every actor state shrinks by 1/N"]


def render(p: Plan, where: str) -> str:
    """The plan as the pre-flight prints it (``where``: how the card was chosen)."""
    s, v = p.settings, p.vllm
    cells = lambda values, w=9: "".join(f"{values[ph]:>{w}.1f}" if values[ph] else f"{'-':>{w}}" for ph in p.phases)  # noqa: E731
    lines = [f"memory plan (an estimate): {p.model} ({p.params / 1e9:.2f}B parameters) on {s.n_gpus} GPU(s), "
             f"{s.n_gpus_per_node} per node; {p.card}, {p.total_gib:.1f} GiB each ({where})",
             f"  {'per GPU, GiB':<60}{'+/-':>6}" + "".join(f"{ph.replace('_', '-'):>9}" for ph in p.phases)]
    lines += [f"  {item:<60}{f'{u:.0%}' if u else 'exact':>6}{cells(values)}" for item, values, u in p.rows]
    lines.append(f"  {'total':<66}{cells(p.peaks)}")
    lines.append(f"  {'range':<66}" + "".join(f"{f'{p.low[ph]:.0f}-{p.high[ph]:.0f}':>9}" for ph in p.phases))
    lines.append(f"  vLLM budget {v['budget']:.1f} GiB = weights {v['weights']:.1f} + activations {v['activations']:.1f} "
                 f"(estimated) + KV cache {v['kv_available']:.1f}; the run needs {v['kv_needed']:.1f} GiB of KV cache "
                 f"({v['sequences_per_engine']} sequences x {min(s.sequence_length, v['max_model_len'])} "
                 "tokens per engine)")
    spare = p.total_gib - max(p.peaks.values())
    lines.append(f"  fits by the estimate: {spare:.1f} GiB ({spare / p.total_gib:.0%}) spare at the peak"
                 if p.fits else "  DOES NOT FIT: " + "; ".join(p.problems))
    return "\n".join(lines + [f"  warning: {w}" for w in p.warnings])


def card_gib(name: str) -> float:
    """CUDA-visible GiB of a named card (``CARDS_MIB``) or of a number of GiB; ValueError naming the choices."""
    if name.replace(".", "", 1).isdigit():
        return float(name)
    if name.lower() not in CARDS_MIB:
        raise ValueError(f"{name}: not a card the plan knows ({', '.join(CARDS_MIB)}) nor a number of GiB")
    return CARDS_MIB[name.lower()] / 1024


def recipe_settings(path: str, n_gpus: int) -> RunSettings:
    """The settings of the recipe file ``path`` on one node of ``n_gpus`` GPUs, without verl or Hydra (the plan's keys
    are all in the file; OmegaConf resolves its interpolations)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node = 1, n_gpus
    return RunSettings.from_config(cfg)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m bnpo.verl.preflight.memory_plan``: the recipe's plan for a model on N GPUs of a named card or of
    this machine; exit 2 when it does not fit."""
    from ...recipe import CONFIG_FILE

    parser = argparse.ArgumentParser(prog="python -m bnpo.verl.preflight.memory_plan", description=main.__doc__)
    parser.add_argument("--model", default="Qwen/Qwen2.5-Math-7B")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs of one node (default: the paper's 4)")
    parser.add_argument("--gpu", default=DEFAULT_CARD, help=f"a card ({', '.join(CARDS_MIB)}) or its CUDA GiB")
    parser.add_argument("--device", action="store_true", help="plan for this machine's fullest CUDA device")
    parser.add_argument("--json", default=None, help="write the plan here")
    args = parser.parse_args(argv)
    if not args.device:
        name, total, free, how = args.gpu, card_gib(args.gpu), None, "named card"
    else:
        import torch

        devices = [(torch.cuda.get_device_name(i), *torch.cuda.mem_get_info(i)) for i in range(torch.cuda.device_count())]
        if not devices:
            print("error: --device: torch sees no CUDA device", file=sys.stderr)
            return 2
        name, free, total = min(devices, key=lambda d: d[1])
        free, total, how = free / GIB, total / GIB, f"this machine's {len(devices)} device(s), the fullest"
    p = plan(model_facts(args.model), recipe_settings(CONFIG_FILE, args.gpus), total, name, free)
    print(render(p, how) + "".join(f"\n  BUSY: {b}" for b in p.busy))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**asdict(p), "rows": [{"item": item, "uncertainty": u, **values} for item, values, u in p.rows],
                       "fits": p.fits, "spare_gib": round(total - max(p.peaks.values()), 3), "free_gib": free,
                       "fixes": fixes(p) if p.problems or p.warnings else []}, f, indent=1)
    return 0 if p.fits and not p.busy else 2


if __name__ == "__main__":
    sys.exit(main())

"""The per-GPU memory plan (bnpo.verl.preflight.memory_plan) for the recipe's two models on 4 x / 8 x 80 GB and 8 x 40 GB,
checked against figures the plan does not contain: cases worked by hand from the models' configs, verl's own
parameter count, and what docs/gpu.md measured on the H200; with the recipe's settings as verl composes them
(DRY_RUN of the run script) and as the plan reads them without verl."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from bnpo.recipe import CONFIG_FILE
from bnpo.verl.preflight import memory_plan
from bnpo.verl.preflight.memory_plan import KNOWN_MODELS, UnknownModel, model_facts
from recipe_helpers import composed

MODELS = {"7b": "Qwen/Qwen2.5-Math-7B", "1.5b": "Qwen/Qwen2.5-Math-1.5B"}
CARDS = {"4x80": (4, "h100-80gb"), "8x80": (8, "h100-80gb"), "8x40": (8, "a100-40gb")}
GIB = 2**30
# Independent figures: the model cards and config.json files of Qwen2.5-Math-7B / 1.5B, worked by hand, and what
# docs/gpu.md measured on the H200. None is read from memory_plan's constants.
P7, EMB7, LAYER7 = 7_615_616_512, 2 * 152064 * 3584, 233_057_792  # 7B: parameters, embeddings + head, one layer
TOKENS, V7 = 32768, 152064  # the recipe's ppo_max_token_len_per_gpu (= log_prob_max_token_len_per_gpu); 7B vocab
LOGITS7 = 9.28125  # GiB: one bf16 copy of the 7B logits, 32768 x 152064 x 2 B (= 152064 / 16384 GiB)
H200_SMI_MIB = (143771, 616)  # the H200's nvidia-smi memory.total and memory.reserved, measured (torch: 143155 MiB)

def recipe_plan(model: str, cluster: str, **changes) -> memory_plan.Plan:
    gpus, card = CARDS[cluster]
    settings = memory_plan.recipe_settings(CONFIG_FILE, gpus)
    settings = memory_plan.RunSettings(**{**settings.__dict__, **changes})
    return memory_plan.plan(model_facts(MODELS[model]), settings, memory_plan.CARDS_MIB[card] / 1024, card)


def test_known_models_have_their_published_parameter_counts():
    # the model cards' counts: 7,615,616,512 (7B) and 1,543,714,304 (1.5B, tied embeddings)
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-7B"].params == P7
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-1.5B"].params == 1_543_714_304
    seven = KNOWN_MODELS["Qwen/Qwen2.5-Math-7B"]
    assert (seven.embedding_params, seven.layer_params) == (EMB7, LAYER7)


def test_a_local_config_json_wins_over_the_known_name(tmp_path):
    folder = tmp_path / "Qwen" / "Qwen2.5-Math-7B"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
        "max_position_embeddings": 512}))
    facts = model_facts(str(folder))
    assert (facts.layers, facts.kv_heads, facts.max_positions) == (2, 2, 512)
    with pytest.raises(UnknownModel, match="actor_rollout_ref.model.path=org/other"):
        model_facts("org/other")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(UnknownModel, match="num_hidden_layers"):
        model_facts(str(tmp_path / "broken"))


def test_the_plan_reads_the_recipe_as_verl_composes_it():
    """The recipe file read without verl (scripts/gpu_check.sh) gives the settings of verl's composed config."""
    from_verl = memory_plan.RunSettings.from_config(composed("scripts/run_qwen_math_7b.sh"))
    assert from_verl == memory_plan.recipe_settings(CONFIG_FILE, 4)


def test_the_recipe_file_is_read_with_omegaconfs_own_interpolation(tmp_path):
    """``oc.select`` and interpolations inside a value, as verl's own config files write them."""
    cfg = OmegaConf.load(CONFIG_FILE)
    cfg.actor_rollout_ref.rollout.max_num_batched_tokens = "${oc.select:actor_rollout_ref.actor.ppo_max_token_len_per_gpu,1}"
    cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu = "${oc.decode:'${data.max_prompt_length}'}"
    path = tmp_path / "recipe.yaml"
    OmegaConf.save(cfg, path)
    settings = memory_plan.recipe_settings(str(path), 4)
    assert settings.max_num_batched_tokens == settings.update_tokens_per_gpu == 1024


def row(p: memory_plan.Plan, start: str, phase: str) -> float:
    """GiB of the plan's first row whose item starts with ``start``, in ``phase``."""
    return next(values[phase] for item, values, _ in p.rows if item.startswith(start))


def per_token_bytes(p: memory_plan.Plan, phase: str, tokens: int = TOKENS) -> float:
    return row(p, "working set", phase) * GIB / tokens


def test_the_parameter_counts_agree_with_verls_flops_counter():
    """verl's FLOPs estimate counts the same matrices: it leaves out biases and norms, and always counts the head as
    a matrix of its own (the 1.5B ties it to the embeddings: one matrix of parameters, two of FLOPs)."""
    from verl.utils.flops_counter import _estimate_qwen2_flops

    for name, biases_and_norms, tied_head in [
        ("Qwen/Qwen2.5-Math-7B", 28 * (3584 + 512 + 512) + 28 * 2 * 3584 + 3584, 0),  # q, k, v biases; 2 norms; final
        ("Qwen/Qwen2.5-Math-1.5B", 28 * (1536 + 256 + 256) + 28 * 2 * 1536 + 1536, 151936 * 1536),
    ]:
        f = KNOWN_MODELS[name]
        config = SimpleNamespace(hidden_size=f.hidden, vocab_size=f.vocab, num_hidden_layers=f.layers,
                                 num_attention_heads=f.heads, num_key_value_heads=f.kv_heads,
                                 intermediate_size=f.intermediate)
        verls = _estimate_qwen2_flops(config, 1, [], 6e-12)  # 6 x N FLOPs per token, per 1e-12 s = N
        assert f.params == pytest.approx(verls - tied_head + biases_and_norms, rel=1e-12, abs=1), name


def test_vllms_budget_is_a_share_of_the_measured_cuda_total():
    """vLLM's budget is a share of what CUDA reports (cudaMemGetInfo), not of nvidia-smi's memory.total: its total
    less its reserve, as measured on the H200 (docs/gpu.md), where torch's total matched it to the MiB."""
    s = memory_plan.recipe_settings(CONFIG_FILE, 4)
    p = memory_plan.plan(model_facts(MODELS["7b"]), s, memory_plan.card_gib("h200-141gb"), "h200-141gb")
    total, reserved = H200_SMI_MIB
    assert p.vllm["budget"] == pytest.approx(0.8 * (total - reserved) / 1024)  # 111.8 GiB; of nvidia-smi's: 112.3


def test_the_exact_rows_worked_by_hand():
    """7B on 4 GPUs: fp32 parameters and gradients 4 B x P7 / 4 each, Adam's two moments twice that; vLLM's bf16
    weights; the KV cache of 128 sequences x 4096 tokens at 2 (K, V) x 28 layers x 4 KV heads x 128 x 2 B."""
    p = recipe_plan("7b", "4x80")
    assert row(p, "actor: fp32 parameters", "update") == pytest.approx(7.0926, abs=1e-4)  # 7,615,616,512 B
    assert row(p, "actor: fp32 gradients", "update") == pytest.approx(7.0926, abs=1e-4)
    assert row(p, "actor: Adam moments", "update") == pytest.approx(14.1852, abs=1e-4)  # docs/gpu.md: 14.2
    assert row(p, "actor: Adam moments", "rollout") == 0  # optimizer_offload: on the CPU
    assert p.vllm["weights"] == pytest.approx(14.1852, abs=1e-4)
    assert p.vllm["kv_needed"] == pytest.approx(28.0)  # 128 x 4096 x 57,344 B = 28 GiB (docs/gpu.md)
    assert p.vllm["one_sequence"] == pytest.approx(0.21875)  # 4096 x 57,344 B
    assert recipe_plan("1.5b", "4x80").vllm["kv_needed"] == pytest.approx(14.0)  # 2 KV heads: 28,672 B per token


def test_the_update_keeps_one_copy_of_the_logits_never_beside_the_recomputed_layer():
    """flash-attn's cross-entropy writes the gradient into the logits (inplace_backward with no entropy), and the
    lm-head's backward frees them before the last checkpointed layer is recomputed: the working set is one bf16
    copy of the logits, which at 32768 tokens outweighs one layer (measured: at most 298,263 B per token, 9.10 GiB)."""
    p = recipe_plan("7b", "4x80")
    assert row(p, "working set", "update") == pytest.approx(LOGITS7)
    with_entropy = recipe_plan("7b", "4x80", update_entropy=True)  # entropy_coeff != 0: the gradient is a copy
    assert row(with_entropy, "working set", "update") == pytest.approx(2 * LOGITS7)
    assert recipe_plan("7b", "4x80", reference=True).peaks["update"] == p.peaks["update"]


@pytest.mark.parametrize("compiled, measured", [(True, 2.0), (False, 14.0)])
def test_the_log_prob_logits_are_what_the_h200_measured(compiled, measured):
    """Old log-probs with verl's entropy: bytes per token and vocabulary entry, measured on the H200 (docs/gpu.md):
    2.0 with verl's compiled entropy, 14.0 eager (use_torch_compile=false)."""
    p = recipe_plan("7b", "4x80", compiled_entropy=compiled)
    assert per_token_bytes(p, "log_prob") / V7 == pytest.approx(measured)
    assert not p.problems and (compiled or "log-prob phase is estimated" in " ".join(p.warnings))


@pytest.mark.parametrize("model, backward, forward", [
    ("7b", (288_199, 298_263), 128_000),  # the measured range over the recompute's steps
    ("1.5b", (140_376, 140_376), 59_904),
])
def test_one_layer_per_token_is_what_the_h200_measured(model, backward, forward):
    """One Qwen2 decoder layer, bytes per token, measured on the H200 (docs/gpu.md): a checkpointed layer's recompute
    and backward (the update's working set) and a forward without gradients (log-prob's). A model with a one-word
    vocabulary has no logits to speak of, so the working set is the layer."""
    facts = dataclasses.replace(model_facts(MODELS[model]), vocab=1)
    s = memory_plan.recipe_settings(CONFIG_FILE, 4)
    p = memory_plan.plan(facts, s, memory_plan.card_gib("h100-80gb"), "h100-80gb")
    assert 0.98 * backward[0] <= per_token_bytes(p, "update") <= 1.02 * backward[1]
    assert per_token_bytes(p, "log_prob") == pytest.approx(forward, rel=0.02)


def test_the_contexts_hold_two_measured_cuda_contexts():
    """The actor's and vLLM's CUDA contexts, 621 MiB each as measured (nvidia-smi on the H200), and NCCL's buffers."""
    p = recipe_plan("7b", "4x80")
    assert 2 * 621 / 1024 <= row(p, "CUDA contexts", "update") <= 2 * 621 / 1024 + 1.0


def test_the_reference_model_stays_on_the_cpu_and_adds_a_phase():
    """use_kl_loss: verl forces a forward-only model's parameters onto the CPU; its forward gathers its layers, and
    its log-probs need no entropy: one bf16 copy of the logits."""
    base, kl = recipe_plan("7b", "4x80"), recipe_plan("7b", "4x80", reference=True)
    assert kl.phases == ["rollout", "log_prob", "ref", "update"] and base.phases == ["rollout", "log_prob", "update"]
    assert kl.peaks["rollout"] == base.peaks["rollout"] and kl.peaks["update"] == base.peaks["update"]
    assert row(kl, "working set", "ref") == pytest.approx(LOGITS7)
    assert row(kl, "actor: fp32 parameters", "ref") == pytest.approx(7.0926, abs=1e-4)  # the actor's, still there
    assert row(kl, "gathered bf16", "ref") == pytest.approx(2.8985, abs=1e-4)  # 2 B x (EMB7 + 2 x LAYER7)
    cfg = composed("scripts/run_qwen_math_7b.sh", "actor_rollout_ref.actor.use_kl_loss=true")
    assert memory_plan.RunSettings.from_config(cfg).reference


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("cluster", ["4x80", "8x80"])
def test_the_recipe_fits_80gb_cards_within_the_uncertainty(model, cluster):
    p = recipe_plan(model, cluster)
    assert p.fits and not p.warnings, (p.problems, p.warnings)
    assert max(p.high.values()) < p.total_gib  # even the estimates' high ends fit
    assert p.vllm["kv_available"] >= p.vllm["kv_needed"]  # every sequence of the engine's share at once


def test_what_is_exact_is_refused_what_is_estimated_warns():
    """The authors' optimizer_offload=false: Adam's moments beside vLLM's budget are more than the card, with no
    estimate in the sum. The 7B on 8 x 40 GB: over the card only at the high end of the estimates."""
    p = recipe_plan("7b", "4x80", optimizer_offload=False)
    assert p.exact["rollout"] == pytest.approx(7.0926 + 14.1852 + 63.3508, abs=1e-3)  # + 0.8 x 81089 MiB: 84.6 GiB
    assert not p.fits and "rollout phase's exact items" in p.problems[0]
    assert memory_plan.fixes(p)[0].startswith("actor_rollout_ref.actor.fsdp_config.optimizer_offload=true")
    assert recipe_plan("7b", "8x80", optimizer_offload=False).fits  # on 8 GPUs each holds half as much
    forty = recipe_plan("7b", "8x40")
    assert forty.fits and any("update phase is estimated" in w for w in forty.warnings), forty.warnings
    fix = next(f for f in memory_plan.fixes(forty) if "ppo_max_token_len_per_gpu" in f)
    tokens = int(fix.split("=")[1].split()[0])
    halved = recipe_plan("7b", "8x40", update_tokens_per_gpu=tokens, log_prob_tokens_per_gpu=tokens,
                         max_num_batched_tokens=tokens)
    assert halved.high["update"] < halved.total_gib  # the suggested fix is enough
    assert recipe_plan("1.5b", "8x40").fits
    awake = recipe_plan("1.5b", "4x80", free_cache_engine=False)  # over the card by the central estimate only
    assert awake.peaks["update"] > awake.total_gib > awake.exact["update"] and awake.fits and awake.warnings


def test_a_budget_without_room_for_one_sequence_is_refused():
    p = recipe_plan("7b", "4x80", gpu_memory_utilization=0.25)
    assert any("vLLM refuses to start" in problem for problem in p.problems)


def test_a_busy_gpu_that_cannot_give_vllm_its_budget_is_refused():
    s = memory_plan.recipe_settings(CONFIG_FILE, 4)
    h100 = memory_plan.card_gib("h100-80gb")
    busy = memory_plan.plan(model_facts(MODELS["7b"]), s, h100, "H100", free_gib=60.0)
    assert busy.fits and any("only 60.0 GiB of the H100 are free: vLLM refuses to start" in b for b in busy.busy)
    assert not memory_plan.plan(model_facts(MODELS["7b"]), s, h100, "H100", free_gib=70.0).busy


def test_vllm_kept_awake_during_training_counts_in_every_phase():
    awake, asleep = recipe_plan("1.5b", "4x80", free_cache_engine=False), recipe_plan("1.5b", "4x80")
    assert row(awake, "vLLM: budget", "update") == pytest.approx(63.3508, abs=1e-3)  # 0.8 x 81089 MiB
    assert row(asleep, "vLLM: budget", "update") == 0 and not any(i.startswith("vLLM asleep") for i, _, _ in awake.rows)
    assert awake.fits and any("update phase is estimated" in w for w in awake.warnings)


def test_the_plan_renders_every_phase_and_the_verdict():
    text = memory_plan.render(recipe_plan("7b", "4x80", reference=True), "named card")
    assert "memory plan (an estimate): Qwen/Qwen2.5-Math-7B (7.62B parameters) on 4 GPU(s)" in text
    assert all(ph in text.splitlines()[1] for ph in ("rollout", "log-prob", "ref", "update", "+/-"))
    assert "exact" in text and "25%" in text and text.splitlines()[-1].startswith("  fits by the estimate:")


def test_memory_plan_command_refuses_what_does_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert memory_plan.main(["--model", MODELS["7b"], "--gpus", "2", "--gpu", "a100-40gb", "--json", str(out)]) == 2
    saved = json.loads(out.read_text())
    assert saved["fits"] is False and saved["fixes"] and saved["settings"]["n_gpus"] == 2
    assert memory_plan.main(["--model", MODELS["1.5b"], "--gpus", "4"]) == 0
    assert "fits by the estimate:" in capsys.readouterr().out

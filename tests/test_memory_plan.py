"""The per-GPU memory plan (bnpo.verl.preflight.memory_plan) for the recipe's two models on 4 x / 8 x 80 GB and 8 x 40 GB,
each correction against a case worked by hand from the shapes, with the recipe's settings as verl composes them
(DRY_RUN of the run script) and as the plan reads them without verl."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from bnpo.recipe import CONFIG_FILE
from bnpo.verl.preflight import memory_plan
from bnpo.verl.preflight.model_facts import KNOWN_MODELS, UnknownModel, from_hf_config, model_facts
from recipe_helpers import composed

MODELS = {"7b": "Qwen/Qwen2.5-Math-7B", "1.5b": "Qwen/Qwen2.5-Math-1.5B"}
CARDS = {"4x80": (4, "h100-80gb"), "8x80": (8, "h100-80gb"), "8x40": (8, "a100-40gb")}
GIB = 2**30
# Qwen2.5-Math-7B by hand: parameters, the embeddings and head (untied), one decoder layer, its shapes
P7, EMB7, LAYER7, H7, I7, V7, L7 = 7_615_616_512, 2 * 152064 * 3584, 233_057_792, 3584, 18944, 152064, 28
TOKENS = 32768  # the recipe's ppo_max_token_len_per_gpu = log_prob_max_token_len_per_gpu
H100 = 81089 / 1024  # an H100's CUDA-visible GiB
CONTEXTS, ASLEEP = 2 * 0.6 + 0.5, 1.0


def recipe_plan(model: str, cluster: str, **changes) -> memory_plan.Plan:
    gpus, card = CARDS[cluster]
    settings = memory_plan.recipe_settings(CONFIG_FILE, MODELS[model], gpus)
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
    with pytest.raises(UnknownModel, match="num_hidden_layers"):
        from_hf_config("x", {"hidden_size": 64})


def test_the_plan_reads_the_recipe_as_verl_composes_it():
    """The recipe file read without verl (scripts/gpu_check.sh) gives the settings of verl's composed config."""
    from_verl = memory_plan.RunSettings.from_config(composed("scripts/run_qwen_math_7b.sh"))
    assert from_verl == memory_plan.recipe_settings(CONFIG_FILE, MODELS["7b"], 4)


def test_the_recipe_file_is_read_with_omegaconfs_own_interpolation(tmp_path):
    """``oc.select`` and interpolations inside a value, as verl's own config files write them."""
    cfg = OmegaConf.load(CONFIG_FILE)
    cfg.actor_rollout_ref.rollout.max_num_batched_tokens = "${oc.select:actor_rollout_ref.actor.ppo_max_token_len_per_gpu,1}"
    cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu = "${oc.decode:'${data.max_prompt_length}'}"
    path = tmp_path / "recipe.yaml"
    OmegaConf.save(cfg, path)
    settings = memory_plan.recipe_settings(str(path), MODELS["7b"], 4)
    assert settings.max_num_batched_tokens == settings.update_tokens_per_gpu == 1024


def test_the_cards_are_planned_with_their_cuda_visible_total():
    """vLLM's budget is a share of what CUDA reports (cudaMemGetInfo), not of nvidia-smi's memory.total."""
    p = recipe_plan("7b", "4x80")
    assert p.total_gib == pytest.approx(81089 / 1024)  # 79.19 GiB; nvidia-smi says 81559 MiB
    assert p.vllm["budget"] == pytest.approx(0.8 * 81089 / 1024)
    assert memory_plan.CARDS_MIB["h200-141gb"] == 143771 - 616  # the H200's nvidia-smi total less its reserve


def test_the_update_keeps_one_copy_of_the_logits_never_beside_the_recomputed_layer():
    """flash-attn's cross-entropy writes the gradient into the logits (inplace_backward with no entropy), and the
    lm-head's backward frees them before the last checkpointed layer is recomputed."""
    p = recipe_plan("7b", "4x80")
    logits = TOKENS * V7 * 2 / GIB  # one bf16 copy: 9.28 GiB
    layer = TOKENS * (10 * H7 + 6 * I7) * 2 / GIB  # one layer's recompute and backward: 9.13 GiB
    states = (4 + 4 + 8) * P7 / 4 / GIB  # fp32 parameters, gradients, Adam moments, 1/4 each
    gathered = 2 * (EMB7 + 2 * LAYER7) / GIB
    checkpoints = TOKENS * H7 * 2 * L7 / GIB
    assert p.peaks["update"] == pytest.approx(states + gathered + checkpoints + max(logits, layer) + ASLEEP + CONTEXTS)
    assert p.peaks["update"] == pytest.approx(49.37, abs=0.01)  # two copies beside the layer were 64.6
    with_entropy = recipe_plan("7b", "4x80", update_entropy=True)  # entropy_coeff != 0: no backward in place
    assert with_entropy.peaks["update"] - p.peaks["update"] == pytest.approx(logits)
    without_flash = recipe_plan("7b", "4x80", flash_ce=False)  # verl's logprobs_from_logits_v2
    assert without_flash.peaks["update"] - p.peaks["update"] == pytest.approx(3 * logits)


def test_the_log_prob_pass_keeps_the_logits_alone_with_verls_compiled_entropy():
    p = recipe_plan("7b", "4x80")
    logits = TOKENS * V7 * 2 / GIB
    expected = 4 * P7 / 4 / GIB + 2 * (EMB7 + 2 * LAYER7) / GIB + logits + ASLEEP + CONTEXTS
    assert p.peaks["log_prob"] == pytest.approx(expected)  # 22.0 GiB; three copies were 40.5
    eager = recipe_plan("7b", "4x80", compiled_entropy=False)  # use_torch_compile=false: 14 bytes per entry
    assert eager.peaks["log_prob"] - p.peaks["log_prob"] == pytest.approx(6 * logits)
    assert not eager.problems and "log-prob phase is estimated" in " ".join(eager.warnings)


def test_the_reference_model_stays_on_the_cpu_and_adds_a_phase():
    """use_kl_loss: verl forces a forward-only model's parameters onto the CPU; its forward gathers its layers."""
    base, kl = recipe_plan("7b", "4x80"), recipe_plan("7b", "4x80", reference=True)
    assert kl.phases == ["rollout", "log_prob", "ref", "update"] and base.phases == ["rollout", "log_prob", "update"]
    assert kl.peaks["rollout"] == base.peaks["rollout"] and kl.peaks["update"] == base.peaks["update"]
    logits = TOKENS * V7 * 2 / GIB  # its log-probs without entropy: one copy
    expected = 4 * P7 / 4 / GIB + 2 * (EMB7 + 2 * LAYER7) / GIB + logits + ASLEEP + CONTEXTS
    assert kl.peaks["ref"] == pytest.approx(expected)
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
    assert p.exact["rollout"] == pytest.approx(12 * P7 / 4 / GIB + 0.8 * H100)  # 84.6 GiB
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
    s = memory_plan.recipe_settings(CONFIG_FILE, MODELS["7b"], 4)
    busy = memory_plan.plan(model_facts(MODELS["7b"]), s, H100, "H100", free_gib=60.0)
    assert busy.fits and any("only 60.0 GiB of the H100 are free: vLLM refuses to start" in b for b in busy.busy)
    assert not memory_plan.plan(model_facts(MODELS["7b"]), s, H100, "H100", free_gib=70.0).busy


def test_vllm_kept_awake_during_training_counts_in_every_phase():
    awake, asleep = recipe_plan("1.5b", "4x80", free_cache_engine=False), recipe_plan("1.5b", "4x80")
    assert awake.peaks["update"] == pytest.approx(asleep.peaks["update"] - ASLEEP + 0.8 * H100)
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

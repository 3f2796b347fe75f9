"""The per-GPU memory plan (bnpo.verl.preflight.memory_plan) for the recipe's two models on 4 x / 8 x 80 GB and 8 x 40 GB, with
the recipe's settings as verl composes them (DRY_RUN of the run script) and as the plan reads them without verl."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from bnpo.verl.preflight import memory_plan
from bnpo.verl.preflight.model_facts import KNOWN_MODELS, UnknownModel, from_hf_config, model_facts
from recipe_helpers import ROOT, composed

RECIPE = ROOT / "recipe/bnpo/config/bnpo_trainer.yaml"
MODELS = {"7b": "Qwen/Qwen2.5-Math-7B", "1.5b": "Qwen/Qwen2.5-Math-1.5B"}
CARDS = {"4x80": (4, "h100-80gb"), "8x80": (8, "h100-80gb"), "8x40": (8, "a100-40gb")}


def recipe_plan(model: str, cluster: str, **changes) -> memory_plan.Plan:
    gpus, card = CARDS[cluster]
    settings = memory_plan.recipe_settings(str(RECIPE), MODELS[model], gpus, gpus)
    settings = memory_plan.RunSettings(**{**settings.__dict__, **changes})
    return memory_plan.plan(model_facts(MODELS[model]), settings, memory_plan.CARDS_MIB[card] / 1024, card)


def test_known_models_have_their_published_parameter_counts():
    # the model cards' counts: 7,615,616,512 (7B) and 1,543,714,304 (1.5B, tied embeddings)
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-7B"].params == 7_615_616_512
    assert KNOWN_MODELS["Qwen/Qwen2.5-Math-1.5B"].params == 1_543_714_304


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
    """The recipe YAML read without verl (scripts/gpu_check.sh) gives the settings of verl's composed config."""
    cfg = composed("scripts/run_qwen_math_7b.sh")
    from_verl = memory_plan.RunSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
    without_verl = memory_plan.recipe_settings(str(RECIPE), MODELS["7b"], 4, 4)
    assert from_verl == without_verl


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("cluster", ["4x80", "8x80"])
def test_the_recipe_fits_80gb_cards_with_margin(model, cluster):
    p = recipe_plan(model, cluster)
    assert p.fits, p.problems
    assert p.spare_gib >= memory_plan.SPARE_WARNING * p.total_gib and not p.warnings, (p.spare_gib, p.warnings)
    assert p.vllm["kv_available"] >= p.vllm["kv_needed"]  # every sequence of the engine's share at once


def test_the_authors_optimizer_setting_does_not_fit_the_7b_run_on_four_80gb_gpus():
    """verl keeps Adam's moments on the GPU while vLLM holds 0.8 of the card: the issue's 21 + 63 GiB + contexts."""
    p = recipe_plan("7b", "4x80", optimizer_offload=False)
    assert not p.fits and "rollout phase needs" in p.problems[0]
    actor = sum(values["rollout"] for item, values in p.rows if item.startswith("actor"))
    assert actor == pytest.approx(12 * 7_615_616_512 / 4 / 2**30)  # fp32 parameters + two fp32 Adam moments, 1/4
    assert memory_plan.fixes(p)[0].startswith("actor_rollout_ref.actor.fsdp_config.optimizer_offload=true")
    assert recipe_plan("7b", "8x80", optimizer_offload=False).fits  # on 8 GPUs each holds half as much


def test_forty_gb_cards():
    assert recipe_plan("1.5b", "8x40").fits
    seven = recipe_plan("7b", "8x40")
    assert not seven.fits and "update phase" in " ".join(seven.problems)
    fix = next(f for f in memory_plan.fixes(seven) if "ppo_max_token_len_per_gpu" in f)
    tokens = int(fix.split("=")[1].split()[0])
    assert recipe_plan("7b", "8x40", update_tokens_per_gpu=tokens, log_prob_tokens_per_gpu=tokens,
                       max_num_batched_tokens=tokens).fits  # the suggested fix is enough


def test_a_budget_without_room_for_one_sequence_is_refused():
    p = recipe_plan("7b", "4x80", gpu_memory_utilization=0.25)
    assert any("vLLM refuses to start" in problem for problem in p.problems)


def test_vllm_kept_awake_during_training_counts_in_every_phase():
    awake = recipe_plan("1.5b", "4x80", free_cache_engine=False)
    assert not awake.fits and awake.peaks["update"] > recipe_plan("1.5b", "4x80").peaks["update"] + 50


def test_the_plan_renders_every_phase_and_the_verdict():
    text = memory_plan.render(recipe_plan("7b", "4x80"), "named card")
    assert "memory plan: Qwen/Qwen2.5-Math-7B (7.62B parameters) on 4 GPU(s)" in text
    assert "rollout" in text and "log-prob" in text and "update" in text
    assert "checkpoints: every 50 steps" in text and text.splitlines()[-1].startswith("  fits:")


def test_memory_plan_command_refuses_what_does_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert memory_plan.main(["--model", MODELS["7b"], "--gpus", "8", "--gpu", "a100-40gb", "--json", str(out)]) == 2
    saved = json.loads(out.read_text())
    assert saved["fits"] is False and saved["fixes"] and saved["settings"]["n_gpus"] == 8
    assert memory_plan.main(["--model", MODELS["1.5b"], "--gpus", "4"]) == 0
    assert "fits:" in capsys.readouterr().out

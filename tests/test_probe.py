"""The gradient-noise probe (``python -m bnpo_probe``): its gradients against the training loss, the
per-question gradients, independent draws per snapshot, the two regimes, and a real ``--smoke`` run (the measures
themselves: test_probe_measures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from recipe_helpers import ROOT

from bnpo.core import fit_beta_moments
from bnpo_probe.loop import ESTIMATORS, EstimatorSpec, Settings, estimate_advantages, run_jobs, train, warm_start
from bnpo_probe import probe
from bnpo_probe.measures import GradientSums, measure
from bnpo_probe.probe import REGIMES, ProbeSettings, batch_gradients, draw_batches, question_gradients
from bnpo_probe.cli import SMOKE, parse_args
from bnpo_probe.report import OUTPUTS
from bnpo_probe.task import build_policy, response_log_probs

# ---------------------------------------------------------------------------------- gradients at a snapshot


@pytest.fixture(scope="module")
def snapshot():
    """A briefly warm-started policy on 1-3 digits (mixed outcomes) and batches of 8 questions x 8 samples."""
    torch.set_num_threads(1)
    s = Settings(prompts_per_step=8, max_digits=3, warm_start_steps=40)
    model = build_policy(s.hidden_size, s.num_layers, s.num_heads, seed=0)
    model.load_state_dict(warm_start(s, 0))
    batches = list(draw_batches(s, model, ("test",), "probe", 4))
    assert any(0 < r < 1 for b in batches for r in b.batch["token_level_rewards"].sum(1).view(-1, 8).mean(1).tolist())
    return s, model, batches


HALF = EstimatorSpec("bnpo", bnpo={"fixed_alpha": 1.0, "fixed_beta": 1.0, "reward_max": 2.0})  # reinforce / 2


def test_gradient_is_the_training_loss_at_ratio_one(snapshot):
    """verl's vanilla loss at old = current log-probs: the REINFORCE surrogate -mean_i A_i sum_t log pi."""
    s, model, batches = snapshot
    batch = batches[0]
    grad, _ = batch_gradients(s, model, batch, {"reinforce": ESTIMATORS["reinforce"]})["reinforce"]
    scored, _ = estimate_advantages(ESTIMATORS["reinforce"], batch)
    log_prob = response_log_probs(model, batch.batch["prompts"], batch.batch["responses"], s.temperature)
    mask = batch.batch["response_mask"]
    surrogate = -((scored.batch["advantages"] * log_prob * mask).sum(1)).mean()
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(surrogate, list(model.parameters()))])
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    assert grad.norm() > 0


def test_scored_policy_is_the_sampling_policy_at_any_temperature(snapshot):
    """At temperature 2 (the unimodal regime) the log-probs the loss uses are those of the sampler, as in verl."""
    s, model, _ = snapshot
    from bnpo_probe.task import sample_responses

    prompts = s.task.sample_prompts(1, torch.Generator().manual_seed(3)).repeat(20000, 1)
    with torch.no_grad():
        first, _ = sample_responses(model, prompts, 1, 2.0, torch.Generator().manual_seed(4))
        tokens = torch.arange(13).unsqueeze(1)
        probs = {t: response_log_probs(model, prompts[:13], tokens, t).exp().flatten() for t in (1.0, 2.0)}
    frequency = torch.bincount(first.flatten(), minlength=13).double() / len(first)
    assert probs[2.0].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (frequency - probs[2.0]).abs().max() < 0.015
    assert (frequency - probs[1.0]).abs().max() > 0.05  # the test can tell the temperatures apart


def test_an_estimator_times_a_constant_has_the_same_noise(snapshot):
    s, model, batches = snapshot
    specs = {"reinforce": ESTIMATORS["reinforce"], "half": HALF, "bnpo": ESTIMATORS["bnpo"]}
    grads = {name: [] for name in specs}
    for batch in batches:
        for name, (grad, _) in batch_gradients(s, model, batch, specs).items():
            grads[name].append(grad)
    stacked = {name: torch.stack(g) for name, g in grads.items()}
    torch.testing.assert_close(stacked["half"], stacked["reinforce"] / 2)
    reference = GradientSums.of(stacked["reinforce"])
    full, half = measure(stacked["reinforce"], reference), measure(stacked["half"], reference)
    for key in ("per_batch_noise", "unbiased_cosine"):
        assert half[key] == pytest.approx(full[key], rel=1e-5), key
    assert half["variance"] == pytest.approx(full["variance"] / 4, rel=1e-5)  # the raw variance is not scale-free
    assert half["signal"] == pytest.approx(full["signal"] / 4, rel=1e-5)
    assert measure(stacked["bnpo"], reference)["per_batch_noise"] != pytest.approx(full["per_batch_noise"], rel=1e-6)


def test_question_gradients_match_a_direct_computation(snapshot):
    s, model, batches = snapshot
    batch = batches[0]
    direction = torch.nn.functional.normalize(torch.randn(sum(p.numel() for p in model.parameters()),
                                                          generator=torch.Generator().manual_seed(0),
                                                          dtype=torch.float64), dim=0)
    levels, squared, along = question_gradients(s, model, batch, direction)
    reward = batch.batch["token_level_rewards"].sum(1).view(-1, 8)
    mixed = [q for q, p in enumerate(reward.mean(1).tolist()) if 0 < p < 1]
    assert levels == [int(reward[q].sum().item()) for q in mixed] and len(squared) == len(along) == len(mixed)
    q = mixed[0]
    rows = slice(8 * q, 8 * q + 8)
    centred = reward[q] - reward[q].mean()
    log_prob = response_log_probs(model, batch.batch["prompts"][rows], batch.batch["responses"][rows])
    total = (centred.unsqueeze(1) * log_prob * batch.batch["response_mask"][rows]).sum()
    h = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, list(model.parameters()))]).double()
    assert squared[0] == pytest.approx(h.pow(2).sum().item(), rel=1e-4)
    assert along[0] == pytest.approx((h @ direction).item(), rel=1e-4, abs=1e-6 * h.norm().item())


def test_every_snapshot_draws_its_own_batches(snapshot, monkeypatch):
    """Every (regime, seed, snapshot) and every purpose has its own random streams: no two share a batch."""
    s, model, _ = snapshot
    drawn = []

    def recording(settings, policy, key, purpose, count):
        for batch in draw_batches(settings, policy, key, purpose, count):
            drawn.append((key, purpose, batch.batch["responses"].clone()))
            yield batch

    monkeypatch.setattr(probe, "draw_batches", recording)
    tiny = replace(ProbeSettings(), **{**SMOKE, "estimators": ("reinforce", "bnpo")})
    state = model.state_dict()
    for seed, step in ((0, 0), (1, 0), (0, 5)):
        probe.probe_snapshot(tiny, s, "u_shaped", seed, step, state)  # the same policy every time
    keys = [(key, purpose) for key, purpose, _ in drawn]
    assert {key for key, _ in keys} == {("u_shaped", 0, 0), ("u_shaped", 1, 0), ("u_shaped", 0, 5)}
    assert {purpose for _, purpose in keys} == {"warmup", "reference", "probe"}
    firsts = {}
    for key, purpose, responses in drawn:
        firsts.setdefault((key, purpose), responses)
    seen = list(firsts.values())
    for i in range(len(seen)):
        for j in range(i):
            assert not torch.equal(seen[i], seen[j])  # the same policy, different random draws


# ---------------------------------------------------------------------------- regimes, runs and the CLI


@pytest.mark.slow  # about a minute: the unimodal regime's 600-step warm start
def test_regimes_give_the_advertised_beta_fits():
    """The README's claim: U-shaped success rates fit a, b < 1; the unimodal regime a, b > 1 (seed 0, warm start)."""
    probe = ProbeSettings()
    names = {f.name for f in fields(Settings)}
    for regime, overrides in REGIMES.items():
        assert set(overrides) <= names, regime
        s = probe.loop_settings(regime)
        model = build_policy(s.hidden_size, s.num_layers, s.num_heads, seed=0)
        model.load_state_dict(warm_start(s, 0))
        batches = draw_batches(s, model, ("regime-test",), "fit", 6)
        p_hat = torch.cat([b.batch["token_level_rewards"].sum(1).view(-1, s.rollout_n).mean(1) for b in batches])
        fit = fit_beta_moments(p_hat)
        if regime == "u_shaped":
            assert fit.a < 1 and fit.b < 1, (float(fit.a), float(fit.b))
        else:
            assert fit.a > 1 and fit.b > 1, (float(fit.a), float(fit.b))


def test_training_keeps_the_asked_states_and_every_run_starts_afresh():
    s = Settings(prompts_per_step=8, max_digits=3, warm_start_steps=5, steps=3)
    state = warm_start(s, 0)
    steps = []
    first = train(s, "bnpo", 0, state, keep_states=(0, 2), on_step=steps.append)
    second = train(s, "bnpo", 0, state, keep_states=(2, 3))
    assert set(first) == {0, 2} and set(second) == {2, 3} and steps == [1, 2, 3]
    assert all(torch.equal(first[0][k], state[k]) for k in state)
    assert all(torch.equal(first[2][k], second[2][k]) for k in state)  # the same streams: the same run
    assert not all(torch.equal(second[2][k], second[3][k]) for k in state)  # and it trains


def _report_three(tag: str) -> str:
    from bnpo_probe.loop import report_progress

    for i in range(3):
        report_progress((tag, i))
    return tag


def test_run_jobs_delivers_every_report_before_returning():
    for workers in (1, 2):
        seen = []
        results = run_jobs([(_report_three, (tag,)) for tag in "abc"], workers, 1, seen.append)
        assert results == ["a", "b", "c"]
        assert sorted(seen) == [(tag, i) for tag in "abc" for i in range(3)]


def test_cli_validates_its_options():
    settings, out, progress = parse_args([])
    assert settings == ProbeSettings() and out == Path("bnpo_probe_out") and progress
    settings, _, _ = parse_args(["--quick", "--regime", "unimodal", "--snapshots", "50", "0"])
    assert settings.regimes == ("unimodal",) and settings.snapshots == (0, 50) and len(settings.seeds) == 1
    assert parse_args(["--smoke"])[0] == replace(ProbeSettings(), **SMOKE)
    for bad in (["--regime", "flat"], ["--batches", "1"], ["--snapshots", "-1"], ["--estimators", "bnpo"],
                ["--quick", "--smoke"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(ValueError, match="unknown regime"):
        ProbeSettings(regimes=("flat",))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("probe") / "out"
    # as the docs run it: python -m bnpo_probe from the checkout (bnpo_probe is not part of the installed bnpo)
    proc = subprocess.run([sys.executable, "-m", "bnpo_probe", "--smoke", "--out", str(out), "--no-progress"],
                          cwd=tmp_path_factory.getbasetemp(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return out, proc.stdout


def test_smoke_run_writes_the_table_and_the_figures(smoke_run):
    out, stdout = smoke_run
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in [name for name in OUTPUTS if name.endswith(".png")]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert table.strip() in stdout
    machine = json.loads((out / "probe_summary.json").read_text())["machine"]
    assert table.strip().endswith(f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, torch {machine['torch']}, "
                                  f"{machine['cpu_capability']} kernels.")
    for regime in REGIMES:
        assert f"**{regime}**" in table
    for name in ProbeSettings().estimators:  # a noise row per regime, and a fit row for the adaptive BNPO estimators
        rows = 2 if name.startswith("bnpo") else 1
        assert table.count(f"| {name} |") == rows * len(REGIMES), name


def test_smoke_summary_has_every_point_and_measure(smoke_run):
    out, _ = smoke_run
    summary = json.loads((out / "probe_summary.json").read_text())
    settings = replace(ProbeSettings(), **SMOKE)
    points = summary["points"]
    assert sorted((pt["regime"], pt["seed"], pt["step"]) for pt in points) == sorted(
        (r, seed, step) for r in settings.regimes for seed in settings.seeds for step in settings.snapshots
    )
    u_shaped = [pt for pt in points if pt["regime"] == "u_shaped"]
    for pt in u_shaped:  # the smoke's u-shaped policy has mixed outcomes: every number is a real one
        for name, entry in pt["estimators"].items():
            assert entry["per_batch_noise"] > 0 and entry["variance"] > 0 and entry["grad_norm"] > 0, name
        for name in ("bnpo", "bnpo_eb_loo"):
            assert set(pt["estimators"][name]["fits"]) == {"a", "b", "alpha", "beta"}
        for name in ("reinforce", "grpo", "eb_loo"):
            assert "fits" not in pt["estimators"][name]
        assert pt["theorem"]["t=0"]["variance_ratio"] == 1.0 and pt["theorem"]["t=0"]["predicted_ratio"] == 1.0
        assert pt["deconvolved"]["n0"] > 0 and 0 < pt["limits"]["baseline"] < 1
        assert sum(pt["kappa"]["count"]) > 0
    regime = summary["regimes"]["u_shaped"]
    for pt in u_shaped:  # one seed: a snapshot's summary is its point; the ratio is the unbiased noise's
        at = regime["snapshots"][str(pt["step"])]
        ratio = pt["estimators"]["bnpo"]["per_batch_noise"] / pt["estimators"]["reinforce"]["per_batch_noise"]
        assert at["estimators"]["bnpo"]["noise_ratio"] == pytest.approx(ratio, rel=1e-3)
        assert at["estimators"]["bnpo"]["noise_ratio_per_seed"] == [at["estimators"]["bnpo"]["noise_ratio"]]
        assert at["a"] == pytest.approx(pt["a"], rel=1e-3)
        assert at["baseline_limit"] == pytest.approx(pt["limits"]["baseline"], rel=1e-3)

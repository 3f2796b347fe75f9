"""Which samples count: rows without response tokens, multi-output sessions, uids and inputs at the edges."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from batches import grouped, outcome_batch, scalar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import reference_ad_bnpo, reference_advantages

from bnpo import BNPOConfig, compute_ad_bnpo_advantage, compute_bnpo_advantage

RATES = [0.125, 0.25, 0.5, 0.625, 0.875, 0.0]


def with_empty_rows(trl, mask, index, rows):
    """Append ``rows`` = [(uid, reward)] samples whose response mask is all zero (like verl's padding)."""
    extra = torch.zeros(len(rows), trl.shape[1], dtype=trl.dtype)
    extra[:, 0] = torch.tensor([reward for _, reward in rows], dtype=trl.dtype)
    uids = np.array(list(index) + [uid for uid, _ in rows], dtype=object)
    return torch.cat([trl, extra]), torch.cat([mask, torch.zeros_like(extra, dtype=mask.dtype)]), uids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(["pad", "q0", "q3", "new"]), st.sampled_from([0.0, 1.0, 7.0, float("nan")])),
             min_size=1, max_size=9),
    st.sampled_from([None, (1.0, 1.0), (1.5, 2.0)]),
)
def test_rows_without_tokens_change_nothing(rows, fixed):
    cfg = BNPOConfig() if fixed is None else BNPOConfig(fixed_alpha=fixed[0], fixed_beta=fixed[1])
    rewards, uids = grouped(RATES, group_size=8)
    trl, mask, index = outcome_batch(rewards, uids)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, cfg)
    padded = with_empty_rows(trl, mask, index, rows)
    adv_p, _, stats_p = compute_bnpo_advantage(*padded, cfg)
    assert torch.equal(adv_p[: len(rewards)], adv) and torch.all(adv_p[len(rewards):] == 0)
    assert stats_p.num_excluded == len(rows) and stats.num_excluded == 0
    assert {k: v for k, v in asdict(stats_p).items() if k != "num_excluded"} == {
        k: v for k, v in asdict(stats).items() if k != "num_excluded"}


def test_padding_rows_no_longer_enter_the_fit():
    # verl's padding: several rows, one shared uid, zero reward -> a fake question with p_hat = 0
    rewards, uids = grouped(RATES, group_size=8)
    trl, mask, index = outcome_batch(rewards, uids)
    padded = with_empty_rows(trl, mask, index, [("pad1234", 0.0)] * 3)
    _, _, stats = compute_bnpo_advantage(*padded, BNPOConfig())
    expected, fit = reference_advantages(rewards, uids)
    _, polluted = reference_advantages(rewards + [0.0] * 3, uids + ["pad1234"] * 3)
    assert stats.alpha == pytest.approx(fit["alpha"]) and stats.beta == pytest.approx(fit["beta"])
    assert abs(polluted["beta"] - fit["beta"]) > 1e-3  # what counting the padding would have done


def test_ad_bnpo_ignores_rows_without_tokens():
    acc, uids = grouped(RATES, group_size=8)
    fmt = [float(x) for x in np.random.default_rng(1).integers(0, 2, size=len(acc))]
    _, mask, index = outcome_batch(acc, uids)
    cfg = BNPOConfig(components=("acc", "format"))
    comps = {"acc": torch.tensor(acc), "format": torch.tensor(fmt)}
    adv, _, stats = compute_ad_bnpo_advantage(comps, mask, index, cfg)
    # verl's padding rows copy the first sample's extra fields (its components) beside zero rewards
    pad_mask = torch.cat([mask, torch.zeros(3, mask.shape[1])])
    pad_comps = {k: torch.cat([v, v[:1].repeat(3)]) for k, v in comps.items()}
    pad_index = np.array(list(index) + ["padX"] * 3, dtype=object)
    trl = torch.zeros(pad_mask.shape)
    trl[: len(acc), 0] = torch.tensor(acc) + torch.tensor(fmt)  # the padding rows: zero reward
    adv_p, _, stats_p = compute_ad_bnpo_advantage(pad_comps, pad_mask, pad_index, cfg, token_level_rewards=trl)
    assert torch.equal(adv_p[: len(acc)], adv) and torch.all(adv_p[len(acc):] == 0)
    assert stats_p.alpha == stats.alpha and stats_p.components["format"].beta == stats.components["format"].beta
    assert stats_p.num_excluded == 3 and stats_p.components["acc"].num_excluded == 3


def sessions(outputs_per_session, rewards, uids):
    """Expand one row per session into ``k`` outputs (verl keeps the final one's reward on all)."""
    rows, final_row, expanded_rewards, expanded_uids = [], [], [], []
    for session, (k, reward, uid) in enumerate(zip(outputs_per_session, rewards, uids)):
        last = len(rows) + k - 1
        for _ in range(k):
            rows.append(session)
            final_row.append(last)
            expanded_rewards.append(reward)
            expanded_uids.append(uid)
    return np.array(final_row), expanded_rewards, expanded_uids


def test_multi_output_sessions_count_once_and_broadcast_the_final_advantage():
    rewards, uids = grouped(RATES, group_size=4)
    k = np.random.default_rng(3).integers(1, 4, size=len(rewards))  # 1-3 outputs per session
    final_row, rewards_x, uids_x = sessions(k, rewards, uids)
    trl, mask, index = outcome_batch(rewards_x, uids_x)
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig(), final_row=final_row)
    expected, fit = reference_advantages(rewards, uids)  # one sample per session
    per_row = torch.tensor(expected, dtype=torch.float64)[torch.tensor(np.repeat(np.arange(len(rewards)), k))]
    torch.testing.assert_close(scalar(adv, mask).double(), per_row, rtol=1e-4, atol=1e-6)
    assert stats.alpha == pytest.approx(fit["alpha"]) and stats.num_broadcast == int((k - 1).sum())
    # counting every output as a sample (no session information) gives other numbers
    inflated, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert not torch.allclose(inflated, adv)


def test_ad_bnpo_sessions():
    acc, uids = grouped(RATES, group_size=4)
    fmt = [float(x) for x in np.random.default_rng(2).integers(0, 2, size=len(acc))]
    k = np.random.default_rng(4).integers(1, 4, size=len(acc))
    final_row, acc_x, uids_x = sessions(k, acc, uids)
    fmt_x = list(np.repeat(fmt, k))
    _, mask, index = outcome_batch(acc_x, uids_x)
    comps = {"acc": torch.tensor(acc_x), "format": torch.tensor(fmt_x)}
    adv, _, _ = compute_ad_bnpo_advantage(comps, mask, index, BNPOConfig(components=("acc", "format")), final_row=final_row)
    expected = np.repeat(reference_ad_bnpo({"acc": acc, "format": fmt}, uids), k)
    torch.testing.assert_close(scalar(adv, mask).double(), torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_bad_final_row():
    trl, mask, index = outcome_batch([0.0, 1.0], ["a", "a"])
    with pytest.raises(ValueError, match=r"final_row must be \(2,\) row indices"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig(), final_row=[0, 5])


# ---- uids and array inputs ----


@pytest.mark.parametrize(
    "index, row",
    [
        (np.array([None, None, None, None], dtype=object), 0),
        (np.array(["a", "a", None, "b"], dtype=object), 2),
        (np.array(["a", "a", "b", float("nan")], dtype=object), 3),
        (np.array([1.0, 1.0, np.nan, 2.0]), 2),
        (torch.tensor([1.0, float("nan"), 2.0, 2.0]), 1),
        (["a", None, "b", "b"], 1),
    ],
)
def test_missing_uids_are_named(index, row):
    trl, mask, _ = outcome_batch([0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=rf"uid of each sample\) is missing \(None or NaN\) .*first: row {row}\)"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())


def test_numpy_inputs_say_what_to_pass():
    trl, mask, index = outcome_batch([0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b"])
    with pytest.raises(TypeError, match=r"response_mask must be a torch.Tensor .* got ndarray; pass torch.as_tensor"):
        compute_bnpo_advantage(trl, mask.numpy(), index, BNPOConfig())
    with pytest.raises(ValueError, match=r"token_level_rewards must be a torch.Tensor .* got ndarray"):
        compute_bnpo_advantage(trl.numpy(), mask, index, BNPOConfig())
    with pytest.raises(ValueError, match=r"response_mask must be a torch.Tensor"):
        compute_ad_bnpo_advantage({"acc": torch.zeros(4)}, mask.tolist(), index, BNPOConfig(components=("acc",)))


# ---- reward shaping ----


def test_range_error_names_token_level_shaping():
    rewards, uids = grouped([0.25, 0.5], group_size=4)
    trl, mask, index = outcome_batch(rewards, uids)
    trl = trl - 0.01 * mask  # a per-token KL penalty on every response token
    with pytest.raises(ValueError, match=r"reward on several tokens .* algorithm.use_kl_in_reward=True.*use_kl_loss=True"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())


def test_range_error_names_the_acc_plus_format_score():
    trl, mask, index = outcome_batch([0.0, 2.0, 1.0, 1.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"acc \+ format .* algorithm.bnpo.reward_max=2"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())


def test_range_error_names_a_penalty_below_the_minimum():
    trl, mask, index = outcome_batch([0.0, 1.0, -0.5, 1.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"penalty .* algorithm.bnpo.reward_min"):
        compute_bnpo_advantage(trl, mask, index, BNPOConfig())


def test_ad_bnpo_refuses_a_score_its_components_do_not_explain():
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    comps = {"acc": torch.tensor(acc)}
    cfg = BNPOConfig(components=("acc",))
    trl, mask, index = outcome_batch([2 * a + 1 for a in acc], uids)  # any function of the components is fine
    compute_ad_bnpo_advantage(comps, mask, index, cfg, token_level_rewards=trl)
    penalised = [2 * a + 1 for a in acc]
    penalised[5] -= 0.25  # an overlong penalty on one sample
    trl, mask, index = outcome_batch(penalised, uids)
    with pytest.raises(ValueError, match=r"ad_bnpo would drop part of the reward: rows \d+ and \d+ have the same components"):
        compute_ad_bnpo_advantage(comps, mask, index, cfg, token_level_rewards=trl)


def test_ad_bnpo_refuses_token_level_shaping():
    acc, uids = grouped([0.25, 0.5, 0.75], group_size=4)
    trl, mask, index = outcome_batch(acc, uids)
    kl = trl - 0.01 * mask
    with pytest.raises(ValueError, match=r"ad_bnpo got token-level rewards on several tokens .*use_kl_in_reward"):
        compute_ad_bnpo_advantage({"acc": torch.tensor(acc)}, mask, index, BNPOConfig(components=("acc",)),
                                  token_level_rewards=kl)


@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_all_solved_or_all_failed_batch_is_zero_with_a_fallback(reward):
    trl, mask, index = outcome_batch([reward] * 12, [f"q{i // 4}" for i in range(12)])
    adv, _, stats = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    assert torch.all(adv == 0) and stats.fallback == "zero_variance" and stats.num_degenerate == 3


def test_empty_responses_and_the_cheap_shaping_test():
    from bnpo.core.scores import shaped_rows

    adv, _, stats = compute_bnpo_advantage(torch.zeros(3, 0), torch.zeros(3, 0), np.array(["a", "a", "b"]), BNPOConfig())
    assert adv.shape == (3, 0) and stats.num_excluded == 3
    rows = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0], [-0.1, -0.1, 0.9], [0.5, 0.0, 0.5],
                         [0.3, 0.2, 0.1]])
    assert shaped_rows(rows).tolist() == [False, False, False, True, True, True]
    assert not shaped_rows(rows.to(torch.int64) * 0).any() and shaped_rows(rows.half()).tolist()[3]


# ---- mask dtypes and layouts (verl's mask is int64; the batch builders' is float) ----


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["full", "late_start", "holes", "empty"]), min_size=8, max_size=40),
    st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool]),
    st.integers(0, 2**16),
)
def test_integer_and_bool_masks_count_the_rows_a_float_mask_does(layouts, dtype, seed):
    """The rows that count are those with a response token anywhere, whatever the mask's dtype: a row whose first
    token is masked out (multi-turn tool output, left padding) counts, an all-zero row does not."""
    rng = np.random.default_rng(seed)
    length = 6
    mask = torch.zeros(len(layouts), length)
    for row, layout in enumerate(layouts):
        if layout == "full":
            mask[row, : rng.integers(1, length + 1)] = 1
        elif layout == "late_start":
            mask[row, rng.integers(1, length):] = 1
        elif layout == "holes":
            mask[row] = torch.from_numpy(rng.integers(0, 2, length).astype(np.float32))
    uids = np.array([f"q{i % 3}" for i in range(len(layouts))], dtype=object)
    trl = torch.zeros(len(layouts), length)
    trl[:, -1] = torch.from_numpy(rng.integers(0, 2, len(layouts)).astype(np.float32))
    want, _, want_stats = compute_bnpo_advantage(trl, mask, uids, BNPOConfig())
    got, _, got_stats = compute_bnpo_advantage(trl, mask.to(dtype), uids, BNPOConfig())
    assert torch.equal(got, want) and got_stats == want_stats
    assert got_stats.num_excluded == int((mask.amax(dim=-1) == 0).sum())


def test_left_padded_and_late_starting_masks():
    """Most rows starting with a masked token (the whole mask is scanned) and a few (only those rows are)."""
    rewards, uids = grouped(RATES, group_size=8)
    trl, mask, index = outcome_batch(rewards, uids)
    flipped = mask.flip(-1)  # left padding: every row ends on its response, most start outside it
    expected, _, _ = compute_bnpo_advantage(trl, mask, index, BNPOConfig())
    for response_mask in (flipped, torch.cat([mask[:-2], flipped[-2:]])):
        adv, _, stats = compute_bnpo_advantage(trl, response_mask.long(), index, BNPOConfig())
        assert stats.num_excluded == 0
        torch.testing.assert_close(scalar(adv, response_mask), scalar(expected, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_broadcast_is_the_mask_times_the_scalar_block_by_block(monkeypatch, dtype):
    """The CPU broadcast goes block by block of rows: blocks of 3 rows over 10 (a partial last block), a
    non-contiguous int64 mask with weights other than 1, give exactly mask * scalar in the advantage dtype."""
    from bnpo.core import advantage

    monkeypatch.setattr(advantage, "_BLOCK_BYTES", 3 * 7 * torch.empty((), dtype=dtype).element_size())
    mask = torch.randint(0, 3, (7, 10)).t()  # (10, 7), not contiguous
    values = torch.randn(10, dtype=torch.float64)
    out = advantage._broadcast(values, mask, dtype)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (10, 7)
    assert torch.equal(out, mask.to(dtype) * values.to(dtype).unsqueeze(-1))


@pytest.mark.parametrize(
    "labels",
    [
        ["b", "a", "c", "a", "b"],
        [3, 1, 2, 1, 3],
        [1, 1.0, True, 2, 0],  # equal as Python's == says, as for np.unique
        [("q", 2), ("q", 1), ("q", 2)],
        ["z" * 40 + str(i % 7) for i in range(50)],
    ],
)
def test_question_ids_are_numpy_uniques_ids(labels):
    from bnpo.core.groups import group_inverse

    array = np.empty(len(labels), dtype=object)
    array[:] = labels
    inverse, num_groups = group_inverse(array, len(labels), torch.device("cpu"))
    uniques, expected = np.unique(array, return_inverse=True)
    assert inverse.tolist() == expected.reshape(-1).tolist() and num_groups == len(uniques)


def test_uids_that_cannot_be_ordered_or_hashed():
    from bnpo.core.groups import BNPOInputError, group_inverse

    with pytest.raises(BNPOInputError, match="mixes label types that cannot be compared"):
        group_inverse(np.array(["a", 1, "a"], dtype=object), 3, torch.device("cpu"))
    unhashable = np.empty(3, dtype=object)
    unhashable[:] = [[1], [0], [1]]  # lists: np.unique's rules (it orders them)
    inverse, num_groups = group_inverse(unhashable, 3, torch.device("cpu"))
    assert inverse.tolist() == [1, 0, 1] and num_groups == 2

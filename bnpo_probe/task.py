"""The probe's task and policy (tensors, no tokenizer): reverse a digit string with a tiny transformer.

The answer to a string of 1..max_digits digits is the digits reversed, then EOS; the reward is binary (exact match).
Longer strings are harder, so a partly trained policy's success rates p(q) spread across (0, 1). Every sequence has
the same length (no attention mask or position shift is needed):
    prompt   (max_digits + 1):  PAD ... PAD d_1 ... d_k SEP      (left-padded)
    response (max_digits + 1):  d_k ... d_1 EOS <anything>       (tokens after EOS are masked)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from verl.utils.torch_functional import get_response_mask, logprobs_from_logits

PAD, SEP, EOS = 10, 11, 12
VOCAB_SIZE = 13


@dataclass(frozen=True)
class ReverseTask:
    """Reverse a string of ``min_digits..max_digits`` digits (length drawn uniformly)."""

    min_digits: int = 1
    max_digits: int = 8

    @property
    def response_length(self) -> int:
        return self.max_digits + 1

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, max_digits + 1) long prompts; the same generator state gives the same questions."""
        lengths = torch.randint(self.min_digits, self.max_digits + 1, (n, 1), generator=generator)
        digits = torch.randint(0, 10, (n, self.max_digits), generator=generator)
        # right-align the k digits of each row: columns before max_digits - k are padding
        is_pad = torch.arange(self.max_digits).unsqueeze(0) < self.max_digits - lengths
        body = torch.where(is_pad, torch.full_like(digits, PAD), digits)
        return torch.cat([body, torch.full((n, 1), SEP)], dim=1)

    def targets(self, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference answers of (n, P) prompts: (n, R) tokens and (n, R) mask of the positions that count."""
        reversed_body = prompts[:, :-1].flip(1)  # reversed digits first, then the left padding
        lengths = (reversed_body != PAD).sum(1, keepdim=True)
        position = torch.arange(self.response_length).unsqueeze(0)
        target = torch.cat([reversed_body, torch.full((prompts.shape[0], 1), PAD)], dim=1)
        target = torch.where(position == lengths, torch.full_like(target, EOS), target)
        return target, (position <= lengths).long()

    def reward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """(n,) float 1.0 iff the response is the reversed digits followed by EOS, else 0.0."""
        target, counted = self.targets(prompts)
        return ((responses == target) | (counted == 0)).all(dim=1).float()


def build_policy(hidden_size: int, num_layers: int, num_heads: int, seed: int) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 decoder from a local config (no download)."""
    config = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=max(1, num_heads // 2), max_position_embeddings=64,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


@torch.no_grad()
def sample_responses(model: Qwen2ForCausalLM, prompts: torch.Tensor, length: int, temperature: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``length`` sampled tokens after each (bs, P) prompt: (bs, length) responses and their mask (1 up to and
    including the first EOS, verl's convention)."""
    out = model(input_ids=prompts, use_cache=True)
    tokens = []
    for _ in range(length):  # tokens, not samples: the batch is sampled at once
        probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
        tokens.append(torch.multinomial(probs, 1, generator=generator))
        out = model(input_ids=tokens[-1], past_key_values=out.past_key_values, use_cache=True)
    responses = torch.cat(tokens, dim=1)
    return responses, get_response_mask(responses, eos_token=EOS, dtype=torch.long)


def response_log_probs(model: Qwen2ForCausalLM, prompts: torch.Tensor, responses: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """(bs, R) log-probabilities of the response tokens (differentiable), of the logits divided by the sampling
    ``temperature`` as verl's actor does: the scored policy is the one that sampled (dividing by 1.0 is exact)."""
    logits = model(input_ids=torch.cat([prompts, responses], dim=1), use_cache=False).logits
    # logits at position t predict token t + 1: the response is predicted from P - 1 to the second-to-last
    return logprobs_from_logits(logits[:, prompts.shape[1] - 1 : -1].float() / temperature, responses)

"""The demo's task for verl: "reverse d_1 ... d_k" (k in ``min_digits..max_digits``) is answered "d_k ... d_1", then
the end-of-turn token; longer strings are harder, so per-question success rates spread across (0, 1). A word-level
tokenizer and a tiny Llama, built locally (no download).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

DATA_SOURCE = "bnpo_demo/reverse_digits"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<|end|>", "<|user|>", "<|assistant|>"]
WORDS = ["reverse", "answer"]  # "answer": the prefix of a chatty answer (the two-reward task's format failure)
DIGITS = [str(d) for d in range(10)]
# "<|user|> reverse 3 1 4 <|end|> <|assistant|>" for the prompt; the model's own <|end|> (its EOS) ends the answer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@dataclass(frozen=True)
class ReversalTask:
    """Reverse ``min_digits..max_digits`` digits (length drawn uniformly)."""

    min_digits: int = 1
    max_digits: int = 6
    heldout_every: int = 8  # one digit string in 8 is held out (by its hash)

    @property
    def max_prompt_tokens(self) -> int:  # "<|user|> reverse" + the digits + "<|end|> <|assistant|>"
        return self.max_digits + 4

    @property
    def max_response_tokens(self) -> int:  # the digits, a chatty answer's "answer" and the end-of-turn token
        return self.max_digits + 2

    def held_out(self, digits: list[str]) -> bool:
        """Whether a digit string belongs to the held-out split: a stable hash of the string, whatever its length, so
        no training or warm-start question can equal a held-out one."""
        return zlib.crc32("".join(digits).encode()) % self.heldout_every == 0

    def questions(self, n: int, seed: int, split: str = "train") -> list[list[str]]:
        """``n`` digit strings (lists of digit words), the same for the same seed. ``"train"`` (RL and warm start):
        drawn with replacement among the strings not held out. ``"val"``: distinct held-out strings of 2+ digits and no
        palindrome (its reversal is its copy, the warm start's wrong habit); a length whose strings run out (11 of the
        100 two-digit strings qualify) is drawn less often."""
        rng = random.Random(seed)
        val = split == "val"
        lengths = range(max(self.min_digits, 2) if val else self.min_digits, self.max_digits + 1)
        chosen: list[list[str]] = []
        seen: set[str] = set()
        for _ in range(1000 * n):
            if len(chosen) == n:
                break
            digits = [rng.choice(DIGITS) for _ in range(rng.choice(lengths))]
            text = "".join(digits)
            if self.held_out(digits) != val or (val and (text in seen or text == text[::-1])):
                continue
            seen.add(text)
            chosen.append(digits)
        if len(chosen) < n:
            raise ValueError(f"only {len(chosen)} distinct {split} questions of {self.min_digits}-{self.max_digits} "
                             f"digits found for the {n} asked: ask for fewer, or allow longer strings")
        return chosen

    @staticmethod
    def prompt_text(digits: list[str]) -> str:
        return "reverse " + " ".join(digits)

    @staticmethod
    def answer_text(digits: list[str]) -> str:
        return " ".join(reversed(digits))

    def rows(self, n: int, seed: int, split: str, data_source: str = DATA_SOURCE) -> list[dict]:
        """verl's RL rows: data_source, prompt (chat messages), ability, reward_model (ground truth), extra_info."""
        return [{"data_source": data_source, "prompt": [{"role": "user", "content": self.prompt_text(digits)}],
                 "ability": "reversal", "reward_model": {"style": "rule", "ground_truth": self.answer_text(digits)},
                 "extra_info": {"split": split, "index": index, "num_digits": len(digits)}}
                for index, digits in enumerate(self.questions(n, seed, split))]


def build_tokenizer():
    """Word-level tokenizer over the task's words, digits and chat markers (EOS = ``<|end|>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS + DIGITS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<|end|>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class PolicySize:
    """A Llama decoder small enough to train in seconds on a CPU (84K parameters at the defaults)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2  # head size 32: vLLM's CPU attention takes 32, 64, 80, ..., not 16
    intermediate_size: int = 128


"""The demo's supervised warm start: plain torch next-token training, saved as a Hugging Face checkpoint.

RL from a random policy would wait long for its first reward. The warm start imitates a sloppy teacher: a share
``copy_share`` of its answers copies the digits instead of reversing them, so the policy has both habits (as a base
model may know how to solve a task without the habit of doing so) and, stopped early, still fails some long
strings. Success rates then spread across (0, 1), every estimator has signal from the first step, and RL learns
in minutes which habit the reward pays for. Prompts go through the chat template, as in verl's agent loop, so the
token ids are those RL sees. Every run of a demo starts from this one checkpoint. For the two-reward task a share
``prefix_share`` of answers starts with "answer", which the format reward refuses. Questions: the training split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .reversal import PolicySize, ReversalTask, build_policy, build_tokenizer


@dataclass(frozen=True)
class WarmStart:
    """The warm start's hyperparameters."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    copy_share: float = 0.5  # answers that copy the digits instead of reversing them
    prefix_share: float = 0.0  # answers that begin with "answer" (drawn independently of copy_share)
    seed: int = 0


def prompt_ids(tokenizer, task: ReversalTask, digits: list[str]) -> list[int]:
    """The prompt's token ids as verl's agent loop renders them (chat template, generation prompt)."""
    messages = [{"role": "user", "content": task.prompt_text(digits)}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def answer_ids(tokenizer, task: ReversalTask, digits: list[str], copy: bool = False, prefix: bool = False) -> list[int]:
    """The reference answer's token ids, then EOS; the sloppy teacher's: ``copy``, the digits in the prompt's order;
    ``prefix``, "answer" before the digits."""
    text = " ".join(digits) if copy else task.answer_text(digits)
    text = f"answer {text}" if prefix else text
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def supervised_batch(tokenizer, task: ReversalTask, questions: list[list[str]], copies: list[bool] | None = None,
                     prefixes: list[bool] | None = None):
    """(input_ids, attention_mask, labels), each (n, T) long: right-padded; labels -100 outside the answers.
    ``copies`` / ``prefixes``: which answers are the sloppy teacher's copies / chatty answers (default: none)."""
    import torch

    copies = copies or [False] * len(questions)
    prefixes = prefixes or [False] * len(questions)
    sequences = [(prompt_ids(tokenizer, task, q), answer_ids(tokenizer, task, q, c, p))
                 for q, c, p in zip(questions, copies, prefixes)]
    width = max(len(p) + len(a) for p, a in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    attention_mask = torch.zeros_like(input_ids)
    for row, (prompt, answer) in enumerate(sequences):
        ids = prompt + answer
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(answer)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask, labels


def warm_start_questions(task: ReversalTask, settings: WarmStart) -> list[list[str]]:
    """The warm start's questions: the training split, from a stream apart from the RL data's seed."""
    return task.questions(settings.steps * settings.batch_size, seed=1_000_003 + settings.seed, split="train")


def warm_start(task: ReversalTask, size: PolicySize, settings: WarmStart, out_dir: Path) -> dict:
    """Train, save model and tokenizer into ``out_dir``; returns {"loss_first", "loss_last", "parameters"}."""
    import torch

    tokenizer = build_tokenizer()
    model = build_policy(tokenizer, size, settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    questions = warm_start_questions(task, settings)
    rng = random.Random(2_000_003 + settings.seed)
    copies = [rng.random() < settings.copy_share for _ in questions]
    prefixes = [rng.random() < settings.prefix_share for _ in questions]
    losses = []
    model.train()
    for step in range(settings.steps):
        rows = slice(step * settings.batch_size, (step + 1) * settings.batch_size)
        input_ids, attention_mask, labels = supervised_batch(tokenizer, task, questions[rows], copies[rows],
                                                             prefixes[rows])
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "loss_first": losses[0], "loss_last": losses[-1],
        "parameters": sum(p.numel() for p in model.parameters()),
    }

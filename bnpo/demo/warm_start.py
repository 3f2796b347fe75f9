"""The demo's warm start: torch next-token training of a random Llama, saved as a Hugging Face checkpoint. RL from
a random policy would wait long for its first reward, so it imitates a sloppy teacher whose answers copy the digits
instead of reversing them (``copy_share``): the policy has both habits, as a base model may, success rates spread
across (0, 1), and RL learns in minutes which habit the reward pays for. ``prefix_share``: answers that start with
"answer", which the two-reward task's format reward refuses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .reversal import PolicySize, ReversalTask, build_tokenizer


@dataclass(frozen=True)
class WarmStart:
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    copy_share: float = 0.5  # answers that copy the digits instead of reversing them
    prefix_share: float = 0.0  # answers that begin with "answer" (drawn independently of copy_share)
    seed: int = 0


def prompt_ids(tokenizer, task: ReversalTask, digits: list[str]) -> list[int]:
    """The prompt's token ids as verl's agent loop renders them (chat template, generation prompt): the ids RL sees."""
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
    from torch.nn.utils.rnn import pad_sequence

    copies = copies or [False] * len(questions)
    prefixes = prefixes or [False] * len(questions)
    prompts = [prompt_ids(tokenizer, task, q) for q in questions]
    answers = [answer_ids(tokenizer, task, q, c, p) for q, c, p in zip(questions, copies, prefixes)]
    sequences = [torch.tensor(p + a) for p, a in zip(prompts, answers)]
    input_ids = pad_sequence(sequences, batch_first=True, padding_value=tokenizer.pad_token_id)
    labels = pad_sequence([torch.tensor([-100] * len(p) + a) for p, a in zip(prompts, answers)], batch_first=True,
                          padding_value=-100)
    attention_mask = (torch.arange(input_ids.shape[1]) < torch.tensor([len(s) for s in sequences])[:, None]).long()
    return input_ids, attention_mask, labels


def warm_start_questions(task: ReversalTask, settings: WarmStart) -> list[list[str]]:
    """The warm start's questions: the training split, from a stream apart from the RL data's seed."""
    return task.questions(settings.steps * settings.batch_size, seed=1_000_003 + settings.seed, split="train")


def warm_start(task: ReversalTask, size: PolicySize, settings: WarmStart, out_dir: Path) -> dict:
    """Train, save model and tokenizer into ``out_dir``; returns {"loss_first", "loss_last", "parameters"}."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                         intermediate_size=size.intermediate_size, num_hidden_layers=size.num_layers,
                         num_attention_heads=size.num_heads, num_key_value_heads=size.num_heads,
                         max_position_embeddings=64, tie_word_embeddings=False, **special)
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special)
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
    model.save_pretrained(out_dir)  # creates the folder
    tokenizer.save_pretrained(out_dir)
    return {"loss_first": losses[0], "loss_last": losses[-1], "parameters": sum(p.numel() for p in model.parameters())}

"""Build the CPU smoke run's inputs from nothing: a tiny Llama model, its tokenizer and a dataset.

    python scripts/cpu_smoke/make_assets.py OUT_DIR [--train-rows 64] [--seed 0]

Writes OUT_DIR/model (config, random weights, generation config, tokenizer with a chat template)
and OUT_DIR/train.parquet in verl's row schema. No downloads.

The task is one-digit modular addition ("3 plus 9" -> "2"). The vocabulary is kept small (about 40
word tokens) so that a randomly initialised model already earns the rule-based reward of
``reward.py`` now and then, which gives BNPO non-degenerate per-question success rates to fit.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DATA_SOURCE = "bnpo_cpu_smoke/mod10_add"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = ["what", "is", "plus", "mod", "ten", "answer", "with", "one", "digit", "the", "sum", "=", "?", ".", "so"]
DIGITS = [str(d) for d in range(10)]
INSTRUCTION = "answer with one digit ."
# Renders [{role, content}, ...] as "<|role|> content <|end|>" per turn; the generation prompt opens an
# assistant turn, and the model's own <|end|> (its EOS) closes it.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the task's words, digits and chat markers."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS + DIGITS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """2 layers, hidden 64, 2 heads of 32 (vLLM's CPU attention takes head sizes 32, 64, 80, ...,
    not 16): about 0.1 M parameters, random weights."""
    torch.manual_seed(seed)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, **special)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special)
    return model


def build_rows(num_rows: int, seed: int, split: str) -> pd.DataFrame:
    """Rows in verl's RL schema: data_source, prompt (chat messages), ability, reward_model, extra_info."""
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        a, b = rng.randrange(10), rng.randrange(10)
        question = f"what is {a} plus {b} mod ten ? {INSTRUCTION}"
        rows.append({"data_source": DATA_SOURCE, "prompt": [{"role": "user", "content": question}],
                     "ability": "arithmetic", "reward_model": {"style": "rule", "ground_truth": str((a + b) % 10)},
                     "extra_info": {"split": split, "index": index, "a": a, "b": b}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_dir = args.out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(model_dir)
    build_model(tokenizer, args.seed).save_pretrained(model_dir)
    build_rows(args.train_rows, args.seed, "train").to_parquet(args.out_dir / "train.parquet")
    print(f"wrote {model_dir} (vocab {len(tokenizer)}) and {args.out_dir / 'train.parquet'} ({args.train_rows} rows)")


if __name__ == "__main__":
    main()

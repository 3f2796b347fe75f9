"""What the memory plan needs to know about a model: its architecture, without its weights. Pure Python.

The recipe's two models are known by name (their Hugging Face ``config.json`` values, written down here), so a plan
needs neither the files nor a download; any other model is read from a local folder's ``config.json``. The parameter
count follows from the architecture (decoder-only, Qwen2 / Llama layout); for the two known models it is the
published one (``tests/test_memory_plan.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelFacts:
    """A decoder-only transformer's shape. ``qkv_bias``: Qwen2 has biases on q, k and v (Llama has none)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    max_positions: int
    qkv_bias: bool = True
    head_dim: Optional[int] = None

    @property
    def layer_params(self) -> int:
        """One decoder layer: attention (q, k, v, o and their biases), gated MLP, two norms."""
        d = self.head_dim or self.hidden // self.heads
        q, kv = self.heads * d, self.kv_heads * d
        return 2 * self.hidden * (q + kv) + (q + 2 * kv) * self.qkv_bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        """Input embeddings and, if untied, the output head."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden  # and the final norm

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of vLLM's bf16 KV cache per token: K and V of every layer."""
        return 2 * self.layers * self.kv_heads * (self.head_dim or self.hidden // self.heads) * 2


# The recipe's models, from their config.json on the Hugging Face hub.
KNOWN_MODELS = {m.name: m for m in (
    ModelFacts("Qwen/Qwen2.5-Math-7B", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
               tied_embeddings=False, max_positions=4096),
    ModelFacts("Qwen/Qwen2.5-Math-1.5B", layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
               tied_embeddings=True, max_positions=4096),
)}


class UnknownModel(ValueError):
    """The model is neither one of ``KNOWN_MODELS`` nor a local folder with a readable config.json."""


def from_hf_config(name: str, config: dict) -> ModelFacts:
    """Facts from a Hugging Face ``config.json`` dict (Qwen2 / Llama-style keys)."""
    try:
        return ModelFacts(
            name, layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
            intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_positions=int(config.get("max_position_embeddings", 0)),
            qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
            head_dim=config.get("head_dim"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UnknownModel(f"{name}: config.json lacks or garbles {err} (a decoder-only transformer's keys)") from None


def model_facts(path: str) -> ModelFacts:
    """Facts of ``actor_rollout_ref.model.path``: a local folder's config.json wins, else a known hub id."""
    config_file = os.path.join(os.path.expanduser(path), "config.json")
    if os.path.isfile(config_file):
        try:
            with open(config_file) as f:
                return from_hf_config(path, json.load(f))
        except (OSError, json.JSONDecodeError) as err:
            raise UnknownModel(f"actor_rollout_ref.model.path={path}: cannot read {config_file} ({err})") from None
    if path in KNOWN_MODELS:
        return KNOWN_MODELS[path]
    raise UnknownModel(f"actor_rollout_ref.model.path={path}: not a local folder with a config.json, and not one of the "
                       f"models known without their files ({', '.join(KNOWN_MODELS)}). Download it (MODEL_PATH=/local/copy) "
                       "to plan for it.")

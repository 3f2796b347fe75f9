"""The generation server of the CPU rollout: a Ray actor that runs transformers ``generate``.

It answers verl's token-in/token-out ``generate`` call the way verl's vLLM server does (same
arguments, a ``TokenOutput`` back), so verl's agent loop, load balancer and ``LLMServerClient`` use
it unchanged. Requests that arrive together are decoded as one left-padded batch. Weights come from
the training worker after every step (``update_weights``), as a dict of full CPU tensors.

Development and testing backend: one process, no KV-cache reuse across requests, no paging.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from verl.utils.fs import copy_to_local
from verl.workers.rollout.replica import TokenOutput


# Requests arriving within this window share one generate call.
_BATCH_WINDOW_S = 0.05


@dataclass
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    done: asyncio.Future = field(repr=False)


def _sampling_key(sampling_params: dict[str, Any]) -> tuple:
    """Requests with equal keys can share a ``generate`` call."""
    return (
        float(sampling_params.get("temperature", 1.0)),
        float(sampling_params.get("top_p", 1.0)),
        int(sampling_params.get("top_k", -1)),
        float(sampling_params.get("repetition_penalty", 1.0)),
        bool(sampling_params.get("logprobs", False)),
        bool(sampling_params.get("ignore_eos", False)),
    )


def _generation_config(key: tuple, max_new_tokens: int, pad_id: int, eos_ids: list[int]) -> GenerationConfig:
    temperature, top_p, top_k, repetition_penalty, _, ignore_eos = key
    greedy = temperature <= 0.0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy or top_k <= 0 else top_k,  # verl/vLLM use -1 for "off", HF uses 0/None
        repetition_penalty=repetition_penalty,
        pad_token_id=pad_id,
        eos_token_id=None if ignore_eos else eos_ids,
        return_dict_in_generate=True,
        output_scores=True,
    )


class CPUGenerationServer:
    """Token-in/token-out generation with a Hugging Face causal LM on the CPU.

    Args:
        config: verl ``RolloutConfig`` (``prompt_length``, ``response_length``, ``dtype``, ``seed``).
        model_config: verl's model config (``HFModelConfig`` or its DictConfig); ``path`` names the model.
        replica_rank: rank of the owning replica (for logs and actor names).
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0) -> None:
        self.config = config
        self.replica_rank = replica_rank
        self.global_steps: Optional[int] = None
        torch.manual_seed(int(getattr(config, "seed", 0) or 0) + replica_rank)
        dtype = getattr(torch, str(getattr(config, "dtype", "float32")))
        model_path = getattr(model_config, "local_path", None) or copy_to_local(model_config.path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.eval()
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids: list[int] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else self.model.config.pad_token_id
        if pad is None:
            if not self.eos_ids:
                raise ValueError(
                    f"model at {model_path} has neither pad_token_id nor eos_token_id in its "
                    "config/generation_config; set one so prompts can be left-padded."
                )
            pad = self.eos_ids[0]
        self.pad_id = int(pad)
        self._pending: dict[tuple, list[_Request]] = {}
        self._flush_task: Optional[asyncio.Task] = None
        self._model_lock = asyncio.Lock()

    # ------------------------------------------------------------------ generation

    def _max_new_tokens(self, prompt_len: int, sampling_params: dict[str, Any]) -> int:
        limit = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
        if limit is None:
            limit = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - prompt_len,
            )
        return max(1, int(limit))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Generate a response for ``prompt_ids`` (verl's server ``generate`` contract)."""
        if image_data is not None or video_data is not None:
            raise NotImplementedError(
                "the CPU rollout (rollout.name=hf_cpu) is text-only; drop image/video inputs from the data"
            )
        prompt_ids = [int(t) for t in prompt_ids]
        key = _sampling_key(sampling_params)
        request = _Request(
            prompt_ids=prompt_ids,
            max_new_tokens=self._max_new_tokens(len(prompt_ids), sampling_params),
            done=asyncio.get_running_loop().create_future(),
        )
        self._pending.setdefault(key, []).append(request)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_after_window())
        token_ids, log_probs, finished = await request.done
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if key[4] else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "eos_reached": finished},
        )

    async def _flush_after_window(self) -> None:
        await asyncio.sleep(_BATCH_WINDOW_S)
        while self._pending:
            key, requests = self._pending.popitem()
            try:
                async with self._model_lock:
                    results = await asyncio.to_thread(self._generate_batch, key, requests)
            except Exception as exc:  # hand the error to every waiting caller, not to the event loop
                for request in requests:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            for request, result in zip(requests, results, strict=True):
                request.done.set_result(result)

    @torch.no_grad()
    def _generate_batch(self, key: tuple, requests: list[_Request]) -> list[tuple[list[int], list[float], bool]]:
        """Decode a batch of prompts; returns per request (token_ids, log_probs, eos_reached)."""
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):  # left padding: decoding continues every row at column `width`
            input_ids[row, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            attention_mask[row, width - len(request.prompt_ids) :] = 1
        max_new = max(r.max_new_tokens for r in requests)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=_generation_config(key, max_new, self.pad_id, self.eos_ids),
        )
        new_tokens = out.sequences[:, width:]  # (n, T)
        # Processed log-probs (after temperature/top-k/top-p), like vLLM's logprobs_mode=processed_logprobs.
        scores = torch.stack(out.scores, dim=1).float()  # (n, T, vocab)
        log_probs = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (n, T)
        is_eos = torch.isin(new_tokens, torch.tensor(self.eos_ids, dtype=torch.long)) if self.eos_ids else None
        results = []
        for row, request in enumerate(requests):
            length = min(request.max_new_tokens, new_tokens.shape[1])
            reached = False
            if is_eos is not None and key[5] is False:
                hits = torch.nonzero(is_eos[row, :length]).flatten()
                if hits.numel() > 0:
                    length, reached = int(hits[0]) + 1, True  # keep the EOS token, as vLLM does
            results.append((new_tokens[row, :length].tolist(), log_probs[row, :length].tolist(), reached))
        return results

    # ------------------------------------------------------------------ weights and lifecycle

    def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Load full-tensor weights sent by the training worker; returns the number of tensors loaded."""
        own = self.model.state_dict()
        unknown = sorted(set(named_tensors) - set(own))
        if unknown:
            raise KeyError(
                f"CPU rollout got weights the rollout model does not have: {unknown[:5]} (of {len(unknown)}); "
                "the actor and actor_rollout_ref.model.path must describe the same architecture."
            )
        with torch.no_grad():
            for name, tensor in named_tensors.items():
                own[name].copy_(tensor.to(own[name].dtype))
        if global_steps is not None:
            self.global_steps = global_steps
        return len(named_tensors)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    def get_server_address(self) -> str:
        return f"bnpo-cpu-rollout-{self.replica_rank}"

    # The CPU holds weights and activations in ordinary memory: there is nothing to free or resume.
    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs: Any) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

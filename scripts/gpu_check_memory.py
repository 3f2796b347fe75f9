"""The memory plan's measured estimates, measured again on this CUDA device (scripts/gpu_check.sh, step 5).

The device and one process's CUDA context (nvidia-smi), then torch's allocator peak above what was allocated before
for the old-log-prob logits with verl's entropy (skipped without verl) and one Qwen2 decoder layer, per token, with
the recipe's models' shapes and bf16 autocast as verl's FSDP actor runs them (no FSDP, no verl engine; sdpa
attention where verl uses flash-attn). ``memory_plan``'s CUDA_CONTEXT_GIB, LAYER_BACKWARD, LAYER_FORWARD and
LOGITS_ENTROPY_EXTRA come from these on one H200. Needs torch with CUDA and transformers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

SHAPES = {"7b": (3584, 18944, 28, 4), "1.5b": (1536, 8960, 12, 2)}  # hidden, intermediate, heads, kv heads
VOCAB, TOKENS, SEQS, SEQ_LEN = 152064, 8192, 8, 4096


def smi(fields: str) -> list[str]:
    out = subprocess.run(["nvidia-smi", "-i", "0", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True)
    return [c.strip() for c in out.stdout.split(",")]


def device() -> dict:
    """torch's and nvidia-smi's view of the device, and the memory one process's CUDA context takes (nvidia-smi's
    memory.used before and after torch starts it)."""
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not info["cuda_available"]:
        return info
    name, driver, total, reserved, used_before = smi("name,driver_version,memory.total,memory.reserved,memory.used")
    torch.zeros(1, device="cuda:0")
    torch.cuda.synchronize()
    return {**info, "device": name, "driver": driver, "nvidia_smi_total_mib": int(total),
            "nvidia_smi_reserved_mib": int(reserved), "cuda_total_mib": torch.cuda.mem_get_info(0)[1] / 2**20,
            "cuda_context_mib": int(smi("memory.used")[0]) - int(used_before),
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}


def peak_above(fn) -> int:
    """Bytes the allocator's peak rises above what is allocated when ``fn`` starts (run once before, to warm up)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def log_prob_logits(entropy) -> dict:
    h = torch.randn(TOKENS, SHAPES["7b"][0], device="cuda", dtype=torch.bfloat16)
    w = torch.randn(VOCAB, SHAPES["7b"][0], device="cuda", dtype=torch.bfloat16) * 0.02
    out = {}
    for label, fn in (("eager", entropy), ("compiled", torch.compile(entropy, dynamic=True))):
        def step(fn=fn):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                fn(torch.nn.functional.linear(h, w))

        out[f"log_prob_{label}_bytes_per_token_vocab"] = peak_above(step) / TOKENS / VOCAB
    return out


def layer(name: str) -> dict:
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    hidden, intermediate, heads, kv = SHAPES[name]
    config = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                         num_key_value_heads=kv, num_hidden_layers=1, vocab_size=1000)
    config._attn_implementation = "sdpa"
    module = Qwen2DecoderLayer(config, 0).cuda().bfloat16()
    x = torch.randn(SEQS, SEQ_LEN, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(SEQ_LEN, device="cuda").expand(SEQS, -1)
    with torch.no_grad():
        emb = Qwen2RotaryEmbedding(config).cuda()(x, pos)

    def backward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = torch.utils.checkpoint.checkpoint(lambda t: module(t, position_embeddings=emb, position_ids=pos), x,
                                                  use_reentrant=False)
        y.backward(torch.ones_like(y))
        x.grad = None
        module.zero_grad(set_to_none=True)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            module(x, position_embeddings=emb, position_ids=pos)

    grads = 2 * (sum(p.numel() for p in module.parameters()) + x.numel())  # not activations: dropped at once
    tokens = SEQS * SEQ_LEN
    return {"backward_bytes_per_token": (peak_above(backward) - grads) / tokens,
            "forward_bytes_per_token": peak_above(forward) / tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = {**device(), "layers": {name: layer(name) for name in SHAPES}}
    try:
        from verl.utils.torch_functional import entropy_from_logits
    except ImportError as err:
        report["logits"] = {"skipped": f"verl does not import ({err})"}
    else:
        report["logits"] = log_prob_logits(entropy_from_logits)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

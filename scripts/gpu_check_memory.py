"""The memory plan's measured estimates, measured again on this CUDA device (scripts/gpu_check.sh, step 5).

Each figure is the peak of torch's allocator above what was allocated before, with the recipe's models' shapes and
bf16 autocast as verl's FSDP actor runs them (no FSDP, no verl engine; sdpa attention where verl's actor uses
flash-attn): the CUDA total beside nvidia-smi's total and reserve, one process's CUDA context, the old-log-prob pass's
logits with verl's entropy (eager and compiled, bytes per token and vocabulary entry), and one Qwen2 decoder layer
per token (checkpointed recompute and backward; a forward without gradients). ``memory_plan`` states what it took
from these on one H200 (``CUDA_CONTEXT_GIB``, ``LAYER_BACKWARD``, ``LAYER_FORWARD``, ``LOGITS_ENTROPY_EXTRA``).
Needs torch with CUDA and transformers; verl for the entropy (without it that item is skipped).
"""

from __future__ import annotations

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
        for p in module.parameters():
            p.grad = None

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            module(x, position_embeddings=emb, position_ids=pos)

    grads = 2 * (sum(p.numel() for p in module.parameters()) + x.numel())  # not activations: dropped at once
    tokens = SEQS * SEQ_LEN
    return {"backward_bytes_per_token": (peak_above(backward) - grads) / tokens,
            "forward_bytes_per_token": peak_above(forward) / tokens}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    name, smi_total, reserved, used_before = smi("name,memory.total,memory.reserved,memory.used")
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info(0)
    report = {"device": name, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "nvidia_smi_total_mib": int(smi_total), "nvidia_smi_reserved_mib": int(reserved),
              "cuda_total_mib": total / 2**20, "cuda_context_mib": int(smi("memory.used")[0]) - int(used_before)}
    report["layers"] = {name: layer(name) for name in SHAPES}
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

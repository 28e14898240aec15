"""PyTorch's figures for the crate's model-level benchmarks (benches/kernels.rs, jobs
"gpt2 block", "gpt2 forward", "gpt2 train", "gpt2 generate"), on the same GPU in the same
device call: GPT-2 small (12 layers, width 768, 12 heads, vocabulary 50257, context 1024,
tied embeddings, GELU tanh, causal SDPA, no dropout) at batch 8 x 1024, random weights
(std 0.02) and random token ids.

- block: one transformer block's forward, [8, 1024, 768] -> same.
- forward: the logits [8192, 50257] from the token ids.
- train: forward, cross-entropy, backward, fused AdamW (lr 1e-4, weight decay 0.01).
- generate: batch 1, a 16-token prompt then 64 greedy tokens, one token per step over a
  KV cache (eager; the loop a user writes).

Variants: eager-f32 (PyTorch's default precision: no TF32), eager-tf32, compile (f32,
torch.compile default mode, no TF32), amp-bf16 (autocast bf16, f32 weights). Prints one
JSON line per figure: bench "gpt2", size (block/forward/train/generate), variant,
tokens_per_s, ms, max_memory_allocated (bytes, the step's peak) and rate (= tokens_per_s,
the key benches/kernels.rs compares with).

Also GPT-2's matmul shapes and layouts alone (cuBLAS f32, TF32, f16, bf16), bench "matmul", the
keys of benches/kernels.rs's "gpt2 MxKxN" rows.

    python3 benches/torch_gpt2.py [--layers 12 --batch 8 --seq 1024] [--only train|matmul] [--variants eager-f32,amp-bf16]
"""
import argparse, json, time, torch, torch.nn as nn, torch.nn.functional as F

p = argparse.ArgumentParser()
for k, v in dict(layers=12, d=768, heads=12, vocab=50257, seq=1024, batch=8, reps=10).items():
    p.add_argument(f"--{k}", type=int, default=v)
p.add_argument("--only", default="")
p.add_argument("--variants", default="eager-f32,eager-tf32,compile,amp-bf16",
               help="comma-separated subset of eager-f32, eager-tf32, compile, amp-bf16")
a = p.parse_args()
dev = "cuda"


class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.h = h
        s.ln_1, s.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.c_attn, s.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.c_fc, s.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attn(s, x, cache=None):
        b, t, d = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, s.h, d // s.h).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        # Prefill (or training): causal. One new token: it attends to every cached key.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        return s.c_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(s, x, cache=None):
        x = x + s.attn(x, cache)
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(a.vocab, a.d), nn.Embedding(a.seq, a.d)
        s.h = nn.ModuleList([Block(a.d, a.heads) for _ in range(a.layers)])
        s.ln_f = nn.LayerNorm(a.d)
        for p_ in s.parameters():
            if p_.dim() > 1:
                nn.init.normal_(p_, std=0.02)

    def forward(s, ids, caches=None, start=0):
        x = s.wte(ids) + s.wpe(torch.arange(start, start + ids.shape[1], device=dev))
        for i, blk in enumerate(s.h):
            x = blk(x, None if caches is None else caches[i])
        return s.ln_f(x) @ s.wte.weight.t()


def emit(size, variant, tokens, ms, mem=None):
    tps = tokens / (ms * 1e-3)
    print(json.dumps(dict(bench="gpt2", size=size, dtype="f32" if variant != "amp-bf16" else "bf16",
                          variant=variant, tokens_per_s=tps, rate=tps, ms=ms, max_memory_allocated=mem)), flush=True)


def timed(f, reps):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3, torch.cuda.max_memory_allocated(), out


def run(variant):
    torch.manual_seed(0)
    tf32 = variant == "eager-tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=variant == "amp-bf16")
    model = Gpt().to(dev)
    block = model.h[0]
    fwd_model, fwd_block = model, block
    if variant == "compile":
        fwd_model, fwd_block = torch.compile(model), torch.compile(block)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    x = torch.randn(a.batch, a.seq, a.d, device=dev)
    tokens = a.batch * a.seq

    if "block" in a.only or not a.only:
        with torch.no_grad(), torch.autocast(**amp):
            ms, mem, _ = timed(lambda: fwd_block(x), a.reps)
        emit("block", variant, tokens, ms, mem)
    if "forward" in a.only or not a.only:
        with torch.no_grad(), torch.autocast(**amp):
            ms, mem, _ = timed(lambda: fwd_model(ids), a.reps)
        emit("forward", variant, tokens, ms, mem)
    if "train" in a.only or not a.only:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)

        def step():
            with torch.autocast(**amp):
                logits = fwd_model(ids)
            loss = F.cross_entropy(logits.float().view(-1, a.vocab), targets.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        ms, mem, _ = timed(step, max(3, a.reps // 2))
        emit("train", variant, tokens, ms, mem)
        del opt
    if ("generate" in a.only or not a.only) and variant in ("eager-f32", "amp-bf16"):
        prompt = torch.randint(0, a.vocab, (1, 16), device=dev)

        def generate():
            with torch.no_grad(), torch.autocast(**amp):
                caches = [dict() for _ in model.h]
                logits = model(prompt, caches)
                out = []
                for i in range(64):
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                    out.append(nxt.item())  # the host reads each token, as a decode loop does
                    logits = model(nxt, caches, start=16 + i)
                return out

        ms, mem, _ = timed(generate, 3)
        emit("generate", variant, 64, ms, mem)


def matmuls():
    """GPT-2 small's matmul shapes and layouts as benches/kernels.rs's "gpt2 MxKxN" rows
    (a transposed operand is a view of the row-major tensor), cuBLAS f32 (no TF32), TF32, f16, bf16;
    GFLOP/s from CUDA events over 20 runs."""
    torch.backends.cuda.matmul.allow_tf32 = False
    t = a.batch * a.seq
    for dtype, name, variant in [(torch.float32, "f32", "cublas-fp32"), (torch.float32, "f32", "cublas-tf32"),
                                 (torch.float16, "f16", "cublas"), (torch.bfloat16, "bf16", "cublas")]:
        torch.backends.cuda.matmul.allow_tf32 = variant == "cublas-tf32"
        for m, k, n, lay in [(t, 768, 3072, ""), (t, 3072, 768, ""), (t, 3072, 768, " Bt"), (768, t, 3072, " At"),
                             (t, 768, 50257, " Bt")]:
            x = torch.randn(k, m, device=dev, dtype=dtype).t() if lay == " At" else torch.randn(m, k, device=dev, dtype=dtype)
            w = torch.randn(n, k, device=dev, dtype=dtype).t() if lay == " Bt" else torch.randn(k, n, device=dev, dtype=dtype)
            for _ in range(3):
                x @ w
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                x @ w
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 20
            print(json.dumps(dict(bench="matmul", size=f"{m}x{k}x{n}{lay}", dtype=name, variant=variant,
                                  rate=2 * m * k * n / (ms * 1e-3) / 1e9, ms=ms)), flush=True)


for v in a.variants.split(","):
    if a.only != "matmul":
        run(v)
if not a.only or a.only == "matmul":
    matmuls()

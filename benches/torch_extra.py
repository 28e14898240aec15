"""PyTorch (CUDA) figures for the benchmarks of benches/kernels.rs that benches/torch_ref.py
does not cover (GPT-2 matmul shapes, normalization backward passes, RMSNorm, cross-entropy),
in its pattern: one JSON line per measurement. Bytes counted as in our bench: forward read +
write of the tensor, backward read x (or y) and dy + write dx (parameter gradients not
counted); AdamW over GPT-2 small's 148 parameter tensors (28 bytes per parameter, as
torch_ref.py counts the 64M single tensor); attention (SDPA and the naive composition)
forward and backward at the issue's sizes."""
import json, torch, torch.nn.functional as F
from triton.testing import do_bench

dev = "cuda"

# Sections to run (all by default): python3 torch_extra.py [matmul_norms | norms] [adamw] [attention]
import os
import sys
SECTIONS = sys.argv[1:] or ["matmul_norms", "adamw", "attention"]

def rec(bench, size, dtype, variant, ms, work, unit):
    print(json.dumps(dict(bench=bench, size=size, dtype=dtype, variant=variant, median_ms=ms, rate=work / ms / 1e6, unit=unit)), flush=True)

def bench(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")

if "matmul_norms" in SECTIONS or "norms" in SECTIONS:  # "norms": without the matmuls
    for dt, name in [(torch.float32, "f32"), (torch.float16, "f16")]:
        torch.backends.cuda.matmul.allow_tf32 = False
        for m, k, n in [] if "matmul_norms" not in SECTIONS else [(8192, 768, 3072), (8192, 3072, 768), (1, 768, 3072)]:
            a = torch.randn(m, k, device=dev, dtype=dt); b = torch.randn(k, n, device=dev, dtype=dt)
            rec("matmul", f"{m}x{k}x{n}", name, "cublas-fp32" if dt == torch.float32 else "cublas", bench(lambda: a @ b), 2 * m * k * n, "GFLOP/s")
        es = torch.finfo(dt).bits // 8
        for rows, n in [(4096, 4096), (16384, 4096)]:
            x = torch.randn(rows, n, device=dev, dtype=dt, requires_grad=True)
            size = f"{rows}x{n}"
            rec("softmax", size, name, "torch", bench(lambda: torch.softmax(x, -1)), 2 * x.numel() * es, "GB/s")
            y = torch.softmax(x, -1); dy = torch.randn_like(y)
            rec("softmax_backward", size, name, "torch", bench(lambda: torch._softmax_backward_data(dy, y, -1, dt)), 3 * x.numel() * es, "GB/s")
        rows, n = 8192, 4096
        size = f"{rows}x{n}"
        x = torch.randn(rows, n, device=dev, dtype=dt, requires_grad=True)
        w = torch.randn(n, device=dev, dtype=dt, requires_grad=True); b = torch.randn(n, device=dev, dtype=dt, requires_grad=True)
        rec("layernorm", size, name, "torch", bench(lambda: F.layer_norm(x, (n,), w, b)), 2 * x.numel() * es, "GB/s")
        y = F.layer_norm(x, (n,), w, b); dy = torch.randn_like(y)
        rec("layernorm_backward", size, name, "torch", bench(lambda: torch.autograd.grad(y, [x, w, b], dy, retain_graph=True)), 3 * x.numel() * es, "GB/s")
        rec("rmsnorm", size, name, "torch", bench(lambda: F.rms_norm(x, (n,), w)), 2 * x.numel() * es, "GB/s")
        y = F.rms_norm(x, (n,), w)
        rec("rmsnorm_backward", size, name, "torch", bench(lambda: torch.autograd.grad(y, [x, w], dy, retain_graph=True)), 3 * x.numel() * es, "GB/s")
        rows, v = 8192, 50257
        logits = torch.randn(rows, v, device=dev, dtype=dt, requires_grad=True)
        t = torch.randint(0, v, (rows,), device=dev)
        def ce():
            loss = F.cross_entropy(logits, t)
            return torch.autograd.grad(loss, [logits])
        rec("cross_entropy", f"{rows}x{v}", name, "torch fwd+bwd", bench(ce), 2 * logits.numel() * es, "GB/s")
        del x, w, b, y, dy, logits

# Decode-time matmuls (M ≤ 8 rows): GPT-2 small's projections and its LM head, B stored
# [k, n] (a @ b) or as a Linear weight W [n, k] (F.linear(a, W) = a @ Wᵀ); bytes of A, B
# and C counted (the kernels are bound by reading B). Not in the default sections.
if "decode" in SECTIONS:
    torch.backends.cuda.matmul.allow_tf32 = False
    for dt, name in [(torch.float32, "f32"), (torch.float16, "f16")]:
        es = torch.finfo(dt).bits // 8
        for m, k, n in [(1, 768, 3072), (1, 3072, 768), (8, 768, 3072), (1, 768, 50257)]:
            a = torch.randn(m, k, device=dev, dtype=dt)
            b = torch.randn(k, n, device=dev, dtype=dt)
            w = torch.randn(n, k, device=dev, dtype=dt)
            work = (m * k + k * n + m * n) * es
            rec("decode_matmul", f"{m}x{k}x{n}", name, "B [k,n]", bench(lambda: a @ b), work, "GB/s")
            rec("decode_matmul", f"{m}x{k}x{n}", name, "W [n,k] (linear)", bench(lambda: F.linear(a, w)), work, "GB/s")
            del a, b, w

if "adamw" in SECTIONS:
    # AdamW on GPT-2 small's parameter shapes (148 tensors, 124,439,808 parameters).
    d, V, C, L = 768, 50257, 1024, 12
    shapes = [(V, d), (C, d)]
    for _ in range(L):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    n = sum(torch.Size(s).numel() for s in shapes)
    for variant in ["fused", "foreach", "for-loop"]:
        ps = [torch.nn.Parameter(torch.randn(s, device=dev)) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p)
        kw = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[variant]
        opt = torch.optim.AdamW(ps, lr=1e-3, **kw)
        opt.step()
        rec("adamw", "gpt2-124M", "f32", variant, bench(opt.step), 7 * n * 4, "GB/s")
        del ps, opt

if "attention" in SECTIONS:
    # Attention at the sizes: SDPA forward and backward (2.5x the forward's FLOPs), and the
    # naive composition where its S x S scores fit.
    # TORCH_ATTN_SEQS=2048 and TORCH_ATTN_DTYPES=f16 narrow it (the bench's WGK_ATTN_SEQS).
    B, H = 4, 16
    seqs = [int(x) for x in os.environ.get("TORCH_ATTN_SEQS", "512,2048,8192").split(",")]
    dtypes = os.environ.get("TORCH_ATTN_DTYPES", "f16,f32").split(",")
    for dt, name in [(torch.float16, "f16"), (torch.float32, "f32"), (torch.bfloat16, "bf16")]:
        if name not in dtypes:
            continue
        for S in seqs:
            for D in [64, 128]:
                q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
                for causal in [False, True]:
                    flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
                    sfx = "-causal" if causal else ""
                    size = f"{B}x{H}x{S}x{D}"
                    rec("attention", size, name, "sdpa" + sfx, bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)), flops, "GFLOP/s")
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    do = torch.randn_like(o)
                    rec("attention_backward", size, name, "sdpa" + sfx, bench(lambda: torch.autograd.grad(o, [q, k, v], do, retain_graph=True)), 2.5 * flops, "GFLOP/s")
                    if S <= 2048:
                        def naive():
                            s = (q @ k.transpose(-1, -2)) / D**0.5
                            if causal:
                                s = s.masked_fill(torch.ones(S, S, device=dev, dtype=torch.bool).triu(1), float("-inf"))
                            return torch.softmax(s, -1) @ v
                        with torch.no_grad():
                            rec("attention", size, name, "naive" + sfx, bench(naive), flops, "GFLOP/s")
                    del o, do
                del q, k, v

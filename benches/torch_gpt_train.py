"""PyTorch's figure for examples/train_gpt.rs's training step, on the same GPU: the same
GPT-2-architecture model (6 layers, width 384, 6 heads, context 256, vocabulary 36, tied
embeddings, GELU tanh, causal SDPA), batch 32 x 256, fused AdamW (lr 1e-3, weight decay
0.01), random token ids. Variants: eager f32 without TF32 (our f32 path's precision),
eager f32 with TF32, and bf16 autocast (AMP). Prints one JSON line per variant: tokens/s
over 50 timed steps after 10 warm-up steps, and torch.cuda.max_memory_allocated.

    python3 benches/torch_gpt_train.py [--layers 6 --d 384 --heads 6 --seq 256 --batch 32 --vocab 36]
"""
import argparse, json, time, math, torch, torch.nn as nn, torch.nn.functional as F

p = argparse.ArgumentParser()
for k, v in dict(layers=6, d=384, heads=6, seq=256, batch=32, vocab=36, steps=50).items():
    p.add_argument(f"--{k}", type=int, default=v)
a = p.parse_args()
dev = "cuda"


class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.h = h
        s.ln_1, s.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.c_attn, s.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.c_fc, s.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(s, x):
        b, t, d = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, s.h, d // s.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + s.c_proj(y)
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(a.vocab, a.d), nn.Embedding(a.seq, a.d)
        s.h = nn.ModuleList([Block(a.d, a.heads) for _ in range(a.layers)])
        s.ln_f = nn.LayerNorm(a.d)

    def forward(s, ids, targets):
        x = s.wte(ids) + s.wpe(torch.arange(ids.shape[1], device=dev))
        for blk in s.h:
            x = blk(x)
        logits = s.ln_f(x) @ s.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, a.vocab), targets.view(-1))


def run(variant):
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = variant == "eager-tf32"
    torch.backends.cudnn.allow_tf32 = variant == "eager-tf32"
    model = Gpt().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=variant == "amp-bf16"):
            loss = model(ids, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss.item()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps(dict(bench="train_gpt", size=f"{a.layers}x{a.d}x{a.heads} b{a.batch}x{a.seq}", variant=variant,
                          tokens_per_s=a.steps * a.batch * a.seq / dt, ms_per_step=dt / a.steps * 1e3,
                          max_memory_allocated=torch.cuda.max_memory_allocated())), flush=True)


for v in ["eager-f32", "eager-tf32", "amp-bf16"]:
    run(v)

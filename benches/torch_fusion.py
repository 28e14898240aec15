"""PyTorch (CUDA) figures for the fusion rows of benches/kernels.rs that torch_ref.py does not
cover, in its pattern (one JSON line per measurement): the residual add before a LayerNorm,
h = x + a; y = layer_norm(h), with both h (the residual stream, used again) and y returned,
eager (two kernels) and torch.compile (one generated kernel). Bytes counted as in our bench:
x and a read, h and y written (4 tensors)."""
import json, torch, torch.nn.functional as F
from triton.testing import do_bench

dev = "cuda"

def rec(bench, size, dtype, variant, ms, work, unit):
    print(json.dumps(dict(bench=bench, size=size, dtype=dtype, variant=variant, median_ms=ms, rate=work / ms / 1e6, unit=unit)), flush=True)

def bench(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")

rows, n = 8192, 4096
x = torch.randn(rows, n, device=dev); a = torch.randn(rows, n, device=dev)
w = torch.randn(n, device=dev); b = torch.randn(n, device=dev)

def add_layernorm(x, a):
    h = x + a
    return h, F.layer_norm(h, (n,), w, b)

compiled = torch.compile(add_layernorm)
for variant, fn in [("eager", add_layernorm), ("torch.compile", compiled)]:
    fn(x, a)
    rec("add_layernorm", f"{rows}x{n}", "f32", variant, bench(lambda: fn(x, a)), 4 * x.numel() * 4, "GB/s")

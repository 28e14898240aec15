"""PyTorch (CUDA) figures for the fusion rows of benches/kernels.rs that torch_ref.py does not
cover, in its pattern (one JSON line per measurement): the residual add before a LayerNorm,
h = x + a; y = layer_norm(h), with both h (the residual stream, used again) and y returned,
eager (two kernels) and torch.compile (one generated kernel). Bytes counted as in our bench:
x and a read, h and y written (4 tensors). Also the chain gelu(x*a + b)*c + x on 64 M
elements in f32 (as torch_ref.py) and f16."""
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

# The chain y = gelu(x*a + b)*c + x (as torch_ref.py in f32, and in f16: our element path,
# pairs packed per word), eager and torch.compile, 5 tensors moved.
# TORCH_CHAIN_MIB: sizes in Mi elements, comma-separated (default 64, as our bench's WGK_CHAIN_MIB).
import os
def chain(x, a, b, c): return F.gelu(x * a + b, approximate="tanh") * c + x
cchain = torch.compile(chain)
for mib in [int(m) for m in os.environ.get("TORCH_CHAIN_MIB", "64").split(",")]:
    n = mib << 20
    for dt, name in [(torch.float32, "f32"), (torch.float16, "f16")]:
        x, a, bb, c = (torch.randn(n, device=dev, dtype=dt) for _ in range(4))
        for variant, fn in [("eager", chain), ("torch.compile", cchain)]:
            fn(x, a, bb, c)
            rec("elementwise_chain", f"{mib}M", name, variant, bench(lambda: fn(x, a, bb, c)), 5 * n * x.element_size(), "GB/s")
        del x, a, bb, c

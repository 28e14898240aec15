#!/usr/bin/env bash
# Fourteenth round (2026-12-05), call 3: generation after the token-major KV cache, the
# one-pass greedy draw and the profiler's growing query sets (call 2's generation rows
# failed: 5221 dispatches untimed), beside PyTorch's decode loop; the block forward at
# High and in bf16; the f16 training step after the f16 element load without a runtime
# vector index. The autotuner's cache from call 2 is carried in.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
R=$OUT/r; mkdir -p $R/prof
timeout 130 bash run.sh python3 torch_gpt2.py --only generate,block,train > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 120 bash run.sh kernels --log-tuning --only "gpt2 generate" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/gen.json --md $R/gen.md > $R/gen.txt 2>&1; echo "== gen rc=$?"
timeout 150 bash run.sh kernels --log-tuning --only "gpt2 train f16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/f16.json --md $R/f16.md > $R/f16.txt 2>&1; echo "== f16 rc=$?"
timeout 70 bash run.sh kernels --log-tuning --only "gpt2 block f32 high,gpt2 block bf16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/block.json --md $R/block.md > $R/block.txt 2>&1; echo "== block rc=$?"
grep -h "gpt2" $R/*.md | head -30
cp -r cache $R/ 2>/dev/null
tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

#!/usr/bin/env bash
# Fourteenth round, call 3: generation after the token-major KV cache, the one-pass greedy
# draw and the profiler's growing query sets, beside PyTorch's decode loop; the f16
# training step after the f16 element-load change (277d80e). Tuner cache from call 2.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
R=$OUT/r; mkdir -p $R/prof
timeout 80 bash run.sh python3 torch_gpt2.py --only generate > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 90 bash run.sh kernels --log-tuning --only "gpt2 generate" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/gen.json --md $R/gen.md > $R/gen.txt 2>&1; echo "== gen rc=$?"; tar czf $OUT/call.tgz -C $OUT r
timeout 110 bash run.sh kernels --log-tuning --only "gpt2 train f16" --gpt2-profile $R/prof --json $R/f16.json --md $R/f16.md > $R/f16.txt 2>&1; echo "== f16 rc=$?"; tar czf $OUT/call.tgz -C $OUT r
grep -h "gpt2" $R/*.md | head -30
cp -r cache $R/ 2>/dev/null
tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

#!/usr/bin/env bash
# Fourteenth round, call 4 (machine warm after call 3): PyTorch's training steps beside our
# f16 and bf16 steps after the f16 element-load change, the tuner's cache from call 3.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
R=$OUT/r; mkdir -p $R/prof
timeout 100 bash run.sh python3 torch_gpt2.py --only train > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"; tar czf $OUT/call.tgz -C $OUT r
timeout 80 bash run.sh kernels --log-tuning --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/mixed.json --md $R/mixed.md > $R/mixed.txt 2>&1; echo "== mixed rc=$?"
grep -h "gpt2" $R/*.md | head
tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

#!/usr/bin/env bash
# 2026-12-05 (sixth session), call 2: main at 09e3708 (tiles follow layout, range per
# workgroup, 16-bit Xᵀ views, ordered pool) against kernels_lifo (same, last-freed-first
# pool) and kernels_prev (call 1's kernels_a: Xᵀ copied for 16-bit too).
cd "$(dirname "$0")"
tar xJf bins5.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/[^A-Za-z0-9.-]/_/g')
gpu_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null
if [ -n "$gpu_name" ] && ! [ -e "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv" ]; then
  cp cache/autotune-NVIDIA_H100_80GB_HBM3-*.tsv "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv"
fi
date -u > $OUT/started.txt; R=$OUT/r2; rm -rf $OUT/r $R; mkdir -p $R/prof $R/prof_lifo
pack() { tar czf $OUT/call2.tgz -C $OUT r2; }
( timeout 150 bash run.sh nn_test --test-threads 2 > $R/nn_test.txt 2>&1; echo "nn rc=$?" >> $R/rc.txt ) &
timeout 100 bash run.sh python3 torch_gpt2.py --only block,train,generate --variants eager-f32,eager-tf32,amp-bf16 > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
wait; cat $R/rc.txt; grep -E "test result|FAILED|panicked" $R/nn_test.txt | head -5; pack
timeout 120 bash run.sh kernels --log-tuning --only "gpt2 train f16,gpt2 train bf16,gpt2 block f32" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/main.json --md $R/main.md > $R/main.txt 2>&1; echo "== main rc=$?"
grep -h "| gpt2" $R/main.md; pack
timeout 90 bash run.sh kernels_lifo --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof_lifo --reference $R/torch_gpt2.json --json $R/lifo.json --md $R/lifo.md > $R/lifo.txt 2>&1; echo "== lifo rc=$?"
grep -h "| gpt2" $R/lifo.md; pack
timeout 60 bash run.sh kernels_prev --only "gpt2 train bf16" --reference $R/torch_gpt2.json --json $R/prev.json --md $R/prev.md > $R/prev.txt 2>&1; echo "== prev rc=$?"
grep -h "| gpt2" $R/prev.md; pack
timeout 120 bash run.sh kernels --only "gpt2 train f32,gpt2 generate" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/main2.json --md $R/main2.md > $R/main2.txt 2>&1; echo "== main2 rc=$?"
grep -h "| gpt2" $R/main2.md; cp -r cache $R/; pack; rm -rf $R

#!/usr/bin/env bash
# 2026-12-05 (sixth session), call 3: main at c337a50 (norm forwards' kernel cache, pipeline
# lookups without clones) against kernels_old (09e3708, call 2's build), same call.
cd "$(dirname "$0")"
tar xJf bins6.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/[^A-Za-z0-9.-]/_/g')
gpu_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null
if [ -n "$gpu_name" ] && ! [ -e "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv" ]; then
  cp cache/autotune-NVIDIA_H100_80GB_HBM3-*.tsv "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv"
fi
date -u > $OUT/started.txt; R=$OUT/r3; rm -rf $OUT/r $OUT/r2 $R; mkdir -p $R/prof $R/prof_old
pack() { tar czf $OUT/call3.tgz -C $OUT r3; }
for t in nn fusion norm; do
  ( timeout 150 bash run.sh ${t}_test --test-threads 2 > $R/${t}_test.txt 2>&1; echo "$t rc=$?" >> $R/rc.txt ) &
done
timeout 100 bash run.sh python3 torch_gpt2.py --only block,train,generate --variants eager-f32,eager-tf32,amp-bf16 > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
wait; cat $R/rc.txt; grep -E "test result|FAILED|panicked" $R/*_test.txt | head -8; pack
timeout 100 bash run.sh kernels --only "gpt2 generate,gpt2 block f32" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/new1.json --md $R/new1.md > $R/new1.txt 2>&1; echo "== new1 rc=$?"
grep -h "| gpt2" $R/new1.md; pack
timeout 100 bash run.sh kernels_old --only "gpt2 generate,gpt2 block f32" --gpt2-profile $R/prof_old --reference $R/torch_gpt2.json --json $R/old1.json --md $R/old1.md > $R/old1.txt 2>&1; echo "== old1 rc=$?"
grep -h "| gpt2" $R/old1.md; pack
timeout 60 bash run.sh kernels --only "gpt2 generate" --reference $R/torch_gpt2.json --json $R/new2.json --md $R/new2.md > $R/new2.txt 2>&1; echo "== new2 rc=$?"
grep -h "| gpt2" $R/new2.md; pack
timeout 60 bash run.sh kernels_old --only "gpt2 generate" --reference $R/torch_gpt2.json --json $R/old2.json --md $R/old2.md > $R/old2.txt 2>&1; echo "== old2 rc=$?"
grep -h "| gpt2" $R/old2.md; pack
timeout 90 bash run.sh kernels --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/train.json --md $R/train.md > $R/train.txt 2>&1; echo "== train rc=$?"
grep -h "| gpt2" $R/train.md; cp -r cache $R/; pack; rm -rf $R

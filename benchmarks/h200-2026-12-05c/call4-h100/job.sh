#!/usr/bin/env bash
# 2026-12-05 (sixth session), call 4: main at c3220ce (embedding gradients as rows, index_add
# into the tied LM head's gradient) against kernels_old (c337a50), alternated, same call.
cd "$(dirname "$0")"
tar xJf bins7.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/[^A-Za-z0-9.-]/_/g')
gpu_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null
if [ -n "$gpu_name" ] && ! [ -e "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv" ]; then
  cp cache/autotune-NVIDIA_H100_80GB_HBM3-*.tsv "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv"
fi
date -u > $OUT/started.txt; R=$OUT/r4; rm -rf $OUT/r* $R; mkdir -p $R/prof $R/prof_old
pack() { tar czf $OUT/call4.tgz -C $OUT r4; }
for t in nn autograd; do
  ( timeout 120 bash run.sh ${t}_test --test-threads 2 > $R/${t}_test.txt 2>&1; echo "$t rc=$?" >> $R/rc.txt ) &
done
timeout 80 bash run.sh python3 torch_gpt2.py --only train --variants amp-bf16 > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
wait; cat $R/rc.txt; grep -E "test result|FAILED|panicked" $R/*_test.txt | head -6; pack
for i in 1 2; do
  timeout 60 bash run.sh kernels --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --md $R/new$i.md > $R/new$i.txt 2>&1; echo "== new$i rc=$?"
  grep -h "| gpt2" $R/new$i.md | cut -c1-140; pack
  timeout 60 bash run.sh kernels_old --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof_old --reference $R/torch_gpt2.json --md $R/old$i.md > $R/old$i.txt 2>&1; echo "== old$i rc=$?"
  grep -h "| gpt2" $R/old$i.md | cut -c1-140; pack
done
grep -h "scatter\|index\|add\]\|transpose\|copy" $R/prof/gpt2_train_f16_highest.txt $R/prof_old/gpt2_train_f16_highest.txt | head -20
cp -r cache $R/; pack; rm -rf $R

#!/usr/bin/env bash
# Next H200 call for issue 24 (2026-12-05, fourth session). Stage from the checkout root:
#   cargo build --release --bench kernels --test attention --test nn --test matmul  (paths: --message-format=json)
#   ../shared/gpu/stage.sh; copy the kernels bench as .gpu/bin/kernels, the bench built at the
#   commit before the padded vocabulary as .gpu/bin/kernels_old, tests/attention.rs's binary as
#   attention_test, tests/nn.rs's as nn_test, tests/matmul.rs's as matmul_test; strip; (cd .gpu && tar cf - bin | xz > bins.tar.xz
#   && rm -rf bin); cp benches/torch_gpt2.py .gpu/
#   mkdir -p .gpu/cache && cp benchmarks/h200-2026-12-05/call3/cache/*.tsv .gpu/cache/  (skips
#   re-tuning unchanged kernels; a changed kernel's checksum re-tunes it)
#   cp benchmarks/next/h200.sh .gpu/job.sh; run(command="bash .gpu/job.sh", carry=[".gpu"])
# 0. tests/matmul.rs's tensor-core layouts (tiles laid out as their operands: transposed views).
# 1. PyTorch's training steps, then ours (f16, bf16, f32 `high`), profiled with each dispatch's
#    grid: unmeasured since the fourteenth round are the two-pass cross-entropy, the packed-qkv
#    attention, in-place bias sums, and the vocabulary padded to 50304 (direct 16-bit logits,
#    word-staged LM-head backward), the first submit of 4 after a wait, tiles that follow
#    their operands' layout (dX's k-fast Wᵀ), attention's δ in one kernel.
# 2. The f16 step of the binary before this session's changes (kernels_old, built at 2275292),
#    in the same call, profiled by grid: per-shape matmul times before and after.
# 3. tests/attention.rs (tensor-core attention on strided q/k/v views) and tests/nn.rs (the
#    GPT against f64, the peak-memory test) through the H200's paths.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
# On another card (an H100 when no H200 is lent) the H200's tuning stands in, under that
# adapter's cache name (Hopper both; the tuner re-tunes nothing it has a winner for).
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/[^A-Za-z0-9.-]/_/g')
gpu_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null
if [ -n "$gpu_name" ] && [ "$gpu_name" != "NVIDIA_H200" ]; then
  cp cache/autotune-NVIDIA_H200-*.tsv "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv"
fi
R=$OUT/r; mkdir -p $R/prof $R/prof_old
# The old bench times against its own copy of the cache: its matmul checksum differs, and
# the new binary's winners (re-tuned: its matmul kernels changed) would send it re-tuning.
cp -r cache cache_old
timeout 60 bash run.sh matmul_test --test-threads 1 batched_with every_layout bf16_matmul every_path > $R/matmul_test.txt 2>&1; echo "== matmul tests rc=$?"; grep -E "test result|FAILED|panicked" $R/matmul_test.txt | head -4
tar czf $OUT/call.tgz -C $OUT r
timeout 90 bash run.sh python3 torch_gpt2.py --only train > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 210 bash run.sh kernels --log-tuning --only "gpt2 train f16,gpt2 train bf16,gpt2 train f32 high" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/mixed.json --md $R/mixed.md > $R/mixed.txt 2>&1; echo "== mixed rc=$?"
grep -h "gpt2" $R/*.md | head; tar czf $OUT/call.tgz -C $OUT r
timeout 100 bash run.sh attention_test --test-threads 1 > $R/attention_test.txt 2>&1; echo "== attention tests rc=$?"; grep -E "test result|FAILED|panicked" $R/attention_test.txt | head -4
tar czf $OUT/call.tgz -C $OUT r
WGK_CACHE_DIR=$PWD/cache_old timeout 45 bash run.sh kernels_old --only "gpt2 train f16" --gpt2-profile $R/prof_old --reference $R/torch_gpt2.json --md $R/old.md > $R/old.txt 2>&1; echo "== old rc=$?"
grep -h "gpt2" $R/old.md | head -3; cp -r cache $R/ 2>/dev/null; tar czf $OUT/call.tgz -C $OUT r
timeout 40 bash run.sh nn_test --test-threads 1 --nocapture > $R/nn_test.txt 2>&1; echo "== nn tests rc=$?"; grep -E "test result|FAILED|panicked" $R/nn_test.txt | head -4
tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

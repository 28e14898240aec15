#!/usr/bin/env bash
# Next H200 call for issue 24 (written 2026-12-05, fifth session). Stage from the checkout root:
#   git apply benchmarks/next/coop-operand-layout-tiles.patch benchmarks/next/matmul-range-workgroup-max.patch
#   cargo build --release --bench kernels --test attention --test matmul --message-format=json
#   copy the bench as .gpu/bin/kernels_a and the two tests as matmul_test, attention_test; then in
#   src/autograd/ops.rs `weight_grad` copy Xᵀ only for f32 (`let copy = on_tensor_cores && x.dtype()
#   == DType::F32;`), rebuild the bench, copy it as kernels_b; revert; strip;
#   (cd .gpu && tar cf - bin | xz > bins3.tar.xz && rm -rf bin); ../shared/gpu/stage.sh for run.sh
#   and lib/; cp benches/torch_gpt2.py .gpu/; mkdir -p .gpu/cache && cp
#   benchmarks/h200-2026-12-05b/call1/cache/*.tsv .gpu/cache/; cp benchmarks/next/h200.sh .gpu/job.sh;
#   run(command="bash .gpu/job.sh", carry=[".gpu"]).
# What it decides: tests/matmul.rs's tensor-core tests with the layout-following tiles and the
# range pass's per-workgroup maximum (land both patches only if these pass; the first call of
# 2026-12-05's fifth session cut `batched_with_broadcast_and_transposed_views` at 60 s, so the
# tests now run in three processes side by side, with a CPU/GPU sampler telling slow compiles
# from a hang); then the f16 step with (a) and without (b) the 16-bit Xᵀ copy, the f32 block
# forward (the open target), and bf16 (the range change).
cd "$(dirname "$0")"
tar xJf bins3.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/[^A-Za-z0-9.-]/_/g')
gpu_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null
if [ -n "$gpu_name" ] && [ "$gpu_name" != "NVIDIA_H200" ]; then
  cp cache/autotune-NVIDIA_H200-*.tsv "cache/autotune-${gpu_name}-Vulkan-NVIDIA_${gpu_driver}-v0.1.0.tsv"
fi
R=$OUT/r; mkdir -p $R/prof_block $R/prof_a $R/prof_b
( timeout 200 bash run.sh matmul_test --test-threads 1 batched_with > $R/matmul_test.txt 2>&1; echo "matmul batched rc=$?" >> $R/rc.txt ) &
( timeout 200 bash run.sh matmul_test --test-threads 1 high_precision bf16_matmul every_path > $R/matmul_test2.txt 2>&1; echo "matmul others rc=$?" >> $R/rc.txt ) &
( timeout 200 bash run.sh attention_test --test-threads 1 tensor_core > $R/attention_test.txt 2>&1; echo "attention rc=$?" >> $R/rc.txt ) &
for i in $(seq 1 20); do
  sleep 10
  { echo "t=$((i*10))"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; ps -eo pcpu,etime,comm --sort=-pcpu | head -4; tail -c 200 $R/matmul_test.txt | tr '\n' ' '; echo; } >> $R/sampler.txt
  [ $(jobs -r | wc -l) -eq 0 ] && break
done
wait
cat $R/rc.txt; grep -E "test result|FAILED|panicked|^test " $R/matmul_test.txt $R/matmul_test2.txt $R/attention_test.txt | head -30
tar czf $OUT/call.tgz -C $OUT r
timeout 70 bash run.sh python3 torch_gpt2.py --only block,train --variants eager-f32,eager-tf32,amp-bf16 > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 70 bash run.sh kernels_a --log-tuning --only "gpt2 train f16" --gpt2-profile $R/prof_a --reference $R/torch_gpt2.json --json $R/f16_a.json --md $R/f16_a.md > $R/f16_a.txt 2>&1; echo "== f16 a rc=$?"
grep -h "gpt2" $R/f16_a.md | head -3; tar czf $OUT/call.tgz -C $OUT r
timeout 60 bash run.sh kernels_a --only "gpt2 block f32" --gpt2-profile $R/prof_block --reference $R/torch_gpt2.json --json $R/block.json --md $R/block.md > $R/block.txt 2>&1; echo "== block rc=$?"
grep -h "gpt2" $R/block.md | head; tar czf $OUT/call.tgz -C $OUT r
timeout 80 bash run.sh kernels_b --log-tuning --only "gpt2 train f16" --gpt2-profile $R/prof_b --reference $R/torch_gpt2.json --json $R/f16_b.json --md $R/f16_b.md > $R/f16_b.txt 2>&1; echo "== f16 b rc=$?"
grep -h "gpt2" $R/f16_b.md | head -3; cp -r cache $R/; tar czf $OUT/call.tgz -C $OUT r
timeout 70 bash run.sh kernels_a --only "gpt2 train bf16,gpt2 train f32 high" --gpt2-profile $R/prof_a --reference $R/torch_gpt2.json --json $R/a_more.json --md $R/a_more.md > $R/a_more.txt 2>&1; echo "== bf16, f32 high rc=$?"
grep -h "gpt2" $R/a_more.md | head -3; tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

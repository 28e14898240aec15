#!/usr/bin/env bash
# Ninth round, call 1: f32 attention forward on tensor cores (operands split into f16 hi + lo):
# the split test, the attention suite, every split tiling at S 2048/8192 beside SDPA f32 and
# the FMA flash kernel; f16 tensor-core default (unchanged code path) as a check.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 100 bash run.sh attention_tests tensor_core_f32_split > $OUT/split_test.txt 2>&1
echo "split test rc=$?"
grep -E "^test |test result|FAILED|panicked|worst|failures" $OUT/split_test.txt | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=f32,f16 timeout 120 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_TILINGS=all WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=2048,8192 timeout 200 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_tc.md > /tmp/log.txt 2>&1
echo "== f32 tc rc=$?"; show $OUT/f32_tc.md; tail -3 /tmp/log.txt
WGK_ATTN_PATHS=flash WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=2048 timeout 60 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_flash.md > /tmp/log.txt 2>&1
echo "== f32 flash rc=$?"; show $OUT/f32_flash.md
WGK_ATTN_PATHS=tc WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=2048 timeout 60 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/f16_tc.md > /tmp/log.txt 2>&1
echo "== f16 tc rc=$?"; show $OUT/f16_tc.md
timeout 150 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|FAILED|panicked|worst" $OUT/tests.txt | head -40

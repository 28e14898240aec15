#!/usr/bin/env bash
# Ninth round, call 2: the split's hi part cut by a bit mask (not f32 -> f16 -> f32): the split
# test, the attention suite; every split tiling (row blocks of 2 added) at S 2048/8192; the f32
# default forward and backward at S 2048, beside SDPA f32.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 100 bash run.sh attention_tests tensor_core_f32_split > $OUT/split_test.txt 2>&1
echo "split test rc=$?"
grep -E "^test |test result|panicked|should be" $OUT/split_test.txt | cut -c1-300 | head -12
timeout 150 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=f32 timeout 120 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_TILINGS=all WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=2048,8192 timeout 200 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_tc.md > /tmp/log.txt 2>&1
echo "== f32 tc rc=$?"; show $OUT/f32_tc.md | grep -v causal
WGK_ATTN_SEQS=2048 timeout 120 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_default.md > /tmp/log.txt 2>&1
echo "== f32 default rc=$?"; show $OUT/f32_default.md

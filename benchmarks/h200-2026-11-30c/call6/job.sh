#!/usr/bin/env bash
# Ninth round, call 6: f32 backward on tensor cores (operands, P and dS split into f16 parts):
# the attention suite; every f32 backward tiling at S 2048, the defaults at S 8192; f16
# tensor-core forward and backward at S 2048 (staging code shared with the split); SDPA f32, f16.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 170 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=f32,f16 timeout 150 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_BWD_TILINGS=all WGK_ATTN_SEQS=2048 timeout 150 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_bwd_tilings.md > /tmp/log.txt 2>&1
echo "== f32 2048 rc=$?"; show $OUT/f32_bwd_tilings.md
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=8192 timeout 150 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_8192.md --json $OUT/f32_8192.json > /tmp/log.txt 2>&1
echo "== f32 8192 rc=$?"; show $OUT/f32_8192.md
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/f16_tc.md > /tmp/log.txt 2>&1
echo "== f16 tc rc=$?"; show $OUT/f16_tc.md

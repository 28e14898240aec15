#!/usr/bin/env bash
# Ninth round, call 7: the final code: the attention suite; f32 defaults (tensor cores, forward
# and backward) at S 2048 and 8192 beside SDPA f32.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 170 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=f32 timeout 100 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048,8192 timeout 150 bash run.sh kernels --reference $OUT/torch.json --only "attention f32" --md $OUT/f32.md --json $OUT/f32.json > /tmp/log.txt 2>&1
echo "== f32 rc=$?"; show $OUT/f32.md

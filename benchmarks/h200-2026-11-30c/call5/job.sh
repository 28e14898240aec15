#!/usr/bin/env bash
# Ninth round, call 5: dS's power of two in the bf16 backward the right way round (call 4:
# NaN at magnitudes beyond f16): the attention suite; bf16 tensor-core forward and backward at
# S 2048 beside SDPA bf16.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 150 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048 TORCH_ATTN_DTYPES=bf16 timeout 100 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention bf16" --md $OUT/bf16.md --json $OUT/bf16.json > /tmp/log.txt 2>&1
echo "== bf16 rc=$?"; show $OUT/bf16.md

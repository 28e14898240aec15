#!/usr/bin/env bash
# Ninth round, call 4: bf16 backward on tensor cores (scaled into f16): the attention suite;
# bf16 tensor-core forward and backward at S 2048/8192; f16 tensor-core forward and backward
# at S 2048 (the backward now carries scale factors, 1 for f16); SDPA in bf16 and f16.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 150 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=bf16,f16 timeout 150 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048,8192 timeout 200 bash run.sh kernels --reference $OUT/torch.json --only "attention bf16" --md $OUT/bf16.md --json $OUT/bf16.json > /tmp/log.txt 2>&1
echo "== bf16 rc=$?"; show $OUT/bf16.md
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/f16_tc.md > /tmp/log.txt 2>&1
echo "== f16 tc rc=$?"; show $OUT/f16_tc.md

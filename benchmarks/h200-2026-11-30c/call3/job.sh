#!/usr/bin/env bash
# Ninth round, call 3: bf16 forward on tensor cores (scaled into f16, one part): the attention
# suite; bf16 at S 2048 (every path, backward on FMA units) and S 8192 (tensor cores), every
# bf16 tiling at S 2048 D 64; the f16 tensor-core default re-measured; SDPA in bf16 and f16.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 150 bash run.sh attention_tests --test-threads=2 > $OUT/tests.txt 2>&1
echo "attention tests rc=$?"
grep -E "^test |test result|should be" $OUT/tests.txt | cut -c1-300 | head -30
TORCH_ATTN_SEQS=2048,8192 TORCH_ATTN_DTYPES=bf16,f16 timeout 150 bash run.sh python3 torch_extra.py attention > /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
WGK_ATTN_SEQS=2048 timeout 150 bash run.sh kernels --reference $OUT/torch.json --only "attention bf16" --md $OUT/bf16_2048.md > /tmp/log.txt 2>&1
echo "== bf16 2048 rc=$?"; show $OUT/bf16_2048.md
WGK_ATTN_PATHS=tc WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=8192 timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention bf16" --md $OUT/bf16_8192.md > /tmp/log.txt 2>&1
echo "== bf16 8192 rc=$?"; show $OUT/bf16_8192.md
WGK_ATTN_PATHS=tc WGK_ATTN_BACKWARD=0 WGK_ATTN_SEQS=2048 WGK_ATTN_TILINGS="16,1,64,1,16;16,1,32,1,16;16,1,32,2,16;16,1,16,2,16" timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention bf16" --md $OUT/bf16_tilings.md > /tmp/log.txt 2>&1
echo "== bf16 tilings rc=$?"; show $OUT/bf16_tilings.md | grep -v causal
WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 100 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/f16_tc.md > /tmp/log.txt 2>&1
echo "== f16 tc rc=$?"; show $OUT/f16_tc.md

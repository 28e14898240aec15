#!/usr/bin/env bash
# Tenth round, call 1: (issue 7) the 16-byte element-wise kernels reading n and the leaves'
# offsets from a uniform view of their params (WGK_FUSED_UNIFORM=1, new) against the storage
# view (=0, as before), over six grids; (issue 5) the forward lanes' scale folded into the
# exponent's fma (kernels) against the committed kernels (kernels_base, dd0fd98).
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 170 bash run.sh attention_tests --test-threads=2 > $OUT/attention_tests.txt 2>&1
echo "attention tests rc=$?"; grep -E "test result|FAILED|panicked" $OUT/attention_tests.txt | cut -c1-300 | head -10
timeout 90 bash run.sh fusion_tests > $OUT/fusion_tests.txt 2>&1
echo "fusion tests rc=$?"; grep -E "test result|FAILED|panicked" $OUT/fusion_tests.txt | cut -c1-300 | head -10
timeout 120 bash run.sh python3 torch_fusion.py > /tmp/torch.txt 2>&1
TORCH_ATTN_SEQS=2048 TORCH_ATTN_DTYPES=f16,f32 timeout 100 bash run.sh python3 torch_extra.py attention >> /tmp/torch.txt 2>&1
grep "^{" /tmp/torch.txt > $OUT/torch.json; grep -c "^{" $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
G="1,512,0;1,1024,0;2,256,0;2,512,0;1,256,0;2,128,0;4,128,0"
for u in 1 0; do
  WGK_FUSED_UNIFORM=$u WGK_FUSED_GRIDS=$G timeout 120 bash run.sh kernels --reference $OUT/torch.json --only "fusion chain" --md $OUT/chain_u$u.md --json $OUT/chain_u$u.json > /tmp/log.txt 2>&1
  echo "== chain uniform=$u rc=$?"; show $OUT/chain_u$u.md | grep chain
done
for bin in kernels kernels_base; do
  WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 90 bash run.sh $bin --reference $OUT/torch.json --only "attention f16" --md $OUT/f16_$bin.md --json $OUT/f16_$bin.json > /tmp/log.txt 2>&1
  echo "== f16 $bin rc=$?"; show $OUT/f16_$bin.md
  WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 WGK_ATTN_BACKWARD=0 timeout 60 bash run.sh $bin --reference $OUT/torch.json --only "attention f32" --md $OUT/f32_$bin.md > /tmp/log.txt 2>&1
  echo "== f32 fwd $bin rc=$?"; show $OUT/f32_$bin.md
done

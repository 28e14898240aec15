#!/usr/bin/env bash
# Tenth round, call 2: the chain's grids with the uniform params view on (1) and off (0); logs kept.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 100 bash run.sh python3 torch_fusion.py > $OUT/torch_log.txt 2>&1
grep "^{" $OUT/torch_log.txt > $OUT/torch.json; grep -c "^{" $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
G="1,512,0;1,1024,0;2,256,0;2,512,0;1,256,0;2,128,0;4,128,0"
for u in 1 0; do
  s=$(date +%s)
  WGK_FUSED_UNIFORM=$u WGK_FUSED_GRIDS=$G timeout 230 bash run.sh kernels --reference $OUT/torch.json --only "fusion chain" --md $OUT/chain_u$u.md --json $OUT/chain_u$u.json > $OUT/log_u$u.txt 2>&1
  echo "== chain uniform=$u rc=$? $(( $(date +%s) - s )) s"; show $OUT/chain_u$u.md | grep chain; tail -3 $OUT/log_u$u.txt
done

#!/usr/bin/env bash
# Tenth round, call 4: (issue 5) the f16 tensor-core backward without its lanes' work (P and dS
# never computed: WGK_ATTN_DIAG=nolanes, an uncommitted build, results wrong by design) against
# the full kernels, S 2048, forward and backward; SDPA f16 from the same call.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
TORCH_ATTN_SEQS=2048 TORCH_ATTN_DTYPES=f16 timeout 100 bash run.sh python3 torch_extra.py attention > /tmp/torch_log.txt 2>&1
grep "^{" /tmp/torch_log.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
for d in none nolanes; do
  WGK_ATTN_DIAG=$d WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 timeout 90 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/diag_$d.md --json $OUT/diag_$d.json > /tmp/log_$d.txt 2>&1
  echo "== diag $d rc=$?"; show $OUT/diag_$d.md | grep attention
done

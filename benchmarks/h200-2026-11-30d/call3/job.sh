#!/usr/bin/env bash
# Tenth round, call 3: (issue 5) where the f16 tensor-core forward's time goes: the kernel with
# parts of its work removed (WGK_ATTN_DIAG, an uncommitted build; results wrong by design),
# S 2048; the committed kernels' tensor-core test with the new negative-scale case; the tour.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 90 bash run.sh attention_tests_base tensor_core_path_matches --test-threads=2 > $OUT/negscale_test.txt 2>&1
echo "tensor-core test (committed kernels) rc=$?"; grep -E "test result|FAILED|panicked" $OUT/negscale_test.txt | head -5
TORCH_ATTN_SEQS=2048 TORCH_ATTN_DTYPES=f16 timeout 100 bash run.sh python3 torch_extra.py attention > $OUT/torch_log.txt 2>&1
grep "^{" $OUT/torch_log.txt > $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
for d in none noexp nolanes nopv nos mma nostage; do
  WGK_ATTN_DIAG=$d WGK_ATTN_PATHS=tc WGK_ATTN_SEQS=2048 WGK_ATTN_BACKWARD=0 timeout 60 bash run.sh kernels --reference $OUT/torch.json --only "attention f16" --md $OUT/diag_$d.md --json $OUT/diag_$d.json > $OUT/diag_log_$d.txt 2>&1
  echo "== diag $d rc=$?"; show $OUT/diag_$d.md | grep attention
done
timeout 200 bash run.sh tour > $OUT/tour.txt 2>&1
echo "tour rc=$?"; tail -45 $OUT/tour.txt

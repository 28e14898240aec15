#!/usr/bin/env bash
# Eleventh round, call D: the device lifecycle (tensor tests on 16 threads, fusion with one,
# churn of 64 devices) on the session's final library; then the speed check of issue 22:
# matmul 4096 f16, softmax 4096² (job "normalizations f32"), attention f16 S 2048 forward
# and backward (tensor cores), AdamW 64M, the final library against de307a8 (kernels_base),
# PyTorch (torch_ref.py) from the same call.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked" $OUT/r/$name.txt | cut -c1-250 | head -6; }
run tensor 40
run fusion 90 --test-threads=1
run lifetime 40
timeout 60 bash run.sh churn --rounds 64 > $OUT/r/churn.txt 2>&1; echo "== churn rc=$?"; tail -1 $OUT/r/churn.txt
timeout 130 bash run.sh python3 torch_ref.py > $OUT/r/torch_log.txt 2>&1; echo "== torch rc=$?"
grep "^{" $OUT/r/torch_log.txt > $OUT/r/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
for bin in kernels kernels_base; do
  for job in "matmul 4096 f16" "normalizations f32" "adamw" "attention f16"; do
    tag=$(echo "$job" | tr ' ' _)
    WGK_ATTN_SEQS=2048 WGK_ATTN_PATHS=tc timeout 70 bash run.sh $bin --reference $OUT/r/torch.json --only "$job" --md $OUT/r/${bin}_$tag.md --json $OUT/r/${bin}_$tag.json > $OUT/r/${bin}_$tag.log 2>&1
    echo "== $bin $job rc=$?"; show $OUT/r/${bin}_$tag.md | grep -E "auto|softmax |adamw|attention" | grep -v "^ *bench" | head -12
  done
done
tar czf $OUT/callD.tgz -C $OUT r

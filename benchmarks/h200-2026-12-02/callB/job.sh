#!/usr/bin/env bash
# Eleventh round, call B: (issue 22, item k) open files and threads of the fusion test binary
# run with one thread, sampled every 0.3 s, and the lifetime test's per-path counts; (item 6)
# matmul 4096 and GPT-2 shapes, the committed kernels (16-bit C stored directly) against
# de307a8 (kernels_base), cuBLAS from the same call.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
timeout 60 bash run.sh lifetime_tests --nocapture > $OUT/r/lifetime.txt 2>&1; echo "== lifetime rc=$?"; grep -E "round (0|3)|test result|panicked|grew" $OUT/r/lifetime.txt | head -16
bash run.sh fusion_tests --test-threads=1 > $OUT/r/fusion.txt 2>&1 &
pid=$!; : > $OUT/r/fusion_handles.txt
while kill -0 $pid 2>/dev/null; do echo "$(date +%s.%N | cut -c1-14) $(ls /proc/$pid/fd 2>/dev/null | wc -l) $(ls /proc/$pid/task 2>/dev/null | wc -l) $(grep VmRSS /proc/$pid/status 2>/dev/null | awk '{print $2}')" >> $OUT/r/fusion_handles.txt; sleep 0.3; done
wait $pid; echo "== fusion rc=$?"; grep -E "^test |test result" $OUT/r/fusion.txt | head -30
awk 'NR==1||NR%10==0' $OUT/r/fusion_handles.txt | head -40
timeout 150 bash run.sh python3 torch_ref.py > $OUT/r/torch_log.txt 2>&1; echo "== torch rc=$?"
grep "^{" $OUT/r/torch_log.txt > $OUT/r/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
for bin in kernels kernels_base; do
  for job in "matmul 4096" "gpt2"; do
    tag=$(echo "$job" | tr ' ' _)
    timeout 120 bash run.sh $bin --reference $OUT/r/torch.json --only "$job" --md $OUT/r/${bin}_$tag.md --json $OUT/r/${bin}_$tag.json > $OUT/r/${bin}_$tag.log 2>&1
    echo "== $bin $job rc=$?"; show $OUT/r/${bin}_$tag.md | grep -i "matmul"
  done
done
tar czf $OUT/callB.tgz -C $OUT r

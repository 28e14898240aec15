#!/usr/bin/env bash
# Tenth round, call 5: decode-time matmuls (M <= 8, the thin kernel): the new thin kernel
# (16 columns x 16 slices of K per workgroup, 4 loads of B in flight per invocation; `kernels`)
# against the old one (64 columns x 4 slices, one load at a time; `kernels_oldthin`, the same
# bench code), auto and thin-forced, B as [k,n] and as a Linear weight; PyTorch (cuBLAS) from
# the same call; the matmul tests on the new kernel.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 120 bash run.sh matmul_tests > $OUT/matmul_tests.txt 2>&1
echo "matmul tests rc=$?"; grep -E "test result|FAILED|panicked" $OUT/matmul_tests.txt | head -5
timeout 120 bash run.sh python3 torch_extra.py decode > /tmp/torch_log.txt 2>&1
grep "^{" /tmp/torch_log.txt > $OUT/torch.json; grep -c "^{" $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$6,$7,$9,$10}'; }
for bin in kernels kernels_oldthin; do
  for dt in f16 f32; do
    timeout 100 bash run.sh $bin --reference $OUT/torch.json --only "decode $dt" --md /tmp/d.md --json $OUT/${bin}_$dt.json > /tmp/log.txt 2>&1
    echo "== $bin $dt rc=$?"; show /tmp/d.md | grep decode
  done
done

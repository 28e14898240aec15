#!/usr/bin/env bash
# Tenth round, call 6: the thin kernel with 8 loads of B in flight per invocation (kernels_u8)
# against 4 (kernels, call 5's new kernel), decode shapes; PyTorch from the same call; the
# matmul tests on the 8-load kernel.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
timeout 100 bash run.sh matmul_tests_u8 > $OUT/matmul_tests_u8.txt 2>&1
echo "matmul tests (u8) rc=$?"; grep -E "test result|FAILED|panicked" $OUT/matmul_tests_u8.txt | head -5
timeout 100 bash run.sh python3 torch_extra.py decode > /tmp/torch_log.txt 2>&1
grep "^{" /tmp/torch_log.txt > $OUT/torch.json; grep -c "^{" $OUT/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$6,$7,$9,$10}'; }
for bin in kernels_u8 kernels; do
  for dt in f16 f32; do
    timeout 60 bash run.sh $bin --reference $OUT/torch.json --only "decode $dt" --md /tmp/d.md --json $OUT/${bin}_$dt.json > /tmp/log.txt 2>&1
    echo "== $bin $dt rc=$?"; show /tmp/d.md | grep decode | grep thin
  done
done

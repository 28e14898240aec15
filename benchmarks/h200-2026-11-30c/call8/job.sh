#!/usr/bin/env bash
# Ninth round, call 8: the attention suite with wgpu's runtime bounds checks on (WGK_CHECKED=1),
# the only place the tensor-core kernels (f16, bf16, f32) can run checked.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan WGK_CHECKED=1
timeout 170 bash run.sh attention_tests --test-threads=2 > $OUT/tests_checked.txt 2>&1
echo "attention tests (checked) rc=$?"
grep -E "^test |test result|should be" $OUT/tests_checked.txt | cut -c1-300 | head -30

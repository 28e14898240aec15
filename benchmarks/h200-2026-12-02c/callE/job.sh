#!/usr/bin/env bash
# Thirteenth round, call E: MatmulPrecision::High (f32 split into f16 parts on tensor
# cores): the matmul suite on the H200, then GPT-2's f32 block and train rows at highest
# and high beside torch_gpt2.py (eager f32, TF32, compile) and the GPT-2 matmul shapes.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r/prof
timeout 150 bash run.sh matmul_test --test-threads 1 > $OUT/r/matmul_test.txt 2>&1; echo "== matmul tests rc=$?"; grep -E "test result|FAILED|panicked|SKIPPED" $OUT/r/matmul_test.txt | head -8
timeout 150 bash run.sh python3 torch_gpt2.py --only block,train > $OUT/r/torch_gpt2.json 2> $OUT/r/torch_gpt2.err; echo "== torch rc=$?"
timeout 60 bash run.sh python3 torch_gpt2.py --only matmul >> $OUT/r/torch_gpt2.json 2>> $OUT/r/torch_gpt2.err; echo "== torch mm rc=$?"
timeout 200 bash run.sh kernels --only "gpt2 block f32,gpt2 train f32,gpt2 8192x768x3072 f32,gpt2 8192x3072x768 f32,gpt2 768x8192x3072 At f32" --gpt2-profile $OUT/r/prof --reference $OUT/r/torch_gpt2.json --json $OUT/r/gpt2.json --md $OUT/r/gpt2.md > $OUT/r/kernels.txt 2>&1; echo "== kernels rc=$?"; grep -E "^\| gpt2 \| (block|train) \| f32|^\| matmul \| [0-9x]+ (At |Bt )?\| f32" $OUT/r/gpt2.md; tail -2 $OUT/r/kernels.txt
tar czf $OUT/callE.tgz -C $OUT r

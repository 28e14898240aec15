#!/usr/bin/env bash
# Fourteenth round (2026-12-05). Group 1: matmul tests (bf16 scaled, 16-bit stores, High),
# torch_gpt2 block+train, our f32 and bf16/f16 block+train rows with tuning logged.
# Group 2: generation (ours and torch), forward rows.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
R=$OUT/r; mkdir -p $R/prof
g=$1
if [ "$g" = 1 ]; then
timeout 100 bash run.sh matmul_test --test-threads 1 bf16_matmul sixteen_bit high_precision > $R/matmul_test.txt 2>&1; echo "== matmul tests rc=$?"; grep -E "test result|FAILED|panicked|SKIPPED" $R/matmul_test.txt | head -8
# tests/attention.rs (binary attention_test): the device now requests SHADER_FLOAT32_ATOMIC,
# and the FMA backward's atomic dQ pass runs where it is forced (path Flash).
timeout 120 bash run.sh attention_test --test-threads 1 > $R/attention_test.txt 2>&1; echo "== attention tests rc=$?"; grep -E "test result|FAILED|panicked" $R/attention_test.txt | head -4
timeout 170 bash run.sh python3 torch_gpt2.py --only block,train > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 130 bash run.sh kernels --log-tuning --only "gpt2 block f32,gpt2 train f32" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/f32.json --md $R/f32.md > $R/f32.txt 2>&1; echo "== f32 rc=$?"
timeout 130 bash run.sh kernels --log-tuning --only "gpt2 block bf16,gpt2 train bf16,gpt2 train f16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/mixed.json --md $R/mixed.md > $R/mixed.txt 2>&1; echo "== mixed rc=$?"
grep -h "gpt2" $R/*.md | head -30
fi
if [ "$g" = 2 ]; then
timeout 150 bash run.sh python3 torch_gpt2.py --only generate,forward > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 200 bash run.sh kernels --log-tuning --only "gpt2 generate,gpt2 forward" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/gen.json --md $R/gen.md > $R/gen.txt 2>&1; echo "== gen rc=$?"
grep -h "gpt2" $R/*.md | head -30
fi
tar czf $OUT/call$g.tgz -C $OUT r; rm -rf $R

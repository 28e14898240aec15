#!/usr/bin/env bash
# Next H200 call for issue 24 (prepared 2026-12-05, after the fourteenth round). Stage from
# the checkout root:
#   cargo build --release --bench kernels --test attention --test matmul  (paths: --message-format=json)
#   ../shared/gpu/stage.sh; copy the kernels bench as .gpu/bin/kernels, tests/attention.rs's
#   binary as attention_test, tests/matmul.rs's as matmul_test; strip;
#   (cd .gpu && tar cf - bin | xz > bins.tar.xz && rm -rf bin); cp benches/torch_gpt2.py .gpu/
#   mkdir -p .gpu/cache && cp benchmarks/h200-2026-12-05/call4/cache/*.tsv .gpu/cache/  (skips re-tuning
#   unchanged kernels; a changed kernel's checksum re-tunes it)
#   cp benchmarks/next/h200.sh .gpu/job.sh; run(command="bash .gpu/job.sh", carry=[".gpu"])
# 1. The attention and matmul suites in full (the fourteenth round's call 1 cut attention's
#    bf16 tensor-core test at 100 s: its compiles are slow there).
# 2. The 16-bit training steps beside PyTorch's, with the fused kernels now labelled by their
#    ops in the profiles (12–13 ms of `fused:main` per step, unattributed until now).
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan WGK_CACHE_DIR=$PWD/cache
R=$OUT/r; mkdir -p $R/prof
timeout 200 bash run.sh attention_test --test-threads 1 > $R/attention_test.txt 2>&1; echo "== attention tests rc=$?"; grep -E "test result|FAILED|panicked" $R/attention_test.txt | head -4
tar czf $OUT/call.tgz -C $OUT r
timeout 100 bash run.sh python3 torch_gpt2.py --only train > $R/torch_gpt2.json 2> $R/torch_gpt2.err; echo "== torch rc=$?"
timeout 120 bash run.sh kernels --log-tuning --only "gpt2 train f16,gpt2 train bf16" --gpt2-profile $R/prof --reference $R/torch_gpt2.json --json $R/mixed.json --md $R/mixed.md > $R/mixed.txt 2>&1; echo "== mixed rc=$?"
grep -h "gpt2" $R/*.md | head; tar czf $OUT/call.tgz -C $OUT r
timeout 150 bash run.sh matmul_test --test-threads 1 > $R/matmul_test.txt 2>&1; echo "== matmul tests rc=$?"; grep -E "test result|FAILED|panicked" $R/matmul_test.txt | head -4
cp -r cache $R/ 2>/dev/null
tar czf $OUT/call.tgz -C $OUT r; rm -rf $R

#!/usr/bin/env bash
# Builds the demo page's WebAssembly (web/demo) into web/pkg/ with wasm-bindgen. Needs the
# wasm32 target and wasm-bindgen-cli (web/test.sh installs both). Then serve web/:
#   python3 web/serve.py 8000     and open http://127.0.0.1:8000/ in a WebGPU browser.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p wgkernels-web-demo --release --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/wgkernels_web_demo.wasm
echo "built web/pkg/ ($(du -sh web/pkg | cut -f1))"

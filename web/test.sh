#!/usr/bin/env bash
# The browser: builds the library for wasm32-unknown-unknown, runs tests/web.rs (one test
# per kernel family, against float64) through wasm-bindgen-test in headless Chromium on its
# WebGPU software adapter (SwiftShader), then loads the demo page headless and checks what
# it computed. Installs what it needs: Debian's chromium and chromium-driver, the wasm32
# target (rustup), and wasm-bindgen-cli at the version of the wasm-bindgen crate in
# Cargo.lock (cargo). .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium with WebGPU on SwiftShader, headless, as root, on a machine without network.
# (webdriver.json gives wasm-bindgen-test-runner the same flags.)
CHROMIUM_FLAGS=(--headless --no-sandbox --enable-unsafe-webgpu --enable-unsafe-swiftshader
  --use-webgpu-adapter=swiftshader --disable-background-networking --disable-component-update
  --disable-sync --no-first-run)

need=()
for pkg in chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$version" ]; then
  # Not --locked: the CLI's own lock file names a webpki-roots release that this
  # workplace's registry mirror lacks (seen 2026-12-05); the versions cargo resolves build.
  cargo install wasm-bindgen-cli --version "$version"
fi

echo "=== the library for wasm32-unknown-unknown ==="
cargo build --lib --target wasm32-unknown-unknown

echo "=== tests/web.rs in headless Chromium (WebGPU on SwiftShader) ==="
export CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=300
cargo test --target wasm32-unknown-unknown --test web

echo "=== the demo page, headless ==="
bash web/build.sh
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 web/serve.py "$port" --result "$work/result.json" > "$work/serve.log" 2>&1 &
server=$!
chromium "${CHROMIUM_FLAGS[@]}" --user-data-dir="$work/profile" "http://127.0.0.1:$port/?report" > "$work/chromium.log" 2>&1 &
browser=$!
trap 'kill $browser $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ -s "$work/result.json" ] && break
  kill -0 $browser 2>/dev/null || { echo "chromium exited early:"; tail -20 "$work/chromium.log"; exit 1; }
  sleep 1
done
[ -s "$work/result.json" ] || { echo "the demo page reported nothing in 300 s:"; tail -20 "$work/chromium.log"; exit 1; }
python3 - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    sys.exit(f"the demo page failed: {r['error']}")
print(f"adapter: {r['adapter']!r}, the browser says {r.get('browser_adapter')!r} ({r['backend']}, {r['device_type']}), shader-f16: {r['shader_f16']}")
for f in r["fusion"]:
    print(f"  {f['elements']:>8} elements: fused {f['fused_gbps']:8.2f} GB/s, unfused {f['unfused_gbps']:8.2f} GB/s, gain {f['gain']:.2f}x")
c = r["fusion_check"]
print(f"fused chain vs float64 at {c['elements']}: max error fused {c['fused']['max_abs_err']:.2e}, unfused {c['unfused']['max_abs_err']:.2e}, ok {c['ok']}")
g, t = r["gpt"], r["gpt"]["train"]
print(f"tiny GPT ({g['config']}): trained {t['steps']} steps, the first (compiling) {t['first_step_ms'] / 1e3:.1f} s, then {t['ms_per_step']:.1f} ms each, loss {t['loss_first']:.3f} -> {t['loss_last']:.3f}")
print(f"  generated {g['tokens'][len(g['prompt']):]} at {g['tokens_per_s']:.1f} tokens/s, the pattern continued for {g['pattern_continued']}; cache matches the full forward: {g['cache_matches_full_forward']}")
if not (r["ok"] and c["ok"] and g["cache_matches_full_forward"] and g["loss_fell"] and len(r["fusion"]) == 5):
    sys.exit("the demo page's checks failed")
print("demo page: ok")
PY

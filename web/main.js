// Loads the demo (pkg/, built by web/build.sh), runs it, renders its report. With
// ?report in the address the report is also POSTed to /result (web/serve.py), which is how
// web/test.sh reads what headless Chromium computed.
import init, { run_demo } from "./pkg/wgkernels_web_demo.js";

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 2) => Number(x).toFixed(d);

async function post(body) {
  if (new URLSearchParams(location.search).has("report")) {
    await fetch("/result", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  }
}

function plot(rows) {
  // Log-x line plot of fused and unfused GB/s, with the gain on the right axis.
  const W = 640, H = 320, L = 60, R = 60, T = 20, B = 45;
  const xs = rows.map((r) => Math.log2(r.elements));
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const ymax = 1.1 * Math.max(...rows.map((r) => Math.max(r.fused_gbps, r.unfused_gbps)));
  const gmax = Math.ceil(Math.max(...rows.map((r) => r.gain))) + 1;
  const px = (e) => L + ((Math.log2(e) - x0) / Math.max(x1 - x0, 1e-9)) * (W - L - R);
  const py = (v) => H - B - (v / ymax) * (H - T - B);
  const pg = (g) => H - B - (g / gmax) * (H - T - B);
  const line = (f, color, dash = "") =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" ${dash} points="${rows.map((r) => `${px(r.elements)},${f(r)}`).join(" ")}"/>`;
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-size="12">`;
  s += `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#444"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#444"/>`;
  for (const r of rows) s += `<text x="${px(r.elements)}" y="${H - B + 16}" text-anchor="middle">2^${Math.log2(r.elements)}</text>`;
  for (let k = 0; k <= 4; k++) {
    const v = (ymax * k) / 4;
    s += `<text x="${L - 6}" y="${py(v) + 4}" text-anchor="end">${fmt(v, ymax < 2 ? 2 : 1)}</text>`;
    s += `<text x="${W - R + 6}" y="${pg((gmax * k) / 4) + 4}">${fmt((gmax * k) / 4, 1)}×</text>`;
  }
  s += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">elements</text>`;
  s += `<text x="14" y="${(T + H - B) / 2}" transform="rotate(-90 14 ${(T + H - B) / 2})" text-anchor="middle">GB/s</text>`;
  s += line((r) => py(r.fused_gbps), "#1f77b4") + line((r) => py(r.unfused_gbps), "#ff7f0e");
  s += line((r) => pg(r.gain), "#2ca02c", 'stroke-dasharray="5,4"');
  s += `<text x="${L + 10}" y="${T + 12}" fill="#1f77b4">fused</text><text x="${L + 60}" y="${T + 12}" fill="#ff7f0e">unfused</text><text x="${L + 125}" y="${T + 12}" fill="#2ca02c">gain (right axis)</text>`;
  return s + "</svg>";
}

function render(r) {
  const name = r.adapter || r.browser_adapter || "(unnamed)";
  $("adapter").textContent = `${name} — ${r.backend}, ${r.device_type}${r.shader_f16 ? ", shader-f16" : ""}`;
  $("fusion").innerHTML =
    "<tr><th>elements</th><th>fused ms</th><th>unfused ms</th><th>fused GB/s</th><th>unfused GB/s</th><th>gain</th></tr>" +
    r.fusion.map((f) => `<tr><td>${f.elements}</td><td>${fmt(f.fused_ms, 3)}</td><td>${fmt(f.unfused_ms, 3)}</td><td>${fmt(f.fused_gbps)}</td><td>${fmt(f.unfused_gbps)}</td><td>${fmt(f.gain)}×</td></tr>`).join("");
  $("plot").innerHTML = plot(r.fusion);
  const c = r.fusion_check;
  $("fusion-check").innerHTML = `Checked against float64 at ${c.elements} elements: fused max error ${c.fused.max_abs_err.toExponential(2)}, unfused ${c.unfused.max_abs_err.toExponential(2)} — <span class="${c.ok ? "ok" : "bad"}">${c.ok ? "within 1e-5 + 1e-5·|want|" : "OUT OF TOLERANCE"}</span>.`;
  const g = r.gpt, t = g.train;
  $("gpt").innerHTML =
    `${g.config}, trained here for ${t.steps} steps (batch ${t.batch} × ${t.seq} tokens, AdamW; ${fmt(t.ms_per_step, 1)} ms a step after the first, which compiled the kernels in ${fmt(t.first_step_ms / 1e3, 1)} s) ` +
    `on a text that repeats the pattern [${g.pattern.join(", ")}]: loss ${fmt(t.loss_first, 3)} → ` +
    `<span class="${g.loss_fell ? "ok" : "bad"}">${fmt(t.loss_last, 3)}</span>.<br>` +
    `Prompt [${g.prompt.join(", ")}] → [${g.tokens.slice(g.prompt.length).join(", ")}] (the pattern continued for ${g.pattern_continued} tokens), ` +
    `${fmt(g.tokens_per_s, 1)} tokens/s over the KV cache. Each token equals the full forward's argmax: ` +
    `<span class="${g.cache_matches_full_forward ? "ok" : "bad"}">${g.cache_matches_full_forward}</span>.`;
  $("status").innerHTML = r.ok ? '<span class="ok">Done: every check passed.</span>' : '<span class="bad">Done: a check failed (see below).</span>';
}

try {
  if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
  // What the browser says of its adapter (wgpu's name for it may be empty on the web).
  const adapter = await navigator.gpu.requestAdapter();
  const info = adapter && adapter.info ? adapter.info : {};
  const browserAdapter = [info.vendor, info.architecture, info.description].filter(Boolean).join(" / ");
  await init();
  const report = JSON.parse(await run_demo());
  report.browser_adapter = browserAdapter;
  render(report);
  await post(JSON.stringify(report));
} catch (e) {
  $("status").innerHTML = `<span class="bad">Failed: ${e}</span>`;
  await post(JSON.stringify({ ok: false, error: String(e) }));
}

// Headless Chromium test of the built-in chat page, against a real llamagate with the
// real model: choose the model, send a message, see streamed text, press Stop and see
// the server count a cancelled request; with API keys, see the key prompt. Screenshots
// go to test-artifacts/. Prints "N passed, M failed".
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const binary = process.env.LLAMAGATE_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug/llamagate");
const model = process.env.LLAMAGATE_TEST_MODEL || join(root, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
const embedder = join(root, "models/all-MiniLM-L6-v2.F16.gguf");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = join(root, "test-artifacts");
mkdirSync(artifacts, { recursive: true });

const freePort = () => new Promise((ok) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
});

async function startServer(extra) {
  const port = await freePort();
  const config = join(tmpdir(), `llamagate-browser-${port}.toml`);
  writeFileSync(config, `[server]\nbind = "127.0.0.1:${port}"\n${extra}\n[[models]]\nname = "smollm2"\nsource = "${model}"\ndevice = "cpu"\npinned = true\n` +
    `[[models]]\nname = "minilm"\nsource = "${embedder}"\nengine = "llama.cpp"\n`);
  // Only the configured models, not what else lies in models/ (scheduler.models_dir).
  const env = { ...process.env, LLAMAGATE__SCHEDULER__MODELS_DIR: "" };
  const child = spawn(binary, ["serve", "--config", config], { stdio: ["ignore", "ignore", "inherit"], env });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try { if ((await fetch(`${base}/health`)).ok) break; } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  return { base, stop: () => { child.kill("SIGTERM"); rmSync(config, { force: true }); } };
}

async function metric(base, name, headers = {}) {
  const text = await (await fetch(`${base}/metrics`, { headers })).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.split(" ").pop()) : 0;
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
let passed = 0, failed = 0;
async function check(name, fn) {
  try { await fn(); passed++; console.log(`ok   ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${name}: ${e.stack || e}`); }
}

await check("chat streams, Stop cancels the generation on the server", async () => {
  const server = await startServer("");
  try {
    const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // a phone
    // The page sends no max_tokens (the model decides when to stop), and at temperature 1
    // a reply can ramble for minutes: the first, short exchange gets a bound.
    await page.route("**/v1/chat/completions", async (route) => {
      const body = JSON.parse(route.request().postData());
      if (body.messages.length === 1) body.max_tokens = 48;
      await route.continue({ postData: JSON.stringify(body) });
    });
    await page.goto(server.base + "/");
    await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0, null, { timeout: 20000 });
    // The embedding model is not offered for chat.
    const offered = await page.$$eval("#model option", (os) => os.map((o) => o.value));
    if (offered.join() !== "smollm2") throw new Error("models offered: " + offered.join());
    // Which engine serves it, and why (engine = "auto" picks llama.cpp on the CPU).
    const label = await page.$eval("#model option", (o) => o.textContent + " | " + o.title);
    if (!label.includes("llama.cpp") || !label.includes("auto: ")) throw new Error("model label: " + label);
    await page.selectOption("#model", "smollm2");
    // A short exchange that completes, with stats.
    await page.fill("#input", "Say hello.");
    await page.click("#send");
    await page.waitForFunction(() => { const s = document.querySelector(".assistant .stats"); return s && s.textContent.includes("tok/s"); }, null, { timeout: 60000 });
    const first = await page.textContent(".assistant .content");
    if (!first.trim()) throw new Error("no streamed text");
    const stats = await page.textContent(".assistant .stats");
    if (!/TTFT \d/.test(stats)) throw new Error("no TTFT in stats: " + stats);
    // A long one, stopped mid-reply.
    const before = await metric(server.base, 'llamagate_cancelled_requests_total{model="smollm2"}');
    await page.fill("#input", "Write a very long story about a dragon, at least a thousand words.");
    await page.click("#send");
    await page.waitForFunction(() => { const a = document.querySelectorAll(".assistant .content"); return a.length === 2 && a[1].textContent.length > 20; }, null, { timeout: 60000 });
    await page.screenshot({ path: join(artifacts, "chat-streaming.png") });
    await page.click("#stop");
    await page.waitForFunction(() => document.querySelectorAll(".assistant .stats")[1]?.textContent.startsWith("stopped"), null, { timeout: 10000 });
    let after = before;
    for (let i = 0; i < 50 && after <= before; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = await metric(server.base, 'llamagate_cancelled_requests_total{model="smollm2"}');
    }
    if (after <= before) throw new Error(`server did not count a cancellation (${before} -> ${after})`);
    await page.screenshot({ path: join(artifacts, "chat-stopped.png") });
  } finally { server.stop(); }
});

await check("with API keys the page asks for one and then works", async () => {
  const server = await startServer('[auth]\napi_keys = ["browser-key-123"]');
  try {
    const page = await browser.newPage();
    await page.goto(server.base + "/");
    await page.waitForSelector("#key-dialog.open", { timeout: 10000 });
    await page.screenshot({ path: join(artifacts, "chat-key-prompt.png") });
    await page.fill("#key-input", "browser-key-123");
    await page.click("#key-save");
    await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0, null, { timeout: 10000 });
    const stored = await page.evaluate(() => localStorage.getItem("llamagate.apiKey"));
    if (stored !== "browser-key-123") throw new Error("key not kept in local storage");
  } finally { server.stop(); }
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

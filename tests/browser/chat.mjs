// Headless Chromium test of the built-in chat page, against a real llamagate with the
// real model: choose the model, send a message, see streamed text, press Stop (and Esc)
// and see the server count a cancelled request; with API keys, see the key prompt.
// Markdown, highlighting, safety against hostile model text, reasoning, errors,
// regenerate / edit, copy and conversations use hand-made streams (route.fulfill), so
// their content is known; settings go to the real server. Screenshots go to
// test-artifacts/. Prints "N passed, M failed".
//
// LLAMAGATE_UI_FILE=assets/ui/index.html serves that file at / instead of the page built
// into the binary (same CSP), to try a page without rebuilding.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const binary = process.env.LLAMAGATE_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug/llamagate");
const model = process.env.LLAMAGATE_TEST_MODEL || join(root, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
const embedder = join(root, "models/all-MiniLM-L6-v2.F16.gguf");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const uiFile = process.env.LLAMAGATE_UI_FILE ? resolve(process.cwd(), process.env.LLAMAGATE_UI_FILE) : null;
const CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"; // as src/api/ui.rs
const artifacts = join(root, "test-artifacts");
mkdirSync(artifacts, { recursive: true });
const started = Date.now();

const freePort = () => new Promise((ok) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
});

async function startServer(extra) {
  const port = await freePort();
  const config = join(tmpdir(), `llamagate-browser-${port}.toml`);
  writeFileSync(config, `[server]\nbind = "127.0.0.1:${port}"\n${extra}\n[[models]]\nname = "smollm2"\nsource = "${model}"\ndevice = "cpu"\npinned = true\n` +
    `[[models]]\nname = "minilm"\nsource = "${embedder}"\nengine = "llama.cpp"\n`);
  // Only the configured models, not what else lies in models/ (scheduler.models_dir).
  const env = { ...process.env, LLAMAGATE__SCHEDULER__MODELS_DIR: "", LLAMAGATE__AUTH__STORE: "" };
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
function assert(cond, message) { if (!cond) throw new Error(message); }

/** A fresh browser context (empty local storage) on the page; page errors fail the check. */
async function openPage(server, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, permissions: ["clipboard-read", "clipboard-write"], acceptDownloads: true });
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error" && /Content Security Policy/i.test(m.text())) page.errors.push(m.text()); });
  if (uiFile) {
    await page.route(server.base + "/", (r) => r.fulfill({ status: 200, contentType: "text/html; charset=utf-8",
      headers: { "content-security-policy": CSP }, body: readFileSync(uiFile) }));
  }
  return page;
}
async function ready(page, server) {
  await page.goto(server.base + "/");
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0, null, { timeout: 20000 });
}
async function close(page) {
  const errors = page.errors;
  await page.context().close();
  assert(!errors.length, "errors on the page: " + errors.join("; "));
}

// A hand-made OpenAI stream: strings are content deltas, objects are deltas as they are,
// {raw} a data event as it is.
const event = (obj) => `data: ${JSON.stringify(obj)}\n\n`;
const chunk = (delta, finish = null) => event({ id: "chatcmpl-fake", object: "chat.completion.chunk", model: "smollm2", choices: [{ index: 0, delta, finish_reason: finish }] });
function sse(parts, { finish = "stop", completion = parts.length } = {}) {
  let body = chunk({ role: "assistant", content: "" });
  for (const p of parts) body += typeof p === "string" ? chunk({ content: p }) : p.raw ? event(p.raw) : chunk(p);
  if (finish) body += chunk({}, finish) + event({ choices: [], usage: { prompt_tokens: 11, completion_tokens: completion, total_tokens: 11 + completion } });
  return body + "data: [DONE]\n\n";
}
const pieces = (text, n = 7) => text.match(new RegExp(`[^]{1,${n}}`, "g"));
/** Answers /v1/chat/completions with reply(body, k) (an SSE string or a route.fulfill object); returns the request bodies. */
async function fakeChat(page, reply) {
  const requests = [];
  await page.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData());
    requests.push(body);
    const r = reply(body, requests.length);
    await route.fulfill(typeof r === "string" ? { status: 200, headers: { "content-type": "text/event-stream" }, body: r } : r);
  });
  return requests;
}
/** Sends text and waits for the n-th answer to finish. */
async function say(page, text, n) {
  await page.fill("#input", text);
  await page.click("#send");
  await answered(page, n);
}
const answered = (page, n) => page.waitForFunction((n) => {
  const s = document.querySelectorAll(".assistant .stats");
  return s.length === n && s[n - 1].textContent && !s[n - 1].textContent.startsWith("generating") && !document.querySelector("#send").disabled;
}, n, { timeout: 20000 });

const server = await startServer("");

await check("chat streams, Stop cancels the generation on the server", async () => {
  const page = await openPage(server, { width: 390, height: 844 }); // a phone
  // The page sends no max_tokens by default (the model decides when to stop), and at
  // temperature 1 a reply can ramble for minutes: the first, short exchange gets a bound.
  await page.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData());
    if (body.messages.length === 1) body.max_tokens = 48;
    await route.continue({ postData: JSON.stringify(body) });
  });
  await ready(page, server);
  // The embedding model is not offered for chat.
  const offered = await page.$$eval("#model option", (os) => os.map((o) => o.value));
  assert(offered.join() === "smollm2", "models offered: " + offered.join());
  // Its status (the pinned model may still be loading: the page refreshes the list every
  // 5 s), which engine serves it and why (engine = "auto" picks llama.cpp on the CPU).
  await page.waitForFunction(() => document.querySelector("#model-status").textContent === "ready", null, { timeout: 30000 });
  const label = await page.$eval("#model option", (o) => o.textContent + " | " + o.title);
  assert(label.includes("llama.cpp") && label.includes("auto: ") && label.includes("(ready"), "model label: " + label);
  await page.selectOption("#model", "smollm2");
  // A short exchange that completes, with stats (tokens from the usage chunk).
  await page.fill("#input", "Say hello.");
  await page.click("#send");
  await page.waitForFunction(() => { const s = document.querySelector(".assistant .stats"); return s && s.textContent.includes("tok/s"); }, null, { timeout: 60000 });
  const first = await page.textContent(".assistant .content");
  assert(first.trim(), "no streamed text");
  const stats = await page.textContent(".assistant .stats");
  assert(/TTFT \d/.test(stats) && /\d+ tokens/.test(stats) && /prompt \d+/.test(stats), "stats: " + stats);
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
  assert(after > before, `server did not count a cancellation (${before} -> ${after})`);
  await page.screenshot({ path: join(artifacts, "chat-stopped.png") });
  await close(page);
});

await check("keyboard only: Enter sends, Shift+Enter is a new line, Esc stops; focus is visible", async () => {
  const page = await openPage(server);
  await ready(page, server);
  // Every control has a name for screen readers.
  const unnamed = await page.$$eval("button, select, textarea, input", (es) => es.filter((e) => !(e.getAttribute("aria-label") || e.textContent.trim() || e.labels?.length)).map((e) => e.outerHTML));
  assert(!unnamed.length, "controls without a name: " + unnamed.join(" "));
  // Tab reaches the controls, with a visible focus ring.
  await page.keyboard.press("Tab");
  const ring = await page.evaluate(() => { const e = document.activeElement; const s = getComputedStyle(e); return e.tagName + " " + s.outlineStyle + " " + s.outlineWidth; });
  assert(/^(BUTTON|SELECT) solid 2px/.test(ring), "focus ring: " + ring);
  await page.focus("#input");
  await page.keyboard.type("Write a very long story about a wizard,");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("at least a thousand words.");
  const typed = await page.inputValue("#input");
  assert(typed.includes("wizard,\nat least"), "Shift+Enter: " + JSON.stringify(typed));
  assert((await page.$$(".msg.user")).length === 0, "Shift+Enter sent the message");
  const before = await metric(server.base, 'llamagate_cancelled_requests_total{model="smollm2"}');
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector(".assistant .content")?.textContent.length > 20, null, { timeout: 60000 });
  assert((await page.inputValue("#input")) === "", "input not cleared");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => document.querySelector(".assistant .stats")?.textContent.startsWith("stopped"), null, { timeout: 10000 });
  let after = before;
  for (let i = 0; i < 50 && after <= before; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = await metric(server.base, 'llamagate_cancelled_requests_total{model="smollm2"}');
  }
  assert(after > before, `Esc: no cancellation counted (${before} -> ${after})`);
  await close(page);
});

await check("settings (system prompt, temperature, top_p, max tokens, seed) are sent and kept per conversation", async () => {
  const page = await openPage(server);
  const bodies = [];
  await page.route("**/v1/chat/completions", async (route) => { bodies.push(JSON.parse(route.request().postData())); await route.continue(); });
  await ready(page, server);
  await page.click("#settings-btn");
  await page.waitForSelector("#settings-dialog.open");
  await page.fill("#set-system", "You are a terse pirate.");
  await page.fill("#set-temperature", "0.3");
  await page.fill("#set-top-p", "0.8");
  await page.fill("#set-max-tokens", "12");
  await page.fill("#set-seed", "42");
  await page.screenshot({ path: join(artifacts, "chat-settings.png") });
  await page.click("#settings-save");
  assert(!(await page.$("#settings-dialog.open")), "dialog still open");
  await say(page, "Hello there", 1); // to the real model: the server takes these fields
  const b = bodies[0];
  assert(b.messages[0].role === "system" && b.messages[0].content === "You are a terse pirate.", "system message: " + JSON.stringify(b.messages));
  assert(b.messages[1].role === "user" && b.messages[1].content === "Hello there", "user message: " + JSON.stringify(b.messages));
  assert(b.temperature === 0.3 && b.top_p === 0.8 && b.max_tokens === 12 && b.seed === 42, "sampling fields: " + JSON.stringify(b));
  assert(b.stream === true && b.stream_options?.include_usage === true && b.model === "smollm2", "stream fields: " + JSON.stringify(b));
  assert(!(await page.textContent(".assistant .error")).trim(), "server refused: " + (await page.textContent(".assistant .error")));
  const used = Number((/· (\d+) tokens?/.exec(await page.textContent(".assistant .stats")) || [])[1]);
  assert(used >= 1 && used <= 12, "max_tokens not applied: " + (await page.textContent(".assistant .stats")));
  // Kept across a reload; an emptied field is not sent.
  await page.reload();
  await page.waitForSelector(".msg.user");
  await page.click("#settings-btn");
  assert((await page.inputValue("#set-seed")) === "42" && (await page.inputValue("#set-system")) === "You are a terse pirate.", "settings not kept");
  await page.fill("#set-seed", "");
  await page.click("#settings-save");
  await say(page, "And again", 2);
  assert(!("seed" in bodies[1]) && bodies[1].max_tokens === 12, "second body: " + JSON.stringify(bodies[1]));
  await close(page);
});

await check("markdown and code highlighting are rendered", async () => {
  const page = await openPage(server); // 1280x800
  const md = [
    "## Plan", "", "Some **bold**, *italic*, `inline code`, ~~gone~~ and a [link](https://example.com/docs).", "",
    "1. First step", "   - nested point", "2. Second step", "", "- apples", "- pears", "", "> a quoted line", "",
    "| lang | year |", "|:-----|-----:|", "| Rust | 2015 |", "| C | 1972 |", "",
    "```python", "def greet(name):  # say hello", "    return \"Hi \" + name * 2", "```", "",
    "```rust", "fn main() {", "    let n: u32 = 42; // answer", "    println!(\"{}\", n);", "}", "```",
  ].join("\n");
  await fakeChat(page, () => sse(pieces(md)));
  await ready(page, server);
  await say(page, "What can you format?", 1);
  await page.click("#new-chat");
  await say(page, "Show me some markdown", 1);
  const r = await page.$eval(".assistant .content", (c) => ({
    h2: c.querySelector("h2")?.textContent, strong: c.querySelector("strong")?.textContent, em: c.querySelector("em")?.textContent,
    del: c.querySelector("del")?.textContent, code: c.querySelector("p > code")?.textContent,
    link: c.querySelector("a") && [c.querySelector("a").href, c.querySelector("a").rel, c.querySelector("a").target],
    ol: c.querySelectorAll("ol > li").length, nested: c.querySelector("ol li ul li")?.textContent, ul: c.querySelectorAll(":scope > ul > li").length,
    quote: c.querySelector("blockquote")?.textContent.trim(), th: [...c.querySelectorAll("th")].map((t) => t.textContent).join(),
    td: [...c.querySelectorAll("td")].map((t) => t.textContent).join(), align: c.querySelector("td:last-child")?.style.textAlign,
    blocks: [...c.querySelectorAll("pre code")].map((p) => p.className), langs: [...c.querySelectorAll(".code-lang")].map((p) => p.textContent).join(),
    kw: [...c.querySelectorAll(".tok-kw")].map((t) => t.textContent), str: [...c.querySelectorAll(".tok-str")].map((t) => t.textContent),
    com: [...c.querySelectorAll(".tok-com")].map((t) => t.textContent), num: [...c.querySelectorAll(".tok-num")].map((t) => t.textContent),
    fn: [...c.querySelectorAll(".tok-fn")].map((t) => t.textContent), copies: c.querySelectorAll(".codeblock .copy-code").length,
    pyText: c.querySelector("pre code").textContent,
  }));
  const want = (cond, what) => assert(cond, what + ": " + JSON.stringify(r));
  want(r.h2 === "Plan" && r.strong === "bold" && r.em === "italic" && r.del === "gone" && r.code === "inline code", "inline");
  want(r.link && r.link[0] === "https://example.com/docs" && r.link[1] === "noopener noreferrer" && r.link[2] === "_blank", "link");
  want(r.ol === 2 && r.nested === "nested point" && r.ul === 2 && r.quote === "a quoted line", "lists, quote");
  want(r.th === "lang,year" && r.td === "Rust,2015,C,1972" && r.align === "right", "table");
  want(r.blocks.join() === "language-python,language-rust" && r.langs === "python,rust" && r.copies === 2, "code blocks");
  want(["def", "return", "fn", "let"].every((k) => r.kw.includes(k)), "keywords");
  want(r.str.includes('"Hi "') && r.str.includes('"{}"') && r.com.includes("# say hello") && r.com.includes("// answer"), "strings, comments");
  want(r.num.includes("2") && r.num.includes("42") && r.fn.includes("greet") && r.fn.includes("println!"), "numbers, functions");
  want(r.pyText === 'def greet(name):  # say hello\n    return "Hi " + name * 2', "code text kept exactly");
  await page.screenshot({ path: join(artifacts, "chat-desktop.png") });
  await page.setViewportSize({ width: 1280, height: 1200 });
  await page.screenshot({ path: join(artifacts, "chat-markdown.png") });
  await close(page);
});

await check("hostile model text stays text: no markup, no script, no javascript: links", async () => {
  const page = await openPage(server);
  const evil = [
    'Hi <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=1</script>',
    "[x](javascript:window.__pwned=1) and [y](JaVaScRiPt:window.__pwned=2) and [z](data:text/html,<b>z</b>) ![i](javascript:window.__pwned=3)",
    '<a href="javascript:window.__pwned=4">a</a> <iframe src="javascript:window.__pwned=5"></iframe> <svg onload="window.__pwned=6">',
    "```html", '</code></pre><b>bold?</b><img src=x onerror="window.__pwned=7">', "```",
    "`</code><b>` and **<i>x</i>** <style>body{display:none}</style>",
  ].join("\n\n");
  await fakeChat(page, () => sse([{ reasoning_content: '<img src=x onerror="window.__pwned=8">' }, ...pieces(evil, 5)]));
  await ready(page, server);
  await say(page, '<img src=y onerror="window.__pwned=9"> title?', 1);
  const inspect = () => page.evaluate(() => {
    const root = document.querySelector("#messages");
    return {
      pwned: window.__pwned, tags: [...document.querySelectorAll("#messages img, #messages script, #messages iframe, #messages b, #messages i, #messages style, #messages svg, #conv-list img")].map((e) => e.tagName),
      hrefs: [...root.querySelectorAll("a")].map((a) => a.getAttribute("href")), text: root.innerText + "\n" + root.querySelector(".reasoning-body").textContent,
      title: document.querySelector("#conv-list").innerText, visible: getComputedStyle(document.body).display,
    };
  });
  for (const when of ["streamed", "reloaded from local storage"]) {
    const r = await inspect();
    assert(r.pwned === undefined, `${when}: window.__pwned = ${r.pwned}`);
    assert(!r.tags.length, `${when}: elements made from model text: ${r.tags.join()}`);
    assert(r.hrefs.every((h) => /^(https?:|mailto:)/.test(h)), `${when}: hrefs: ${r.hrefs.join()}`);
    for (const literal of ['<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=1</script>", "[x](javascript:window.__pwned=1)",
                           "[y](JaVaScRiPt:window.__pwned=2)", '</code></pre><b>bold?</b><img src=x onerror="window.__pwned=7">', "</code><b>", "<i>x</i>",
                           '<img src=y onerror="window.__pwned=9"> title?']) {
      assert(r.text.includes(literal), `${when}: not shown literally: ${literal}\n--- shown:\n${r.text}`);
    }
    assert(r.title.includes("<img src=y"), `${when}: sidebar title: ${r.title}`);
    assert(r.visible !== "none", `${when}: a <style> from the model applied`);
    if (when === "streamed") { await page.reload(); await page.waitForSelector(".assistant .content"); }
  }
  await close(page);
});

await check("reasoning is shown folded above the answer (reasoning_content and reasoning)", async () => {
  const page = await openPage(server);
  const requests = await fakeChat(page, (b, k) => k === 1
    ? sse([{ reasoning_content: "Let me think. " }, { reasoning_content: "Two plus two is four." }, "The answer ", "is 4."])
    : sse([{ reasoning: "Other field name." }, "Still 4."]));
  await ready(page, server);
  await say(page, "What is 2+2?", 1);
  const r = await page.$eval(".assistant", (a) => {
    const d = a.querySelector("details.reasoning");
    return { tag: d?.tagName, hidden: d?.hidden, open: d?.open, summary: d?.querySelector("summary").textContent, body: d?.querySelector(".reasoning-body").textContent,
             content: a.querySelector(".content").textContent, first: a.firstElementChild === d, bodyShown: d?.querySelector(".reasoning-body").checkVisibility() };
  });
  assert(r.tag === "DETAILS" && !r.hidden && !r.open && r.first, "reasoning block: " + JSON.stringify(r));
  assert(r.summary === "Reasoning" && r.body === "Let me think. Two plus two is four." && !r.bodyShown, "reasoning text: " + JSON.stringify(r));
  assert(r.content === "The answer is 4.", "answer: " + r.content);
  await page.click(".assistant details.reasoning summary");
  assert(await page.$eval(".assistant .reasoning-body", (b) => b.checkVisibility()), "unfolding does not show it");
  await say(page, "Sure?", 2);
  assert((await page.$$eval(".assistant .reasoning-body", (b) => b.map((x) => x.textContent))).join("|") === "Let me think. Two plus two is four.|Other field name.", "delta.reasoning not shown");
  // The reasoning is not sent back as part of the history.
  assert(JSON.stringify(requests[1].messages) === JSON.stringify([{ role: "user", content: "What is 2+2?" }, { role: "assistant", content: "The answer is 4." }, { role: "user", content: "Sure?" }]), "history: " + JSON.stringify(requests[1].messages));
  await close(page);
});

await check("server errors are shown in the message (error envelope, mid-stream error event, plain text)", async () => {
  const page = await openPage(server);
  await fakeChat(page, (b, k) => [
    { status: 400, contentType: "application/json", body: JSON.stringify({ error: { message: "The model `x` does not exist.", type: "invalid_request_error" } }) },
    sse(["partial ", "answer"], { finish: null }).replace("data: [DONE]\n\n", event({ error: { message: "boom mid-stream", type: "server_error" } })),
    { status: 502, contentType: "text/plain", body: "upstream exploded" },
  ][k - 1]);
  await ready(page, server);
  await say(page, "one", 1);
  await say(page, "two", 2);
  await say(page, "three", 3);
  const errors = await page.$$eval(".assistant .error", (es) => es.map((e) => e.textContent));
  assert(errors[0].includes("400") && errors[0].includes("The model `x` does not exist."), "envelope: " + errors[0]);
  assert(errors[1].includes("boom mid-stream"), "mid-stream: " + errors[1]);
  assert(errors[2].includes("502") && errors[2].includes("upstream exploded"), "plain: " + errors[2]);
  assert((await page.$$eval(".assistant .content", (cs) => cs[1].textContent)) === "partial answer", "partial answer lost");
  await close(page);
});

await check("regenerate and edit-and-resend send the right messages", async () => {
  const page = await openPage(server);
  const requests = await fakeChat(page, (b, k) => sse([`answer ${k}`]));
  await ready(page, server);
  await say(page, "first question", 1);
  await say(page, "second question", 2);
  assert((await page.$$(".assistant .regenerate")).length === 1, "regenerate on more than the last answer");
  await page.click(".assistant .regenerate");
  await answered(page, 2);
  assert(JSON.stringify(requests[2].messages) === JSON.stringify([{ role: "user", content: "first question" }, { role: "assistant", content: "answer 1" }, { role: "user", content: "second question" }]),
         "regenerate sent: " + JSON.stringify(requests[2].messages));
  assert((await page.$$eval(".assistant .content", (cs) => cs.map((c) => c.textContent))).join() === "answer 1,answer 3", "after regenerate");
  await page.click(".msg.user >> nth=0 >> .edit-msg");
  assert((await page.inputValue(".edit-input")) === "first question", "editor text");
  await page.fill(".edit-input", "first question, edited");
  await page.click(".edit-send");
  await answered(page, 1);
  assert(JSON.stringify(requests[3].messages) === JSON.stringify([{ role: "user", content: "first question, edited" }]), "edit sent: " + JSON.stringify(requests[3].messages));
  const thread = await page.$$eval(".msg", (ms) => ms.map((m) => m.className + ":" + m.querySelector(".content").textContent));
  assert(thread.join("|") === "msg user:first question, edited|msg assistant:answer 4", "after edit: " + thread.join("|"));
  assert((await page.textContent(".conv.active .conv-open")).startsWith("first question, edited"), "title not following the first message");
  // Esc in the editor cancels it.
  await page.click(".edit-msg");
  await page.waitForFunction(() => document.activeElement?.classList.contains("edit-input"));
  await page.keyboard.press("Escape");
  assert(!(await page.$(".edit-input")) && requests.length === 4, "Esc did not cancel the edit");
  await close(page);
});

await check("copy: a message and a code block (Clipboard API, and the execCommand fallback)", async () => {
  const page = await openPage(server);
  const answer = "Here you go:\n\n```js\nconst x = 1;\nconsole.log(x);\n```\n\nDone.";
  await fakeChat(page, () => sse(pieces(answer)));
  await ready(page, server);
  await say(page, "code please", 1);
  await page.click(".assistant .copy-msg");
  assert((await page.evaluate(() => navigator.clipboard.readText())) === answer, "message copy");
  assert((await page.textContent(".assistant .copy-msg")) === "Copied", "no feedback");
  await page.click(".assistant .copy-code");
  assert((await page.evaluate(() => navigator.clipboard.readText())) === "const x = 1;\nconsole.log(x);", "code copy");
  await page.click(".user .copy-msg");
  assert((await page.evaluate(() => navigator.clipboard.readText())) === "code please", "user message copy");
  // Without the Clipboard API (plain http on the LAN is not a secure context).
  await page.evaluate(() => {
    Object.defineProperty(Navigator.prototype, "clipboard", { get: () => undefined, configurable: true });
    document.addEventListener("copy", (e) => { const t = e.target; window.__copied = t.value.slice(t.selectionStart, t.selectionEnd); });
  });
  await page.click(".assistant .copy-code");
  assert((await page.evaluate(() => window.__copied)) === "const x = 1;\nconsole.log(x);", "fallback copy: " + (await page.evaluate(() => window.__copied)));
  await close(page);
});

await check("conversations: kept across a reload, switch, rename, export, delete", async () => {
  const page = await openPage(server);
  await fakeChat(page, (b) => sse([`reply to ${b.messages[b.messages.length - 1].content}`]));
  await ready(page, server);
  await say(page, "alpha question", 1);
  await page.click("#new-chat");
  assert((await page.$$(".msg")).length === 0, "new chat not empty");
  await say(page, "beta question", 1);
  const titles = () => page.$$eval(".conv-open", (bs) => bs.map((b) => b.textContent));
  assert((await titles()).join() === "beta question,alpha question", "sidebar: " + (await titles()).join());
  await page.reload();
  await page.waitForSelector(".msg.user");
  assert((await titles()).join() === "beta question,alpha question", "after reload: " + (await titles()).join());
  assert((await page.textContent(".msg.user .content")) === "beta question", "current chat not kept");
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("llamagate.conversations")));
  assert(stored.length === 2 && stored.every((c) => c.messages.length === 2), "storage: " + JSON.stringify(stored));
  // Switch.
  await page.locator(".conv-open", { hasText: "alpha question" }).click();
  assert((await page.$$eval(".msg .content", (cs) => cs.map((c) => c.textContent))).join() === "alpha question,reply to alpha question", "switch");
  // Rename (Enter keeps it; it survives a reload and later messages).
  await page.click(".conv.active .conv-rename");
  await page.fill(".conv-title-input", "Renamed alpha");
  await page.press(".conv-title-input", "Enter");
  await say(page, "more alpha", 2);
  await page.reload();
  await page.waitForSelector(".msg.user");
  assert((await titles())[0] === "Renamed alpha" && (await page.textContent(".conv.active .conv-open")) === "Renamed alpha", "rename: " + (await titles()).join());
  // Export.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click(".conv.active .conv-export")]);
  assert(download.suggestedFilename().endsWith(".json"), "file name " + download.suggestedFilename());
  const exported = JSON.parse(readFileSync(await download.path(), "utf8"));
  assert(exported.title === "Renamed alpha" && exported.messages.map((m) => m.role + ":" + m.content).join("|") ===
         "user:alpha question|assistant:reply to alpha question|user:more alpha|assistant:reply to more alpha", "export: " + JSON.stringify(exported));
  // Delete: refused, then confirmed.
  page.once("dialog", (d) => d.dismiss());
  await page.click(".conv.active .conv-delete");
  assert((await titles()).length === 2, "deleted without confirmation");
  page.once("dialog", (d) => d.accept());
  await page.click(".conv.active .conv-delete");
  await page.waitForFunction(() => document.querySelectorAll(".conv").length === 1);
  assert((await titles()).join() === "beta question" && (await page.textContent(".msg.user .content")) === "beta question", "after delete: " + (await titles()).join());
  assert((await page.evaluate(() => JSON.parse(localStorage.getItem("llamagate.conversations")).length)) === 1, "not deleted from storage");
  await close(page);
});

await check("model picker: status per model, refreshed every few seconds, selection kept", async () => {
  const page = await openPage(server);
  let betaStatus = "loading";
  const entry = (id, status, chat = true) => ({ id, object: "model", status, engine: "llama.cpp", engine_reason: "configured", quantization: "Q4_1", capabilities: { chat, embeddings: !chat } });
  await page.route("**/v1/models", (r) => r.fulfill({ contentType: "application/json",
    body: JSON.stringify({ object: "list", data: [entry("alpha", "ready"), entry("beta", betaStatus), entry("gamma", "failed"), entry("emb", "ready", false)] }) }));
  await ready(page, server);
  const options = await page.$$eval("#model option", (os) => os.map((o) => o.textContent));
  assert(options.length === 3 && options[1].startsWith("beta (loading") && options[2].startsWith("gamma (failed"), "options: " + options.join());
  await page.selectOption("#model", "beta");
  assert((await page.textContent("#model-status")) === "loading", "badge: " + (await page.textContent("#model-status")));
  betaStatus = "ready";
  await page.waitForFunction(() => document.querySelector("#model-status").textContent === "ready", null, { timeout: 8000 });
  assert((await page.inputValue("#model")) === "beta", "selection lost on refresh");
  assert((await page.$$eval("#model option", (os) => os[1].textContent)).startsWith("beta (ready"), "option not refreshed");
  await close(page);
});

await check("phone: sidebar behind a toggle, no horizontal scroll", async () => {
  const page = await openPage(server, { width: 390, height: 844 });
  const wide = "Long lines:\n\n```text\n" + "x".repeat(300) + "\n```\n\n| " + Array.from({ length: 12 }, (_, k) => "column" + k).join(" | ") + " |\n|" + "---|".repeat(12) +
               "\n| " + Array.from({ length: 12 }, () => "value").join(" | ") + " |\n\n" + "y".repeat(200) + " and https://example.com/" + "z".repeat(150);
  await fakeChat(page, () => sse(pieces(wide, 40)));
  await ready(page, server);
  await say(page, "w".repeat(120), 1);
  const layout = () => page.evaluate(() => ({ doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,
    messages: document.querySelector("#messages").scrollWidth - document.querySelector("#messages").clientWidth,
    sidebar: document.querySelector("#sidebar").getBoundingClientRect().right, th: document.querySelector("#messages th").getBoundingClientRect().height, sidebarVisible: document.querySelector("#sidebar").checkVisibility({ visibilityProperty: true }) }));
  let l = await layout();
  assert(l.doc <= 390 && l.body <= 390 && l.messages <= 0, "horizontal scroll: " + JSON.stringify(l));
  assert(l.th < 40, "table cells broken into letters instead of scrolling: " + JSON.stringify(l));
  assert(!l.sidebarVisible || l.sidebar <= 0, "sidebar shown on a phone: " + JSON.stringify(l));
  assert(await page.isVisible("#sidebar-toggle"), "no sidebar toggle");
  await page.screenshot({ path: join(artifacts, "chat-phone.png") });
  await page.click("#sidebar-toggle");
  await page.waitForFunction(() => document.querySelector("#sidebar").getBoundingClientRect().left >= 0);
  l = await layout();
  assert(l.sidebarVisible && l.sidebar > 200 && (await page.getAttribute("#sidebar-toggle", "aria-expanded")) === "true", "sidebar not opened: " + JSON.stringify(l));
  await page.waitForTimeout(300); // the slide-in transition
  await page.screenshot({ path: join(artifacts, "chat-phone-sidebar.png") });
  await page.click(".conv-open");
  await page.waitForFunction(() => !document.body.classList.contains("sidebar-open"));
  await page.click("#sidebar-toggle");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.body.classList.contains("sidebar-open"));
  await close(page);
});

server.stop();

await check("with API keys the page asks for one and then works", async () => {
  const keyed = await startServer('[auth]\napi_keys = ["browser-key-123"]');
  try {
    const page = await openPage(keyed);
    await page.goto(keyed.base + "/");
    await page.waitForSelector("#key-dialog.open", { timeout: 10000 });
    await page.screenshot({ path: join(artifacts, "chat-key-prompt.png") });
    await page.fill("#key-input", "browser-key-123");
    await page.click("#key-save");
    await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0, null, { timeout: 10000 });
    const stored = await page.evaluate(() => localStorage.getItem("llamagate.apiKey"));
    assert(stored === "browser-key-123", "key not kept in local storage");
    await close(page);
  } finally { keyed.stop(); }
});

await browser.close();
console.log(`${passed} passed, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)} s${uiFile ? ", page from " + uiFile : ""})`);
process.exit(failed ? 1 : 0);

// openai_test.mjs — the official `openai` npm client against `iteralign serve` on loopback: models,
// chat (plain and streamed), completions (logprobs, echo, streamed), n with seeds, stop strings,
// errors, concurrent requests; texts compared with `iteralign generate` for the same request.
// Run by tests/t_server.sh with IA_BASE_URL, IA_KEY, IA_BIN, IA_MODEL, IA_MODEL_ID set. Prints
// "PASS name" / "FAIL name: detail" lines (the shell script numbers them as TAP).
import OpenAI from 'openai';
import { execFileSync } from 'node:child_process';

const base = process.env.IA_BASE_URL, key = process.env.IA_KEY, bin = process.env.IA_BIN;
const model = process.env.IA_MODEL, modelId = process.env.IA_MODEL_ID;
const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0, timeout: 30000 });

let failed = 0;
function report(name, ok, detail) {
  if (ok) console.log(`PASS ${name}`);
  else { failed++; console.log(`FAIL ${name}: ${String(detail ?? '').replace(/\n/g, '\\n').slice(0, 400)}`); }
}
async function check(name, fn) {
  try { const r = await fn(); report(name, r === true || r === undefined, r); }
  catch (e) { report(name, false, `${e?.constructor?.name}: ${e?.message}`); }
}

// `iteralign generate ... --json` for one prompt: {text, tokens, finish_reason, n_prompt_tokens}
function generate(args) {
  const out = execFileSync(bin, ['generate', '-m', model, '--json', '-t', '1', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out.trim().split('\n')[0]);
}
const fin = (f) => (f === 'eos' || f === 'stop' ? 'stop' : 'length');
const eq = (a, b, what) => (a === b ? true : `${what}: got ${JSON.stringify(a)}, want ${JSON.stringify(b)}`);

const userMsg = 'Tell me a story about a cat.';
const N = 24;

await check('models.list names the served model', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  return eq(ids.join(','), modelId, 'ids');
});

const chatRef = generate(['-p', userMsg, '--chat-template', 'chatml', '-n', String(N)]);
await check('chat (greedy) text = iteralign generate --chat-template chatml', async () => {
  const r = await client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: userMsg }], max_tokens: N, temperature: 0 });
  const c = r.choices[0];
  if (r.object !== 'chat.completion' || c.message.role !== 'assistant') return `shape: ${JSON.stringify(r)}`;
  if (r.usage.prompt_tokens !== chatRef.n_prompt_tokens || r.usage.completion_tokens !== chatRef.tokens.length ||
      r.usage.total_tokens !== r.usage.prompt_tokens + r.usage.completion_tokens) return `usage ${JSON.stringify(r.usage)}`;
  return eq(c.message.content, chatRef.text, 'text') === true ? eq(c.finish_reason, fin(chatRef.finish_reason), 'finish_reason') : eq(c.message.content, chatRef.text, 'text');
});

await check('chat stream (SSE) deltas join to the same text, usage chunk last', async () => {
  const stream = await client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: userMsg }], max_tokens: N,
    temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, role = null, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.object !== 'chat.completion.chunk') return `object ${ch.object}`;
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  if (role !== 'assistant' || chunks < 3) return `role ${role}, ${chunks} chunks`;
  if (!usage || usage.completion_tokens !== chatRef.tokens.length) return `usage ${JSON.stringify(usage)}`;
  return eq(text, chatRef.text, 'text') === true ? eq(finish, fin(chatRef.finish_reason), 'finish') : eq(text, chatRef.text, 'text');
});

await check('chat with a system message and stop string = generate --system --stop', async () => {
  const ref = generate(['-p', 'Hi', '--system', 'You tell stories.', '--chat-template', 'chatml', '-n', '40', '--stop', 'the']);
  const r = await client.chat.completions.create({ model: modelId, max_tokens: 40, temperature: 0, stop: ['the'],
    messages: [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'Hi' }] });
  const t = eq(r.choices[0].message.content, ref.text, 'text');
  return t === true ? eq(r.choices[0].finish_reason, fin(ref.finish_reason), 'finish') : t;
});

await check('chat n=2 with a seed: choice i = generate --temp 1 --seed seed+i', async () => {
  const r = await client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: userMsg }], max_tokens: 16,
    temperature: 1, seed: 1234, n: 2 });
  if (r.choices.length !== 2) return `choices ${r.choices.length}`;
  for (const i of [0, 1]) {
    const ref = generate(['-p', userMsg, '--chat-template', 'chatml', '-n', '16', '--temp', '1', '--seed', String(1234 + i)]);
    const c = r.choices.find((x) => x.index === i);
    const t = eq(c?.message?.content, ref.text, `choice ${i}`);
    if (t !== true) return t;
  }
  return r.choices[0].message.content !== r.choices[1].message.content || 'both choices are the same';
});

const prompt = 'Once upon a time';
const complRef = generate(['-p', prompt, '-n', String(N)]);
await check('completions (greedy) text = iteralign generate', async () => {
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: N, temperature: 0 });
  if (r.object !== 'text_completion') return `object ${r.object}`;
  return eq(r.choices[0].text, complRef.text, 'text');
});

await check('completions stream joins to the same text', async () => {
  const stream = await client.completions.create({ model: modelId, prompt, max_tokens: N, temperature: 0, stream: true });
  let text = '', finish = null;
  for await (const ch of stream) for (const c of ch.choices) { text += c.text; if (c.finish_reason) finish = c.finish_reason; }
  return eq(text, complRef.text, 'text') === true ? eq(finish, fin(complRef.finish_reason), 'finish') : eq(text, complRef.text, 'text');
});

await check('completions logprobs: greedy tokens are the top alternative, offsets follow the text', async () => {
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: 8, temperature: 0, logprobs: 3 });
  const c = r.choices[0], lp = c.logprobs;
  if (!lp || lp.tokens.length !== 8 || lp.token_logprobs.length !== 8 || lp.top_logprobs.length !== 8) return `shape ${JSON.stringify(lp)}`;
  if (lp.tokens.join('') !== c.text) return `tokens ${JSON.stringify(lp.tokens)} vs text ${JSON.stringify(c.text)}`;
  for (let i = 0; i < 8; i++) {
    const top = lp.top_logprobs[i], best = Math.max(...Object.values(top));
    if (Object.keys(top).length < 3 || Object.keys(top).length > 4) return `top ${i}: ${JSON.stringify(top)}`;
    if (!(lp.token_logprobs[i] <= 0) || Math.abs(lp.token_logprobs[i] - best) > 1e-6) return `token ${i} not the argmax: ${lp.token_logprobs[i]} vs ${best}`;
    if (lp.text_offset[i] !== lp.tokens.slice(0, i).join('').length) return `offset ${i}: ${lp.text_offset[i]}`;
  }
  return true;
});

await check('completions echo + logprobs (lm-eval style): prompt returned with its logprobs, first null', async () => {
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: 1, temperature: 0, logprobs: 1, echo: true });
  const c = r.choices[0], lp = c.logprobs, np = r.usage.prompt_tokens;
  if (!c.text.startsWith(prompt)) return `text ${JSON.stringify(c.text)}`;
  if (lp.tokens.length !== np + 1) return `${lp.tokens.length} tokens for ${np} prompt tokens + 1`;
  if (lp.token_logprobs[0] !== null || lp.top_logprobs[0] !== null) return 'first position not null';
  for (let i = 1; i <= np; i++) if (!(lp.token_logprobs[i] <= 0)) return `position ${i}: ${lp.token_logprobs[i]}`;
  // The same prompt with max_tokens 0 scores it without generating: identical prompt logprobs.
  const r0 = await client.completions.create({ model: modelId, prompt, max_tokens: 0, logprobs: 0, echo: true });
  const lp0 = r0.choices[0].logprobs;
  if (r0.choices[0].text !== prompt || lp0.tokens.length !== np) return `max_tokens 0: ${JSON.stringify(r0.choices[0])}`;
  for (let i = 1; i < np; i++) if (Math.abs(lp0.token_logprobs[i] - lp.token_logprobs[i]) > 1e-5) return `position ${i} differs`;
  return true;
});

await check('completions with a token-id prompt scores like the same text prompt', async () => {
  const ids = execFileSync(bin, ['tokenize', '-m', model, '--bos', prompt], { encoding: 'utf8' }).trim().split(/\s+/).map(Number);
  const a = await client.completions.create({ model: modelId, prompt: ids, max_tokens: 0, logprobs: 0, echo: true });
  const b = await client.completions.create({ model: modelId, prompt, max_tokens: 0, logprobs: 0, echo: true });
  const la = a.choices[0].logprobs.token_logprobs, lb = b.choices[0].logprobs.token_logprobs;
  if (a.usage.prompt_tokens !== ids.length || la.length !== lb.length) return `lengths ${ids.length} ${la.length} ${lb.length}`;
  for (let i = 1; i < la.length; i++) if (Math.abs(la[i] - lb[i]) > 1e-6) return `position ${i}: ${la[i]} vs ${lb[i]}`;
  return eq(a.choices[0].text, prompt, 'echo text of the ids');
});

await check('error: wrong API key -> AuthenticationError 401', async () => {
  const bad = new OpenAI({ baseURL: base, apiKey: 'wrong-key', maxRetries: 0 });
  try { await bad.models.list(); return 'no error'; }
  catch (e) { return e instanceof OpenAI.AuthenticationError && e.status === 401 ? true : `${e.constructor.name} ${e.status}`; }
});

await check('error: unknown model -> NotFoundError 404, code model_not_found', async () => {
  try { await client.chat.completions.create({ model: 'gpt-9', messages: [{ role: 'user', content: 'x' }] }); return 'no error'; }
  catch (e) { return e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found' ? true : `${e.constructor.name} ${e.status} ${e.code}`; }
});

await check('error: temperature 5 -> BadRequestError 400 naming the param', async () => {
  try { await client.completions.create({ model: modelId, prompt: 'x', temperature: 5 }); return 'no error'; }
  catch (e) { return e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature' ? true : `${e.constructor.name} ${e.status} ${e.param}`; }
});

await check('error: max_tokens above the cap -> 400', async () => {
  try { await client.completions.create({ model: modelId, prompt: 'x', max_tokens: 1 << 30 }); return 'no error'; }
  catch (e) { return e instanceof OpenAI.BadRequestError && e.param === 'max_tokens' ? true : `${e.constructor.name} ${e.status} ${e.param}`; }
});

// Concurrency: the same 6 requests one by one, then all at once; every answer must be unchanged.
const prompts = ['Lily and Ben', 'The cat sat on', 'One day, a little', 'Tom had a red ball', 'The sun was', 'Once upon a time'];
await check('6 concurrent chat requests = the same requests one at a time', async () => {
  const ask = (p) => client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: p }], max_tokens: 32, temperature: 0 })
    .then((r) => r.choices[0].message.content);
  const seq = [];
  for (const p of prompts) seq.push(await ask(p));
  const par = await Promise.all(prompts.map(ask));
  for (let i = 0; i < prompts.length; i++) if (seq[i] !== par[i]) return `prompt ${i}: ${JSON.stringify(par[i])} vs ${JSON.stringify(seq[i])}`;
  return new Set(seq).size > 1 || 'all answers identical';
});

process.exit(failed ? 1 : 0);

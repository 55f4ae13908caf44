// Opens a `distill report` page in headless Chromium (puppeteer-core driving Debian's chromium)
// from disk with the network off, and checks what docs/report.md promises: nothing is fetched,
// no script error, every chart that report.json lists is drawn (coloured pixels on its canvas),
// the screenshot is not blank, and every number on the page equals report.json as displayed.
//   node report-check.mjs REPORT_DIR SCREENSHOT.png      (CHROMIUM=path overrides /usr/bin/chromium)
// Prints one JSON line of counts; exits 1 with the failures listed.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer from 'puppeteer-core';

const [dir, shot] = process.argv.slice(2);
if (!dir || !shot) {
  console.error('usage: node report-check.mjs REPORT_DIR SCREENSHOT.png');
  process.exit(2);
}
const data = JSON.parse(readFileSync(path.join(dir, 'report.json'), 'utf8'));
const failures = [];
const fail = (m) => failures.push(m);

// The numbers each table must show, by the array of report.json they come from.
const shown = {
  models: ['params', 'bpb', 'top1_agreement', 'top1_agreement_stderr', 'kl_to_teacher', 'train_seconds',
           'train_tokens', 'teacher_tokens'],
  curves: ['steps', 'final_loss', 'heldout_points', 'final_heldout_bpb'],
  task_results: ['n', 'acc', 'acc_stderr', 'acc_norm', 'acc_norm_stderr'],
  recovered: ['pct'],
  ledger: ['params', 'weight_bytes', 'forward_flops_per_token', 'train_steps', 'train_tokens', 'train_flops',
           'train_seconds', 'teacher_tokens', 'inference_tokens_per_s', 'flops_fraction_of_teacher',
           'measured_cost_fraction_of_teacher'],
  summary: ['value'],
};

// Does the text of a cell show `v`? Parsed as a number (with a k/M/G/T suffix), it must be within
// half a unit of its last digit (three significant digits for ratios) of the value.
function check(key, fmt, text, v) {
  const t = text.trim();
  if (v === null) {
    if (t !== '\u2013' && t !== 'not reached') fail(`${key}: report.json has null, the page shows "${t}"`);
    return;
  }
  if (typeof v !== 'number') return fail(`${key}: report.json has ${JSON.stringify(v)}, not a number`);
  const m = /^(-?\d+(?:\.(\d+))?)(?:e([+-]?\d+))?([kMGT]?)$/.exec(t);
  if (!m) return fail(`${key}: the page shows "${t}", not a number (report.json: ${v})`);
  const mult = { '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }[m[4]] * (m[3] ? 10 ** Number(m[3]) : 1);
  const x = Number(m[1]) * mult;
  let tol = 0.5 * 10 ** -(m[2] ? m[2].length : 0) * mult;
  if (fmt === 'ratio' && v !== 0) tol = Math.max(tol, 0.5 * 10 ** (Math.floor(Math.log10(Math.abs(v))) - 2));
  if (Math.abs(x - v) > tol * (1 + 1e-9) + 1e-12) fail(`${key}: the page shows ${t}, report.json has ${v}`);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check'],
});
const result = {};
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  // every request that is not the file itself (or inline data) is refused and counted
  const blocked = [];
  await page.setRequestInterception(true);
  page.on('request', (r) => {
    const u = r.url();
    if (u.startsWith('file:') || u.startsWith('data:')) return r.continue();
    blocked.push(u);
    return r.abort();
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.setOfflineMode(true);
  await page.goto(pathToFileURL(path.resolve(dir, 'report.html')).href, { waitUntil: 'load' });
  await page.waitForFunction(() => document.body.dataset.ready === '1', { timeout: 30000 });
  result.blocked_requests = blocked.length;
  if (blocked.length) fail(`the page asked for ${blocked.length} non-file URLs: ${blocked.join(', ')}`);
  if (errors.length) fail(`script errors: ${errors.join(' | ')}`);

  // each chart report.json lists has a visible canvas with coloured (dataset) pixels; axes, grid
  // and text are grey, so a chart without data has none
  const canvases = await page.evaluate(() => [...document.querySelectorAll('canvas')].map((c) => {
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < px.length; i += 4)
      if (px[i + 3] > 128 && Math.max(px[i], px[i + 1], px[i + 2]) - Math.min(px[i], px[i + 1], px[i + 2]) > 60) ++coloured;
    const r = c.getBoundingClientRect();
    return { id: c.id, coloured, visible: r.width > 0 && r.height > 0 };
  }));
  const want = data.charts.map((c) => 'chart-' + c.id);
  const have = canvases.map((c) => c.id);
  if (JSON.stringify([...want].sort()) !== JSON.stringify([...have].sort()))
    fail(`charts: report.json lists ${want.join(', ')}; the page has canvases ${have.join(', ')}`);
  for (const c of canvases) {
    if (!c.visible) fail(`${c.id} is not visible`);
    if (c.coloured < 200) fail(`${c.id} has ${c.coloured} coloured pixels: nothing plotted`);
  }
  result.charts = canvases;

  // every number in a table is the report.json value its data-key names
  const cells = await page.evaluate(() => [...document.querySelectorAll('[data-key]')].map(
    (e) => ({ key: e.dataset.key, fmt: e.dataset.fmt, text: e.textContent })));
  const keys = new Set();
  for (const c of cells) {
    keys.add(c.key);
    const [arr, i, field] = c.key.split('.');
    const row = (data[arr] || [])[Number(i)];
    if (!row || !(field in row)) { fail(`${c.key}: not in report.json`); continue; }
    check(c.key, c.fmt, c.text, row[field]);
  }
  for (const [arr, fields] of Object.entries(shown))
    data[arr].forEach((row, i) => {
      for (const f of fields) {
        if (arr === 'summary' && typeof row.value === 'string') continue;
        if (!keys.has(`${arr}.${i}.${f}`)) fail(`${arr}.${i}.${f} (${JSON.stringify(row[f])}) is not on the page`);
      }
    });
  result.cells = cells.length;
  // and the results table has one row a model, in order, named as in report.json
  const names = await page.evaluate(() => [...document.querySelectorAll('#results tbody tr')].map(
    (tr) => tr.firstChild.textContent));
  if (JSON.stringify(names) !== JSON.stringify(data.models.map((m) => m.name)))
    fail(`results rows ${JSON.stringify(names)} are not report.json's models`);

  // the screenshot, decoded by the browser on a blank page: not one colour, not all white
  const png = await page.screenshot({ fullPage: true });
  writeFileSync(shot, png);
  const blank = await browser.newPage();
  const stats = await blank.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width; c.height = img.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    let ink = 0;
    for (let i = 0; i < px.length; i += 4) {
      colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
      if (px[i] + px[i + 1] + px[i + 2] < 600) ++ink;
    }
    return { width: c.width, height: c.height, colours: colours.size, ink: ink / (px.length / 4) };
  }, Buffer.from(png).toString('base64'));
  result.screenshot = stats;
  if (stats.colours < 16) fail(`the screenshot has ${stats.colours} colours: blank`);
  if (stats.ink < 0.01) fail(`the screenshot is ${(100 * (1 - stats.ink)).toFixed(2)}% white: blank`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
if (failures.length) {
  for (const f of failures) console.error('report-check: ' + f);
  process.exit(1);
}

// weitiao ui: one page, four tabs. Everything from the server or the user is put in the page with
// textContent / value (never innerHTML), so model replies, file and run names cannot inject markup.
"use strict";

const T = {
  zh: {
    title: "微调 weitiao 控制台", tab_runs: "训练", tab_watch: "监控", tab_chat: "对话", tab_data: "数据",
    new_run: "新建训练", recipe: "方法", run_name: "运行名", estimate: "LoRA/QLoRA 估算", gpu: "显卡",
    preview_yaml: "预览 YAML", start: "开始训练", download_yaml: "下载 YAML", runs: "运行列表",
    col_name: "名称", col_recipe: "方法", col_status: "状态", col_step: "步数", col_loss: "损失",
    run: "运行", stop: "停止", resume: "续训", checkpoints: "检查点", log: "日志",
    temperature: "温度", max_tokens: "最多 token", reset: "清空", send: "发送", data_file: "数据文件",
    row: "第几行", tokenizer: "分词器", show: "显示", trained: "训练的 token", masked: "不计损失",
    pick: "选择…", required: "必填", method: "方式", trainable: "可训练参数", memory: "显存估计",
    fits: "放得下", not_fits: "放不下", export_adapter: "导出 adapter", export_merged: "导出合并模型",
    exported: "已导出到", none: "（无）", lang: "English", chat_with: "对话", you: "我", model: "模型", empty_reply: "∅ {n} 个 token，没有一个完整字符", ended_at_once: "∅ 模型立即结束了回复", data_check: "数据检查（data check）",
    s_created: "已创建", s_starting: "启动中", s_running: "训练中", s_stopping: "停止中", s_stopped: "已停止",
    s_done: "已完成", s_failed: "失败", s_lost: "已丢失",
    w_diverged: "训练发散", w_warning: "警告", w_stopped_early: "提前停止（验证损失不再下降）",
    w_failed: "运行失败", w_lost: "进程已不在（机器重启？）可以续训", step: "步",
    c_loss: "训练损失", c_eval_loss: "验证损失", c_lr: "学习率", c_grad_norm: "梯度范数", c_tokens_per_s: "token/秒", c_accuracy: "偏好准确率", c_eval_accuracy: "验证准确率", c_margins: "奖励差", c_margin: "奖励差",
    c_score: "奖励分", c_kl: "KL", c_response_length: "回复长度", c_eos_rate: "EOS 比例",
    demo_preset: "填入演示配置（demo 模型 + 自带数据）", results: "评估：黄金集报告与竞技场", eval_prompts: "提示文件",
    golden: "黄金集报告", arena: "开竞技场（盲评投票）", checkpoint: "检查点", choose: "选中",
    results_help: "勾选上面的检查点：黄金集报告逐个检查点回答同一组提示并打分；竞技场让选中的检查点（至少两个）匿名两两对比投票。",
    open_report: "打开黄金集报告", open_arena: "打开竞技场", arena_item: "竞技场", votes: "票", working: "运行中…",
    mix_ratios: "数据配比（data mix）", mix_help: "每行一个 文件:比例；按比例上/下采样并跨来源去重，写出新文件和配比报告。",
    mix_total: "总行数（可空）", mix_out: "输出文件", mix_run: "混合", mix_source: "来源", mix_read: "读入",
    mix_dups: "重复", mix_picked: "选取", mix_upsample: "采样倍数", mix_target: "目标比例", mix_achieved: "实际比例",
    di_rows: "行", di_tokens: "token 数", di_trained: "训练的 token", dc_format: "格式 / 模板", dc_rows: "读入 / 保留 / 拒绝的行",
    dc_tokens: "token 数 最小 / 平均 / p95 / 最大", dc_over: "超过 max_len 的行：max_len =", dc_dups: "重复的行 / 提示",
    dc_eos: "缺少 EOS 的行", dc_untrained: "没有训练 token 的行", dc_trunc: "丢弃 / 截断 / 删去早期轮次的行", dc_kto: "KTO 行：好 / 坏",
    data_lf: "LLaMA-Factory 目录", data_lf_help: "可选：含 dataset_info.json 的目录（同 --dataset-dir）；数据文件一栏随即填数据集名",
    di_policy_dropped: "训练时丢弃这一行", di_shown_cut: "下面按 max_len 截断显示", di_history: "已删去最早的几轮以放进 max_len",
    data_format: "格式", scored: "计分的 token（DPO 对其对数概率求和）", score_token: "奖励模型（RM）在此读分",
    pair_prompt: "提示（两边共享，不计分）", chosen: "选中的回复（chosen）", rejected: "被拒的回复（rejected）",
    di_seq: "token（提示 + 回复）", di_scored: "计分", di_cut: "已截到 max_len，原长", di_cut_sft: "已截到 max_len",
    di_pieces: "段（超过 max_len 的纯文本按 max_len 切段）", di_dropped: "max_len 内没有可训练的 token：训练时丢弃这一行",
    pair_over: "较长的一边超过 max_len：truncation cut_response 按下面所示截断回复。",
    pair_dropped: "训练时丢弃这一对", pair_shown_whole: "下面显示完整内容",
    dc_pairs: "偏好对 / 两边相同 / 空回复", dc_docs: "纯文本行",
    mix_pairs: "data mix 只混合 SFT 数据，不接受偏好对（chosen/rejected），所以这个文件没有配比。",
  },
  en: {
    title: "weitiao console", tab_runs: "Runs", tab_watch: "Watch", tab_chat: "Chat", tab_data: "Data",
    new_run: "New run", recipe: "Recipe", run_name: "Run name", estimate: "LoRA/QLoRA estimate", gpu: "GPU",
    preview_yaml: "Preview YAML", start: "Start", download_yaml: "Download YAML", runs: "Runs",
    col_name: "Name", col_recipe: "Recipe", col_status: "Status", col_step: "Step", col_loss: "Loss",
    run: "Run", stop: "Stop", resume: "Resume", checkpoints: "Checkpoints", log: "Log",
    temperature: "Temperature", max_tokens: "Max tokens", reset: "Clear", send: "Send", data_file: "Data file",
    row: "Row", tokenizer: "Tokenizer", show: "Show", trained: "trained tokens", masked: "masked",
    pick: "Pick…", required: "required", method: "Method", trainable: "Trainable parameters", memory: "Memory estimate",
    fits: "fits", not_fits: "does not fit", export_adapter: "Export adapter", export_merged: "Export merged",
    exported: "Exported to", none: "(none)", lang: "中文", chat_with: "Chat", you: "You", model: "Model", empty_reply: "∅ {n} tokens, no whole character", ended_at_once: "∅ the model ended its turn at once", data_check: "Data check",
    s_created: "created", s_starting: "starting", s_running: "running", s_stopping: "stopping", s_stopped: "stopped",
    s_done: "done", s_failed: "failed", s_lost: "lost",
    w_diverged: "Training diverged", w_warning: "Warning", w_stopped_early: "Stopped early (eval loss stopped improving)",
    w_failed: "Run failed", w_lost: "Process gone (machine restarted?); you can resume", step: "step",
    c_loss: "train loss", c_eval_loss: "eval loss", c_lr: "learning rate", c_grad_norm: "grad norm", c_tokens_per_s: "tokens/s", c_accuracy: "preference accuracy", c_eval_accuracy: "eval accuracy", c_margins: "reward margin",
    c_margin: "reward margin", c_score: "score", c_kl: "KL", c_response_length: "reply length", c_eos_rate: "EOS rate",
    demo_preset: "Fill in the demo (demo model + shipped data)", results: "Evaluate: golden-set report and arena", eval_prompts: "Prompt file",
    golden: "Golden-set report", arena: "Open an arena (blind votes)", checkpoint: "Checkpoint", choose: "choose",
    results_help: "Tick checkpoints above: the golden-set report has each answer the same prompts, scored; the arena lets people vote blind between the chosen ones (two or more).",
    open_report: "Open the golden-set report", open_arena: "Open the arena", arena_item: "Arena", votes: "votes", working: "working…",
    mix_ratios: "Mix ratios (data mix)", mix_help: "One FILE:RATIO per line; up/down-sampled to the ratios and deduplicated across sources, written to a new file with a report.",
    mix_total: "Total rows (optional)", mix_out: "Output file", mix_run: "Mix", mix_source: "Source", mix_read: "read",
    mix_dups: "duplicates", mix_picked: "picked", mix_upsample: "upsample", mix_target: "target", mix_achieved: "achieved",
    di_rows: "rows", di_tokens: "tokens", di_trained: "trained", dc_format: "format / template", dc_rows: "rows read / kept / rejected",
    dc_tokens: "tokens min / mean / p95 / max", dc_over: "rows over max_len", dc_dups: "duplicate rows / prompts",
    dc_eos: "rows missing EOS", dc_untrained: "rows with no trained token", dc_trunc: "rows dropped / cut / history-trimmed", dc_kto: "KTO rows desirable / undesirable",
    data_lf: "LLaMA-Factory folder", data_lf_help: "Optional: a folder holding dataset_info.json (as --dataset-dir); the data file box then takes a dataset name",
    di_policy_dropped: "training drops this row", di_shown_cut: "shown below cut to max_len", di_history: "oldest exchanges dropped to fit max_len",
    data_format: "Format", scored: "scored tokens (DPO sums their log-probs)", score_token: "the reward model (RM) reads its score here",
    pair_prompt: "Prompt (shared by both sides, not scored)", chosen: "Chosen reply", rejected: "Rejected reply",
    di_seq: "tokens (prompt + reply)", di_scored: "scored", di_cut: "cut to max_len, whole", di_cut_sft: "cut to max_len",
    di_pieces: "pieces (raw text over max_len is split into max_len pieces)", di_dropped: "nothing to train within max_len: training leaves this row out",
    pair_over: "The longer side is over max_len: truncation cut_response cuts the replies as shown.",
    pair_dropped: "training leaves this pair out", pair_shown_whole: "shown whole below",
    dc_pairs: "pairs / identical / empty replies", dc_docs: "raw-text rows",
    mix_pairs: "data mix mixes SFT rows only and refuses preference pairs (chosen/rejected), so this file has no mix ratios.",
  },
};
// charts drawn when a run logs the key: every recipe's loss/lr/...; DPO/RM accuracy and margins; PPO score, KL, length
const CHARTS = ["loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "accuracy", "eval_accuracy", "margins", "margin",
  "score", "kl", "response_length", "eos_rate"];
const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000];
const num = (v) => (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(4)));
const $ = (id) => document.getElementById(id);
const ui = { lang: "zh", form: [], runs: [], watch: null, chosen: new Set(), offset: 0, series: {}, charts: {}, history: { a: [], b: [] } };
window.weitiaoUI = ui; // for tests and curious users

function t(key) { return (T[ui.lang] && T[ui.lang][key]) || T.en[key] || key; }
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}
async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

// ---- language ----
function setLang(lang) {
  ui.lang = lang === "en" ? "en" : "zh";
  document.documentElement.lang = ui.lang;
  try { localStorage.setItem("weitiao-lang", ui.lang); } catch (e) { /* private mode */ }
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-title]")) e.title = t(e.dataset.i18nTitle);
  for (const e of document.querySelectorAll("[data-help-en]")) e.textContent = e.dataset["help" + (ui.lang === "zh" ? "Zh" : "En")];
  $("lang").textContent = t("lang");
  renderRuns();
  renderEstimate(ui.estimate);
  if (ui.watchData) renderWatch(ui.watchData);
  for (const k of CHARTS) { const h = document.querySelector(`[data-chart="${k}"] h4`); if (h) h.textContent = t("c_" + k); }
}
function initialLang() {
  let saved = null;
  try { saved = localStorage.getItem("weitiao-lang"); } catch (e) { /* private mode */ }
  if (saved) return saved;
  const nav = (navigator.language || "").toLowerCase();
  if (nav.startsWith("zh") || nav.startsWith("en")) return nav.slice(0, 2);
  return document.documentElement.lang; // the server's pick from Accept-Language
}

// ---- tabs ----
function showTab(name) {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "tab-" + name;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  ui.tab = name;
  if (name === "watch" && !ui.watch && $("watch-run").value) { watchRun($("watch-run").value); return; } // the run the list shows
  if (name === "watch") pollWatch();
}

// ---- run form ----
async function loadForm() {
  const kind = $("recipe").value;
  ui.form = await api("/api/form/" + kind);
  const form = $("config-form");
  form.replaceChildren(...ui.form.map((f) => renderField(f)));
  $("run-name").value = kind + "-" + new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "");
  $("preset-btn").hidden = !(ui.info.demo_data && kind === "sft");
  refreshEstimate();
}
async function applyPreset() { // `weitiao demo`'s config: the shipped model and data, nothing to find first
  $("form-error").textContent = "";
  try {
    const values = await api("/api/preset/sft");
    for (const [k, v] of Object.entries(values)) {
      const i = document.querySelector(`#config-form [data-key="${CSS.escape(k)}"]`);
      if (!i || i.disabled) continue;
      if (i.type === "checkbox") i.checked = !!v; else i.value = v;
    }
    refreshEstimate();
  } catch (e) { $("form-error").textContent = e.message; }
}
function renderField(f) {
  if (f.widget === "section") {
    const legend = el("legend");
    const box = el("fieldset", { "data-section": f.key }, legend, helpText("p", f, ""), ...f.fields.map(renderField));
    if (f.optional) { // off: the key stays null; on: its fields are sent
      const on = el("input", { type: "checkbox", "data-section-on": f.key });
      const sync = () => { for (const i of box.querySelectorAll("[data-key]")) i.disabled = !on.checked; };
      on.addEventListener("change", sync);
      legend.append(on, " ");
      sync();
    }
    legend.append(f.key);
    return box;
  }
  let input;
  if (f.widget === "bool") {
    input = el("input", { type: "checkbox" });
    input.checked = !!f.default;
  } else if (f.widget === "select") {
    input = el("select");
    if (f.optional) input.append(el("option", { value: "", text: "" }));
    for (const c of f.choices) input.append(el("option", { value: c, text: c }));
    input.value = f.default;
  } else {
    input = el("input", { size: 40 });
    input.value = f.default;
    if (f.required) input.placeholder = t("required");
  }
  input.dataset.key = f.key;
  if (f.optional) input.dataset.optional = "1";
  if (f.key === "train.out") { // the console puts each run in its own folder: RUNS/<run name>
    input.disabled = true;
    input.value = `${ui.info.runs}/<${t("run_name")}>`;
    input.classList.add("fixed");
  }
  input.addEventListener("change", refreshEstimate);
  const label = el("label", { class: "field" }, el("span", { class: "key", text: f.name, title: f.key }), input);
  if (f.path) label.append(el("button", { type: "button", text: "…", class: "pick", onclick: () => openPicker(input, f) }));
  label.append(helpText("span", f, f.default !== undefined && f.widget === "text" && f.default !== "" ? ` [${f.default}]` : ""));
  return label;
}
// a key's help in both languages (tests/test_ui.py checks every key has its Chinese help); setLang swaps them
function helpText(tag, f, suffix) {
  const e = el(tag, { class: "help", "data-help-en": f.help + suffix, "data-help-zh": (f.help_zh || f.help) + suffix });
  e.textContent = e.dataset["help" + (ui.lang === "zh" ? "Zh" : "En")];
  return e;
}
function formValues() {
  const values = {};
  for (const i of document.querySelectorAll("#config-form [data-key]")) {
    if (i.disabled) continue; // inside an optional section left off, or train.out (set by the server)
    values[i.dataset.key] = i.type === "checkbox" ? i.checked : i.value === "" && i.dataset.optional ? null : i.value;
  }
  return values;
}
function formBody() { return { kind: $("recipe").value, name: $("run-name").value.trim(), values: formValues() }; }
async function previewYaml() {
  $("form-error").textContent = "";
  try {
    const { yaml } = await api("/api/preview", formBody());
    $("yaml").textContent = yaml;
    const a = $("yaml-download");
    if (a.href) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(new Blob([yaml], { type: "application/x-yaml" }));
    a.download = formBody().name + ".yaml";
    a.hidden = false;
  } catch (e) { $("form-error").textContent = e.message; }
}
async function startRun() {
  $("form-error").textContent = "";
  try {
    const s = await api("/api/runs", formBody());
    await refreshRuns();
    watchRun(s.name);
  } catch (e) { $("form-error").textContent = e.message; }
}

// ---- estimate (calc lora / calc plan) ----
function unquote(text) { try { const v = JSON.parse(text); return typeof v === "string" ? v : text; } catch (e) { return text; } }
let estimateTimer = null;
function refreshEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(async () => {
    const v = formValues();
    if (!("lora.r" in v)) { ui.estimate = null; renderEstimate(null); return; }
    try {
      ui.estimate = await api("/api/estimate", {
        model: unquote(v["model.path"] || "demo"),
        quant: v["model.quant"], lora: v["lora.enabled"], r: v["lora.r"], targets: v["lora.targets"],
        seq_len: v["data.max_len"], micro_batch: v["train.micro_batch_size"],
        checkpointing: v["model.gradient_checkpointing"], gpu: $("gpu").value,
      });
      if (!$("gpu").options.length) {
        for (const g of ui.estimate.gpus) $("gpu").append(el("option", { value: g, text: g }));
        $("gpu").value = ui.estimate.gpu;
      }
    } catch (e) { ui.estimate = { error: e.message }; }
    renderEstimate(ui.estimate);
  }, 250);
}
function renderEstimate(est) {
  const dl = $("estimate");
  dl.replaceChildren();
  if (!est) return;
  if (est.error) { dl.append(el("dd", { class: "error", text: est.error })); return; }
  const pct = (100 * est.trainable_params / est.total_params).toPrecision(3);
  const rows = [
    [t("method"), est.method],
    [t("trainable"), `${est.trainable_params.toLocaleString()} / ${est.total_params.toLocaleString()} (${pct}%)`],
    [t("memory"), `${est.memory_gib.total.toFixed(2)} GiB / ${est.gpu_mem_gib} GiB · ${est.fits ? t("fits") : t("not_fits")}`],
  ];
  for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
}

// ---- file picker (server lists only inside the allowed roots) ----
async function openPicker(input, f) {
  ui.pickTarget = { input, f };
  await pickerGo(null);
  $("picker").hidden = false;
}
async function pickerGo(path) {
  const d = await api("/api/files" + (path ? "?path=" + encodeURIComponent(path) : ""));
  $("picker-path").textContent = d.path || "/";
  $("picker-up").onclick = () => pickerGo(d.parent);
  $("picker-up").disabled = !d.path;
  $("picker-list").replaceChildren(...d.entries.map((e) => {
    const li = el("li", { class: e.dir ? "dir" : "file" });
    li.append(el("a", { href: "#", text: e.name + (e.dir ? "/" : ""), onclick: (ev) => { ev.preventDefault(); e.dir ? pickerGo(e.path) : pick(e.path); } }));
    if (e.dir) li.append(el("button", { type: "button", text: "✓", title: "use this folder", onclick: () => pick(e.path) }));
    return li;
  }));
}
function pick(path) {
  const { input, f } = ui.pickTarget;
  if (f && f.lines) { // the mix sources: one FILE:RATIO per line
    input.value = (input.value.trim() ? input.value.trim() + "\n" : "") + path + ":1";
  } else if (f && f.list) {
    let items = [];
    try { items = JSON.parse(input.value || "[]"); } catch (e) { items = []; }
    if (!Array.isArray(items)) items = [];
    items.push(path);
    input.value = JSON.stringify(items);
  } else {
    input.value = f ? JSON.stringify(path) : path;
  }
  input.dispatchEvent(new Event("change"));
  $("picker").hidden = true;
}

// ---- run list ----
async function refreshRuns() {
  try { ui.runs = await api("/api/runs"); } catch (e) { return; }
  renderRuns();
  fillRunSelects();
}
function renderRuns() {
  const body = $("run-list").tBodies[0];
  body.replaceChildren(...ui.runs.map((r) => el("tr", { "data-run": r.name },
    el("td", {}, el("a", { href: "#", text: r.name, onclick: (ev) => { ev.preventDefault(); watchRun(r.name); } })),
    el("td", { text: r.kind }), el("td", { class: "status s-" + r.status, text: t("s_" + r.status) }),
    el("td", { text: r.step ?? "" }), el("td", { text: r.loss == null ? "" : r.loss.toFixed(4) }))));
}
function fillRunSelects() {
  const keep = (sel, opts) => {
    const same = opts.length === sel.options.length && opts.every((o, i) => o.value === sel.options[i].value && o.text === sel.options[i].text);
    if (same) return; // unchanged: an open dropdown or a pick in progress is left alone
    const v = sel.value;
    sel.replaceChildren(...opts);
    if ([...sel.options].some((o) => o.value === v)) sel.value = v;
  };
  keep($("watch-run"), ui.runs.map((r) => el("option", { value: r.name, text: r.name })));
  const ck = ui.runs.filter((r) => r.kind !== "rm").flatMap((r) => r.checkpoints.map((c) => el("option", { value: r.name + "/" + c, text: r.name + " / " + c })));
  keep($("chat-a"), ck.map((o) => o.cloneNode(true)));
  keep($("chat-b"), [el("option", { value: "", text: t("none") }), ...ck.map((o) => o.cloneNode(true))]);
  $("chat-log-b").hidden = !$("chat-b").value;
}

// ---- watch ----
function watchRun(name) {
  if (ui.watch !== name) {
    ui.watch = name; ui.offset = 0; ui.series = {}; ui.watchData = null; ui.chosen = new Set();
    $("golden-out").replaceChildren(); $("arena-out").replaceChildren(); $("golden-table").hidden = true;
    for (const c of Object.values(ui.charts)) c.destroy();
    ui.charts = {};
    $("charts").replaceChildren();
  }
  $("watch-run").value = name;
  showTab("watch");
}
function chart(key) {
  if (ui.charts[key]) return ui.charts[key];
  const box = el("div", { class: "chart", "data-chart": key }, el("h4", { text: t("c_" + key) }));
  $("charts").append(box);
  ui.charts[key] = new uPlot({
    width: 360, height: 200, legend: { show: false },
    scales: { x: { time: false } },
    axes: [{ incrs: STEP_INCRS }, { values: (u, vals) => vals.map(num), size: 60 }],
    series: [{}, { stroke: key === "eval_loss" ? "#d94" : "#27a", width: 2, points: { show: true, size: 4 } }],
  }, [[], []], box);
  return ui.charts[key];
}
async function pollWatch() {
  clearTimeout(ui.watchTimer);
  if (ui.tab !== "watch" || !ui.watch) return;
  const name = ui.watch;
  try {
    const d = await api(`/api/runs/${encodeURIComponent(name)}?offset=${ui.offset}`);
    if (name !== ui.watch) return;
    ui.offset = d.offset;
    for (const r of d.metrics) for (const k of CHARTS) {
      if (typeof r[k] !== "number") continue;
      const s = ui.series[k] || (ui.series[k] = [[], []]);
      s[0].push(r.step); s[1].push(r[k]);
    }
    for (const k of CHARTS) if (ui.series[k]) chart(k).setData(ui.series[k]);
    ui.watchData = d;
    renderWatch(d);
  } catch (e) { $("watch-status").textContent = e.message; }
  const live = ui.watchData && ["starting", "running", "stopping"].includes(ui.watchData.state.status);
  ui.watchTimer = setTimeout(pollWatch, live ? 1000 : 4000);
}
function renderWatch(d) {
  const s = d.state.status;
  $("watch-status").textContent = t("s_" + s);
  $("watch-status").className = "status s-" + s;
  $("stop-btn").disabled = !["starting", "running"].includes(s);
  $("resume-btn").disabled = ["starting", "running", "stopping", "done"].includes(s); // a finished run has nothing left to train
  $("config-link").href = `/api/runs/${encodeURIComponent(d.state.name)}/config.yaml`;
  const banner = $("banner");
  banner.replaceChildren(...d.warnings.map((w) => el("div", { "data-warning": w.kind },
    el("strong", { text: t("w_" + w.kind) + (w.step != null ? ` (${t("step")} ${w.step})` : "") }), " ", w.message)));
  banner.hidden = !d.warnings.length;
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = d.log;
  if (atEnd) log.scrollTop = log.scrollHeight;
  const key = JSON.stringify([d.state.name, d.state.kind, d.checkpoints, ui.lang]);
  if (key === ui.ckptKey) return; // unchanged: keep the list (a click on it is not lost to a redraw)
  ui.ckptKey = key;
  $("checkpoints").replaceChildren(...d.checkpoints.map((c) => {
    const li = el("li", { "data-ckpt": c });
    if (d.state.kind !== "rm") { // chosen for the golden report (trained checkpoints) and the arena
      const box = el("input", { type: "checkbox", "data-choose": c, title: t("choose") });
      box.checked = ui.chosen.has(c);
      box.addEventListener("change", () => { if (box.checked) ui.chosen.add(c); else ui.chosen.delete(c); });
      li.append(box, " ");
    }
    li.append(el("span", { text: c }));
    if (d.state.kind !== "rm") { // a reward model scores, it does not chat
      li.append(" ", el("button", { text: t("chat_with"), onclick: () => { $("chat-a").value = d.state.name + "/" + c; showTab("chat"); } }));
    }
    if (c !== "base") {
      li.append(" ", el("button", { text: t("export_adapter"), onclick: () => exportCkpt(d.state.name, c, false) }),
        " ", el("button", { text: t("export_merged"), onclick: () => exportCkpt(d.state.name, c, true) }),
        " ", el("button", { text: "GGUF f16", "data-gguf": "f16", onclick: () => exportCkpt(d.state.name, c, true, "f16") }));
    }
    return li;
  }));
}
async function exportCkpt(run, ckpt, merge, gguf) {
  $("export-result").textContent = "…";
  try {
    const r = await api("/api/export", gguf ? { run, ckpt, merge, gguf } : { run, ckpt, merge });
    $("export-result").replaceChildren(el("span", { "data-i18n": "exported", text: t("exported") }), ` ${r.out}\n${r.notes.join("\n")}`);
  } catch (e) { $("export-result").textContent = e.message; }
}
// ---- golden-set report and arena over the chosen checkpoints ----
async function goldenReport() {
  const out = $("golden-out");
  out.textContent = t("working");
  try {
    const r = await api("/api/golden", { run: ui.watch, ckpts: [...ui.chosen].filter((c) => c !== "base"), prompts: $("eval-prompts").value });
    out.replaceChildren(el("a", { id: "golden-link", href: r.report, target: "_blank", rel: "noopener", "data-i18n": "open_report", text: t("open_report") }));
    const cell = (v) => el("td", { text: v == null ? "" : num(v) });
    $("golden-table").tBodies[0].replaceChildren(...r.rows.map((x) => el("tr", {},
      el("td", { text: x.label + (x.recommended ? " ★" : "") }), cell(x.rougeL), cell(x.stop_rate), cell(x.loop_rate), cell(x.eval_loss))));
    $("golden-table").hidden = false;
  } catch (e) { out.textContent = e.message; }
}
async function openArena() {
  const out = $("arena-out");
  out.textContent = t("working");
  try {
    const ckpts = [...ui.chosen].map((c) => ui.watch + "/" + c);
    const r = await api("/api/arenas", { ckpts, prompts: $("eval-prompts").value });
    out.replaceChildren(el("a", { id: "arena-link", href: r.url, target: "_blank", rel: "noopener", "data-i18n": "open_arena", text: t("open_arena") }));
    refreshArenas();
  } catch (e) { out.textContent = e.message; }
}
async function refreshArenas() {
  let list = [];
  try { list = await api("/api/arenas"); } catch (e) { return; }
  $("arena-list").replaceChildren(...list.map((a) => el("li", { "data-arena": a.id },
    el("a", { href: a.url, target: "_blank", rel: "noopener" }, el("span", { "data-i18n": "arena_item", text: t("arena_item") }), " " + a.id),
    ` ${a.models.join(" · ")} · ${a.votes} `, el("span", { "data-i18n": "votes", text: t("votes") }))));
}
async function runAction(action) {
  try { await api(`/api/runs/${encodeURIComponent(ui.watch)}/${action}`, {}); } catch (e) { $("watch-status").textContent = e.message; }
  refreshRuns();
  pollWatch();
}

// ---- chat ----
function bubble(side, role, text) {
  const b = el("div", { class: "msg " + role }, el("span", { class: "who", "data-i18n": role === "user" ? "you" : "model", text: t(role === "user" ? "you" : "model") }), el("span", { class: "text", text }));
  $("chat-log-" + side).append(b);
  return b.querySelector(".text");
}
async function ask(side, sel, prompt) {
  const [run, ckpt] = [sel.slice(0, sel.indexOf("/")), sel.slice(sel.indexOf("/") + 1)];
  const hist = ui.history[side];
  hist.push({ role: "user", content: prompt });
  bubble(side, "user", prompt);
  const out = bubble(side, "assistant", "");
  out.parentElement.classList.add("streaming");
  try {
    const r = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({
      run, ckpt, messages: hist, temperature: Number($("chat-temp").value), max_new_tokens: Number($("chat-max").value) }) });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    const n = r.headers.get("X-Empty-Reply-Tokens"); // no whole character came out: said, not a blank bubble
    if (n !== null) {
      out.textContent = n === "0" ? t("ended_at_once") : t("empty_reply").replace("{n}", n);
      out.parentElement.classList.add("empty");
      hist.push({ role: "assistant", content: "" });
    } else {
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        out.textContent += dec.decode(value, { stream: true });
      }
      out.textContent += dec.decode();
      hist.push({ role: "assistant", content: out.textContent });
    }
  } catch (e) {
    out.parentElement.classList.add("error");
    out.textContent = e.message;
    hist.pop();
  }
  out.parentElement.classList.remove("streaming");
  out.parentElement.classList.add("done");
}
async function send() {
  const prompt = $("chat-input").value.trim();
  if (!prompt || !$("chat-a").value) return;
  $("chat-input").value = "";
  $("chat-send").disabled = true;
  const jobs = [ask("a", $("chat-a").value, prompt)];
  if ($("chat-b").value) jobs.push(ask("b", $("chat-b").value, prompt));
  await Promise.all(jobs);
  $("chat-send").disabled = false;
}
function resetChat() {
  ui.history = { a: [], b: [] };
  $("chat-log-a").replaceChildren();
  $("chat-log-b").replaceChildren();
}

// ---- data preview: an SFT row, or a DPO/RM pair (prompt, chosen, rejected), as the trainer encodes it ----
const word = (k) => el("span", { "data-i18n": k, text: t(k) }); // re-labelled by setLang
function tokenSpans(segments, scoreAt) {
  return segments.map(([text, trained], i) => el("span", i === scoreAt
    ? { class: "trained score", "data-i18n-title": "score_token", title: t("score_token"), text } : { class: trained ? "trained" : "masked", text }));
}
function showPair(d) {
  $("pair-prompt-info").replaceChildren(`${d.prompt.tokens} `, word("di_tokens"));
  $("pair-prompt").textContent = d.prompt.text;
  for (const side of ["chosen", "rejected"]) {
    const s = d[side];
    const info = [`${s.tokens} `, word("di_seq"), ` · ${s.scored} `, word("di_scored")];
    if (s.cut) info.push(" · ", word("di_cut"), ` ${s.whole}`);
    $(`pair-${side}-info`).replaceChildren(...info);
    $(`pair-${side}`).replaceChildren(...tokenSpans(s.segments, s.score_at));
  }
}
async function showData() {
  const q = new URLSearchParams({ path: $("data-path").value, index: $("data-index").value, model: $("data-model").value,
    format: $("data-format").value, max_len: $("data-max-len").value, train_turns: $("data-train-turns").value,
    truncation: $("data-truncation").value, template: $("data-template").value,
    train_on_prompt: $("data-train-on-prompt").checked, train_eot: $("data-train-eot").checked });
  if ($("data-dataset-dir").value.trim()) q.set("dataset_dir", $("data-dataset-dir").value.trim());
  try {
    const d = await api("/api/data?" + q);
    const pair = d.kind === "preference";
    const info = [`${d.source} · ${d.rows} `, word("di_rows")];
    if (pair) {
      info.push(` · ${d.form}`);
      if (d.dropped) info.push(" · ", el("span", { class: "error" }, word("pair_dropped"), ` (truncation ${d.truncation}): ${d.dropped}; `, word("pair_shown_whole")));
      else if (d.over) info.push(" · ", el("span", { class: "error", "data-i18n": "pair_over", text: t("pair_over") }));
      showPair(d);
    } else {
      info.push(" · ", word("di_tokens"), ` ${d.tokens} · `, word("di_trained"), ` ${d.trained}`);
      if (d.pieces > 1) info.push(` · ${d.pieces} `, word("di_pieces"));
      if (d.dropped) info.push(" · ", el("span", { class: "error" }, word("di_policy_dropped"), ` (truncation ${d.truncation}): ${d.dropped}; `, word("di_shown_cut")));
      else if (d.cut) info.push(" · ", word("di_cut_sft"));
      if (d.history) info.push(" · ", word("di_history"));
      if (!d.pieces) info.push(" · ", el("span", { class: "error", "data-i18n": "di_dropped", text: t("di_dropped") }));
    }
    $("data-info").replaceChildren(...info);
    $("data-view").replaceChildren(...(pair ? [] : tokenSpans(d.segments, -1)));
    $("data-view").hidden = pair;
    $("data-pair").hidden = !pair;
    $("legend-trained").dataset.i18n = pair ? "scored" : "trained";
    $("legend-trained").textContent = t($("legend-trained").dataset.i18n);
    $("legend-score").hidden = !pair;
    const c = d.check;
    const rows = [
      ["dc_format", "", `${c.format} / ${c.template}`],
      ["dc_rows", "", `${c.read} / ${c.kept} / ${c.rejected}`],
      ...(c.pairs ? [["dc_pairs", "", `${c.pairs} / ${c.identical_pairs} / ${c.empty_replies}`]] : []),
      ...(c.documents ? [["dc_docs", "", c.documents]] : []),
      ["dc_tokens", "", `${c.length_min} / ${c.length_mean} / ${c.length_p95} / ${c.length_max}`],
      ["dc_over", ` ${c.max_len}`, c.over_max_len], ["dc_trunc", ` (truncation ${c.truncation})`, `${c.dropped} / ${c.cut} / ${c.history_trimmed}`],
      ...(c.desirable || c.undesirable ? [["dc_kto", "", `${c.desirable} / ${c.undesirable}`]] : []),
      ["dc_dups", "", `${c.duplicate_rows} / ${c.duplicate_prompts}`],
      ["dc_eos", "", c.missing_eos], ["dc_untrained", ` (train_turns ${c.train_turns}${c.train_on_prompt ? ", train_on_prompt" : ""}${c.train_eot ? "" : ", train_eot false"})`, c.no_trained_tokens],
    ];
    $("data-check").replaceChildren(...rows.flatMap(([k, more, v]) => [el("dt", {}, word(k), more), el("dd", { text: String(v) })]),
      ...(c.refused ? [el("dd", { class: "error", text: c.refused })] : []),
      ...c.problems.map((p) => el("dd", { class: "error", text: p })), ...c.notes.map((n) => el("dd", { class: "help", text: n })));
    $("mix-note").hidden = !pair;
    if (d.mix) renderMix(d.mix); else $("mix-report").hidden = true;
  } catch (e) {
    $("data-info").textContent = e.message;
    $("data-view").replaceChildren(); $("data-check").replaceChildren(); $("data-pair").hidden = true;
  }
}

// ---- data mix ----
function renderMix(rep) {
  const pct = (v) => (100 * v).toFixed(1) + "%";
  $("mix-report").tBodies[0].replaceChildren(...rep.sources.map((r) => el("tr", {},
    el("td", { text: r.source.split("/").pop(), title: r.source }), el("td", { text: r.read }), el("td", { text: r.duplicates }),
    el("td", { text: r.picked }), el("td", { text: r.upsample.toFixed(2) + "x" }), el("td", { text: pct(r.target_ratio) }),
    el("td", { text: pct(r.achieved_ratio) }))));
  $("mix-report").hidden = false;
}
async function runMix() {
  $("mix-error").textContent = "";
  const sources = $("mix-sources").value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
    const i = l.lastIndexOf(":");
    return i < 0 ? { path: l, ratio: null } : { path: l.slice(0, i), ratio: l.slice(i + 1) };
  });
  try {
    const rep = await api("/api/mix", { sources, total: $("mix-total").value || null, out: $("mix-out").value });
    renderMix(rep);
    $("data-path").value = rep.out; // preview the mixed file next
  } catch (e) { $("mix-error").textContent = e.message; }
}

// ---- start ----
async function init() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("lang").addEventListener("click", () => setLang(ui.lang === "zh" ? "en" : "zh"));
  $("recipe").addEventListener("change", loadForm);
  $("gpu").addEventListener("change", refreshEstimate);
  $("preview-btn").addEventListener("click", previewYaml);
  $("start-btn").addEventListener("click", startRun);
  $("watch-run").addEventListener("change", () => watchRun($("watch-run").value));
  $("stop-btn").addEventListener("click", () => runAction("stop"));
  $("resume-btn").addEventListener("click", () => runAction("resume"));
  $("chat-send").addEventListener("click", send);
  $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });
  $("chat-reset").addEventListener("click", resetChat);
  $("chat-b").addEventListener("change", () => { $("chat-log-b").hidden = !$("chat-b").value; });
  $("data-show").addEventListener("click", showData);
  $("data-pick").addEventListener("click", () => openPicker($("data-path"), null));
  $("picker-close").addEventListener("click", () => { $("picker").hidden = true; });
  $("preset-btn").addEventListener("click", applyPreset);
  $("golden-btn").addEventListener("click", goldenReport);
  $("arena-btn").addEventListener("click", openArena);
  $("eval-pick").addEventListener("click", () => openPicker($("eval-prompts"), null));
  $("mix-pick").addEventListener("click", () => openPicker($("mix-sources"), { lines: true }));
  $("mix-run").addEventListener("click", runMix);
  setLang(initialLang());
  const info = ui.info = await api("/api/info");
  for (const k of info.recipes) $("recipe").append(el("option", { value: k, text: k }));
  $("data-format").replaceChildren(...info.formats.map((f) => el("option", { value: f, text: f })));
  $("data-template").replaceChildren(...info.templates.map((f) => el("option", { value: f, text: f })));
  if (info.demo_data) $("eval-prompts").value = info.demo_data + "/heldout_style.jsonl";
  showTab("runs");
  await loadForm();
  await refreshRuns();
  refreshArenas();
  setInterval(refreshRuns, 3000);
  document.body.dataset.ready = "1";
}
init();

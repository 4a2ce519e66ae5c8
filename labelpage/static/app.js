// The labelling page. Model text is untrusted: it is only ever set with textContent, never as markup.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const headers = token ? { "X-Token": token } : {};
const $ = (id) => document.getElementById(id);
const PLACES = ["best", "2nd", "3rd"];

let items = [];
let done = new Set();
let name = "";
let current = null;   // index into items
let ranking = [];     // response indices, best first
let skipped = new Set();

async function api(path, body) {
  const init = body === undefined ? { headers } :
    { method: "POST", headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function place(i) { return i < PLACES.length ? PLACES[i] : `${i + 1}th`; }

function showAgreement(rows) {
  const body = $("agreement-rows");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    tr.append(el("td", "", row.labellers.join(" · ")), el("td", "", String(row.prompts)),
              el("td", "", row.agreement === null ? "–" : `${Math.round(100 * row.agreement)}%`));
    body.append(tr);
  }
  $("agreement").hidden = rows.length === 0;
}

function nextItem() {
  const open = items.findIndex((it, i) => !done.has(it.id) && !skipped.has(i));
  if (open >= 0) return open;
  skipped.clear();  // every prompt seen: offer the skipped ones again
  return items.findIndex((it) => !done.has(it.id));
}

function showProgress() {
  $("progress").textContent = `${name}: ${done.size} of ${items.length} prompts ranked`;
}

function render() {
  showProgress();
  if (current < 0) {
    $("work").hidden = true;
    $("finished").hidden = false;
    return;
  }
  const item = items[current];
  const prompt = $("prompt");
  prompt.replaceChildren();
  if (typeof item.prompt === "string") {
    prompt.append(el("div", "text", item.prompt));
  } else {
    for (const turn of item.prompt) {
      const div = el("div", "turn");
      div.append(el("span", "role", `${turn.role}:`), el("span", "text", turn.content));
      prompt.append(div);
    }
  }
  const list = $("responses");
  list.replaceChildren();
  item.responses.forEach((text, i) => {
    const li = el("li");
    li.dataset.index = String(i);
    const at = ranking.indexOf(i);
    if (at >= 0) li.classList.add("ranked");
    li.append(el("span", "key", String(i + 1)), el("span", "place", at >= 0 ? place(at) : ""),
              el("span", "text", text));
    li.addEventListener("click", () => choose(i));
    list.append(li);
  });
  $("ranking").textContent = ranking.length ? `Your ranking: ${ranking.map((i) => `#${i + 1}`).join(" > ")}` : "";
  $("save").disabled = ranking.length !== item.responses.length;
}

function choose(i) {
  const k = items[current].responses.length;
  const at = ranking.indexOf(i);
  if (at >= 0) ranking.splice(at, 1);  // clicking a ranked response takes it back
  else ranking.push(i);
  if (ranking.length === k - 1) {  // the last one left is the worst
    for (let j = 0; j < k; j++) if (!ranking.includes(j)) ranking.push(j);
  }
  render();
}

async function save() {
  const item = items[current];
  if (ranking.length !== item.responses.length) return;
  $("save").disabled = true;
  try {
    const reply = await api("/api/rank", { labeller: name, id: item.id, order: ranking });
    done.add(item.id);
    showAgreement(reply.agreement);
    $("status").className = "";
    $("status").textContent = `saved prompt ${item.id}`;
    ranking = [];
    current = nextItem();
    render();
  } catch (error) {
    $("status").className = "error";
    $("status").textContent = `not saved: ${error.message}`;
    $("save").disabled = false;
  }
}

function skip() {
  skipped.add(current);
  ranking = [];
  current = nextItem();
  render();
}

document.addEventListener("keydown", (event) => {
  if ($("work").hidden || event.target.tagName === "INPUT") return;
  const k = items[current] ? items[current].responses.length : 0;
  const n = Number(event.key);
  if (Number.isInteger(n) && n >= 1 && n <= k) choose(n - 1);
  else if (event.key === "Backspace") { ranking.pop(); render(); }
  else if (event.key === "Enter") save();
  else if (event.key === "s" || event.key === "S") skip();
  else return;
  event.preventDefault();
});

async function start() {
  name = $("name").value.trim();
  if (!name) return;
  localStorage.setItem("instructrl-labeller", name);
  const [all, progress] = await Promise.all([api("/api/items"),
                                             api(`/api/progress?labeller=${encodeURIComponent(name)}`)]);
  items = all.items;
  $("out").textContent = all.out;
  done = new Set(progress.done);
  showAgreement(progress.agreement);
  $("login").hidden = true;
  $("work").hidden = false;
  current = nextItem();
  render();
}

$("start").addEventListener("click", start);
$("name").addEventListener("keydown", (event) => { if (event.key === "Enter") start(); });
$("undo").addEventListener("click", () => { ranking.pop(); render(); });
$("skip").addEventListener("click", skip);
$("save").addEventListener("click", save);
$("name").value = localStorage.getItem("instructrl-labeller") || "";

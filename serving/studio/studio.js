// npdraw studio: sample, inspect and edit NP-DRAW images part by part.
//
// The view is a function of (model, base latents, list of edits): the base is a seeded sample
// (POST /v1/samples) or an encoded image (POST /v1/encode); each edit is a small operation on the
// latents, replayed here; after every edit the latents are decoded (POST /v1/decode). Undo/redo move
// edits between two stacks. The URL carries model, seed, temperature and edits (or the encoded
// latents), so a view can be shared.
//
// Edits (also the URL's `edits=` syntax, comma-separated; cells in raster order):
//   r<cell>                      remove the parts drawn in a cell
//   s<cell>.<exemplar>           put a bank part in a cell (replacing what is there)
//   m<from>.<to>                 move a cell's parts to another cell (replacing what is there)
//   p<seed>.<r0>.<c0>.<r1>.<c1>  paste the parts of sample <seed> in cell rows r0..r1, columns c0..c1
"use strict";

const $ = (id) => document.getElementById(id);
const VIEW_PIXELS = 336; // the largest side of the big views; each is an integer multiple of its image

const studio = {
  models: [], model: null, base: null, edits: [], redo: [], latents: null, decoded: null,
  selectedPart: null, mode: "edit", hover: null, drag: null, region: null, donor: null,
  temperature: 1, bank: null, donors: new Map(), decodeCount: 0, lastDecodeMs: null, busy: false, error: null,
  seq: 0,
};
window.studio = studio; // for the browser tests and the curious

// -- API -----------------------------------------------------------------------------------------------

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const text = await response.text();
  let data;
  try { data = JSON.parse(text); } catch { data = { message: text }; }
  if (!response.ok) {
    const why = data.message || (typeof data.detail === "string" ? data.detail : text);
    throw new Error(`${path}: ${response.status} ${why}`);
  }
  return data;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("an image did not load"));
    image.src = src;
  });
}

const png = (b64) => `data:image/png;base64,${b64}`;

async function sampleLatents(seed, temperature) {
  const key = `${studio.model.name}|${seed}|${temperature}`;
  if (!studio.donors.has(key)) {
    const body = { model: studio.model.name, seed, temperature, format: "json", return_latents: true };
    const sample = (await api("/v1/samples", body)).samples[0];
    studio.donors.set(key, {
      seed, canvas_png: sample.canvas_png,
      latents: {
        whether: sample.parts.map((p) => p.whether),
        exemplar: sample.parts.map((p) => p.exemplar),
        cell: sample.parts.map((p) => p.cell),
      },
    });
  }
  return studio.donors.get(key);
}

// -- geometry ------------------------------------------------------------------------------------------

const grid = () => {
  const m = studio.model;
  return { S: m.canvas_size, K: m.patch_size, n: m.cells_per_side, pad: m.pad_before };
};
const cellOf = (row, col) => row * grid().n + col;
const rowCol = (cell) => [Math.floor(cell / grid().n), cell % grid().n];

function cellBox(cell) { // [top, left, size] in canvas pixels (may overhang: padding)
  const { K, pad } = grid();
  const [row, col] = rowCol(cell);
  return [row * K - pad, col * K - pad, K];
}

function cellAt(view, event) {
  const rect = view.getBoundingClientRect();
  const { S, K, n, pad } = grid();
  const x = ((event.clientX - rect.left) / rect.width) * S;
  const y = ((event.clientY - rect.top) / rect.height) * S;
  const clamp = (v) => Math.max(0, Math.min(n - 1, Math.floor((v + pad) / K)));
  return cellOf(clamp(y), clamp(x));
}

// -- edits ---------------------------------------------------------------------------------------------

const copy = (latents) => ({
  whether: [...latents.whether], exemplar: [...latents.exemplar], cell: [...latents.cell],
});
const stepsIn = (latents, cells) =>
  latents.whether.map((w, t) => (w && cells.has(latents.cell[t]) ? t : -1)).filter((t) => t >= 0);

function clear(latents, t) {
  latents.whether[t] = false; latents.exemplar[t] = null; latents.cell[t] = null;
}

function draw(latents, exemplar, cell, preferred) {
  let t = preferred !== undefined && !latents.whether[preferred] ? preferred : latents.whether.indexOf(false);
  if (t < 0) {
    throw new Error(`every one of the ${latents.whether.length} steps draws a part: remove one first`);
  }
  latents.whether[t] = true; latents.exemplar[t] = exemplar; latents.cell[t] = cell;
}

function parseEdit(text) {
  const match = /^([rsmp])(\d+(?:\.\d+)*)$/.exec(text);
  const args = match ? match[2].split(".").map(Number) : [];
  const arity = { r: 1, s: 2, m: 2, p: 5 };
  if (!match || args.length !== arity[match[1]]) throw new Error(`edit ${JSON.stringify(text)} is not one I know`);
  return { op: match[1], args };
}

async function applyEdit(latents, text) {
  const { op, args } = parseEdit(text);
  const { n } = grid();
  const cells = n * n;
  const check = (cell) => { if (cell >= cells) throw new Error(`edit ${text}: cell ${cell} is outside the grid`); };
  if (op === "r") {
    check(args[0]);
    for (const t of stepsIn(latents, new Set([args[0]]))) clear(latents, t);
  } else if (op === "s") {
    const [cell, exemplar] = args;
    check(cell);
    if (exemplar >= studio.model.bank_size) throw new Error(`edit ${text}: part ${exemplar} is not in the bank`);
    const steps = stepsIn(latents, new Set([cell]));
    steps.forEach((t) => clear(latents, t));
    draw(latents, exemplar, cell, steps[0]);
  } else if (op === "m") {
    const [from, to] = args;
    check(from); check(to);
    if (from !== to) {
      for (const t of stepsIn(latents, new Set([to]))) clear(latents, t);
      for (const t of stepsIn(latents, new Set([from]))) latents.cell[t] = to;
    }
  } else {
    const [seed, r0, c0, r1, c1] = args;
    const region = new Set();
    for (let r = r0; r <= r1 && r < n; r++) for (let c = c0; c <= c1 && c < n; c++) region.add(cellOf(r, c));
    const donor = (await sampleLatents(seed, temperature())).latents;
    const freed = stepsIn(latents, region);
    freed.forEach((t) => clear(latents, t));
    for (const t of stepsIn(donor, region)) draw(latents, donor.exemplar[t], donor.cell[t], freed.shift());
  }
  return latents;
}

async function replay(edits) {
  let latents = copy(studio.base.latents);
  for (const text of edits) latents = await applyEdit(latents, text);
  return latents;
}

async function edit(text) { // a new edit by the user: applied, pushed, decoded; the redo stack is dropped
  try {
    studio.latents = await applyEdit(copy(studio.latents), text);
  } catch (error) {
    return showError(error);
  }
  studio.edits.push(text);
  studio.redo = [];
  await refresh();
}

async function undo() {
  if (!studio.edits.length) return;
  studio.redo.push(studio.edits.pop());
  studio.latents = await replay(studio.edits);
  await refresh();
}

async function redo() {
  if (!studio.redo.length) return;
  const text = studio.redo.pop();
  studio.latents = await applyEdit(copy(studio.latents), text);
  studio.edits.push(text);
  await refresh();
}

// -- decoding and drawing ------------------------------------------------------------------------------

async function refresh() { // decode the current latents, show them, update the URL
  writeUrl();
  updateButtons();
  const seq = ++studio.seq;
  studio.busy = true;
  const start = performance.now();
  try {
    const decoded = await api("/v1/decode", { model: studio.model.name, latents: studio.latents });
    if (seq !== studio.seq) return; // a newer edit is on its way
    const [image, canvas] = await Promise.all([loadImage(png(decoded.image_png)), loadImage(png(decoded.canvas_png))]);
    if (seq !== studio.seq) return;
    studio.decoded = decoded;
    studio.images = { image, canvas };
    studio.lastDecodeMs = performance.now() - start;
    studio.decodeCount += 1;
    drawViews();
    showHover();
    const parts = decoded.latents.whether.filter(Boolean).length;
    status(`${parts} parts · ${studio.edits.length} edits · decoded in ${studio.lastDecodeMs.toFixed(0)} ms`);
    $("download-image").href = png(decoded.image_png);
    $("download-image").download = `${fileStem()}.png`;
  } catch (error) {
    if (seq === studio.seq) showError(error);
  } finally {
    if (seq === studio.seq) studio.busy = false;
  }
}

function sizeView(view, side) {
  const { S } = grid();
  const pixels = Math.max(1, Math.floor(side / S)) * S; // an integer multiple: every pixel the same size
  for (const canvas of view.querySelectorAll("canvas")) {
    canvas.width = canvas.height = pixels;
    canvas.style.width = canvas.style.height = `${pixels}px`;
  }
}

function paint(view, image) {
  const canvas = view.querySelector(".pixels");
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false; // nearest neighbour: crisp parts
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (image) context.drawImage(image, 0, 0, canvas.width, canvas.height);
}

function overlay(view, { gridLines = true, marks = [] } = {}) {
  const canvas = view.querySelector(".overlay");
  const context = canvas.getContext("2d");
  const { S, K, n, pad } = grid();
  const f = canvas.width / S;
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (gridLines) {
    context.strokeStyle = "rgba(79, 195, 247, 0.35)";
    context.lineWidth = 1;
    context.beginPath();
    for (let i = 0; i <= n; i++) {
      const at = Math.round((i * K - pad) * f) + 0.5;
      if (at < 0 || at > canvas.width) continue;
      context.moveTo(at, 0); context.lineTo(at, canvas.height);
      context.moveTo(0, at); context.lineTo(canvas.width, at);
    }
    context.stroke();
  }
  for (const { cells, color, fill } of marks) {
    for (const box of boxes(cells)) {
      const [top, left, h, w] = box.map((v) => v * f);
      if (fill) { context.fillStyle = fill; context.fillRect(left, top, w, h); }
      context.strokeStyle = color;
      context.lineWidth = 2;
      context.strokeRect(left + 1, top + 1, w - 2, h - 2);
    }
  }
}

function boxes(cells) { // one rectangle per cell, or one around a region {r0, c0, r1, c1}
  if (!cells) return [];
  if (cells.r0 !== undefined) {
    const { K, pad } = grid();
    const top = cells.r0 * K - pad, left = cells.c0 * K - pad;
    return [[top, left, (cells.r1 - cells.r0 + 1) * K, (cells.c1 - cells.c0 + 1) * K]];
  }
  return cells.map((cell) => { const [top, left, size] = cellBox(cell); return [top, left, size, size]; });
}

function marks() {
  const list = [];
  if (studio.region) list.push({ cells: studio.region, color: "#ffb000", fill: "rgba(255, 176, 0, 0.12)" });
  if (studio.drag && studio.drag.to !== undefined && studio.drag.to !== studio.drag.from) {
    list.push({ cells: [studio.drag.from], color: "#4fc3f7" }, { cells: [studio.drag.to], color: "#ffb000" });
  }
  if (studio.hover !== null) list.push({ cells: [studio.hover], color: "#ffffff" });
  return list;
}

function drawViews() {
  if (!studio.images) return;
  paint($("image-view"), studio.images.image);
  paint($("canvas-view"), studio.images.canvas);
  drawOverlays();
  drawSteps();
}

function drawOverlays() {
  const list = marks();
  overlay($("image-view"), { gridLines: false, marks: list.map((mark) => ({ ...mark, fill: null })) });
  overlay($("canvas-view"), { marks: list });
  overlay($("donor-view"), { marks: studio.region ? [list[0]] : [] });
}

function partThumb(exemplar, side) { // a bank exemplar on its own small canvas
  const canvas = document.createElement("canvas");
  const { K } = grid();
  const { per_row: perRow, pad, scale } = studio.model.bank_image;
  canvas.width = canvas.height = K * scale;
  if (side) canvas.style.width = canvas.style.height = `${side}px`;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  if (studio.bank && exemplar !== null) {
    const x = scale * (pad + (exemplar % perRow) * (K + pad));
    const y = scale * (pad + Math.floor(exemplar / perRow) * (K + pad));
    context.drawImage(studio.bank, x, y, K * scale, K * scale, 0, 0, K * scale, K * scale);
  }
  return canvas;
}

function drawSteps() {
  const box = $("steps");
  box.replaceChildren();
  const latents = studio.decoded.latents;
  latents.whether.forEach((drawn, t) => {
    if (!drawn) return;
    const item = document.createElement("div");
    item.className = "step" + (latents.cell[t] === studio.hover ? " hot" : "");
    item.dataset.cell = latents.cell[t];
    item.title = `step ${t}: part ${latents.exemplar[t]} in cell ${latents.cell[t]}`;
    item.append(partThumb(latents.exemplar[t]), `t${t}`);
    item.addEventListener("mouseenter", () => setHover(latents.cell[t]));
    item.addEventListener("mouseleave", () => setHover(null));
    box.append(item);
  });
}

function setHover(cell) {
  if (cell === studio.hover) return;
  studio.hover = cell;
  showHover();
  drawOverlays();
}

function showHover() { // what the hovered cell holds, in the current latents
  const info = $("hover"), cell = studio.hover;
  if (cell === null || !studio.latents) {
    info.textContent = "Hover a cell to see its part and step.";
  } else {
    const [row, col] = rowCol(cell);
    const [top, left, size] = cellBox(cell);
    const latents = studio.latents;
    const steps = stepsIn(latents, new Set([cell]));
    info.replaceChildren(`cell ${cell} (row ${row}, column ${col}; canvas pixels ${top},${left} size ${size}): `);
    if (!steps.length) info.append("empty");
    for (const t of steps) info.append(partThumb(latents.exemplar[t], 24), `part ${latents.exemplar[t]} at step ${t}  `);
  }
  for (const item of $("steps").children) item.classList.toggle("hot", item.dataset.cell === String(cell));
}

// -- the views' mouse handling -------------------------------------------------------------------------

function hasParts(cell) { return stepsIn(studio.latents, new Set([cell])).length > 0; }

function onViewDown(event) {
  if (!studio.latents) return;
  const cell = cellAt(event.currentTarget, event);
  event.currentTarget.setPointerCapture?.(event.pointerId);
  studio.drag = { from: cell, to: cell, mode: studio.mode };
  if (studio.mode === "paste") setRegion(cell, cell);
}

function onViewMove(event) {
  if (!studio.latents) return;
  const cell = cellAt(event.currentTarget, event);
  const drag = studio.drag;
  if (drag && drag.to !== cell) {
    drag.to = cell;
    if (drag.mode === "paste") setRegion(drag.from, cell);
  }
  setHover(cell);
  drawOverlays();
}

function onViewUp(event) {
  const drag = studio.drag;
  studio.drag = null;
  if (!drag || !studio.latents) return;
  const cell = cellAt(event.currentTarget, event);
  if (drag.mode === "paste") {
    setRegion(drag.from, cell);
  } else if (cell !== drag.from) {
    if (hasParts(drag.from)) edit(`m${drag.from}.${cell}`);
    else drawOverlays();
  } else if (studio.selectedPart !== null) {
    edit(`s${cell}.${studio.selectedPart}`);
  } else if (hasParts(cell)) {
    edit(`r${cell}`);
  } else {
    status("This cell is empty: select a part in the bank to put one here.");
  }
}

function setRegion(a, b) {
  const [ra, ca] = rowCol(a), [rb, cb] = rowCol(b);
  studio.region = { r0: Math.min(ra, rb), c0: Math.min(ca, cb), r1: Math.max(ra, rb), c1: Math.max(ca, cb) };
  const [[top, left, h, w]] = boxes(studio.region);
  const { S } = grid();
  const [y0, x0, y1, x1] = [Math.max(top, 0), Math.max(left, 0), Math.min(top + h, S), Math.min(left + w, S)];
  const r = studio.region;
  $("region").textContent = `rows ${r.r0}–${r.r1}, columns ${r.c0}–${r.c1} ` +
    `(canvas region ${y0},${x0},${y1 - y0},${x1 - x0}: top,left,height,width)`;
  $("paste").disabled = false;
  drawOverlays();
}

for (const id of ["image-view", "canvas-view", "donor-view"]) {
  const view = $(id).querySelector(".overlay");
  view.addEventListener("pointerdown", onViewDown);
  view.addEventListener("pointermove", onViewMove);
  view.addEventListener("pointerup", id === "donor-view" ? onDonorUp : onViewUp);
  view.addEventListener("pointerleave", () => { if (!studio.drag) setHover(null); });
}

function onDonorUp(event) { // the donor view only selects regions
  studio.drag = null;
  if (studio.latents) {
    const cell = cellAt(event.currentTarget, event);
    if (!studio.region) setRegion(cell, cell);
  }
}

// -- the part bank -------------------------------------------------------------------------------------

async function loadBank() {
  studio.bank = await loadImage(`/v1/bank/${encodeURIComponent(studio.model.name)}.png`);
  const palette = $("palette");
  palette.replaceChildren();
  for (let i = 0; i < studio.model.bank_size; i++) {
    const tile = partThumb(i);
    tile.dataset.exemplar = i;
    tile.title = `part ${i}`;
    tile.addEventListener("click", () => selectPart(studio.selectedPart === i ? null : i));
    palette.append(tile);
  }
}

function selectPart(exemplar) {
  studio.selectedPart = exemplar;
  for (const tile of $("palette").children) tile.classList.toggle("selected", Number(tile.dataset.exemplar) === exemplar);
  $("selected-part").textContent = exemplar === null ? "none selected" : `part ${exemplar} selected: click a cell to put it there`;
}

// -- bases: a seeded sample, or an encoded image -------------------------------------------------------

// The temperature of the base sample and of every donor: the input's value when "Sample" was last pressed.
const temperature = () => studio.temperature;

async function sampleBase(seed, edits = []) {
  studio.temperature = Number($("temperature").value) || 1;
  const sample = await sampleLatents(seed, temperature());
  studio.base = { kind: "seed", seed, latents: sample.latents };
  studio.latents = await replay(edits);
  studio.edits = [...edits];
  studio.redo = [];
}

async function encodeImage(dataUrl) {
  try {
    status("encoding…");
    const body = { model: studio.model.name, image: dataUrl, invert: $("invert").checked };
    const encoded = await api("/v1/encode", body);
    $("encoded-input").src = png(encoded.input_png);
    studio.base = { kind: "encoded", latents: encoded.latents };
    studio.latents = copy(encoded.latents);
    studio.edits = [];
    studio.redo = [];
    await refresh();
  } catch (error) {
    showError(error);
  }
}

// -- URL -------------------------------------------------------------------------------------------------

function packLatents(latents) {
  return latents.whether.map((w, t) => (w ? `${latents.exemplar[t]}.${latents.cell[t]}` : "_")).join("-");
}

function unpackLatents(text) {
  const latents = { whether: [], exemplar: [], cell: [] };
  for (const step of text.split("-")) {
    const [exemplar, cell] = step === "_" ? [null, null] : step.split(".").map(Number);
    latents.whether.push(step !== "_");
    latents.exemplar.push(exemplar);
    latents.cell.push(cell);
  }
  return latents;
}

function writeUrl() {
  const params = new URLSearchParams({ model: studio.model.name });
  if (studio.base.kind === "seed") params.set("seed", studio.base.seed);
  else params.set("z", packLatents(studio.base.latents));
  params.set("t", temperature());
  if (studio.edits.length) params.set("edits", studio.edits.join(","));
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

async function readUrl() {
  const params = new URLSearchParams(location.search);
  const edits = (params.get("edits") || "").split(",").filter(Boolean);
  if (params.get("t")) $("temperature").value = params.get("t");
  if (params.get("z")) {
    studio.temperature = Number($("temperature").value) || 1;
    studio.base = { kind: "encoded", latents: unpackLatents(params.get("z")) };
    studio.latents = await replay(edits);
    studio.edits = edits;
  } else {
    const seed = Number(params.get("seed") || 0);
    $("seed").value = seed;
    await sampleBase(seed, edits);
  }
}

// -- controls --------------------------------------------------------------------------------------------

function status(text) { $("status").textContent = text; $("status").classList.remove("error"); studio.error = null; }

function showError(error) {
  studio.error = String(error.message || error);
  $("status").textContent = studio.error;
  $("status").classList.add("error");
}

function updateButtons() {
  $("undo").disabled = !studio.edits.length;
  $("redo").disabled = !studio.redo.length;
  $("reset").disabled = !studio.edits.length;
}

function fileStem() {
  const base = studio.base.kind === "seed" ? `seed${studio.base.seed}` : "encoded";
  return `npdraw-${studio.model.name}-${base}${studio.edits.length ? `-${studio.edits.length}edits` : ""}`;
}

function downloadLatents() {
  const source = { url: location.href, edits: studio.edits };
  if (studio.base.kind === "seed") Object.assign(source, { seed: studio.base.seed, temperature: temperature() });
  const body = { model: studio.model.name, latents: studio.latents, source };
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 1)], { type: "application/json" }));
  link.download = `${fileStem()}-latents.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function chooseModel(name, fromUrl = false) {
  studio.model = studio.models.find((m) => m.name === name) || studio.models[0];
  $("model").value = studio.model.name;
  const m = studio.model;
  $("model-info").textContent = `${m.dataset} · image ${m.image_shape.join("×")} · canvas ${m.canvas_size} · ` +
    `${m.cells_per_side}×${m.cells_per_side} cells of ${m.patch_size} · ${m.bank_size} parts · ${m.num_steps} steps`;
  studio.region = null; studio.donor = null; studio.images = null; studio.hover = null;
  $("paste").disabled = true;
  $("region").textContent = "no region: drag over the canvas in paste mode";
  selectPart(null);
  const { S } = grid();
  sizeView($("image-view"), VIEW_PIXELS);
  sizeView($("canvas-view"), VIEW_PIXELS);
  sizeView($("donor-view"), 168);
  paint($("donor-view"), null);
  await loadBank();
  if (fromUrl) await readUrl();
  else await sampleBase(Number($("seed").value) || 0);
  await refresh();
  await showDonor();
  return S;
}

async function showDonor() {
  studio.donor = null;
  try {
    const donor = await sampleLatents(Number($("donor-seed").value) || 0, temperature());
    studio.donor = donor;
    paint($("donor-view"), await loadImage(png(donor.canvas_png)));
    drawOverlays();
  } catch (error) {
    showError(error);
  }
}

function wire() {
  $("model").addEventListener("change", () => chooseModel($("model").value).catch(showError));
  $("sample").addEventListener("click", async () => {
    try { await sampleBase(Number($("seed").value) || 0); await refresh(); } catch (error) { showError(error); }
  });
  $("random").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e6); $("sample").click(); });
  $("undo").addEventListener("click", () => undo().catch(showError));
  $("redo").addEventListener("click", () => redo().catch(showError));
  $("reset").addEventListener("click", async () => {
    studio.redo = [...studio.redo, ...studio.edits.reverse()];
    studio.edits = [];
    studio.latents = copy(studio.base.latents);
    await refresh();
  });
  $("download-latents").addEventListener("click", downloadLatents);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { studio.mode = radio.value; });
  }
  $("donor-sample").addEventListener("click", showDonor);
  $("paste").addEventListener("click", async () => {
    if (!studio.region) return;
    await showDonor(); // the donor seed's sample at the current temperature (cached)
    if (!studio.donor) return;
    const r = studio.region;
    await edit(`p${studio.donor.seed}.${r.r0}.${r.c0}.${r.r1}.${r.c1}`);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type !== "radio" && event.target.type !== "checkbox") return;
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") {
      event.preventDefault();
      (event.shiftKey ? redo : undo)().catch(showError);
    } else if ((event.ctrlKey || event.metaKey) && key === "y") {
      event.preventDefault();
      redo().catch(showError);
    }
    else if (key === "escape") { selectPart(null); studio.region = null; $("paste").disabled = true; drawOverlays(); }
  });
  wirePad();
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => encodeImage(reader.result);
    reader.readAsDataURL(file);
  });
}

function wirePad() {
  const pad = $("pad");
  const context = pad.getContext("2d");
  const clearPad = () => { context.fillStyle = "#000"; context.fillRect(0, 0, pad.width, pad.height); };
  clearPad();
  let last = null;
  const at = (event) => {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * (pad.width / rect.width), (event.clientY - rect.top) * (pad.height / rect.height)];
  };
  const stroke = (to) => {
    context.strokeStyle = $("brush").value;
    context.lineWidth = pad.width / 12;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...(last || to));
    context.lineTo(...to);
    context.stroke();
    last = to;
  };
  pad.addEventListener("pointerdown", (event) => { pad.setPointerCapture?.(event.pointerId); last = null; stroke(at(event)); });
  pad.addEventListener("pointermove", (event) => { if (last) stroke(at(event)); });
  pad.addEventListener("pointerup", () => { last = null; });
  $("pad-clear").addEventListener("click", clearPad);
  $("pad-encode").addEventListener("click", () => encodeImage(pad.toDataURL("image/png")));
}

async function main() {
  wire();
  try {
    studio.models = (await api("/v1/models")).models;
    if (!studio.models.length) throw new Error("no models are served");
    for (const m of studio.models) $("model").append(new Option(`${m.name} (${m.dataset})`, m.name));
    const wanted = new URLSearchParams(location.search).get("model");
    await chooseModel(wanted || studio.models[0].name, true);
  } catch (error) {
    showError(error);
  }
  studio.ready = true;
}

main();

// The index: one row per slide under OUT, from /api/slides.
"use strict";
(function () {
  const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  };
  fetch("/api/slides").then((r) => r.json()).then((data) => {
    document.getElementById("out-dir").textContent = data.out_dir;
    const msg = document.getElementById("index-message");
    const body = document.querySelector("#slides tbody");
    if (!data.slides.length) { msg.textContent = "No results under this folder yet (run wsiscan predict SLIDE -o OUT)."; return; }
    msg.textContent = `${data.slides.length} slide(s)`;
    for (const s of data.slides) {
      const id = encodeURIComponent(s.slide_id);
      const name = s.has_viewer ? el("a", { href: `/slide/${id}`, class: "slide-link" }, s.slide_id) : el("span", {}, s.slide_id);
      const status = el("span", { class: `status ${s.status.replace(" ", "-")}` }, s.status);
      const statusCell = el("td", {}, status);
      if (s.error) statusCell.append(el("div", { class: "error" }, s.error));
      const qc = s.files.includes("qc.png") ? el("a", { href: `/files/${id}/qc.png` }, el("img", { class: "qc", src: `/files/${id}/qc.png`, alt: `QC of ${s.slide_id}` })) : "–";
      const files = el("td", {});
      for (const f of s.files) { files.append(el("a", { href: `/files/${id}/${f}` }, f), " "); }
      body.append(el("tr", { "data-slide": s.slide_id },
        el("td", {}, name), statusCell, el("td", {}, qc),
        el("td", { class: "num" }, fmt(s.max_probability)), el("td", { class: "num" }, fmt(s.top_k_mean_probability)),
        el("td", { class: "num" }, fmt(s.tumour_area_mm2)), el("td", { class: "num" }, s.n_regions ?? "–"),
        el("td", { class: "num" }, fmt(s.tissue_area_mm2)), el("td", { class: "num" }, s.n_tiles ?? "–"),
        el("td", {}, s.model || "–"), files));
    }
    document.getElementById("slides").hidden = false;
  }).catch((e) => { document.getElementById("index-message").textContent = `cannot list the slides: ${e}`; });
})();

// The viewer of one slide: OpenSeadragon in a world measured in micrometres (both images are
// placed at x = y = 0 with their width in um), the heatmap on top, outlines of the regions at
// the threshold on a canvas, a scale bar, the hotspot list and the spoken summary.
"use strict";
(function () {
  const slideId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const api = `/api/slides/${encodeURIComponent(slideId)}`;
  const $ = (id) => document.getElementById(id);
  const state = { ready: false, regions: [], regionsThreshold: null, info: null, pending: null, drawnRings: 0 };
  window.wsiscan = { state, viewer: null };

  function fmt(v, d = 3) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }

  function niceLength(um) {  // the 1-2-5 length nearest below um
    const p = Math.pow(10, Math.floor(Math.log10(um)));
    for (const m of [5, 2, 1]) if (m * p <= um) return m * p;
    return p;
  }

  function drawScaleBar(viewer) {
    const vp = viewer.viewport;
    const a = vp.pointFromPixel(new OpenSeadragon.Point(0, 0), true);
    const b = vp.pointFromPixel(new OpenSeadragon.Point(100, 0), true);
    const umPerPx = (b.x - a.x) / 100;
    if (!(umPerPx > 0)) return;
    const len = niceLength(umPerPx * 150);
    $("scalebar").querySelector(".bar").style.width = `${len / umPerPx}px`;
    $("scalebar").querySelector(".label").textContent = len >= 1000 ? `${len / 1000} mm` : `${len} µm`;
  }

  function drawOutlines(viewer) {
    const canvas = $("outlines");
    const box = viewer.container.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(box.width * dpr) || canvas.height !== Math.round(box.height * dpr)) {
      canvas.width = Math.round(box.width * dpr); canvas.height = Math.round(box.height * dpr);
      canvas.style.width = `${box.width}px`; canvas.style.height = `${box.height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, box.width, box.height);
    ctx.strokeStyle = "cyan"; ctx.lineWidth = 2; ctx.lineJoin = "round";
    let n = 0;
    for (const r of state.regions) {
      for (const ring of r.rings_um) {
        ctx.beginPath();
        ring.forEach(([x, y], i) => {
          const p = viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(x, y), true);
          if (i === 0) ctx.moveTo(p.x, p.y); else ctx.lineTo(p.x, p.y);
        });
        ctx.closePath(); ctx.stroke(); n += 1;
      }
    }
    state.drawnRings = n;
  }

  function flyTo(viewer, r, row) {
    const [x0, y0, x1, y1] = r.bbox_um;
    const minUm = 4 * state.info.cell_um;
    const w = Math.max(x1 - x0, minUm) * 1.5, h = Math.max(y1 - y0, minUm) * 1.5;
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(cx - w / 2, cy - h / 2, w, h));
    document.querySelectorAll("#regions tbody tr").forEach((tr) => tr.classList.remove("active"));
    row.classList.add("active");
  }

  function showRegions(viewer, data) {
    state.regions = data.regions;
    state.regionsThreshold = data.threshold;
    $("regions-summary").textContent = `${data.n} region(s), ${fmt(data.area_mm2)} mm² at p ≥ ${data.threshold.toFixed(2)}`;
    const body = document.querySelector("#regions tbody");
    body.replaceChildren();
    data.regions.slice(0, 50).forEach((r) => {
      const tr = document.createElement("tr");
      tr.dataset.rank = r.rank;
      for (const v of [r.rank, fmt(r.max_probability), fmt(r.mean_probability), fmt(r.area_mm2, 4)]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      tr.addEventListener("click", () => flyTo(viewer, r, tr));
      body.append(tr);
    });
    $("legend-mark").style.left = `calc(${data.threshold * 100}% - 1px)`;
    drawOutlines(viewer);
  }

  function loadRegions(viewer, threshold) {
    const asked = Number(threshold.toFixed(2));
    state.pending = asked;
    return fetch(`${api}/regions?threshold=${asked}`).then((r) => r.json()).then((data) => {
      if (state.pending === asked) showRegions(viewer, data);
    });
  }

  function setUpControls(viewer, info) {
    const heatmap = () => viewer.world.getItemAt(1);
    $("opacity").addEventListener("input", (e) => {
      const v = e.target.value / 100;
      $("opacity-value").textContent = v.toFixed(2);
      if (heatmap()) heatmap().setOpacity(v);
    });
    let timer = null;
    $("threshold").addEventListener("input", (e) => {
      const t = e.target.value / 100;
      $("threshold-value").textContent = t.toFixed(2);
      clearTimeout(timer);
      timer = setTimeout(() => loadRegions(viewer, t), 60);
    });
    $("threshold").value = Math.round(info.threshold * 100);
    $("threshold-value").textContent = info.threshold.toFixed(2);
    $("legend-ramp").style.background = `linear-gradient(to right, ${info.legend.join(", ")})`;
    $("read-aloud").addEventListener("click", () => {
      const audio = $("speech-audio");
      $("speech-text").textContent = info.speech_text;
      fetch(`${api}/speech.wav`).then((r) => {
        if (!r.ok) return r.json().then((j) => { throw new Error(j.error); });
        return r.blob();
      }).then((blob) => {
        audio.src = URL.createObjectURL(blob);
        return audio.play();
      }).catch((e) => { $("speech-text").textContent = `${info.speech_text} (${e.message || e})`; });
    });
  }

  function showInfo(info) {
    document.title = `wsiscan: ${info.slide_id}`;
    $("slide-title").textContent = info.slide_id;
    $("slide-path").textContent = info.slide_path;
    const note = $("source-note");
    if (info.source !== "openslide") {
      note.hidden = false;
      note.textContent = info.source_note.startsWith("pixels not kept") ? `${info.source_note}.`
        : `Showing the tile store's copy: ${info.source_note}.`;
    }
    const s = info.scores;
    const rows = [["max probability", fmt(s.max_probability)], ["top-k mean", fmt(s.top_k_mean_probability)],
      ["tissue area (mask)", `${fmt(s.tissue_area_mm2)} mm²`], ["scored area (scored tiles)", `${fmt(s.scored_area_mm2)} mm²`],
      ["tumour area (cells ≥ threshold)", `${fmt(s.tumour_area_mm2)} mm²`], ["region area (outlines)", `${fmt(s.region_area_mm2)} mm²`],
      ["regions (predict)", info.n_regions ?? "–"], ["resolution", `${fmt(info.l0_mpp, 3)} µm/px`],
      ["heatmap cell", `${fmt(info.cell_um, 1)} µm`], ["pixels from", info.source === "openslide" ? "slide file" : "tile store"]];
    $("figures").replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      return [dt, dd];
    }));
    const id = encodeURIComponent(info.slide_id);
    $("files").innerHTML = ["overlay.png", "qc.png", "tumor.geojson", "summary.json"]
      .map((f) => `<a href="/files/${id}/${f}">${f}</a>`).join(" · ");
  }

  fetch(api).then((r) => r.json().then((j) => ({ ok: r.ok, j }))).then(({ ok, j }) => {
    if (!ok) { $("viewer-message").textContent = j.error; $("viewer-message").className = "error"; return; }
    const info = j;
    state.info = info;
    showInfo(info);
    $("viewer-message").textContent = "";
    const viewer = OpenSeadragon({
      id: "viewer",
      prefixUrl: "/static/openseadragon/images/",
      drawer: "canvas",
      imageSmoothingEnabled: false,  // heatmap cells stay sharp squares when zoomed in
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false },
      tileSources: [
        { tileSource: info.slide_dzi, x: 0, y: 0, width: info.slide_size_um[0] },
        { tileSource: info.heatmap_dzi, x: info.heatmap_origin_um, y: info.heatmap_origin_um, width: info.heatmap_size_um[0], opacity: 0.5 },
      ],
    });
    window.wsiscan.viewer = viewer;
    viewer.container.append($("outlines"), $("scalebar"));
    viewer.addHandler("update-viewport", () => { drawOutlines(viewer); drawScaleBar(viewer); });
    viewer.addHandler("resize", () => drawOutlines(viewer));
    viewer.addHandler("open", () => {
      setUpControls(viewer, info);
      loadRegions(viewer, info.threshold).then(() => { state.ready = true; });
    });
    viewer.addHandler("open-failed", (e) => { $("viewer-message").textContent = `cannot open the images: ${e.message}`; });
  }).catch((e) => { $("viewer-message").textContent = `cannot load the slide: ${e}`; });
})();

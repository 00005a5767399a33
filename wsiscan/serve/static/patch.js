// The patch demo: upload one image, classify it with a chosen model (POST /api/classify).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let dropped = null;
  const state = { result: null, error: null };
  window.wsiscanPatch = state;

  fetch("/api/models").then((r) => r.json()).then((data) => {
    for (const m of data.models) {
      const o = document.createElement("option");
      o.value = m.name; o.textContent = m.name; o.title = m.note;
      $("model").append(o);
    }
    $("limits").textContent = `PNG, JPEG or TIFF, at most ${data.max_upload_bytes / 1048576} MiB and 2048 × 2048 px`;
  });

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) { dropped = e.dataTransfer.files[0]; $("patch-message").textContent = dropped.name; }
  });
  $("file").addEventListener("change", () => { dropped = null; });

  $("patch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const file = dropped || $("file").files[0];
    if (!file) { $("patch-message").textContent = "choose an image first"; return; }
    const form = new FormData();
    form.append("model", $("model").value);
    form.append("file", file, file.name);
    $("patch-message").textContent = "classifying…";
    $("patch-message").className = "muted";
    fetch("/api/classify", { method: "POST", body: form })
      .then((r) => r.json().then((j) => ({ ok: r.ok, j })))
      .then(({ ok, j }) => {
        if (!ok) {
          state.error = j.error; state.result = null;
          $("patch-message").textContent = j.error; $("patch-message").className = "error";
          $("patch-result").hidden = true;
          return;
        }
        state.result = j; state.error = null;
        $("patch-message").textContent = "";
        $("preview").src = URL.createObjectURL(file);
        $("size-note").textContent = j.resized
          ? `${j.input_size_px[0]} × ${j.input_size_px[1]} px, resized to ${j.patch_size_px} px (the model expects ${j.patch_size_px} px at ${j.input_mpp} µm/px)`
          : `${j.patch_size_px} × ${j.patch_size_px} px, as the model expects (${j.input_mpp} µm/px)`;
        $("result-class").textContent = j.class;
        $("result-prob").textContent = `p(${j.positive_class}) = ${j.probability.toFixed(4)} (${j.model})`;
        $("prob-bar").style.width = `${(j.probability * 100).toFixed(1)}%`;
        const body = document.querySelector("#probabilities tbody");
        body.replaceChildren(...Object.entries(j.probabilities).map(([k, v]) => {
          const tr = document.createElement("tr");
          const a = document.createElement("td"); a.textContent = k; a.style.textAlign = "left";
          const b = document.createElement("td"); b.textContent = v.toFixed(4);
          tr.append(a, b); return tr;
        }));
        const g = $("gradcam");
        g.replaceChildren();
        if (j.gradcam_png_base64) {
          const img = document.createElement("img"); img.src = `data:image/png;base64,${j.gradcam_png_base64}`; g.append(img);
        } else { g.textContent = j.gradcam_note; g.className = "muted"; }
        $("patch-result").hidden = false;
      })
      .catch((err) => { $("patch-message").textContent = `upload failed: ${err}`; $("patch-message").className = "error"; });
  });
})();

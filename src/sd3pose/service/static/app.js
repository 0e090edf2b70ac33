// The sd3pose playground: one page, no build step, nothing loaded from outside this server.
// Talks to the same API as every other client: POST /v1/pose for the skeleton preview,
// POST /v2/sd3-med-pose + polling of its status for generation, POST /v1/comfy-workflow to copy a workflow.
"use strict";

(() => {
  const KEY_STORAGE = "sd3pose.apiKey";
  const POLL_MS = 250;
  const POSE_FIELDS = ["pose_mode", "resize_mode", "width", "height"];
  // Used only when /openapi.json cannot be read; the same lists as sd3pose.sampling.names and sd3pose.request.
  const FALLBACK_ENUMS = {
    sampler: [
      "euler", "euler_pp", "euler_ancestral", "euler_ancestral_pp", "heun", "heunpp2", "dpm_2",
      "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde",
      "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
      "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "ddim", "uni_pc", "uni_pc_bh2",
    ],
    scheduler: ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"],
    output_format: ["jpeg", "png", "webp"],
    pose_mode: ["auto", "detect", "none"],
    resize_mode: ["crop", "fill", "stretch"],
    pose_parts: ["body", "hands", "face"],
  };
  const FALLBACK_DEFAULTS = {
    sampler: "dpmpp_2m", scheduler: "sgm_uniform", output_format: "jpeg", pose_mode: "auto", resize_mode: "crop",
  };
  const EXTENSIONS = { "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp" };

  const $ = (id) => document.getElementById(id);
  const state = {
    source: null, // {kind: "file" | "url" | "keypoints", image?, keypoints?, name}
    poseSeq: 0,
    poseTimer: 0,
    busy: false,
    objectUrls: [],
  };

  class ApiError extends Error {}

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- talking to the API ----------------------------------------------------------------------

  function apiKey() {
    return $("api-key").value.trim();
  }

  // URLs the server hands back are absolute; behind a proxy their host may not be ours.
  function onThisServer(url) {
    const parsed = new URL(url, location.href);
    return parsed.origin === location.origin ? parsed.href : location.origin + parsed.pathname + parsed.search;
  }

  async function errorMessage(response) {
    let message = "";
    const text = await response.text();
    try {
      const data = JSON.parse(text);
      if (data && typeof data.error === "string") message = data.error;
      else if (data && data.detail !== undefined) message = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    } catch {
      message = text.trim().slice(0, 300);
    }
    if (!message) message = `the server answered ${response.status} ${response.statusText}`.trim();
    const retry = response.headers.get("retry-after");
    if (response.status === 429 && retry) message += ` (retry in ${retry} s)`;
    return message;
  }

  async function api(method, url, body) {
    const headers = {};
    if (apiKey()) headers["x-api-key"] = apiKey();
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(onThisServer(url), {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(`Could not reach the server (${error.message}); check that it is still running.`);
    }
    if (!response.ok) throw new ApiError(await errorMessage(response));
    return response;
  }

  // --- the form, from the API's own schema -------------------------------------------------------

  async function loadSchemas() {
    try {
      const response = await fetch("/openapi.json");
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      return (await response.json()).components.schemas;
    } catch (error) {
      console.warn("sd3pose: /openapi.json unavailable, using built-in defaults:", error);
      return null;
    }
  }

  // A property with its $ref followed (the property's own keys, such as default, win).
  function resolve(schemas, prop) {
    if (prop && prop.$ref && schemas) {
      const target = schemas[prop.$ref.split("/").pop()] || {};
      return { ...target, ...prop };
    }
    return prop || {};
  }

  // Optional numbers are anyOf [{type: integer, minimum, maximum}, {type: null}].
  function bounds(prop) {
    if (Array.isArray(prop.anyOf)) return prop.anyOf.find((p) => p.type === "integer" || p.type === "number") || {};
    return prop;
  }

  function fillSelect(select, values, selected) {
    select.replaceChildren(...values.map((value) => new Option(value, value, false, value === selected)));
  }

  function fillParts(values) {
    const container = $("pose-parts");
    container.replaceChildren(...values.map((value) => {
      const label = document.createElement("label");
      label.className = "check";
      const box = document.createElement("input");
      Object.assign(box, { type: "checkbox", name: "pose_parts", value, checked: true, id: `part-${value}` });
      label.append(box, ` ${value}`);
      return label;
    }));
  }

  // Sampler x scheduler pairs that misbehave on SD3 (x-caveats of the sampler field); none without a schema.
  let caveats = [];

  function showPairWarning() {
    const sampler = $("sampler").value;
    const scheduler = $("scheduler").value;
    const found = caveats.find((c) => c.sampler === sampler && c.scheduler === scheduler);
    const box = $("pair-warning");
    box.textContent = found ? `${sampler} with ${scheduler}: ${found.warning}.` : "";
    box.hidden = !found;
  }

  function applySchema(schemas) {
    const model = schemas && schemas.GenerationRequest;
    const props = (model && model.properties) || {};
    caveats = (props.sampler && props.sampler["x-caveats"]) || [];
    for (const name of ["sampler", "scheduler", "output_format", "pose_mode", "resize_mode"]) {
      const prop = resolve(schemas, props[name]);
      const values = Array.isArray(prop.enum) && prop.enum.length ? prop.enum : FALLBACK_ENUMS[name];
      fillSelect($(name), values, prop.default ?? FALLBACK_DEFAULTS[name]);
      if (prop.description) $(name).title = prop.description;
    }
    const parts = props.pose_parts ? resolve(schemas, props.pose_parts.items) : {};
    fillParts(Array.isArray(parts.enum) && parts.enum.length ? parts.enum : FALLBACK_ENUMS.pose_parts);
    for (const input of $("params").querySelectorAll("input[type=number], textarea")) {
      const prop = props[input.name];
      if (!prop) continue;
      const range = bounds(prop);
      if (range.minimum !== undefined) input.min = range.minimum;
      if (range.maximum !== undefined) input.max = range.maximum;
      if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
      if (prop.description) input.title = prop.description;
    }
  }

  // --- the input image and its skeleton -----------------------------------------------------------

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
      reader.readAsDataURL(file);
    });
  }

  function showPhoto(src, caption) {
    const img = $("photo-preview");
    $("photo-caption").textContent = caption;
    if (!src) {
      img.hidden = true;
      img.removeAttribute("src");
      $("photo-empty").hidden = false;
      $("photo-empty").textContent = "No image: the pose comes from the JSON";
      return;
    }
    img.onload = () => { $("photo-caption").textContent = `${caption} · ${img.naturalWidth}×${img.naturalHeight}`; };
    img.onerror = () => { $("photo-caption").textContent = `${caption} (this browser cannot show it; the server may still read it)`; };
    img.src = src;
    img.hidden = false;
    $("photo-empty").hidden = true;
  }

  function setPoseStatus(text, kind) {
    const status = $("pose-status");
    status.textContent = text;
    status.dataset.state = kind;
    status.classList.toggle("error-text", kind === "error");
  }

  async function useFile(file) {
    if (!file) return;
    clearError();
    try {
      if (file.type === "application/json" || /\.json$/i.test(file.name)) {
        let keypoints;
        try {
          keypoints = JSON.parse(await file.text());
        } catch (error) {
          throw new Error(`${file.name} is not valid JSON (${error.message}); drop a photo or an OpenPose JSON file`);
        }
        state.source = { kind: "keypoints", keypoints, name: file.name };
        showPhoto(null, `${file.name} (OpenPose JSON)`);
      } else {
        if (file.type && !file.type.startsWith("image/")) {
          throw new Error(`${file.name} is not an image (${file.type}); choose a JPEG, PNG or WebP photo`);
        }
        state.source = { kind: "file", image: await readAsDataUrl(file), name: file.name };
        showPhoto(state.source.image, `${file.name} · ${formatBytes(file.size)}`);
      }
    } catch (error) {
      showError(error.message);
      return;
    }
    $("image-url").value = "";
    schedulePose(0);
  }

  function useUrl(url) {
    clearError();
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      showError("That image URL is not a full address; it must start with http:// or https://.");
      return;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      showError("Only http:// and https:// image URLs are accepted.");
      return;
    }
    state.source = { kind: "url", image: parsed.href, name: parsed.pathname.split("/").pop() || parsed.host };
    showPhoto(parsed.href, parsed.host + parsed.pathname);
    schedulePose(0);
  }

  function selectedParts() {
    return [...document.querySelectorAll("input[name=pose_parts]:checked")].map((box) => box.value);
  }

  function optionalInt(id) {
    const text = $(id).value.trim();
    return text === "" ? undefined : Number(text);
  }

  function sourceFields() {
    const source = state.source;
    return source.kind === "keypoints" ? { pose_keypoints: source.keypoints } : { image: source.image };
  }

  function poseBody() {
    const body = {
      ...sourceFields(),
      pose_mode: $("pose_mode").value,
      pose_parts: selectedParts(),
      resize_mode: $("resize_mode").value,
    };
    for (const side of ["width", "height"]) {
      const value = optionalInt(side);
      if (value !== undefined) body[side] = value;
    }
    return body;
  }

  function schedulePose(delayMs) {
    clearTimeout(state.poseTimer);
    if (state.source) state.poseTimer = setTimeout(refreshPose, delayMs);
  }

  async function refreshPose() {
    const seq = ++state.poseSeq; // a newer request makes this one's answer stale
    const img = $("pose-preview");
    img.classList.add("stale");
    setPoseStatus("Detecting the pose…", "loading");
    try {
      const data = await (await api("POST", "/v1/pose", poseBody())).json();
      if (seq !== state.poseSeq) return;
      img.src = `data:image/png;base64,${data.pose_image}`;
      img.hidden = false;
      $("pose-empty").hidden = true;
      const people = data.keypoints && Array.isArray(data.keypoints.people) ? data.keypoints.people.length : 0;
      const size = `${data.width}×${data.height}`;
      let text;
      if (data.detected) text = `Detected ${people} ${people === 1 ? "person" : "people"} · ${size}`;
      else if (state.source.kind === "keypoints") text = `Skeleton from the keypoints · ${size}`;
      else text = `Image used as the pose map · ${size}`;
      setPoseStatus(text, "ready");
    } catch (error) {
      if (seq !== state.poseSeq) return;
      img.hidden = true;
      $("pose-empty").hidden = false;
      $("pose-empty").textContent = "No skeleton";
      setPoseStatus(error.message, "error");
    } finally {
      if (seq === state.poseSeq) img.classList.remove("stale");
    }
  }

  // --- generation ----------------------------------------------------------------------------------

  function labelOf(element) {
    const label = element.labels && element.labels[0];
    return label ? label.textContent.trim() : element.name;
  }

  // The first problem the browser can see before asking the server, as {message, field}.
  function firstProblem() {
    if (!state.source) {
      return { message: "Choose or drop a photo first (or give an image URL).", field: $("file-input") };
    }
    if (!$("prompt").value.trim()) return { message: "Write a prompt: what should the image show?", field: $("prompt") };
    for (const element of $("params").querySelectorAll("input, select, textarea")) {
      if (element.disabled || element.validity.valid) continue;
      return { message: `${labelOf(element)}: ${element.validationMessage}`, field: element };
    }
    if (!selectedParts().length) return { message: "Pick at least one pose part (body, hands or face).", field: null };
    return null;
  }

  function buildRequest() {
    const number = (id) => Number($(id).value);
    const body = {
      ...sourceFields(),
      prompt: $("prompt").value,
      negative_prompt: $("negative_prompt").value,
      num_inference_steps: number("num_inference_steps"),
      guidance_scale: number("guidance_scale"),
      seed: $("seed-random").checked ? -1 : number("seed"),
      samples: number("samples"),
      strength: number("strength"),
      sampler: $("sampler").value,
      scheduler: $("scheduler").value,
      output_format: $("output_format").value,
      pose_mode: $("pose_mode").value,
      pose_parts: selectedParts(),
      resize_mode: $("resize_mode").value,
      control_start: number("control_start"),
      control_end: number("control_end"),
    };
    for (const side of ["width", "height"]) {
      const value = optionalInt(side);
      if (value !== undefined) body[side] = value;
    }
    if ($("return_pose").checked) body.return_pose = true;
    return body;
  }

  function setProgress(step, total, text) {
    const bar = $("progress");
    bar.max = Math.max(total, 1);
    bar.value = Math.min(step, bar.max);
    bar.setAttribute("aria-valuetext", text);
    $("progress-label").textContent = text;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("generate").disabled = busy;
    $("generate").textContent = busy ? "Generating…" : "Generate";
    document.querySelector(".results").setAttribute("aria-busy", String(busy));
  }

  function clearGallery() {
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
    state.objectUrls = [];
    $("gallery").replaceChildren();
    $("result-meta").textContent = "";
  }

  async function fetchObjectUrl(url) {
    const blob = await (await api("GET", url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    state.objectUrls.push(objectUrl);
    return objectUrl;
  }

  function resultFigure(objectUrl, alt, caption, filename, seed) {
    const figure = document.createElement("figure");
    figure.className = "result";
    const img = document.createElement("img");
    Object.assign(img, { src: objectUrl, alt });
    const figcaption = document.createElement("figcaption");
    const text = document.createElement("span");
    text.textContent = caption;
    const link = document.createElement("a");
    Object.assign(link, { href: objectUrl, download: filename, textContent: "Download" });
    link.setAttribute("aria-label", `Download ${filename}`);
    figcaption.append(text, " ", link);
    if (seed !== undefined) {
      const reuse = document.createElement("button");
      Object.assign(reuse, { type: "button", className: "link-button", textContent: "Use seed" });
      reuse.setAttribute("aria-label", `Use seed ${seed}`);
      reuse.addEventListener("click", () => {
        $("seed-random").checked = false;
        $("seed").disabled = false;
        $("seed").value = seed;
        $("seed").focus();
      });
      figcaption.append(" ", reuse);
    }
    figure.append(img, figcaption);
    return figure;
  }

  async function showResults(result, request) {
    const extension = EXTENSIONS[result.media_type] || request.output_format;
    const figures = [];
    for (const [index, url] of (result.output || []).entries()) {
      const seed = result.seeds[index];
      const objectUrl = await fetchObjectUrl(url);
      figures.push(resultFigure(objectUrl, `Generated image ${index + 1}, seed ${seed}`,
        `Seed ${seed} · ${result.width}×${result.height}`, `sd3pose_seed_${seed}.${extension}`, seed));
    }
    if (result.pose_url) {
      const objectUrl = await fetchObjectUrl(result.pose_url);
      figures.push(resultFigure(objectUrl, "The pose map used", "Pose map", "sd3pose_pose.png"));
    }
    $("gallery").replaceChildren(...figures);
    const metrics = result.metrics || {};
    const parts = [];
    if (metrics.inference_time !== undefined) parts.push(`inference ${metrics.inference_time.toFixed(2)} s`);
    if (metrics.queue_time !== undefined) parts.push(`queued ${metrics.queue_time.toFixed(2)} s`);
    $("result-meta").textContent = `Request ${result.request_id}${parts.length ? ` · ${parts.join(" · ")}` : ""}`;
  }

  async function generate(event) {
    event.preventDefault();
    if (state.busy) return;
    clearError();
    const problem = firstProblem();
    if (problem) {
      showError(problem.message);
      if (problem.field) problem.field.focus();
      return;
    }
    const request = buildRequest();
    let total = request.num_inference_steps;
    const started = performance.now();
    setBusy(true);
    clearGallery();
    setProgress(0, total, "Submitting…");
    try {
      const submitted = await (await api("POST", "/v2/sd3-med-pose", request)).json();
      for (;;) {
        const status = await (await api("GET", submitted.status_url)).json();
        if (status.status === "FAILED") throw new ApiError(status.error || "The generation failed on the server.");
        if (status.status === "COMPLETED") break;
        if (status.status === "QUEUED") {
          setProgress(0, total, "Queued…");
        } else if (status.progress) {
          total = status.progress.total;
          setProgress(status.progress.step, total, `Step ${status.progress.step}/${total}`);
        } else {
          setProgress(0, total, "Preparing the pose…");
        }
        await sleep(POLL_MS);
      }
      setProgress(total, total, `Step ${total}/${total} · fetching the images…`);
      const result = await (await api("GET", submitted.response_url)).json();
      await showResults(result, request);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const count = (result.output || []).length;
      setProgress(total, total, `Done: ${count} image${count === 1 ? "" : "s"}, ${total}/${total} steps, ${seconds} s`);
    } catch (error) {
      showError(error.message);
      setProgress(0, total, "Failed");
    } finally {
      setBusy(false);
    }
  }

  // --- copy as curl -------------------------------------------------------------------------------

  const shellQuote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;

  // The sync request with the same parameters; the body goes through an unquoted heredoc so the
  // image can be inlined with $(base64 ...), hence the escaping of \ $ and ` in the JSON itself.
  function curlCommand() {
    const request = buildRequest();
    let image = null;
    if (state.source && state.source.kind === "file") {
      image = `$(base64 -w0 ${shellQuote(state.source.name)})`;
      request.image = "__SD3POSE_IMAGE__";
    }
    request.base64 = false;
    let json = JSON.stringify(request, null, 2).replace(/[\\$`]/g, (c) => `\\${c}`);
    if (image) json = json.replace('"__SD3POSE_IMAGE__"', `"${image}"`);
    const zipped = request.samples > 1 || request.return_pose;
    const extension = zipped ? "zip" : EXTENSIONS[`image/${request.output_format}`] || request.output_format;
    const endpoint = `${location.origin}/v1/sd3-med-pose`;
    const lines = [
      `curl -sS -X POST ${shellQuote(endpoint)} \\`,
      `  -H 'Content-Type: application/json' \\`,
    ];
    if (apiKey()) lines.push(`  -H "x-api-key: $SD3POSE_API_KEY" \\`);
    lines.push(`  -o out.${extension} -D headers.txt --data-binary @- <<JSON`, json, "JSON");
    return lines.join("\n");
  }

  // The clipboard API where the page may use it (https or localhost), else the selected text area.
  async function copyText(text, area) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch {
      // fall through to the text area
    }
    area.focus();
    area.select();
    return Boolean(document.execCommand && document.execCommand("copy"));
  }

  async function copyCurl() {
    if (!state.source) {
      showError("Choose or drop a photo first (or give an image URL), then copy the curl command.");
      return;
    }
    clearError();
    const command = curlCommand();
    const box = $("curl-box");
    const area = $("curl-text");
    box.hidden = false;
    box.open = true;
    area.value = command;
    const copied = await copyText(command, area);
    const keyNote = apiKey() ? " Set SD3POSE_API_KEY to your key first." : "";
    $("curl-status").textContent = (copied ? "Copied to the clipboard." : "Select the text and copy it.") + keyNote;
  }

  // --- copy as ComfyUI workflow ---------------------------------------------------------------------

  // The server builds the graph (the same code as `sd3pose comfy-workflow`) and makes the pose map it loads.
  async function copyComfy() {
    if (!state.source) {
      showError("Choose or drop a photo first (or give an image URL), then copy the ComfyUI workflow.");
      return;
    }
    clearError();
    const button = $("copy-comfy");
    button.disabled = true;
    $("comfy-status").textContent = "Making the pose map…";
    try {
      const answer = await (await api("POST", "/v1/comfy-workflow", buildRequest())).json();
      const text = JSON.stringify(answer.workflow, null, 2);
      const box = $("comfy-box");
      box.hidden = false;
      box.open = true;
      $("comfy-text").value = text;
      setDownload($("comfy-download"), new Blob([text], { type: "application/json" }), "workflow.json");
      const png = Uint8Array.from(atob(answer.pose_image), (c) => c.charCodeAt(0));
      setDownload($("comfy-pose"), new Blob([png], { type: "image/png" }), answer.pose_image_name);
      $("comfy-pose").textContent = `Download the pose map (${answer.pose_image_name})`;
      const copied = await copyText(text, $("comfy-text"));
      const seeds = `seed${answer.seeds.length > 1 ? "s" : ""} ${answer.seeds.join(", ")}`;
      const copy = copied ? "Copied to the clipboard." : "Select the text and copy it.";
      $("comfy-status").textContent = `${copy} ${answer.width}×${answer.height}, ${seeds}.`;
    } catch (error) {
      $("comfy-status").textContent = "";
      showError(error.message);
    } finally {
      button.disabled = false;
    }
  }

  function setDownload(link, blob, filename) {
    if (link.href && link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.download = filename;
  }

  // --- errors ------------------------------------------------------------------------------------------

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // --- wiring --------------------------------------------------------------------------------------

  function wire() {
    const key = $("api-key");
    key.value = localStorage.getItem(KEY_STORAGE) || "";
    key.addEventListener("input", () => {
      if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
      else localStorage.removeItem(KEY_STORAGE);
    });
    key.addEventListener("change", () => schedulePose(0));
    $("forget-key").addEventListener("click", () => {
      key.value = "";
      localStorage.removeItem(KEY_STORAGE);
      key.focus();
    });

    const drop = $("drop-zone");
    $("file-input").addEventListener("change", (event) => {
      const file = event.target.files[0];
      event.target.value = ""; // so choosing the same (edited) file again is noticed
      useFile(file);
    });
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      useFile(event.dataTransfer.files[0]);
    });
    // A pasted image (Ctrl+V) is as good as a dropped one, unless the user is typing.
    document.addEventListener("paste", (event) => {
      const target = event.target;
      if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
      const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
      if (file) useFile(file);
    });
    $("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useUrl($("image-url").value.trim());
    });

    for (const id of POSE_FIELDS) $(id).addEventListener("change", () => schedulePose(300));
    $("pose-parts").addEventListener("change", () => schedulePose(300));

    $("seed-random").addEventListener("change", (event) => { $("seed").disabled = event.target.checked; });
    for (const id of ["sampler", "scheduler"]) $(id).addEventListener("change", showPairWarning);
    $("params").addEventListener("submit", generate);
    $("copy-curl").addEventListener("click", copyCurl);
    $("copy-comfy").addEventListener("click", copyComfy);
  }

  async function start() {
    wire();
    applySchema(await loadSchemas());
    showPairWarning();
    document.body.dataset.ready = "true"; // the form is filled: tests and scripts may start
  }

  start();
})();

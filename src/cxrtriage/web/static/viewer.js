// The study page's viewer: the server's preview PNG paints first; then the image's modality
// values (/api/studies/{study}/images/{instance}/pixels) and its display metadata load, and a
// canvas takes over, windowing the values itself as the DICOM grayscale pipeline does (VOI window
// or VOI LUT, then MONOCHROME1 inversion; padding black). Drag: window (left-right width,
// up-down level); Shift+drag or the middle button: pan; wheel: zoom about the pointer. The stored
// heat map (a PNG the size of the preview, covering the whole image) is drawn into the same
// rectangle as the image, so it stays in register through zoom and pan.
//
// The pure functions at the top are checked with node (tests/unit/test_viewer_js.py).
(function () {
  "use strict";

  var BLACK = 0xff000000 >>> 0;

  function clamp(v, low, high) { return v < low ? low : v > high ? high : v; }

  // VOI window to [0, 1], PS3.3 C.11.2.1.2, as dicom/preprocess._window computes it.
  function windowFraction(value, center, width, fn) {
    if (fn === "SIGMOID") { return 1 / (1 + Math.exp(-4 * (value - center) / Math.max(width, 1e-6))); }
    var low, high;
    if (fn === "LINEAR_EXACT") {
      low = center - width / 2; high = center + width / 2;
    } else {
      width = Math.max(width, 1);
      low = center - 0.5 - (width - 1) / 2; high = center - 0.5 + (width - 1) / 2;
    }
    return clamp((value - low) / Math.max(high - low, 1e-6), 0, 1);
  }

  // A VOI LUT ({first_mapped, table, top}) to [0, 1], as dicom/preprocess._apply_voi does.
  function lutFraction(value, lut) {
    var index = clamp(Math.round(value) - lut.first_mapped, 0, lut.table.length - 1);
    return clamp(lut.table[index] / lut.top, 0, 1);
  }

  function lutTop(bits, table) {
    var top = Math.pow(2, bits) - 1;
    for (var i = 0; i < table.length; i++) { if (table[i] > top) { top = table[i]; } }
    return Math.max(top, 1);
  }

  // One modality value to an 8-bit gray level under `settings` {kind, center, width, fn, lut, invert}.
  function grayLevel(value, settings, luts) {
    var g = settings.kind === "voi_lut" ? lutFraction(value, luts[settings.lut])
      : windowFraction(value, settings.center, settings.width, settings.fn);
    if (settings.invert) { g = 1 - g; }
    return Math.round(g * 255);
  }

  function pack(g) { return (BLACK | (g << 16) | (g << 8) | g) >>> 0; }

  // Every uint16 code's RGBA (little-endian packed), code + offset being the value; padding black.
  function codeTable(settings, luts, offset, paddingCode) {
    var table = new Uint32Array(65536);
    for (var code = 0; code < 65536; code++) { table[code] = pack(grayLevel(code + offset, settings, luts)); }
    if (paddingCode !== null && paddingCode !== undefined) { table[paddingCode] = BLACK; }
    return table;
  }

  // The image's size in display units: the smaller of a pixel's two sides is one unit, so the
  // image keeps its true proportions (as dicom/geometry.display_size).
  function displayUnits(rows, columns, aspect) {
    return aspect >= 1 ? {w: columns, h: rows * aspect} : {w: columns / aspect, h: rows};
  }

  var pure = {windowFraction: windowFraction, lutFraction: lutFraction, lutTop: lutTop,
              grayLevel: grayLevel, codeTable: codeTable, displayUnits: displayUnits};
  if (typeof module !== "undefined" && module.exports) { module.exports = pure; }
  if (typeof document === "undefined") { return; }

  // --- the page ---------------------------------------------------------------------------------

  function heatVisible() {
    var toggle = document.getElementById("heatmap-toggle");
    return !toggle || toggle.checked;
  }

  function heatOpacity() {
    var slider = document.getElementById("heatmap-opacity");
    return slider ? Number(slider.value) / 100 : 1;
  }

  function Viewer(figure) {
    this.figure = figure;
    this.canvas = figure.querySelector("canvas.viewer-canvas");
    this.heat = figure.querySelector("img.heatmap");
    this.select = figure.querySelector("select.preset");
    this.readout = figure.querySelector(".readout");
    this.ready = false;
    this.scale = null;  // device pixels per display unit; null: fit the view
    this.panX = 0; this.panY = 0;  // the image centre's offset from the view centre, device pixels
    this.userInvert = false;
    this.presetId = "";
    this.drag = null;
    this.frame = 0;
    this.pixelsDirty = true;
  }

  Viewer.prototype.load = function () {
    var self = this;
    var json = {credentials: "same-origin", headers: {"Accept": "application/json"}};
    function ok(response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response;
    }
    // Both at once: the server decodes the image once for the two (web/pixel_values.py).
    Promise.all([
      fetch(this.figure.dataset.displayUrl, json).then(ok).then(function (r) { return r.json(); }),
      fetch(this.figure.dataset.pixelsUrl, {credentials: "same-origin"}).then(ok)
        .then(function (r) { return r.arrayBuffer(); })
    ]).then(function (answers) { self.start(answers[0], answers[1]); })
      .catch(function () {
        self.readout.textContent = "pixel data unavailable: the server's preview is shown";
        self.figure.dataset.viewer = "failed";
      });
  };

  Viewer.prototype.start = function (meta, buffer) {
    var count = meta.rows * meta.columns;
    var values = meta.pixels.dtype === "uint16" ? new Uint16Array(buffer) : new Float32Array(buffer);
    if (values.length !== count) { throw new Error("pixel data of the wrong size"); }
    this.meta = meta;
    this.values = values;
    this.luts = meta.voi_luts.map(function (lut) {
      var table = Float32Array.from(lut.table);
      return {first_mapped: lut.first_mapped, table: table, top: lutTop(lut.bits, table)};
    });
    this.units = displayUnits(meta.rows, meta.columns, meta.aspect);
    this.offscreen = document.createElement("canvas");
    this.offscreen.width = meta.columns;
    this.offscreen.height = meta.rows;
    this.octx = this.offscreen.getContext("2d");
    this.imageData = this.octx.createImageData(meta.columns, meta.rows);
    this.out = new Uint32Array(this.imageData.data.buffer);
    this.fillPresets();
    this.applyPreset(meta.default_preset);
    this.bind();
    this.canvas.hidden = false;
    this.figure.classList.add("live");
    this.figure.querySelectorAll(".viewer-tools [disabled]").forEach(function (e) { e.disabled = false; });
    var note = this.figure.querySelector(".preset-note");
    if (note) { note.textContent = meta.presets_note; }
    this.ready = true;
    this.render(true);
    this.figure.dataset.viewer = "ready";
  };

  Viewer.prototype.fillPresets = function () {
    var select = this.select;
    select.textContent = "";
    this.meta.presets.forEach(function (preset, index) {
      var option = document.createElement("option");
      option.value = preset.id;
      option.textContent = (index < 9 ? (index + 1) + " · " : "") + preset.name;
      select.appendChild(option);
    });
    var custom = document.createElement("option");
    custom.value = "custom";
    custom.textContent = "custom (dragged)";
    custom.hidden = true;
    select.appendChild(custom);
  };

  Viewer.prototype.applyPreset = function (id) {
    var preset = this.meta.presets.filter(function (p) { return p.id === id; })[0];
    if (!preset) { return; }
    this.presetId = id;
    this.settings = preset.kind === "voi_lut" ? {kind: "voi_lut", lut: preset.index}
      : {kind: "window", center: preset.center, width: preset.width, fn: preset.function};
    this.settings.invert = this.meta.inverted !== this.userInvert;
    this.select.value = id;
    this.render(true);
  };

  Viewer.prototype.presetByNumber = function (n) {
    var preset = this.ready && this.meta.presets[n - 1];
    if (preset) { this.applyPreset(preset.id); }
  };

  Viewer.prototype.invert = function () {
    if (!this.ready) { return; }
    this.userInvert = !this.userInvert;
    this.settings.invert = this.meta.inverted !== this.userInvert;
    this.render(true);
  };

  Viewer.prototype.reset = function () {
    if (!this.ready) { return; }
    this.userInvert = false;
    this.scale = null; this.panX = 0; this.panY = 0;
    this.applyPreset(this.meta.default_preset);
  };

  Viewer.prototype.fitScale = function () {
    return Math.min(this.canvas.width / this.units.w, this.canvas.height / this.units.h);
  };

  Viewer.prototype.currentScale = function () { return this.scale === null ? this.fitScale() : this.scale; };

  // Where the image lies on the canvas, in device pixels; the heat map lies in the same place.
  Viewer.prototype.rect = function () {
    var s = this.currentScale(), w = this.units.w * s, h = this.units.h * s;
    return {x: this.canvas.width / 2 + this.panX - w / 2, y: this.canvas.height / 2 + this.panY - h / 2, w: w, h: h};
  };

  // Zoom to `target` device pixels per display unit, keeping the image point under (x, y) there.
  Viewer.prototype.zoomTo = function (x, y, target) {
    var s = this.currentScale(), fit = this.fitScale();
    var next = clamp(target, fit / 4, 64), factor = next / s;
    var cx = this.canvas.width / 2 + this.panX, cy = this.canvas.height / 2 + this.panY;
    this.panX = x - (x - cx) * factor - this.canvas.width / 2;
    this.panY = y - (y - cy) * factor - this.canvas.height / 2;
    this.scale = next;
    this.render(false);
  };

  Viewer.prototype.zoomAt = function (x, y, factor) { this.zoomTo(x, y, this.currentScale() * factor); };

  // One image pixel (its smaller side) per device pixel, about the view's centre; again: fit.
  Viewer.prototype.oneToOne = function () {
    if (!this.ready) { return; }
    if (this.scale === 1) {
      this.scale = null; this.panX = 0; this.panY = 0; this.render(false);
      return;
    }
    this.zoomTo(this.canvas.width / 2, this.canvas.height / 2, 1);
  };

  Viewer.prototype.devicePoint = function (event) {
    var box = this.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    return {x: (event.clientX - box.left) * dpr, y: (event.clientY - box.top) * dpr};
  };

  Viewer.prototype.bind = function () {
    var self = this, canvas = this.canvas;
    canvas.addEventListener("pointerdown", function (event) {
      var pan = event.button === 1 || (event.button === 0 && event.shiftKey);
      if (event.button !== 0 && !pan) { return; }
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      if (!pan && self.settings.kind === "voi_lut") {  // dragging from a VOI LUT: its input range
        var lut = self.luts[self.settings.lut];
        self.settings = {kind: "window", center: lut.first_mapped + lut.table.length / 2,
                         width: lut.table.length, fn: "LINEAR", invert: self.settings.invert};
      }
      self.drag = {pan: pan, x: event.clientX, y: event.clientY, panX: self.panX, panY: self.panY,
                   center: self.settings.center, width: self.settings.width};
    });
    canvas.addEventListener("pointermove", function (event) {
      var drag = self.drag;
      if (!drag) { return; }
      var dx = event.clientX - drag.x, dy = event.clientY - drag.y, dpr = window.devicePixelRatio || 1;
      if (drag.pan) {
        self.panX = drag.panX + dx * dpr; self.panY = drag.panY + dy * dpr;
        self.render(false);
        return;
      }
      var range = self.meta.value_range, step = Math.max(range.p99 - range.p01, 1) / 300;
      self.settings.width = Math.max(drag.width + dx * step, 1e-3);
      self.settings.center = drag.center + dy * step;
      self.presetId = "custom";
      self.select.value = "custom";
      self.render(true);
    });
    function end() { self.drag = null; }
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("mousedown", function (event) { if (event.button === 1) { event.preventDefault(); } });
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      var point = self.devicePoint(event);
      self.zoomAt(point.x, point.y, Math.exp(-event.deltaY * 0.0015));
    }, {passive: false});
    canvas.addEventListener("dblclick", function () { self.reset(); });
    this.select.addEventListener("change", function () { self.applyPreset(self.select.value); self.select.blur(); });
    this.figure.querySelector("button.invert").addEventListener("click", function () { self.invert(); });
    this.figure.querySelector("button.reset").addEventListener("click", function () { self.reset(); });
    this.figure.querySelector("button.one-to-one").addEventListener("click", function () { self.oneToOne(); });
    if (this.heat && !this.heat.complete) {
      this.heat.addEventListener("load", function () { self.render(false); });
    }
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.render(false); }).observe(canvas);
    }
  };

  // Redraw at the next frame; `pixels`: the window changed, so the gray levels are computed again.
  Viewer.prototype.render = function (pixels) {
    var self = this;
    if (!this.ready) { return; }
    this.pixelsDirty = this.pixelsDirty || pixels;
    if (this.frame) { return; }
    this.frame = window.requestAnimationFrame(function () {
      self.frame = 0;
      if (self.pixelsDirty) { self.paintPixels(); self.pixelsDirty = false; }
      self.draw();
    });
  };

  Viewer.prototype.paintPixels = function () {
    var values = this.values, out = this.out, n = values.length, i;
    if (values instanceof Uint16Array) {
      var table = codeTable(this.settings, this.luts, this.meta.pixels.offset, this.meta.pixels.padding_code);
      for (i = 0; i < n; i++) { out[i] = table[values[i]]; }
    } else {
      for (i = 0; i < n; i++) {
        var v = values[i];
        out[i] = v !== v ? BLACK : pack(grayLevel(v, this.settings, this.luts));
      }
    }
    this.octx.putImageData(this.imageData, 0, 0);
  };

  Viewer.prototype.draw = function () {
    var canvas = this.canvas, dpr = window.devicePixelRatio || 1;
    var width = Math.max(1, Math.round(canvas.clientWidth * dpr)), height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    var ctx = canvas.getContext("2d"), r = this.rect();
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = this.currentScale() < 3;  // past 3x: the pixels themselves
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(this.offscreen, r.x, r.y, r.w, r.h);
    if (this.heat && heatVisible() && this.heat.complete && this.heat.naturalWidth) {
      ctx.imageSmoothingEnabled = true;
      ctx.globalAlpha = heatOpacity();
      ctx.drawImage(this.heat, r.x, r.y, r.w, r.h);
      ctx.globalAlpha = 1;
    }
    this.showReadout();
  };

  Viewer.prototype.showReadout = function () {
    var s = this.settings, text;
    if (s.kind === "voi_lut") {
      text = "VOI LUT " + (s.lut + 1);
    } else {
      text = "W " + Number(s.width.toPrecision(4)) + " L " + Number(s.center.toPrecision(4)) +
        (this.meta.units ? " " + this.meta.units : "");
    }
    var zoom = Math.round(this.currentScale() * 100);
    this.readout.textContent = text + (s.invert !== this.meta.inverted ? " · inverted" : "") + " · zoom " + zoom + "%";
  };

  // What the page's tests read: the window, the zoom and where the image lies on the canvas.
  Viewer.prototype.describe = function () {
    if (!this.ready) { return {ready: false}; }
    return {ready: true, preset: this.presetId, kind: this.settings.kind, center: this.settings.center,
            width: this.settings.width, invert: this.settings.invert, userInvert: this.userInvert,
            scale: this.currentScale(), fit: this.scale === null, rect: this.rect(),
            canvas: {width: this.canvas.width, height: this.canvas.height}};
  };

  function start() {
    var viewers = [];
    document.querySelectorAll("figure.viewer").forEach(function (figure) {
      var viewer = new Viewer(figure);
      viewers.push(viewer);
      viewer.load();
    });
    window.cxrViewers = viewers;
    function redraw() { viewers.forEach(function (v) { v.render(false); }); }
    ["heatmap-toggle", "heatmap-opacity"].forEach(function (id) {
      var control = document.getElementById(id);
      if (control) { control.addEventListener("input", redraw); control.addEventListener("change", redraw); }
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();

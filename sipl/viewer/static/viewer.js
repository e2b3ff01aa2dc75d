/* SIPL before/after viewer (sipl/viewer/static/viewer.js).
 *
 * Drives every <figure class="cmp"> of the page (templates/compare.html.j2) through listeners on the document, so
 * a page of hundreds of comparisons costs one set of listeners. Each figure holds an <img-comparison-slider>
 * (vendored, MIT): its left slot shows the "before" view, its right slot the "after" one, and its `value` is the
 * divider's position in percent from the left; dragging by mouse or touch is the slider's own. This script adds:
 *   - keys on the focused divider: Left/Right 1 % (with Shift 10 %), PageDown/PageUp 10 %, Home/End, T flip,
 *     Z 1:1 zoom, + and - zoom steps, Esc back to fit; the ARIA slider state and a status line follow;
 *   - flip: the whole before image, then the whole after one, in turn;
 *   - zoom: the full-resolution images (data-full) at 1, 2, 4 or 8 screen pixels per image pixel, centred on the
 *     divider at the height last clicked; double-click zooms there; dragging outside the divider's handle pans;
 *   - <select data-side> (the report): which image each side shows.
 */
(function () {
  "use strict";

  var FACTORS = [1, 2, 4, 8];
  var STEPS = {ArrowLeft: -1, ArrowRight: 1, PageDown: -10, PageUp: 10};
  var zoomed = [];   // figures in zoom, laid out again when the window changes size
  var panning = null;  // {fig, id, x, y} while a pointer drags a zoomed view

  function clamp(value, low, high) { return Math.min(high, Math.max(low, value)); }

  function figureOf(node) {
    return node && node.closest ? node.closest("figure.cmp") : null;
  }

  function parts(fig) {
    if (!fig.cmpState) {
      fig.cmpState = {
        slider: fig.querySelector("img-comparison-slider"),
        view: fig.querySelector(".cmp-view"),
        imgs: {before: fig.querySelector(".cmp-before img"), after: fig.querySelector(".cmp-after img")},
        tags: {before: fig.querySelector(".cmp-tag-before"), after: fig.querySelector(".cmp-tag-after")},
        status: fig.querySelector(".cmp-status"),
        width: Number(fig.getAttribute("data-width")),
        height: Number(fig.getAttribute("data-height")),
        zoom: 0, cx: 0.5, cy: 0.5, pointY: null, flipped: null, split: 50
      };
    }
    return fig.cmpState;
  }

  function divider(fig) { return Number(parts(fig).slider.value); }

  function loading(p) {
    return ["before", "after"].some(function (side) {
      var img = p.imgs[side];
      return !(img.complete && img.naturalWidth > 0);
    });
  }

  function describe(fig) {
    var p = parts(fig);
    var value = Math.round(divider(fig) * 10) / 10;
    var left = p.tags.before.textContent, right = p.tags.after.textContent;
    p.slider.setAttribute("aria-valuenow", String(value));
    p.slider.setAttribute("aria-valuetext", value + "%: " + left + " on the left, " + right + " on the right");
    var view = "fit";
    if (p.zoom) {
      view = p.zoom + ":1 (" + (p.zoom === 1 ? "one image pixel per screen pixel"
        : p.zoom + "\u00d7" + p.zoom + " screen pixels per image pixel") + ")";
      if (loading(p)) view = "loading full resolution\u2026 " + view;
    }
    var shown = p.flipped ? "showing " + (p.flipped === "before" ? left : right) : "divider " + Math.round(value) + "%";
    p.status.textContent = view + " \u00b7 " + shown;
    fig.setAttribute("data-state", p.zoom ? "zoom" : "fit");
    var flip = fig.querySelector('[data-act="flip"]'), zoom = fig.querySelector('[data-act="zoom"]');
    if (flip) flip.setAttribute("aria-pressed", p.flipped ? "true" : "false");
    if (zoom) zoom.setAttribute("aria-pressed", p.zoom ? "true" : "false");
  }

  function setDivider(fig, value) {
    parts(fig).slider.value = clamp(value, 0, 100);
    describe(fig);
  }

  function unflip(fig) {
    var p = parts(fig);
    if (p.flipped) {
      p.flipped = null;
      p.slider.value = p.split;
    }
  }

  function flip(fig) {
    var p = parts(fig);
    if (!p.flipped) p.split = divider(fig);
    p.flipped = p.flipped === "before" ? "after" : "before";
    setDivider(fig, p.flipped === "before" ? 100 : 0);
  }

  // Zoom: both images at their full resolution, `zoom` screen pixels per image pixel, the image point
  // (cx, cy) (fractions of width and height) at the centre of the view, kept on whole screen pixels.
  function layout(fig) {
    var p = parts(fig), imgs = [p.imgs.before, p.imgs.after];
    if (!p.zoom) {
      imgs.forEach(function (img) { img.style.cssText = ""; });
      return;
    }
    var ratio = window.devicePixelRatio || 1, box = p.view.getBoundingClientRect();
    var vw = p.view.clientWidth, vh = p.view.clientHeight;
    var iw = p.width * p.zoom / ratio, ih = p.height * p.zoom / ratio;
    var left = iw <= vw ? (vw - iw) / 2 : clamp(vw / 2 - p.cx * iw, vw - iw, 0);
    var top = ih <= vh ? (vh - ih) / 2 : clamp(vh / 2 - p.cy * ih, vh - ih, 0);
    left = Math.round((box.left + left) * ratio) / ratio - box.left;
    top = Math.round((box.top + top) * ratio) / ratio - box.top;
    p.cx = (vw / 2 - left) / iw;
    p.cy = (vh / 2 - top) / ih;
    var css = "width:" + iw + "px;height:" + ih + "px;left:" + left + "px;top:" + top + "px";
    imgs.forEach(function (img) { img.style.cssText = css; });
  }

  function showImages(p, key) {
    ["before", "after"].forEach(function (side) {
      var img = p.imgs[side], url = img.getAttribute(key);
      if (img.getAttribute("src") !== url) {
        img.loading = "eager";
        img.src = url;
      }
    });
  }

  function zoom(fig, factor) {
    var p = parts(fig);
    if (!p.zoom) {
      p.cx = p.flipped ? 0.5 : divider(fig) / 100;
      p.cy = p.pointY === null ? 0.5 : p.pointY;
      if (!p.flipped) p.slider.value = 50;  // the divider stays on the image point it was on
      fig.classList.add("cmp-zoomed");
      p.slider.handle = true;  // while zoomed, dragging away from the handle pans
      showImages(p, "data-full");
      zoomed.push(fig);
    }
    p.zoom = factor;
    layout(fig);
    describe(fig);
  }

  function fit(fig) {
    var p = parts(fig);
    if (!p.zoom) return;
    p.zoom = 0;
    fig.classList.remove("cmp-zoomed");
    p.slider.handle = false;
    showImages(p, "data-thumb");
    zoomed = zoomed.filter(function (other) { return other !== fig; });
    layout(fig);
    describe(fig);
  }

  function zoomStep(fig, direction) {
    var p = parts(fig), index = FACTORS.indexOf(p.zoom);
    if (direction > 0) zoom(fig, p.zoom ? FACTORS[Math.min(index + 1, FACTORS.length - 1)] : FACTORS[0]);
    else if (index > 0) zoom(fig, FACTORS[index - 1]);
    else fit(fig);
  }

  function onHandle(p, event) {
    var root = p.slider.shadowRoot, handle = root && root.getElementById("handle");
    if (!handle) return false;
    var box = handle.getBoundingClientRect(), slack = 6;
    return event.clientX >= box.left - slack && event.clientX <= box.right + slack &&
      event.clientY >= box.top - slack && event.clientY <= box.bottom + slack;
  }

  document.addEventListener("keydown", function (event) {
    var slider = event.target;
    if (!slider || slider.localName !== "img-comparison-slider" || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    var fig = figureOf(slider);
    if (!fig) return;
    var p = parts(fig), key = event.key, handled = true;
    if (Object.prototype.hasOwnProperty.call(STEPS, key)) {
      var step = STEPS[key] * (event.shiftKey && Math.abs(STEPS[key]) === 1 ? 10 : 1);
      unflip(fig);
      setDivider(fig, divider(fig) + step);
    } else if (key === "Home" || key === "End") {
      unflip(fig);
      setDivider(fig, key === "Home" ? 0 : 100);
    } else if (key === "t" || key === "T") {
      flip(fig);
    } else if (key === "z" || key === "Z") {
      if (p.zoom) fit(fig); else zoom(fig, 1);
    } else if (key === "+" || key === "=") {
      zoomStep(fig, 1);
    } else if (key === "-" || key === "_") {
      zoomStep(fig, -1);
    } else if (key === "Escape" && p.zoom) {
      fit(fig);
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  });

  // The slider's own drags (mouse, touch) end a flip. Its "slide" event does not bubble: listen while capturing.
  document.addEventListener("slide", function (event) {
    var fig = figureOf(event.target);
    if (!fig) return;
    parts(fig).flipped = null;
    describe(fig);
  }, true);

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-act]") : null;
    var fig = figureOf(button);
    if (!fig) return;
    var act = button.getAttribute("data-act"), p = parts(fig);
    if (act === "flip") flip(fig);
    else if (act === "zoom") { if (p.zoom) fit(fig); else zoom(fig, 1); }
    else if (act === "zoom-in") zoomStep(fig, 1);
    else if (act === "zoom-out") zoomStep(fig, -1);
  });

  document.addEventListener("dblclick", function (event) {
    var fig = figureOf(event.target);
    if (!fig || !event.target.closest(".cmp-view")) return;
    var p = parts(fig);
    if (p.zoom) fit(fig); else zoom(fig, 1);
  });

  document.addEventListener("pointerdown", function (event) {
    var fig = figureOf(event.target);
    if (!fig || !event.target.closest(".cmp-view")) return;
    var p = parts(fig);
    if (!p.zoom) {  // fitted: the slider moves the divider here; remember the height for the next zoom
      var box = p.view.getBoundingClientRect();
      p.pointY = clamp((event.clientY - box.top) / box.height, 0, 1);
      return;
    }
    if (event.button !== 0 || onHandle(p, event)) return;
    panning = {fig: fig, id: event.pointerId, x: event.clientX, y: event.clientY};
    p.view.setPointerCapture(event.pointerId);
    p.view.classList.add("cmp-panning");
    event.preventDefault();
  });

  document.addEventListener("pointermove", function (event) {
    if (!panning || event.pointerId !== panning.id) return;
    var p = parts(panning.fig), ratio = window.devicePixelRatio || 1;
    p.cx -= (event.clientX - panning.x) / (p.width * p.zoom / ratio);
    p.cy -= (event.clientY - panning.y) / (p.height * p.zoom / ratio);
    panning.x = event.clientX;
    panning.y = event.clientY;
    layout(panning.fig);
  });

  function endPan(event) {
    if (!panning || event.pointerId !== panning.id) return;
    parts(panning.fig).view.classList.remove("cmp-panning");
    panning = null;
  }
  document.addEventListener("pointerup", endPan);
  document.addEventListener("pointercancel", endPan);

  document.addEventListener("change", function (event) {
    var select = event.target, fig = figureOf(select);
    if (!fig || select.localName !== "select" || !select.hasAttribute("data-side")) return;
    var p = parts(fig), side = select.getAttribute("data-side"), img = p.imgs[side];
    var label = select.options[select.selectedIndex].textContent;
    img.setAttribute("data-thumb", select.value);
    img.setAttribute("data-full", select.value);
    img.src = select.value;
    img.alt = label;
    p.tags[side].textContent = label;
    describe(fig);
  });

  // Images load without bubbling: listen while capturing, to clear "loading full resolution".
  document.addEventListener("load", function (event) {
    var fig = event.target.localName === "img" ? figureOf(event.target) : null;
    if (fig && fig.cmpState && fig.cmpState.zoom) describe(fig);
  }, true);

  window.addEventListener("resize", function () { zoomed.forEach(layout); });
})();

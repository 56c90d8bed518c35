// Kiln's own script. The CSP forbids inline script, so behaviour that htmx attributes do not
// cover lives here.
(function () {
  "use strict";

  // The question a control asks before it acts, if any. Its own data-confirm; or, on long
  // tables, data-ask="KEY": the question is written once on an ancestor's data-ask-KEY, with
  // {id} standing for the row's data-id (a page of 1,000 rows carries it once, not 1,000
  // times). A control that names a question nobody wrote still asks, in general words.
  function questionOf(el) {
    if (!el) return null;
    var own = el.getAttribute("data-confirm");
    if (own) return own;
    var key = el.getAttribute("data-ask");
    if (!key) return null;
    var holder = el.closest("[data-ask-" + key + "]");
    var row = el.closest("[data-id]");
    if (!holder || !row) return "Are you sure?";
    return holder.getAttribute("data-ask-" + key).split("{id}").join(row.getAttribute("data-id"));
  }

  // Plain (non-htmx) forms ask before submitting. htmx forms use hx-confirm, which htmx
  // handles itself; skip them here so the question is asked once.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.hasAttribute("hx-post") && window.htmx) return;
    // A button may carry its own question (one shared form, a button per row).
    var question = questionOf(event.submitter) || questionOf(form);
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // htmx controls with data-ask: the same questions, asked before htmx sends the request.
  document.addEventListener("htmx:confirm", function (event) {
    var el = event.detail.elt;
    if (!el.hasAttribute("data-ask")) return;
    event.preventDefault();
    if (window.confirm(questionOf(el))) event.detail.issueRequest(true);
  });

  // Toasts fade after a while; errors stay until clicked.
  function arm(toast) {
    if (toast.dataset.armed) return;
    toast.dataset.armed = "1";
    toast.addEventListener("click", function () { toast.remove(); });
    if (toast.classList.contains("toast-ok")) {
      setTimeout(function () { toast.remove(); }, 6000);
    }
  }
  function armAll() {
    document.querySelectorAll("#toasts .toast").forEach(arm);
  }
  document.addEventListener("DOMContentLoaded", armAll);
  document.addEventListener("htmx:afterSwap", armAll);

  // Absolute times ("kept until 22:38") in the viewer's own time zone. The page says the
  // time in UTC (and keeps the full UTC time on hover, in title); a day other than today
  // is named too.
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (isNaN(at.getTime())) return;
      var clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
      var sameDay = at.toDateString() === new Date().toDateString();
      el.textContent = sameDay ? clock
        : at.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + clock;
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
  document.addEventListener("htmx:afterSettle", function (event) { localTimes(event.target); });

  // The phone layout folds the navigation behind one button.
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest && event.target.closest("[data-nav-toggle]");
    if (!toggle) return;
    var bar = toggle.closest(".topbar");
    var open = bar.classList.toggle("nav-open");
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });
})();

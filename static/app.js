// Kiln's own script. The CSP forbids inline script, so behaviour that htmx attributes do not
// cover lives here.
(function () {
  "use strict";

  // Plain (non-htmx) forms with data-confirm ask before submitting. htmx forms use hx-confirm,
  // which htmx handles itself; skip them here so the question is asked once.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.hasAttribute("hx-post") && window.htmx) return;
    // A button may carry its own question (one shared form, a button per row).
    var by = event.submitter;
    var question = (by && by.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
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
})();

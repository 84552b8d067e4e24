// Small progressive enhancement for the enrollment forms: show only the fields of the chosen
// attestation mechanism and allocation policy. Without this script every section is shown
// and the server ignores the ones that do not apply.
(function () {
  "use strict";
  function sync(form) {
    var mechanism = form.querySelector("input[name=mechanism]:checked");
    form.querySelectorAll("[data-for]").forEach(function (el) {
      var show = !mechanism || el.dataset.for.split(" ").indexOf(mechanism.value) >= 0;
      el.hidden = !show;
    });
    var policy = form.querySelector("select[name=allocation_policy]");
    form.querySelectorAll("[data-policy]").forEach(function (el) {
      var show = !policy || el.dataset.policy.split(" ").indexOf(policy.value) >= 0;
      el.hidden = !show;
    });
    var generate = form.querySelector("input[name=generate_keys]");
    if (generate) {
      ["primary_key", "secondary_key"].forEach(function (name) {
        var input = form.querySelector("input[name=" + name + "]");
        if (input) { input.disabled = generate.checked; }
      });
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form.enrollment").forEach(function (form) {
      sync(form);
      form.addEventListener("change", function () { sync(form); });
    });
  });
})();

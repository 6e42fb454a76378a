// The data page's upload made friendlier: drop a file on the form, and watch the upload's progress. Without
// JavaScript the form posts as plain HTML. The answer is the address of the file's page (204, which the browser
// then opens: the page and its report are made once), or the data page with the refusal, whose main part
// replaces this one's (its form works the same: the listeners are on the document). A file dropped anywhere else is not opened by the browser.
(function () {
  "use strict";
  if (!window.FormData || !window.XMLHttpRequest) { return; }
  function uploadForm(target) { return target && target.closest ? target.closest("form[data-upload]") : null; }
  ["dragenter", "dragover"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      event.preventDefault();
      var form = uploadForm(event.target);
      if (form) { form.classList.add("dropping"); }
    });
  });
  document.addEventListener("dragleave", function (event) {
    var form = uploadForm(event.target);
    if (form) { form.classList.remove("dropping"); }
  });
  document.addEventListener("drop", function (event) {
    event.preventDefault();
    var form = uploadForm(event.target);
    if (!form) { return; }
    form.classList.remove("dropping");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      form.querySelector("input[type=file]").files = event.dataTransfer.files;
      form.querySelector("[data-upload-status]").textContent = event.dataTransfer.files[0].name;
    }
  });
  document.addEventListener("submit", function (event) {
    var form = event.target.matches && event.target.matches("form[data-upload]") ? event.target : null;
    var input = form && form.querySelector("input[type=file]");
    if (!input || !input.files.length) { return; }
    event.preventDefault();
    var progress = form.querySelector("progress");
    var status = form.querySelector("[data-upload-status]");
    var button = form.querySelector("button[type=submit]");
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("X-Tempering-Upload", "1");  // answer with the file page's address, not a redirect
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    request.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        progress.value = Math.round(100 * e.loaded / e.total);
        status.textContent = form.dataset.uploading + " " + progress.value + " %";
      }
    });
    request.addEventListener("load", function () {
      progress.value = 100;
      if (request.status === 204) {  // stored: open the file's page (its address; a proxy dropping it: the list)
        var location = request.getResponseHeader("X-Tempering-Location") || "";
        window.location.assign(/^\/data\/[\w-]+\?uploaded=1$/.test(location) ? location : "/data");
        return;
      }
      if (request.responseURL && request.responseURL !== form.action) {
        window.location.assign(request.responseURL);  // sent elsewhere, e.g. to sign in again
        return;
      }
      var answer = new DOMParser().parseFromString(request.responseText, "text/html").querySelector("main");
      if (answer) {
        document.querySelector("main").replaceWith(answer);
      } else {  // not the portal's page (a proxy's refusal): say what came back
        button.disabled = false;
        progress.hidden = true;
        status.textContent = form.dataset.failed + " (HTTP " + request.status + ")";
      }
    });
    request.addEventListener("error", function () {
      button.disabled = false;
      progress.hidden = true;
      status.textContent = form.dataset.failed;
    });
    request.send(new FormData(form));
  });
})();

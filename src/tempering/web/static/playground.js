// The playground's answer streamed: the form is posted to its streaming twin and the answer grows as the
// Server-Sent Events arrive. Without script (or fetch streams) the form posts normally and the whole answer
// comes back in the page.
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form || !window.fetch || !window.TextDecoder || !window.ReadableStream) { return; }
  form.addEventListener("submit", function (submit) {
    submit.preventDefault();
    var answer = document.getElementById("answer");
    var button = form.querySelector("button[type=submit]");
    answer.textContent = "";
    var heading = document.createElement("h2");
    heading.textContent = form.dataset.answer;
    var reply = document.createElement("div");
    reply.className = "answer";
    reply.dataset.testid = "reply";
    reply.setAttribute("data-testid", "reply");
    reply.setAttribute("aria-busy", "true");
    answer.appendChild(heading);
    answer.appendChild(reply);
    button.disabled = true;
    function frame(text) {
      var kind = "message", data = "";
      text.split("\n").forEach(function (line) {
        if (line.indexOf("event: ") === 0) { kind = line.slice(7); }
        if (line.indexOf("data: ") === 0) { data += line.slice(6); }
      });
      var body = data ? JSON.parse(data) : {};
      if (kind === "piece") { reply.textContent += body.text; }
      if (kind === "error") {
        var error = document.createElement("p");
        error.className = "error";
        error.setAttribute("role", "alert");
        error.textContent = body.message;
        answer.insertBefore(error, heading);
      }
      if (kind === "done" || kind === "error") { reply.setAttribute("aria-busy", "false"); }
    }
    fetch(form.dataset.stream, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) {
        var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { return; }
            buffer += decoder.decode(chunk.value, { stream: true });
            var frames = buffer.split("\n\n");
            buffer = frames.pop();
            frames.forEach(frame);
            return pump();
          });
        }
        return pump();
      })
      .finally(function () { button.disabled = false; reply.setAttribute("aria-busy", "false"); });
  });
})();

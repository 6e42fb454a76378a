// The playground's answers streamed: the form is posted to its streaming twin (once per deployment asked; two
// side by side with "Compare with") and each answer grows as its Server-Sent Events arrive. Without script (or
// fetch streams) the form posts normally and the whole answers come back in the page.
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form || !window.fetch || !window.TextDecoder || !window.ReadableStream) { return; }

  function column(answers, name) {
    var box = document.createElement("div");
    box.className = "column";
    var heading = document.createElement("h2");
    heading.textContent = form.dataset.answer;
    var label = document.createElement("p");
    label.className = "mono";
    label.textContent = name;
    var reply = document.createElement("div");
    reply.className = "answer";
    reply.setAttribute("data-testid", "reply");
    reply.setAttribute("aria-busy", "true");
    box.appendChild(heading);
    box.appendChild(label);
    box.appendChild(reply);
    answers.appendChild(box);
    return reply;
  }

  function stream(name, reply) {
    var body = new FormData(form);
    body.set("deployment", name);
    function frame(text) {
      var kind = "message", data = "";
      text.split("\n").forEach(function (line) {
        if (line.indexOf("event: ") === 0) { kind = line.slice(7); }
        if (line.indexOf("data: ") === 0) { data += line.slice(6); }
      });
      var parsed = data ? JSON.parse(data) : {};
      if (kind === "piece") { reply.textContent += parsed.text; }
      if (kind === "error") {
        var error = document.createElement("p");
        error.className = "error";
        error.setAttribute("role", "alert");
        error.textContent = parsed.message;
        reply.parentNode.insertBefore(error, reply);
      }
    }
    return fetch(form.dataset.stream, { method: "POST", body: body, credentials: "same-origin" })
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
      .finally(function () { reply.setAttribute("aria-busy", "false"); });
  }

  form.addEventListener("submit", function (submit) {
    submit.preventDefault();
    var section = document.getElementById("answer");
    var button = form.querySelector("button[type=submit]");
    section.textContent = "";
    var answers = document.createElement("div");
    answers.className = "answers";
    section.appendChild(answers);
    var names = [form.elements.deployment.value];
    if (form.elements.compare.value) { names.push(form.elements.compare.value); }
    button.disabled = true;
    Promise.all(names.map(function (name) { return stream(name, column(answers, name)); }))
      .finally(function () { button.disabled = false; });
  });
})();

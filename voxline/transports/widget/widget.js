/* voxline widget: one <script> tag puts a call button on any page.
 *
 *   <script src="https://voice.example.com/widget.js" data-key="YOUR_KEY"></script>
 *
 * Plain JavaScript, no build step, no third-party code. The button asks for the
 * microphone, connects to the voxline server over WebRTC, plays the bot, shows a
 * live transcript of both sides and the connection state, and hangs up cleanly.
 * Optional attributes: data-server (default: where this script came from),
 * data-target (an element id to render into instead of a floating panel).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var key = script.getAttribute("data-key") || "demo";
  var server = (script.getAttribute("data-server") || new URL(script.src, location.href).origin)
    .replace(/\/$/, "");
  var targetId = script.getAttribute("data-target");

  var CSS = [
    ":host{all:initial;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif}",
    ".panel{box-sizing:border-box;width:min(360px,calc(100vw - 24px));background:#fff;color:#1b1b1f;",
    "border:1px solid #d0d3db;border-radius:14px;box-shadow:0 6px 24px rgba(0,0,0,.12);padding:14px}",
    ".floating{position:fixed;right:12px;bottom:12px;z-index:2147483000}",
    ".row{display:flex;align-items:center;gap:10px}",
    "button{font:inherit;font-size:16px;border:0;border-radius:999px;padding:12px 18px;cursor:pointer;",
    "background:#1a7f37;color:#fff;min-height:44px;flex:1}",
    "button.hangup{background:#c62828}",
    "button:focus-visible{outline:3px solid #1f6feb;outline-offset:2px}",
    "button:disabled{opacity:.6;cursor:progress}",
    ".state{font-size:13px;color:#57606a;margin:8px 0 0}",
    ".log{margin-top:10px;max-height:40vh;overflow-y:auto;font-size:14px;line-height:1.4}",
    ".log p{margin:6px 0;padding:6px 10px;border-radius:10px;max-width:85%}",
    ".user{background:#ddf4ff;margin-left:auto !important;text-align:right}",
    ".bot{background:#f3f4f6}",
    ".meta{font-size:11px;color:#6e7781;background:none !important;padding:0 10px !important}",
  ].join("");

  var host = document.createElement("div");
  host.setAttribute("data-voxline-widget", key);
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  root.innerHTML =
    '<style>' + CSS + '</style>' +
    '<section class="panel' + (targetId ? '' : ' floating') + '" role="region" aria-label="Voice assistant">' +
    '<div class="row"><button type="button" class="call" aria-label="Start a voice call">Talk to us</button></div>' +
    '<p class="state" role="status" aria-live="polite">Ready</p>' +
    '<div class="log" role="log" aria-live="polite" aria-label="Conversation transcript"></div>' +
    '<audio class="remote" autoplay></audio>' +
    '</section>';
  var button = root.querySelector("button.call");
  var stateLine = root.querySelector(".state");
  var log = root.querySelector(".log");
  var audio = root.querySelector("audio.remote");

  // The lines being written: a turn's words arrive in pieces, and each side's
  // pieces stay on one line until the other side speaks.
  var pc = null, mic = null, channel = null, botLine = null, userLine = null, callStarted = 0;
  var page = (window.voxline = window.voxline || {});
  page.events = page.events || [];

  function setState(text, state) {
    stateLine.textContent = text;
    page.state = state || text;
  }

  function say(kind, text) {
    var line = document.createElement("p");
    line.className = kind;
    line.textContent = text;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
    return line;
  }

  function extend(line, kind, text) {
    if (!line) { return say(kind, text); }
    line.textContent += " " + text;
    return line;
  }

  function onMessage(event) {
    var message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    if (!message || message.source !== "voxline") { return; }
    page.events.push(message);
    if (message.type === "user-transcript") {
      botLine = null;
      userLine = extend(userLine, "user", message.text);
    } else if (message.type === "bot-text") {
      userLine = null;
      botLine = extend(botLine, "bot", message.text);
    } else if (message.type === "user-started") {
      botLine = null;
      setState("Listening…", "listening");
    } else if (message.type === "bot-started") {
      setState("Speaking…", "speaking");
    } else if (message.type === "bot-stopped") {
      setState("Connected: talk any time", "connected");
    } else if (message.type === "turn" && message.latency_ms) {
      var ms = message.latency_ms.voice_to_voice;
      if (ms) { say("meta", "answered in " + Math.round(ms) + " ms"); }
    }
  }

  function withoutMdns(sdp) {
    return sdp.split("\r\n").filter(function (line) {
      return !/^a=candidate:.* [0-9a-f-]+\.local /.test(line);
    }).join("\r\n");
  }

  function gathered(peer) {
    if (peer.iceGatheringState === "complete") { return Promise.resolve(); }
    return new Promise(function (resolve) {
      var timer = setTimeout(resolve, 2000);
      peer.addEventListener("icegatheringstatechange", function () {
        if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  function request(method, path, body) {
    return fetch(server + path, {
      method: method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = new Error(data.error || ("HTTP " + response.status));
          error.status = response.status;
          throw error;
        }
        return data;
      });
    });
  }

  function start() {
    button.disabled = true;
    setState("Asking for the microphone…", "starting");
    callStarted = performance.now();
    var iceServers = [];
    return request("GET", "/webrtc/config?key=" + encodeURIComponent(key))
      .then(function (config) {
        iceServers = config.ice_servers || [];
        return navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true } });
      })
      .then(function (stream) {
        mic = stream;
        page.micStream = stream;
        setState("Connecting…", "connecting");
        pc = new RTCPeerConnection({ iceServers: iceServers });
        channel = pc.createDataChannel("voxline");
        channel.onmessage = onMessage;
        mic.getAudioTracks().forEach(function (track) { pc.addTrack(track, mic); });
        pc.ontrack = function (event) {
          audio.srcObject = event.streams[0] || new MediaStream([event.track]);
          page.remoteStream = audio.srcObject;
        };
        pc.onconnectionstatechange = function () {
          if (pc && pc.connectionState === "connected") {
            page.connectMs = performance.now() - callStarted;
            setState("Connected: talk any time", "connected");
          } else if (pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) {
            hangUp("The call ended.");
          }
        };
        return pc.createOffer();
      })
      .then(function (offer) { return pc.setLocalDescription(offer); })
      .then(function () { return gathered(pc); })
      .then(function () {
        return request("POST", "/webrtc/offer", {
          key: key, type: "offer", sdp: withoutMdns(pc.localDescription.sdp),
        });
      })
      .then(function (answer) {
        page.pcId = answer.pc_id;
        return pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      })
      .then(function () {
        button.disabled = false;
        button.textContent = "Hang up";
        button.classList.add("hangup");
        button.setAttribute("aria-label", "End the voice call");
        button.setAttribute("aria-pressed", "true");
      })
      .catch(function (error) {
        var busy = error.status === 503;
        hangUp(busy ? "All lines are busy. Please try again shortly."
                    : "Could not connect: " + error.message);
        page.error = error.message;
      });
  }

  function hangUp(reason) {
    if (channel) { try { channel.close(); } catch (e) { /* closing anyway */ } }
    if (pc) { pc.close(); }
    if (mic) { mic.getTracks().forEach(function (track) { track.stop(); }); }
    pc = null; mic = null; channel = null; botLine = null; userLine = null;
    audio.srcObject = null;
    button.disabled = false;
    button.textContent = "Talk to us";
    button.classList.remove("hangup");
    button.setAttribute("aria-label", "Start a voice call");
    button.setAttribute("aria-pressed", "false");
    setState(reason || "Call ended", reason ? "ended" : "idle");
  }

  button.addEventListener("click", function () {
    if (pc) { hangUp("Call ended"); } else { start(); }
  });
  window.addEventListener("pagehide", function () { if (pc) { hangUp(); } });

  page.start = start;
  page.hangUp = hangUp;
  page.root = root;

  var target = targetId && document.getElementById(targetId);
  (target || document.body).appendChild(host);
})();

// bench/ws's Node.js peer: the same endpoints as examples/chat, on the `ws` package.
//   node bench/ws/server.js PORT      (NODE_PATH: where npm put ws)
// /echo sends every message back as it came (up to 16 MiB); /ws is a room: a
// text message goes to every member as "<member>: <text>", joins and leaves
// are said, and a member more than 256 KiB behind is dropped.
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = +process.argv[2];
const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const echo = new WebSocketServer({ noServer: true, maxPayload: 16 << 20, perMessageDeflate: false });
const room = new WebSocketServer({ noServer: true, maxPayload: 4096, perMessageDeflate: false });
server.on("upgrade", (req, sock, head) => {
  const wss = req.url === "/echo" ? echo : req.url === "/ws" ? room : null;
  if (!wss) return sock.destroy();
  wss.handleUpgrade(req, sock, head, (ws) => wss.emit("connection", ws, req));
});
echo.on("connection", (ws) => ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary })));

let next = 0;
const members = new Set();
function say(text) {
  for (const m of members) {
    if (m.bufferedAmount > 256 << 10) m.terminate();
    else m.send(text);
  }
}
room.on("connection", (ws) => {
  const name = "member" + ++next;
  members.add(ws);
  say(`* ${name} joined (${members.size} here)`);
  ws.on("message", (data) => say(`${name}: ${data}`));
  ws.on("close", () => {
    members.delete(ws);
    say(`* ${name} left (${members.size} here)`);
  });
});
server.listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));

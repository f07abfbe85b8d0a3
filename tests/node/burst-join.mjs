// Opens COUNT sockets at once; each emits join_channel the moment it is connected, as
// seed 000's clients do, and reports how many acks came back.
import { io } from "socket.io-client";

const count = Number(process.env.COUNT || 100);
const tokens = JSON.parse(process.env.TOKENS);
let acked = 0;
let refused = 0;
const sockets = [];
const done = () => {
  process.stdout.write(JSON.stringify({ kind: "result", acked, refused }) + "\n");
  for (const socket of sockets) socket.close();
  process.exit(0);
};
setTimeout(done, 8000);
for (let i = 0; i < count; i++) {
  const socket = io(process.env.HERALD_URL, { auth: { token: tokens[i % tokens.length] }, transports: ["websocket"], reconnection: false, forceNew: true });
  sockets.push(socket);
  socket.on("connect", () => {
    socket.emit("join_channel", { channelId: "burst" }, (response) => {
      if (response && response.success) acked++;
      else refused++;
      if (acked + refused === count) done();
    });
  });
}

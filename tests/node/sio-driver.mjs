// Drives the official socket.io-client for Herald's Rust tests.
// Input (stdin, JSON lines): {"emit": name, "data": any, "ack": bool, "id": n} | {"close": true}
//   | {"drop": true} (the transport closes under the socket, as a network failure would)
//   | {"connect": true} (connect again; the client offers its pid and last offset itself)
// Output (stdout, JSON lines): connect, connect_error, disconnect, upgrade, event, ack records.
import { io } from "socket.io-client";
import readline from "node:readline";

const url = process.env.HERALD_URL;
const options = JSON.parse(process.env.SIO_OPTIONS || "{}");
const socket = io(url, { reconnection: false, ...options });
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");

socket.io.on("open", () => {
  out({ kind: "open", transport: socket.io.engine.transport.name });
  socket.io.engine.on("upgrade", (transport) => out({ kind: "upgrade", transport: transport.name }));
});
socket.on("connect", () =>
  out({ kind: "connect", id: socket.id, transport: socket.io.engine.transport.name, recovered: socket.recovered }),
);
socket.on("connect_error", (error) => out({ kind: "connect_error", message: error.message }));
socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
socket.onAny((event, ...args) => out({ kind: "event", event, args }));

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const command = JSON.parse(line);
  if (command.emit !== undefined) {
    const args = command.data === undefined ? [] : [command.data];
    if (command.ack) {
      socket.emit(command.emit, ...args, (response) => out({ kind: "ack", id: command.id, response }));
    } else {
      socket.emit(command.emit, ...args);
    }
  }
  if (command.close) socket.close();
  if (command.drop) socket.io.engine.close();
  if (command.connect) socket.connect();
});
lines.on("close", () => {
  socket.close();
  process.exit(0);
});

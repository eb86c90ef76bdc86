// ws_echo_node.js - figure 16's Node peer: an echo server on the npm package ws (the one
// most Node WebSocket servers use), defaults (no permessage-deflate, as ws 8's server).
//   node ws_echo_node.js [PORT]   (0, the default: a free port); prints "port N" once listening
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] || 0) });
wss.on('listening', () => console.log(`port ${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

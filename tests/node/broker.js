// The broker the Node tests talk to: WARREN_TEST_ADDR=host:port names one
// already running (Warren or RabbitMQ, for the differential run); otherwise
// a real `warren` binary (WARREN_BIN, default target/debug/warren) is
// started on a free port with a temporary data directory, and its log is
// checked for panics when it stops.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function startBroker() {
  const addr = process.env.WARREN_TEST_ADDR;
  if (addr) {
    return { url: `amqp://guest:guest@${addr}/%2f`, isWarren: false, log: [], stop: async () => [] };
  }
  const bin = process.env.WARREN_BIN || path.join(ROOT, 'target', 'debug', 'warren');
  const port = await freePort();
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'warren-node-'));
  const proc = spawn(bin, ['--amqp-listen', `127.0.0.1:${port}`, '--http-listen', '127.0.0.1:0', '--prometheus-listen', '127.0.0.1:0', '--data-dir', data], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  let pending = '';
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('warren did not start')), 20000);
    const onData = (chunk) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        if (process.env.WARREN_NODE_VERBOSE) console.error('[warren]', line);
        if (line.includes('AMQP listening')) {
          clearTimeout(timer);
          resolve();
        }
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.on('exit', (code) => reject(new Error(`warren exited (${code})`)));
  });
  await ready;
  const exited = new Promise((resolve) => proc.on('close', resolve));
  return {
    url: `amqp://guest:guest@127.0.0.1:${port}/%2f`,
    isWarren: true,
    log,
    // Stops it; resolves to the log lines that report a panic.
    stop: async () => {
      proc.kill('SIGTERM');
      await exited;
      fs.rmSync(data, { recursive: true, force: true });
      return log.filter((l) => l.includes('panicked'));
    },
  };
}

// Polls `pred` until it holds or `ms` pass.
async function waitFor(pred, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await pred()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

function uniqueName(prefix = 'node') {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

module.exports = { startBroker, waitFor, uniqueName };

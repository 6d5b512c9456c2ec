// Bundles test/*.test.ts (and the sources they import) into dist-test/*.test.mjs with esbuild,
// so Node 20's built-in test runner can run them (Node 20 cannot strip TypeScript types).
import { readdirSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

const tests = readdirSync('test').filter((f) => f.endsWith('.test.ts'));
rmSync('dist-test', { recursive: true, force: true });
await build({
  entryPoints: tests.map((f) => `test/${f}`),
  outdir: 'dist-test',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
});

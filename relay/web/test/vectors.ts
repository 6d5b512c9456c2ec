// Loads proto/vectors/*.json (run from relay/web, as npm test does).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

export const VECTORS_DIR = resolve(process.cwd(), '../../proto/vectors');

export function loadVector<T = any>(name: string): T {
  return JSON.parse(readFileSync(resolve(VECTORS_DIR, `${name}.json`), 'utf8')) as T;
}

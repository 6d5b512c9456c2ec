// Deterministic entropy for tests and vectors only (PROTOCOL.md §17.2, proto/src/entropy.rs).
// Production code uses crypto.getRandomValues (osRandom).
import { u64be } from './bytes.ts';
import { label, mac } from './kdf.ts';

export interface Entropy {
  /** n random bytes. */
  fill(n: number): Uint8Array;
}

export const osEntropy: Entropy = {
  fill(n: number): Uint8Array {
    return crypto.getRandomValues(new Uint8Array(n));
  },
};

/** block(i) = mac(seed, "tandem test entropy v1", [u64be(i)]); each fill consumes ceil(n/32) blocks. */
export class DeterministicEntropy implements Entropy {
  private i = 0n;
  constructor(private readonly seed: Uint8Array) {}
  block(): Uint8Array {
    const b = mac(this.seed, label.TEST_ENTROPY, [u64be(this.i)]);
    this.i += 1n;
    return b;
  }
  fill(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let o = 0;
    do {
      const b = this.block();
      const k = Math.min(32, n - o);
      out.set(b.slice(0, k), o);
      o += k;
    } while (o < n);
    return out;
  }
}

// Short authentication string (PROTOCOL.md §9.5, proto/src/sas.rs).
import { label, mac } from './kdf.ts';

export class Sas {
  constructor(public readonly value: number) {}
  /** sas = u64be(mac(hh, "tandem sas v1")[0..8]) mod 1 000 000 */
  static fromHandshakeHash(hh: Uint8Array): Sas {
    const m = mac(hh, label.SAS, []);
    const v = new DataView(m.buffer, m.byteOffset, 8).getBigUint64(0, false);
    return new Sas(Number(v % 1_000_000n));
  }
  /** Six digits, zero-padded: "042917". */
  digits(): string {
    return String(this.value).padStart(6, '0');
  }
  /** Grouped for reading aloud: "042 917". */
  toString(): string {
    const d = this.digits();
    return `${d.slice(0, 3)} ${d.slice(3)}`;
  }
}

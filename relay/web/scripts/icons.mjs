// Draws the app icon: static/icon.svg and the PNGs static/icon-192.png and
// static/icon-512.png (`npm run icons`). The PNGs are committed sources, so
// `npm run build` only copies them: the build's output never depends on the
// zlib that happens to compress them here.
//
// The icon: two linked white rings on the accent blue. The PNGs are
// full-bleed squares (maskable: the rings stay inside the central 80 %
// safe zone); the SVG has rounded corners.
import { writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';

const BLUE = [0x25, 0x63, 0xeb]; // --accent of src/app/style.css
const WHITE = [0xff, 0xff, 0xff];
// Geometry on a 512 × 512 canvas.
const RINGS = [
  { cx: 200, cy: 256, r: 92 },
  { cx: 312, cy: 256, r: 92 },
];
const STROKE = 36;

const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512">
<rect width="512" height="512" rx="112" fill="#2563eb"/>
<g fill="none" stroke="#fff" stroke-width="${STROKE}">
${RINGS.map((c) => `<circle cx="${c.cx}" cy="${c.cy}" r="${c.r}"/>`).join('\n')}
</g>
</svg>
`;

function inRing(x, y) {
  for (const c of RINGS) {
    const d = Math.hypot(x - c.cx, y - c.cy);
    if (Math.abs(d - c.r) <= STROKE / 2) return true;
  }
  return false;
}

/** RGB pixels of a size × size rendering, 4 × 4 samples per pixel. */
function render(size) {
  const px = Buffer.alloc(size * size * 3);
  const scale = 512 / size;
  const n = 4;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let hits = 0;
      for (let sy = 0; sy < n; sy++) {
        for (let sx = 0; sx < n; sx++) {
          if (inRing((x + (sx + 0.5) / n) * scale, (y + (sy + 0.5) / n) * scale)) hits++;
        }
      }
      const a = hits / (n * n);
      for (let i = 0; i < 3; i++) {
        px[(y * size + x) * 3 + i] = Math.round(BLUE[i] * (1 - a) + WHITE[i] * a);
      }
    }
  }
  return px;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** An 8-bit RGB PNG, no filters, no ancillary chunks (no timestamps). */
function png(size) {
  const px = render(size);
  const raw = Buffer.alloc(size * (size * 3 + 1));
  for (let y = 0; y < size; y++) {
    raw[y * (size * 3 + 1)] = 0; // filter: none
    px.copy(raw, y * (size * 3 + 1) + 1, y * size * 3, (y + 1) * size * 3);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, adaptive filtering, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

writeFileSync('static/icon.svg', svg);
for (const size of [192, 512]) writeFileSync(`static/icon-${size}.png`, png(size));
console.log('wrote static/icon.svg, static/icon-192.png, static/icon-512.png');

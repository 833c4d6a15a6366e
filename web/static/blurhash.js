// Blurhash decoding: a short string → a small RGBA picture of the image's colours.
//
// The hash is base-83 text: a size flag (how many cosine components along x and y),
// the quantised largest AC magnitude, the DC (average) colour as 24-bit sRGB, then
// two digits per AC component, each packing three signed 19-level values. A pixel is
// the sum over components of colour × cos(πix/w) × cos(πjy/h), computed in linear
// light and converted back to sRGB.

const DIGITS =
  "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

/** Read `text` as a base-83 number. */
function base83(text) {
  let value = 0;
  for (const char of text) {
    const digit = DIGITS.indexOf(char);
    if (digit < 0) throw new Error(`blurhash: bad character ${char}`);
    value = value * 83 + digit;
  }
  return value;
}

function toLinear(channel) {
  const v = channel / 255;
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
}

function toSrgb(linear) {
  const v = Math.min(1, Math.max(0, linear));
  const s = v <= 0.0031308 ? v * 12.92 : 1.055 * v ** (1 / 2.4) - 0.055;
  return Math.trunc(s * 255 + 0.5);
}

/** A quantised AC value (0..18) back to a signed magnitude, undoing the square root. */
function unquantise(q, scale) {
  const v = (q - 9) / 9;
  return Math.sign(v) * v * v * scale;
}

/** The [r, g, b] linear colour of every component, DC first, and the grid size. */
export function components(hash) {
  const flag = base83(hash[0]);
  const nx = (flag % 9) + 1;
  const ny = Math.floor(flag / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) throw new Error("blurhash: wrong length");
  const scale = (base83(hash[1]) + 1) / 166;
  const dc = base83(hash.slice(2, 6));
  const colours = [[toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]];
  for (let i = 1; i < nx * ny; i++) {
    const v = base83(hash.slice(4 + 2 * i, 6 + 2 * i));
    const q = [Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19];
    colours.push(q.map((c) => unquantise(c, scale)));
  }
  return { nx, ny, colours };
}

/** Decode `hash` into `width`×`height` RGBA pixels (ready for ImageData). */
export function decode(hash, width, height) {
  const { nx, ny, colours } = components(hash);
  const cosX = cosines(nx, width);
  const cosY = cosines(ny, height);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = cosX[x * nx + i] * cosY[y * ny + j];
          const c = colours[j * nx + i];
          r += c[0] * basis;
          g += c[1] * basis;
          b += c[2] * basis;
        }
      }
      const o = 4 * (y * width + x);
      out[o] = toSrgb(r);
      out[o + 1] = toSrgb(g);
      out[o + 2] = toSrgb(b);
      out[o + 3] = 255;
    }
  }
  return out;
}

/** cos(π·k·p/size) for every pixel p and component k, as a flat table. */
function cosines(count, size) {
  const table = new Float64Array(size * count);
  for (let p = 0; p < size; p++) {
    for (let k = 0; k < count; k++) table[p * count + k] = Math.cos((Math.PI * k * p) / size);
  }
  return table;
}

/** Paint `hash` onto `canvas` at the canvas's own size. */
export function paint(canvas, hash) {
  const { width, height } = canvas;
  const image = new ImageData(decode(hash, width, height), width, height);
  canvas.getContext("2d").putImageData(image, 0, 0);
}

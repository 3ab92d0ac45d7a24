'use strict';
/* camcaffe web: explain an image in the browser. The model (model.onnx) carries its class activation maps as
   outputs (cam_top_classes, cam_top_probabilities, cam_maps; cam_class -> cam_class_maps), so one
   onnxruntime-web session gives the classes and their raw maps. Everything around it follows camcaffe's Python
   pipeline number for number: caffe.io's resize (min-max normalise, pixel-centre linear zoom with a zero
   border, de-normalise), Pillow's fixed-point resize with each of its filters (nearest, box, bilinear, hamming,
   bicubic, lanczos) and the float32 arithmetic of Transformer.preprocess_pixels for --resize-filter pil-* (the
   Keras and torchvision presets), OpenCV's INTER_LINEAR upsampling of the maps, min-max normalisation, and the
   box rule of localize/boxes.py. */
(function () {
  const $ = (id) => document.getElementById(id);
  const api = { results: 0, result: null, map: null, ep: null, threads: null, loadMs: null, error: null };
  window.camcaffe = api;
  let config = null;
  let session = null;
  let meanImage = null;
  let current = null;
  let waiters = [];

  class Refusal extends Error {}

  // One request at a time: a second photo or class waits for the run in progress (a session runs one at a time).
  let chain = Promise.resolve();
  function exclusive(task) {
    const next = chain.then(task, task);
    chain = next.catch(() => {});
    return next;
  }

  api.nextResult = () => new Promise((resolve) => waiters.push(resolve));
  function settle(value) {
    const pending = waiters;
    waiters = [];
    for (const resolve of pending) resolve(value);
  }

  function showMessage(text) {
    const box = $('message');
    box.textContent = text;
    box.hidden = false;
  }

  function hideMessage() {
    $('message').hidden = true;
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error('cannot load ' + src));
      document.head.appendChild(script);
    });
  }

  // ---------------------------------------------------------------------------------------------------
  // Start-up: settings, runtime, session

  async function boot() {
    const start = performance.now();
    const response = await fetch('config.json');
    if (!response.ok) throw new Error('config.json: HTTP ' + response.status);
    config = await response.json();
    document.title = config.title + ' · camcaffe web';
    if (config.mean_image) {
      const meanResponse = await fetch(config.mean_image.file);
      if (!meanResponse.ok) throw new Error(`${config.mean_image.file}: HTTP ${meanResponse.status}`);
      meanImage = new Float32Array(await meanResponse.arrayBuffer());
      const [c, h, w] = config.mean_image.shape;
      if (meanImage.length !== c * h * w) throw new Error(`${config.mean_image.file}: not ${c}x${h}x${w} floats`);
    }
    const forced = new URLSearchParams(location.search).get('ep');
    let ep = 'wasm';
    if (forced !== 'wasm' && config.ort_web.webgpu && navigator.gpu) {
      try {
        // A fallback adapter is a CPU emulation of a GPU (SwiftShader): WebAssembly is faster, unless asked.
        const adapter = await navigator.gpu.requestAdapter();
        if (adapter && (forced === 'webgpu' || !(adapter.info && adapter.info.isFallbackAdapter))) ep = 'webgpu';
      } catch (error) {
        ep = 'wasm';
      }
    }
    await loadScript(ep === 'webgpu' ? 'ort/ort.webgpu.min.js' : 'ort/ort.wasm.min.js');
    const ort = window.ort;
    ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
    // Threads need SharedArrayBuffer, which only a cross-origin-isolated page has.
    const threads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = 'error';
    const options = (provider) => ({ executionProviders: [provider], logSeverityLevel: 3 });
    try {
      session = await ort.InferenceSession.create(config.model, options(ep));
    } catch (error) {
      if (ep !== 'webgpu') throw error;
      ep = 'wasm';
      session = await ort.InferenceSession.create(config.model, options('wasm'));
    }
    api.ep = ep;
    api.threads = threads;
    api.loadMs = performance.now() - start;
    const shape = config.input.shape;
    const how = ep === 'webgpu' ? 'WebGPU' : `WebAssembly, ${threads} thread${threads > 1 ? 's' : ''}`;
    $('model-line').textContent =
      `${config.title}: ${config.num_classes} classes, input ${shape[2]}×${shape[3]}, ` +
      `${config.preprocess.resize} resize (${config.preprocess.resize_filter}) — ready (${how}, loaded in ${Math.round(api.loadMs)} ms)`;
    if (config.preprocess.assumed) {
      $('model-line').textContent += '; no preprocessing recorded in the model: ImageNet Caffe defaults assumed';
    }
    $('footer').textContent =
      `camcaffe ${config.camcaffe} · onnxruntime-web ${config.ort_web.version} (${how}) · ` +
      'images stay on this computer';
    $('opacity').value = String(config.alpha);
    $('threshold').textContent = String(config.box_threshold);
    const names = $('class-names');
    config.labels.forEach((label, index) => {
      const option = document.createElement('option');
      option.value = label;
      option.label = String(index);
      names.appendChild(option);
    });
  }

  // ---------------------------------------------------------------------------------------------------
  // Decoding: the stored pixels, as OpenCV's imdecode(IMREAD_UNCHANGED) gives them

  function headerFacts(bytes) {
    const facts = { orientation: 1, png16: false, cmyk: false, jpegSize: null };
    if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47 && bytes.length > 25) {
      facts.png16 = bytes[24] === 16;
      return facts;
    }
    if (bytes[0] !== 0xff || bytes[1] !== 0xd8) return facts;
    let pos = 2;
    while (pos + 4 <= bytes.length) {
      if (bytes[pos] !== 0xff) break;
      const marker = bytes[pos + 1];
      if (marker === 0xff) { pos += 1; continue; }
      if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { pos += 2; continue; }
      if (marker === 0xda) break;
      const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
      const body = pos + 4;
      if (marker === 0xe1 && String.fromCharCode(...bytes.subarray(body, body + 4)) === 'Exif') {
        facts.orientation = exifOrientation(bytes, body + 6, pos + 2 + length);
      }
      const frames = [0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf];
      if (frames.includes(marker) && body + 6 <= bytes.length) {
        facts.jpegSize = [(bytes[body + 1] << 8) | bytes[body + 2], (bytes[body + 3] << 8) | bytes[body + 4]];
        facts.cmyk = bytes[body + 5] === 4;
      }
      pos += 2 + length;
    }
    return facts;
  }

  function exifOrientation(bytes, tiff, end) {
    if (tiff + 8 > end) return 1;
    const little = bytes[tiff] === 0x49;
    const u16 = (at) => (little ? bytes[at] | (bytes[at + 1] << 8) : (bytes[at] << 8) | bytes[at + 1]);
    const u32 = (at) => (little ? u16(at) + u16(at + 2) * 65536 : u16(at) * 65536 + u16(at + 2));
    const ifd = tiff + u32(tiff + 4);
    if (ifd + 2 > end) return 1;
    const count = u16(ifd);
    for (let i = 0; i < count; i++) {
      const entry = ifd + 2 + 12 * i;
      if (entry + 12 > end) break;
      if (u16(entry) === 0x0112) {
        const value = u16(entry + 8);
        return value >= 1 && value <= 8 ? value : 1;
      }
    }
    return 1;
  }

  // Stored pixel (sx, sy) of a sw x sh raster -> where an EXIF orientation puts it on display.
  function displayedAt(orientation, sx, sy, sw, sh) {
    switch (orientation) {
      case 2: return [sw - 1 - sx, sy];
      case 3: return [sw - 1 - sx, sh - 1 - sy];
      case 4: return [sx, sh - 1 - sy];
      case 5: return [sy, sx];
      case 6: return [sh - 1 - sy, sx];
      case 7: return [sh - 1 - sy, sw - 1 - sx];
      case 8: return [sy, sw - 1 - sx];
      default: return [sx, sy];
    }
  }

  function storedPixels(bitmap) {
    const canvas = document.createElement('canvas');
    const gl = canvas.getContext('webgl2', { premultipliedAlpha: false });
    if (!gl) return null;
    const { width, height } = bitmap;
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, width, height, 0, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    const framebuffer = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return null;
    const pixels = new Uint8Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, pixels);
    const failed = gl.getError() !== gl.NO_ERROR;
    gl.deleteFramebuffer(framebuffer);
    gl.deleteTexture(texture);
    const lose = gl.getExtension('WEBGL_lose_context');
    if (lose) lose.loseContext();
    return failed ? null : pixels; // row 0 of the texture is the image's top row: no flip needed
  }

  async function decode(bytes, name) {
    const facts = headerFacts(bytes);
    if (facts.png16) {
      throw new Refusal(`${name}: a 16-bit PNG; the browser decodes it to 8 bits and camcaffe reads all 16, ` +
        'so the page cannot reproduce camcaffe cam on it. Save it as an 8-bit PNG or JPEG.');
    }
    if (facts.cmyk) {
      throw new Refusal(`${name}: a CMYK JPEG; browsers and OpenCV convert CMYK to RGB differently. ` +
        'Save it as an RGB JPEG or PNG.');
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes]), {
        colorSpaceConversion: 'none', premultiplyAlpha: 'none',
      });
    } catch (error) {
      throw new Refusal(`${name}: cannot be decoded as an image (not an image, unsupported format, or ` +
        'truncated); re-export it as PNG or JPEG.');
    }
    const width = bitmap.width;
    const height = bitmap.height;
    if (width * height > config.max_pixels) {
      bitmap.close();
      throw new Refusal(`${name}: ${width}x${height} = ${width * height} pixels exceeds the limit of ` +
        `${config.max_pixels}; downscale the image.`);
    }
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    let rgba = context.getImageData(0, 0, width, height).data;
    let opaque = true;
    for (let i = 3; i < rgba.length; i += 4) {
      if (rgba[i] !== 255) { opaque = false; break; }
    }
    if (!opaque) {
      // A 2D canvas stores colours premultiplied by alpha, so translucent pixels come back changed; a WebGL
      // texture uploaded without premultiplication gives the stored values, as OpenCV reads them.
      rgba = storedPixels(bitmap);
      if (!rgba) {
        bitmap.close();
        throw new Refusal(`${name}: has transparent pixels, and without WebGL this browser gives their ` +
          'colours only approximately (premultiplied). Flatten the image (no alpha) and try again.');
      }
    }
    bitmap.close();
    // The browser turns the image as its EXIF orientation says; camcaffe (OpenCV's IMREAD_UNCHANGED) does
    // not. Undo the turn, so that the page sees the stored raster, as camcaffe cam does.
    let orientation = facts.orientation;
    let sw = width;
    let sh = height;
    if (orientation >= 5) {
      sw = height;
      sh = width;
      const size = facts.jpegSize;
      if (size && size[1] === width && size[0] === height && width !== height) orientation = 1;
      if (orientation === 1) { sw = width; sh = height; }
    }
    const rgb = new Uint8Array(sw * sh * 3);
    if (orientation === 1) {
      for (let i = 0, j = 0; j < rgb.length; i += 4, j += 3) {
        rgb[j] = rgba[i];
        rgb[j + 1] = rgba[i + 1];
        rgb[j + 2] = rgba[i + 2];
      }
      return { name, width: sw, height: sh, rgb, orientation };
    }
    for (let sy = 0; sy < sh; sy++) {
      for (let sx = 0; sx < sw; sx++) {
        const [dx, dy] = displayedAt(orientation, sx, sy, sw, sh);
        const from = (dy * width + dx) * 4;
        const to = (sy * sw + sx) * 3;
        rgb[to] = rgba[from];
        rgb[to + 1] = rgba[from + 1];
        rgb[to + 2] = rgba[from + 2];
      }
    }
    return { name, width: sw, height: sh, rgb, orientation };
  }

  // ---------------------------------------------------------------------------------------------------
  // Preprocessing: photo -> net input, as runtime/preprocess.py, explain/views.py and runtime/pil_resize.py

  // caffe.io.resize_image: one axis of scipy.ndimage.zoom(order=1, grid-constant 0, grid_mode): output pixel j
  // samples x = (j + 0.5) * n_in / n_out - 0.5 between floor(x) and floor(x) + 1; outside samples are 0.
  function zoomTable(nIn, nOut) {
    const index = new Int32Array(nOut);
    const w0 = new Float64Array(nOut);
    const w1 = new Float64Array(nOut);
    for (let j = 0; j < nOut; j++) {
      const x = (j + 0.5) * (nIn / nOut) - 0.5;
      const left = Math.floor(x);
      const frac = x - left;
      index[j] = left;
      w0[j] = left >= 0 && left < nIn ? 1 - frac : 0;
      w1[j] = left + 1 >= 0 && left + 1 < nIn ? frac : 0;
    }
    return { index, w0, w1, nIn };
  }

  // values: Float64Array or Uint8Array h x w x 3 (0..255 units) -> Float64Array outH x outW x 3.
  function caffeResize(values, h, w, outH, outW) {
    let low = Infinity;
    let high = -Infinity;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v < low) low = v;
      if (v > high) high = v;
    }
    const out = new Float64Array(outH * outW * 3);
    if (!(high > low)) return out.fill(low);
    const span = high - low;
    const rows = zoomTable(h, outH);
    const cols = zoomTable(w, outW);
    const sample = (y, x, c) => (values[(y * w + x) * 3 + c] - low) / span;
    const tall = new Float64Array(outH * w * 3); // axis 0 first, as _resize_linear
    for (let j = 0; j < outH; j++) {
      const y0 = rows.index[j];
      const a = rows.w0[j];
      const b = rows.w1[j];
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let v = 0;
          if (a !== 0) v += sample(y0, x, c) * a;
          if (b !== 0) v += sample(y0 + 1, x, c) * b;
          tall[(j * w + x) * 3 + c] = v;
        }
      }
    }
    for (let j = 0; j < outH; j++) {
      for (let i = 0; i < outW; i++) {
        const x0 = cols.index[i];
        const a = cols.w0[i];
        const b = cols.w1[i];
        for (let c = 0; c < 3; c++) {
          let v = 0;
          if (a !== 0) v += tall[(j * w + x0) * 3 + c] * a;
          if (b !== 0) v += tall[(j * w + x0 + 1) * 3 + c] * b;
          v = Math.min(1, Math.max(0, v));
          out[(j * outW + i) * 3 + c] = v * span + low;
        }
      }
    }
    return out;
  }

  const PRECISION_BITS = 22;
  // Pillow writes the Hamming window's constants as C floats (0.54f, 0.46f).
  const HAMMING_A = Math.fround(0.54);
  const HAMMING_B = Math.fround(0.46);

  function sinc(x) {
    if (x === 0) return 1.0;
    const angle = x * Math.PI;
    return Math.sin(angle) / angle;
  }

  // Pillow's convolution filters and their supports (Resample.c), written as runtime/pil_resize.py writes them so
  // that the weights come out the same to the last bit.
  const PIL_FILTERS = {
    box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
    bilinear: { support: 1.0, weight: (x) => Math.max(1.0 - Math.abs(x), 0.0) },
    hamming: {
      support: 1.0,
      weight: (x) => {
        const ax = Math.abs(x);
        if (ax === 0) return 1.0;
        if (ax >= 1) return 0.0;
        const angle = ax * Math.PI;
        return Math.sin(angle) / angle * (HAMMING_A + HAMMING_B * Math.cos(angle));
      },
    },
    bicubic: {
      support: 2.0,
      weight: (x) => {
        const a = -0.5;
        const ax = Math.abs(x);
        if (ax < 1.0) return ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1;
        if (ax < 2.0) return (((ax - 5) * ax + 8) * ax - 4) * a;
        return 0.0;
      },
    },
    lanczos: { support: 3.0, weight: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0) },
  };

  // Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output position the first input index and the
  // weights of the stretched filter, normalised (summed one by one, as Pillow sums) and turned into integers
  // with 22 fractional bits.
  function pilCoefficients(inSize, outSize, filter) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = filter.support * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const inverse = 1.0 / filterscale;
    const starts = new Int32Array(outSize);
    const counts = new Int32Array(outSize); // taps inside the image; the rest of the ksize weights are 0
    const fixed = new Float64Array(outSize * ksize);
    const weights = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      let total = 0;
      for (let k = 0; k < xmax; k++) {
        weights[k] = filter.weight((k + xmin - center + 0.5) * inverse);
        total += weights[k];
      }
      for (let k = 0; k < xmax; k++) {
        const w = total !== 0 ? weights[k] / total : weights[k];
        const scaled = w * (1 << PRECISION_BITS);
        fixed[xx * ksize + k] = scaled < 0 ? Math.trunc(scaled - 0.5) : Math.trunc(scaled + 0.5);
      }
      starts[xx] = xmin;
      counts[xx] = xmax;
    }
    return { starts, counts, fixed, ksize };
  }

  // One 8-bit pass of Pillow's resampling along the width (axis 1) or the height (axis 0). The integer sums are
  // exact in doubles; floor((sum + 2^21) / 2^22) is Pillow's shift. Taps past the image edge weigh 0 and are
  // skipped.
  function pilPass(pixels, h, w, outSize, axis, filter) {
    const inSize = axis === 1 ? w : h;
    const { starts, counts, fixed, ksize } = pilCoefficients(inSize, outSize, filter);
    const outH = axis === 1 ? h : outSize;
    const outW = axis === 1 ? outSize : w;
    const out = new Uint8Array(outH * outW * 3);
    const half = 1 << (PRECISION_BITS - 1);
    const unit = 1 << PRECISION_BITS;
    const step = axis === 1 ? 3 : w * 3; // from one input sample to the next along the axis
    const clip = (value) => (value < 0 ? 0 : value > 255 ? 255 : value);
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const o = axis === 1 ? x : y;
        let at = (axis === 1 ? y * w : x) * 3 + starts[o] * step;
        let r = half;
        let g = half;
        let b = half;
        for (let k = o * ksize, end = k + counts[o]; k < end; k++, at += step) {
          const weight = fixed[k];
          r += pixels[at] * weight;
          g += pixels[at + 1] * weight;
          b += pixels[at + 2] * weight;
        }
        const to = (y * outW + x) * 3;
        out[to] = clip(Math.floor(r / unit));
        out[to + 1] = clip(Math.floor(g / unit));
        out[to + 2] = clip(Math.floor(b / unit));
      }
    }
    return out;
  }

  // Pillow's NEAREST (ImagingScaleAffine): the source position starts at scale / 2 and grows by scale per output
  // pixel, accumulated in doubles, then truncated.
  function nearestIndex(inSize, outSize) {
    const scale = inSize / outSize;
    const index = new Int32Array(outSize);
    let position = scale * 0.5;
    for (let i = 0; i < outSize; i++) {
      if (i > 0) position += scale;
      index[i] = Math.min(Math.trunc(position), inSize - 1);
    }
    return index;
  }

  // runtime/pil_resize.py pil_resize: uint8 h x w x 3 -> outH x outW x 3 with Pillow's filter `name`.
  function pilResize(pixels, h, w, outH, outW, name) {
    if (h === outH && w === outW) return pixels;
    if (name === 'nearest') {
      const rows = nearestIndex(h, outH);
      const cols = nearestIndex(w, outW);
      const out = new Uint8Array(outH * outW * 3);
      for (let y = 0; y < outH; y++) {
        for (let x = 0; x < outW; x++) {
          const from = (rows[y] * w + cols[x]) * 3;
          const to = (y * outW + x) * 3;
          out[to] = pixels[from];
          out[to + 1] = pixels[from + 1];
          out[to + 2] = pixels[from + 2];
        }
      }
      return out;
    }
    const filter = PIL_FILTERS[name];
    if (!filter) throw new Refusal(`Pillow filter '${name}' is not one the page can reproduce`);
    // Pillow 13 passes vertically first when the height shrinks by more than twice what the width loses; the
    // passes round to 8 bits in between, so the order shows.
    if (h > outH && h - outH > 2 * (w - outW)) {
      const tall = pilPass(pixels, h, w, outH, 0, filter);
      return w !== outW ? pilPass(tall, outH, w, outW, 1, filter) : tall;
    }
    const wide = w !== outW ? pilPass(pixels, h, w, outW, 1, filter) : pixels;
    return h !== outH ? pilPass(wide, h, outW, outH, 0, filter) : wide;
  }

  // Python's round() of a half-integer goes to the even neighbour; torchvision's CenterCrop uses it.
  function roundHalfEven(value) {
    const floor = Math.floor(value);
    const diff = value - floor;
    if (diff > 0.5) return floor + 1;
    if (diff < 0.5) return floor;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  // A ch x cw crop of an h x w x 3 array (Float64Array values or Uint8Array pixels, kept as they are).
  function crop(values, h, w, top, left, ch, cw) {
    const out = new values.constructor(ch * cw * 3);
    for (let y = 0; y < ch; y++) {
      const from = ((y + top) * w + left) * 3;
      out.set(values.subarray(from, from + cw * 3), y * cw * 3);
    }
    return out;
  }

  // The net's view of the photo (explain/views.py): with caffe.io's resize, values (H x W x 3 RGB floats in
  // 0..255 units); with a Pillow filter, pixels (H x W x 3 RGB uint8); and the geometry to place maps back.
  function viewOf(photo) {
    const [, , inH, inW] = config.input.shape;
    const mode = config.preprocess.resize;
    const filter = config.preprocess.resize_filter;
    const pil = filter && filter !== 'caffe' ? filter.slice('pil-'.length) : null;
    const { width, height, rgb } = photo;
    if (mode === 'warp') {
      if (pil) return { pixels: pilResize(rgb, height, width, inH, inW, pil), geometry: { mode } };
      const values = width === inW && height === inH ? rgb : caffeResize(rgb, height, width, inH, inW);
      return { values, geometry: { mode } };
    }
    if (mode === 'crop') {
      const base = config.preprocess.crop_base;
      const top = Math.floor((base - inH) / 2);
      const left = Math.floor((base - inW) / 2);
      const geometry = { mode, canvas: [base, base], top, left };
      if (pil) {
        const resized = pilResize(rgb, height, width, base, base, pil);
        return { pixels: crop(resized, base, base, top, left, inH, inW), geometry };
      }
      const resized = caffeResize(rgb, height, width, base, base);
      return { values: crop(resized, base, base, top, left, inH, inW), geometry };
    }
    if (mode === 'torchvision' && pil) {
      const base = config.preprocess.crop_base;
      const rh = width <= height ? Math.trunc(base * height / width) : base;
      const rw = width <= height ? base : Math.trunc(base * width / height);
      if (rh < inH || rw < inW) {
        throw new Refusal(`${photo.name}: a ${height}x${width} photo resized to ${rh}x${rw} is smaller than the ` +
          `net input ${inH}x${inW}; camcaffe cam refuses it too (use the warp resize).`);
      }
      const resized = pilResize(rgb, height, width, rh, rw, pil);
      const top = roundHalfEven((rh - inH) / 2);
      const left = roundHalfEven((rw - inW) / 2);
      return { pixels: crop(resized, rh, rw, top, left, inH, inW), geometry: { mode, canvas: [rh, rw], top, left } };
    }
    throw new Refusal(`resize '${mode}' with filter '${filter}' is not one the page can reproduce`);
  }

  // The net input of a view, as the Transformer computes it after the resize: channel swap, raw scale, mean, std,
  // input scale. Pillow-resized pixels take Transformer.preprocess_pixels's float32 arithmetic to the bit:
  // float32(pixel) * float32(raw_scale / 255) (skipped when that is 1), then each step rounded to float32.
  function netInput(view) {
    const [batch, channels, inH, inW] = config.input.shape;
    const p = config.preprocess;
    const plane = inH * inW;
    const data = new Float32Array(batch * channels * plane);
    const nhwc = config.input.layout === 'nhwc';
    const store = (c, y, x, v) => { data[nhwc ? (y * inW + x) * channels + c : c * plane + y * inW + x] = v; };
    if (view.pixels) {
      const pixels = view.pixels;
      const scale = Math.fround((p.raw_scale ?? 1.0) / 255);
      const inputScale = p.input_scale === null ? null : Math.fround(p.input_scale);
      for (let c = 0; c < channels; c++) {
        const source = p.channel_swap[c];
        for (let y = 0; y < inH; y++) {
          for (let x = 0; x < inW; x++) {
            let v = pixels[(y * inW + x) * 3 + source];
            if (scale !== 1) v = Math.fround(v * scale);
            if (meanImage) v = Math.fround(v - meanImage[c * plane + y * inW + x]);
            else if (p.mean) v = Math.fround(v - p.mean[c]);
            if (p.std) v = Math.fround(v / p.std[c]);
            if (inputScale !== null) v = Math.fround(v * inputScale);
            store(c, y, x, v);
          }
        }
      }
      return data; // images after the first of a fixed batch stay zero
    }
    const values = view.values;
    for (let c = 0; c < channels; c++) {
      const source = p.channel_swap[c];
      for (let y = 0; y < inH; y++) {
        for (let x = 0; x < inW; x++) {
          let v = Math.fround(values[(y * inW + x) * 3 + source] / 255);
          if (p.raw_scale !== null) v *= p.raw_scale;
          if (meanImage) v -= meanImage[c * plane + y * inW + x];
          else if (p.mean) v -= p.mean[c];
          if (p.std) v /= p.std[c];
          if (p.input_scale !== null) v *= p.input_scale;
          store(c, y, x, v);
        }
      }
    }
    return data; // images after the first of a fixed batch stay zero
  }

  // ---------------------------------------------------------------------------------------------------
  // Maps back over the photo: OpenCV's INTER_LINEAR resize (float), min-max normalisation, the box

  function cvTable(sn, dn) {
    const scale = 1 / (dn / sn);
    const index = new Int32Array(dn);
    const alpha = new Float32Array(dn);
    for (let d = 0; d < dn; d++) {
      let f = Math.fround((d + 0.5) * scale - 0.5);
      let s = Math.floor(f);
      f = Math.fround(f - s);
      if (s < 0) { f = 0; s = 0; }
      if (s >= sn - 1) { f = 0; s = sn - 1; }
      index[d] = s;
      alpha[d] = f;
    }
    return { index, alpha };
  }

  function cvResize(src, sh, sw, dh, dw) {
    const cols = cvTable(sw, dw);
    const rows = cvTable(sh, dh);
    const wide = new Float32Array(sh * dw);
    for (let y = 0; y < sh; y++) {
      for (let x = 0; x < dw; x++) {
        const s = cols.index[x];
        const f = cols.alpha[x];
        const a = src[y * sw + s];
        wide[y * dw + x] = f === 0 ? a : Math.fround(a * Math.fround(1 - f) + src[y * sw + s + 1] * f);
      }
    }
    const out = new Float32Array(dh * dw);
    for (let y = 0; y < dh; y++) {
      const s = rows.index[y];
      const f = rows.alpha[y];
      const f0 = Math.fround(1 - f);
      for (let x = 0; x < dw; x++) {
        const a = wide[s * dw + x];
        out[y * dw + x] = f === 0 ? a : Math.fround(a * f0 + wide[(s + 1) * dw + x] * f);
      }
    }
    return out;
  }

  function normalize(map) {
    let low = Infinity;
    let high = -Infinity;
    for (const v of map) {
      if (v < low) low = v;
      if (v > high) high = v;
    }
    const out = new Float32Array(map.length);
    if (!(high > low)) return out;
    const span = Math.fround(high - low);
    for (let i = 0; i < map.length; i++) out[i] = Math.fround(Math.fround(map[i] - low) / span);
    return out;
  }

  // explain/views.py to_image_space: raw (h x w) -> (photo H x W) in [0, 1].
  function imageMap(raw, mh, mw, geometry, photo) {
    if (geometry.mode === 'warp') return normalize(cvResize(raw, mh, mw, photo.height, photo.width));
    const [, , inH, inW] = config.input.shape;
    const [ch, cw] = geometry.canvas;
    let low = Infinity;
    for (const v of raw) if (v < low) low = v;
    const canvas = new Float32Array(ch * cw).fill(low);
    const up = cvResize(raw, mh, mw, inH, inW);
    for (let y = 0; y < inH; y++) {
      canvas.set(up.subarray(y * inW, (y + 1) * inW), (y + geometry.top) * cw + geometry.left);
    }
    return normalize(cvResize(canvas, ch, cw, photo.height, photo.width));
  }

  // localize/boxes.py box_from_cam: the largest 8-connected region >= threshold * peak (ties: the higher
  // peak, then the region met first in raster order); a flat or non-positive map gives the whole image.
  function boxOf(map, height, width, threshold) {
    let low = Infinity;
    let peak = -Infinity;
    for (const v of map) {
      if (v < low) low = v;
      if (v > peak) peak = v;
    }
    const whole = [0, 0, width - 1, height - 1];
    if (peak <= 0 || peak === low) return whole;
    const cut = Math.fround(threshold * peak);
    const labels = new Int32Array(map.length);
    const stack = new Int32Array(map.length);
    let best = null;
    let count = 0;
    for (let start = 0; start < map.length; start++) {
      if (labels[start] !== 0 || !(map[start] >= cut)) continue;
      count += 1;
      let top = 0;
      stack[top++] = start;
      labels[start] = count;
      const region = { area: 0, peak: -Infinity, x0: width, y0: height, x1: -1, y1: -1 };
      while (top > 0) {
        const at = stack[--top];
        const y = Math.floor(at / width);
        const x = at - y * width;
        region.area += 1;
        if (map[at] > region.peak) region.peak = map[at];
        if (x < region.x0) region.x0 = x;
        if (x > region.x1) region.x1 = x;
        if (y < region.y0) region.y0 = y;
        if (y > region.y1) region.y1 = y;
        for (let dy = -1; dy <= 1; dy++) {
          const ny = y + dy;
          if (ny < 0 || ny >= height) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const nx = x + dx;
            if (nx < 0 || nx >= width) continue;
            const next = ny * width + nx;
            if (labels[next] === 0 && map[next] >= cut) {
              labels[next] = count;
              stack[top++] = next;
            }
          }
        }
      }
      if (!best || region.area > best.area || (region.area === best.area && region.peak > best.peak)) best = region;
    }
    return best ? [best.x0, best.y0, best.x1, best.y1] : whole;
  }

  // ---------------------------------------------------------------------------------------------------
  // Inference

  async function run(data, classIndex) {
    const ort = window.ort;
    const [batch, channels, inH, inW] = config.input.shape;
    const dims = config.input.layout === 'nhwc' ? [batch, inH, inW, channels] : [batch, channels, inH, inW];
    const out = config.outputs;
    const feeds = {
      [config.input.name]: new ort.Tensor('float32', data, dims),
      [out.class_input]: new ort.Tensor('int64', new BigInt64Array(batch).fill(BigInt(classIndex)), [batch, 1]),
    };
    return session.run(feeds, [out.top_classes, out.top_probabilities, out.maps, out.class_probabilities, out.class_maps]);
  }

  function label(index) {
    return config.labels[index] ?? `class_${index}`;
  }

  // ---------------------------------------------------------------------------------------------------
  // Drawing

  function draw() {
    if (!current || !current.map) return;
    const { photo, map, box } = current;
    const canvas = $('canvas');
    canvas.width = photo.width;
    canvas.height = photo.height;
    const context = canvas.getContext('2d');
    if (!current.base) {
      const base = new ImageData(photo.width, photo.height);
      for (let i = 0, j = 0; i < photo.rgb.length; i += 3, j += 4) {
        base.data[j] = photo.rgb[i];
        base.data[j + 1] = photo.rgb[i + 1];
        base.data[j + 2] = photo.rgb[i + 2];
        base.data[j + 3] = 255;
      }
      current.base = base;
    }
    if (!current.heat) {
      const heat = new ImageData(photo.width, photo.height);
      for (let i = 0; i < map.length; i++) {
        const level = Math.round(Math.min(1, Math.max(0, map[i])) * 255);
        const rgb = config.colormap[level];
        heat.data[4 * i] = rgb[0];
        heat.data[4 * i + 1] = rgb[1];
        heat.data[4 * i + 2] = rgb[2];
        heat.data[4 * i + 3] = 255;
      }
      const layer = document.createElement('canvas');
      layer.width = photo.width;
      layer.height = photo.height;
      layer.getContext('2d').putImageData(heat, 0, 0);
      current.heat = layer;
    }
    context.putImageData(current.base, 0, 0);
    context.globalAlpha = Number($('opacity').value);
    context.drawImage(current.heat, 0, 0);
    context.globalAlpha = 1;
    if ($('show-box').checked) {
      const line = Math.max(2, Math.round(Math.max(photo.width, photo.height) / 300));
      context.strokeStyle = '#00ff00';
      context.lineWidth = line;
      context.strokeRect(box[0] + 0.5, box[1] + 0.5, box[2] - box[0], box[3] - box[1]);
    }
  }

  function listClasses() {
    const list = $('classes');
    list.replaceChildren();
    for (const entry of current.top) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.index = String(entry.index);
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.style.width = `${(100 * entry.probability).toFixed(1)}%`;
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = `${label(entry.index)} — ${(100 * entry.probability).toFixed(1)}%`;
      button.append(bar, text);
      button.addEventListener('click', () => exclusive(() => selectClass(entry.index)));
      item.appendChild(button);
      list.appendChild(item);
    }
  }

  function markSelected() {
    for (const button of $('classes').querySelectorAll('button')) {
      button.classList.toggle('selected', Number(button.dataset.index) === current.selected);
    }
  }

  // Map, box and drawing of one class: from the top-K maps, else one more run with cam_class = index.
  async function selectClass(index) {
    const started = performance.now();
    let raw = current.raw.get(index);
    let probability = current.probabilities.get(index);
    if (!raw) {
      const outputs = await run(current.data, index);
      const maps = outputs[config.outputs.class_maps];
      const [, , mh, mw] = maps.dims;
      raw = { data: maps.data.slice(0, mh * mw), mh, mw };
      probability = outputs[config.outputs.class_probabilities].data[0];
      current.raw.set(index, raw);
      current.probabilities.set(index, probability);
    }
    current.selected = index;
    current.map = imageMap(raw.data, raw.mh, raw.mw, current.geometry, current.photo);
    current.box = boxOf(current.map, current.photo.height, current.photo.width, config.box_threshold);
    current.heat = null;
    draw();
    markSelected();
    const [x0, y0, x1, y1] = current.box;
    $('box-line').textContent =
      `${label(index)} (${(100 * probability).toFixed(1)}%): box x ${x0}–${x1}, y ${y0}–${y1}`;
    api.map = current.map;
    api.result = {
      name: current.photo.name,
      width: current.photo.width,
      height: current.photo.height,
      orientation: current.photo.orientation,
      top: current.top.map((e) => ({ index: e.index, label: label(e.index), probability: e.probability })),
      selected: { index, label: label(index), probability },
      box: current.box,
      ep: api.ep,
      threads: api.threads,
      timings: { ...current.timings, map: performance.now() - started },
    };
    return api.result;
  }
  api.selectClass = (index) => exclusive(() => selectClass(index));
  function base64(bytes) {
    let text = '';
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
    return btoa(text);
  }
  // For tests and benchmarks: the current map (float32, photo H x W) and the decoded photo (uint8 RGB).
  api.mapBase64 = () => base64(new Uint8Array(api.map.buffer, api.map.byteOffset, api.map.byteLength));
  api.photoBase64 = () => base64(current.photo.rgb);
  // The net input of the current photo (float32, the first image of the batch) and the current photo resized
  // with one of Pillow's filters (uint8 RGB), to check them against camcaffe's Transformer and pil_resize.
  api.inputBase64 = () => {
    const [, channels, inH, inW] = config.input.shape;
    return base64(new Uint8Array(current.data.buffer, 0, channels * inH * inW * 4));
  };
  api.pilResizeBase64 = (name, outH, outW) => {
    const { rgb, height, width } = current.photo;
    return base64(pilResize(rgb, height, width, outH, outW, name));
  };

  async function explain(file) {
    const started = performance.now();
    hideMessage();
    try {
      if (!session) throw new Refusal('the model is still loading; try again in a moment');
      const bytes = new Uint8Array(await file.arrayBuffer());
      const photo = await decode(bytes, file.name);
      const decoded = performance.now();
      const view = viewOf(photo);
      const data = netInput(view);
      const prepared = performance.now();
      const outputs = await run(data, 0);
      const inferred = performance.now();
      const out = config.outputs;
      const classes = outputs[out.top_classes].data;
      const probabilities = outputs[out.top_probabilities].data;
      const maps = outputs[out.maps];
      const [, k, mh, mw] = maps.dims;
      const shown = Math.min(config.top_k, k);
      current = {
        photo, data, geometry: view.geometry, top: [], raw: new Map(), probabilities: new Map(),
        timings: { decode: decoded - started, preprocess: prepared - decoded, inference: inferred - prepared },
      };
      for (let j = 0; j < shown; j++) {
        const index = Number(classes[j]);
        current.top.push({ index, probability: probabilities[j] });
        current.raw.set(index, { data: maps.data.slice(j * mh * mw, (j + 1) * mh * mw), mh, mw });
        current.probabilities.set(index, probabilities[j]);
      }
      $('image-name').textContent = photo.name;
      $('result').hidden = false;
      listClasses();
      const result = await selectClass(current.top[0].index);
      result.timings.total = performance.now() - started;
      $('timing').textContent =
        `decode ${result.timings.decode.toFixed(0)} ms, preprocess ${result.timings.preprocess.toFixed(0)} ms, ` +
        `model ${result.timings.inference.toFixed(0)} ms, map and box ${result.timings.map.toFixed(0)} ms`;
      api.results += 1;
      settle(result);
    } catch (error) {
      const text = error instanceof Refusal ? error.message : `${file.name}: ${error.message || error}`;
      if (!(error instanceof Refusal)) console.error(error);
      showMessage(text);
      api.error = text;
      settle({ error: text });
    }
  }
  api.explain = (file) => exclusive(() => explain(file));

  async function otherClass() {
    if (!current) return;
    const text = $('other').value.trim();
    if (!text) return;
    let index = /^\d+$/.test(text) ? Number(text) : config.labels.findIndex((l) => l === text);
    if (index < 0) {
      const lower = text.toLowerCase();
      index = config.labels.findIndex((l) => l.toLowerCase().includes(lower));
    }
    if (index < 0 || index >= config.num_classes) {
      showMessage(`no class '${text}': give a class name from the list or an index 0–${config.num_classes - 1}`);
      return;
    }
    hideMessage();
    try {
      await selectClass(index);
    } catch (error) {
      console.error(error);
      showMessage(String(error.message || error));
    }
  }

  function wire() {
    $('file').addEventListener('change', (event) => {
      const file = event.target.files[0];
      event.target.value = ''; // picking the same file again is a new request
      if (file) exclusive(() => explain(file));
    });
    const drop = $('drop');
    drop.addEventListener('dragover', (event) => {
      event.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      drop.classList.remove('over');
      const file = event.dataTransfer.files[0];
      if (file) exclusive(() => explain(file));
    });
    $('opacity').addEventListener('input', draw);
    $('show-box').addEventListener('change', draw);
    $('other').addEventListener('change', () => exclusive(otherClass));
  }

  wire();
  api.ready = boot().then(
    () => true,
    (error) => {
      console.error(error);
      const hint = location.protocol === 'file:'
        ? ' Pages opened from file:// cannot load the model: serve the folder over HTTP ' +
          '(python3 -m http.server -d SITE 8000) and open http://localhost:8000/.'
        : '';
      showMessage(`The model did not load: ${error.message || error}.${hint}`);
      api.error = String(error.message || error);
      return false;
    },
  );
})();

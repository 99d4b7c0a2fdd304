"""JPEG decoding speed on one core: PIL against reduced-size (DCT-scaled) decoding and libjpeg-turbo bindings.

Images per second of decoding alone (the encoded bytes are read into memory first, so no file I/O is timed),
with ``torch.set_num_threads(1)``, on two sets:

* the real photos of ``../shared/data/raccoon/JPEGImages`` (200 JPEGs, 178x283 to 2000x1333 px);
* ``--count`` photo-like JPEGs at ImageNet's typical sizes (500x375, 375x500, 500x333, ...; quality 90, about
  120 KB each, as ImageNet's average), generated here into a temporary directory (:func:`imagenet_like_jpegs`:
  smooth colour fields, shapes with edges, luminance texture at several scales and sensor noise, so the JPEGs
  are as large as real photos of that size, not the few KB of flat colour).

Decoders: PIL (``Image.open`` + ``convert("RGB")``, what torchvision's ``ImageFolder`` and the official
``main.py`` do), PIL with ``draft("RGB", (w // 2, h // 2))`` and ``// 4`` (libjpeg's DCT scaling: the image
comes out at half or a quarter of its side, decoded from fewer coefficients), ``torchvision.io.decode_jpeg`` one
image at a time and on a list of 64, and, when installed, TorchCodec's ``decode_jpeg``, simplejpeg (full size,
``fastdct`` + ``fastupsample``, and ``min_height`` / ``min_width`` at 1/2 and 1/4 of the side) and PyTurboJPEG
(full size, ``scaling_factor`` 1/2 and 1/4; PyTurboJPEG 1.x for the system's libjpeg-turbo 2.x). Every decoder
is asked for RGB (grayscale JPEGs come out as 3 channels). Each repeat passes every chunk of 64 images through
every decoder in turn (fine interleaving); the figure is the median over repeats and the ratio is against PIL's
full decode in the same run, so a busy shared machine slows all rows alike. The pixel check compares each
full-size decoder with PIL (mean and max absolute difference, 0-255) and each reduced decoder with PIL's draft
at the same scale.

    python benchmarks/decoders.py                          # 200 raccoon photos + 1000 generated, 5 repeats
    python benchmarks/decoders.py --count 3000 --repeats 5
    pip install simplejpeg "PyTurboJPEG<2" torchcodec      # optional rows (PyTurboJPEG needs libturbojpeg0)
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter

from barlowtwins.runtime import cpu_description, usable_cpus

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon" / "JPEGImages"
# ImageNet's most common sizes (width, height) and roughly how often they occur among its training images
IMAGENET_SIZES = [
    ((500, 375), 40),
    ((375, 500), 12),
    ((500, 333), 12),
    ((333, 500), 5),
    ((500, 334), 5),
    ((500, 500), 6),
    ((500, 400), 5),
    ((400, 500), 3),
    ((640, 480), 4),
    ((800, 600), 3),
    ((1024, 768), 2),
    ((300, 225), 3),
]
QUALITY = 90
LIST_BATCH = 64


def _field(rng: np.random.Generator, width: int, height: int, cell: int, amplitude: float, channels: int):
    """Smooth random field: uniform noise on a grid of ``cell`` px, upsampled bicubic (H, W, channels)."""
    grid = rng.uniform(-amplitude, amplitude, size=(channels, max(2, height // cell), max(2, width // cell)))
    return np.stack(
        [
            np.asarray(Image.fromarray(g.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC))
            for g in grid
        ],
        axis=-1,
    )


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: colour gradients, a few shapes with soft edges, luminance texture at 2 and 5 px
    and sensor noise; at quality 90 a 500x375 one encodes to ~100-140 KB, as ImageNet photos do."""
    corners = rng.integers(30, 226, size=(3, 4, 3), dtype=np.uint8)
    picture = Image.fromarray(corners).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.integers(4, 12)):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * (width, height)
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * width, y0 + rng.uniform(0.05, 0.5) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = np.asarray(picture.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    texture = rng.uniform(2.0, 3.5)
    image = image + _field(rng, width, height, 16, 12, 3)
    luminance = _field(rng, width, height, 5, 22 * texture, 1) + _field(rng, width, height, 2, 26 * texture, 1)
    luminance += rng.normal(0, 5 * texture, size=(height, width, 1))
    image += luminance + rng.normal(0, 2, size=image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def _write_photo(job: tuple[int, int, str]) -> None:
    index, seed, directory = job
    rng = np.random.default_rng([seed, index])
    sizes, weights = zip(*IMAGENET_SIZES, strict=True)
    width, height = sizes[rng.choice(len(sizes), p=np.array(weights) / sum(weights))]
    photo_like(rng, width, height).save(Path(directory) / f"photo-{index:06d}.jpg", quality=QUALITY)


def imagenet_like_jpegs(directory: str | Path, count: int, seed: int = 0, processes: int | None = None) -> list[Path]:
    """Write ``count`` photo-like JPEGs at ImageNet's typical sizes into ``directory`` (in parallel); their paths."""
    jobs = [(i, seed, str(directory)) for i in range(count)]
    with ProcessPoolExecutor(processes or usable_cpus()) as pool:
        list(pool.map(_write_photo, jobs, chunksize=16))
    return sorted(Path(directory).glob("photo-*.jpg"))


def machine() -> str:
    """The CPU's model name, the vector instructions torch uses on it, and the core count."""
    return f"{cpu_description()}, {os.cpu_count()} cores"


def _pil(data: bytes, scale: int = 1) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return image.convert("RGB")


def decoders() -> dict[str, tuple[Callable[[list[bytes]], object], Callable[[object], None], int]]:
    """name -> (prepare the encoded set, decode all of it, scale): ``prepare`` runs untimed."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def tensors(encoded: list[bytes]) -> list[torch.Tensor]:
        return [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]

    def listed(inputs: list[torch.Tensor]) -> None:
        for start in range(0, len(inputs), LIST_BATCH):
            decode_jpeg(inputs[start : start + LIST_BATCH], mode=ImageReadMode.RGB)

    same = lambda encoded: encoded  # noqa: E731
    found = {
        "PIL full decode": (same, lambda encoded: [_pil(d) for d in encoded], 1),
        "PIL draft 1/2": (same, lambda encoded: [_pil(d, 2) for d in encoded], 2),
        "PIL draft 1/4": (same, lambda encoded: [_pil(d, 4) for d in encoded], 4),
        "torchvision decode_jpeg": (
            tensors,
            lambda inputs: [decode_jpeg(t, mode=ImageReadMode.RGB) for t in inputs],
            1,
        ),
        f"torchvision decode_jpeg, lists of {LIST_BATCH}": (tensors, listed, 1),
    }
    try:
        from torchcodec.decoders import decode_jpeg as codec_jpeg

        found["torchcodec decode_jpeg"] = (tensors, lambda inputs: [codec_jpeg(t, mode="RGB") for t in inputs], 1)
    except ImportError:
        pass
    try:
        import simplejpeg

        def simple(scale: int, **options) -> Callable[[list[bytes]], None]:
            def run(encoded: list[bytes]) -> list[np.ndarray]:
                out = []
                for data in encoded:
                    height, width = simplejpeg.decode_jpeg_header(data)[:2]
                    sized = dict(min_height=height // scale, min_width=width // scale) if scale > 1 else {}
                    out.append(simplejpeg.decode_jpeg(data, colorspace="RGB", **sized, **options))
                return out

            return run

        found["simplejpeg"] = (same, simple(1), 1)
        found["simplejpeg fastdct+fastupsample"] = (same, simple(1, fastdct=True, fastupsample=True), 1)
        found["simplejpeg min size 1/2"] = (same, simple(2), 2)
        found["simplejpeg min size 1/4"] = (same, simple(4), 4)
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        turbo = TurboJPEG()  # raises when libturbojpeg is missing or of the wrong version

        def scaled(scale: int) -> Callable[[list[bytes]], list[np.ndarray]]:
            factor = (1, scale) if scale > 1 else None
            return lambda encoded: [turbo.decode(d, pixel_format=TJPF_RGB, scaling_factor=factor) for d in encoded]

        found["PyTurboJPEG"] = (same, scaled(1), 1)
        found["PyTurboJPEG scaling 1/2"] = (same, scaled(2), 2)
        found["PyTurboJPEG scaling 1/4"] = (same, scaled(4), 4)
    except (ImportError, OSError, RuntimeError):
        pass
    return found


def _hwc(image) -> np.ndarray:
    """Any decoder's output as (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image)


def agreement(encoded: list[bytes], found: dict) -> list[str]:
    """Mean / max absolute difference of each decoder's pixels from PIL's at the same scale (draft for 1/2, 1/4)."""
    lines = []
    for name, (prepare, run, scale) in found.items():
        if name.startswith("PIL"):
            continue
        inputs = prepare(encoded)
        outputs = run(inputs) if "lists" not in name else None
        if outputs is None:
            continue
        diffs, shapes = [], 0
        for data, out in zip(encoded, outputs, strict=True):
            reference, mine = np.asarray(_pil(data, scale)).astype(np.int16), _hwc(out).astype(np.int16)
            if reference.shape != mine.shape:
                shapes += 1
                continue
            diffs.append(np.abs(reference - mine))
        against = "PIL" if scale == 1 else f"PIL draft 1/{scale}"
        if diffs:
            mean = np.mean([d.mean() for d in diffs])
            worst = max(int(d.max()) for d in diffs)
            text = f"mean |diff| {mean:.3f}, max {worst}"
        else:
            text = "no image of the same shape"
        shape_note = f" ({shapes} of {len(encoded)} differ in shape)" if shapes else ""
        lines.append(f"  {name:36s} vs {against:16s}: {text}{shape_note}")
    return lines


def bench(encoded: list[bytes], found: dict, repeats: int, chunk: int = LIST_BATCH) -> dict[str, float]:
    """Median images/s of each decoder over ``repeats`` passes over ``encoded`` (after one warm-up each).

    Interleaved finely: each chunk of ``chunk`` images goes through every decoder in turn (in a rotating order)
    before the next chunk, so load from other jobs on a shared machine falls on all decoders alike."""
    prepared = {name: (prepare(encoded), run) for name, (prepare, run, _) in found.items()}
    for inputs, run in prepared.values():
        run(inputs[:8])
    names = list(prepared)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        seconds = dict.fromkeys(names, 0.0)
        for number, start in enumerate(range(0, len(encoded), chunk)):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                inputs, run = prepared[name]
                started = time.perf_counter()
                run(inputs[start : start + chunk])
                seconds[name] += time.perf_counter() - started
        for name in names:
            rates[name].append(len(encoded) / seconds[name])
    return {name: statistics.median(r) for name, r in rates.items()}


def report(title: str, encoded: list[bytes], found: dict, repeats: int, check: int) -> None:
    sizes = [Image.open(io.BytesIO(d)).size for d in encoded]
    megapixels = sum(w * h for w, h in sizes) / 1e6
    print(
        f"\n## {title}: {len(encoded)} JPEGs, median {int(np.median([w for w, _ in sizes]))}x"
        f"{int(np.median([h for _, h in sizes]))} px, {np.mean([len(d) for d in encoded]) / 1e3:.0f} KB on average, "
        f"{megapixels / len(encoded):.2f} Mpx each"
    )
    rates = bench(encoded, found, repeats)
    reference = rates["PIL full decode"]
    print(f"| decoder (one core, median of {repeats}) | images/s | source Mpx/s | × PIL full decode |")
    print("|---|---:|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate * megapixels / len(encoded):,.0f} | {rate / reference:.2f}× |")
    if check:
        print(f"Pixel agreement on the first {check}:")
        for line in agreement(encoded[:check], found):
            print(line)
    sys.stdout.flush()


def versions() -> str:
    parts = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}", f"Pillow {PIL.__version__}"]
    from PIL import features

    parts.append(f"Pillow's libjpeg-turbo {features.version('libjpeg_turbo')}")
    for module in ("simplejpeg", "turbojpeg", "torchcodec"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except (ImportError, AttributeError):
            parts.append(f"{module} not installed")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raccoon", default=str(RACCOON), help="folder of real JPEGs ('' to skip)")
    parser.add_argument("--count", type=int, default=1000, help="photo-like JPEGs at ImageNet sizes to generate")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved passes per decoder (median reported)")
    parser.add_argument("--check", type=int, default=8, help="images per set in the pixel-agreement check")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*TorchVision are deprecated.*")
    torch.set_num_threads(1)
    print(f"$ python {shlex.join(['benchmarks/decoders.py', *sys.argv[1:]])}")
    print(f"Machine: {machine()}; {versions()}; torch threads {torch.get_num_threads()}")
    found = decoders()
    if args.raccoon:
        paths = sorted(Path(args.raccoon).glob("*.jpg"))
        report(f"Real photos ({args.raccoon})", [p.read_bytes() for p in paths], found, args.repeats, args.check)
    if args.count:
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            paths = imagenet_like_jpegs(directory, args.count)
            print(f"\n(generated {len(paths)} photo-like JPEGs in {time.perf_counter() - started:.0f} s, untimed)")
            encoded = [p.read_bytes() for p in paths]
        report("Photo-like JPEGs at ImageNet sizes", encoded, found, args.repeats, args.check)


if __name__ == "__main__":
    main()

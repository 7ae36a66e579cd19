"""The media benchmark: how many photos one worker makes into their variants per second, against Pillow's own
resize and encode of the same variants, in the same run (issue 14's target: at least 0.8 of it).

``python -m bench.media [--megapixels 12] [--repeats 5] [--out DIR]`` prints a markdown table and writes
``media.json`` and ``media.md`` (to ``bench/results`` by default).

- **Ours** is what a ``process_media`` job does to one upload but the store's writes: open and check it
  (``feed.media.images.process``: allowlist, pixel limit, orientation, metadata dropped, three WebP variants, a
  blurhash), then seal each variant (``crypto.stream``).
- **The peer** is Pillow alone: open, convert, resize the original to each variant's size and encode it as WebP
  at the same quality, nothing else.
- The photo is made here, the same for both: a 4:3 JPEG with smooth gradients and fine noise (like a photo, for
  the encoders) and an EXIF block with a GPS position. Both run in this process, alternately, and the medians of
  the repeats are compared.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageFilter

from crypto import FieldContext, UserKey
from crypto.stream import seal_stream
from feed.media import images

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.8


def photo(megapixels: float, seed: int = 1) -> bytes:
    """A JPEG of about ``megapixels`` (4:3), photo-like, with GPS in its EXIF."""
    width = int((megapixels * 1_000_000 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    rng = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    grain = Image.frombytes("RGB", (width // 4, height // 4), rng.randbytes(width // 4 * (height // 4) * 3))
    grain = grain.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.Resampling.BILINEAR)
    picture = Image.blend(gradient, grain, 0.45)
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=88, exif=exif)
    return out.getvalue()


def ours(data: bytes, key: UserKey) -> None:
    done = images.process(data)
    for name, variant in done.variants.items():
        for _ in seal_stream(key, FieldContext(f"media:{name}", 1, key.user_id, 0), [variant.data]):
            pass


def peer(data: bytes) -> None:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    for name, longest in images.VARIANTS.items():
        scale = min(1.0, longest / max(image.size))
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        resized.save(io.BytesIO(), "WEBP", quality=images.QUALITY[name], method=4)


def measure(megapixels: float, repeats: int) -> dict[str, object]:
    data = photo(megapixels)
    key = UserKey.generate(1, 1)
    runs: dict[str, list[float]] = {"ours": [], "peer": []}
    targets: dict[str, Callable[[], None]] = {"ours": lambda: ours(data, key), "peer": lambda: peer(data)}
    for target in targets.values():  # warm: the encoders' first calls set up their tables
        target()
    for _ in range(repeats):
        for name, target in targets.items():
            started = time.perf_counter()
            target()
            runs[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    ratio = seconds["peer"] / seconds["ours"]
    return {
        "megapixels": round(megapixels, 1),
        "jpeg_bytes": len(data),
        "repeats": repeats,
        "seconds": {name: round(value, 4) for name, value in seconds.items()},
        "images_per_second": {name: round(1 / value, 3) for name, value in seconds.items()},
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
        "samples": {name: [round(t, 4) for t in times] for name, times in runs.items()},
    }


def table(result: dict[str, object]) -> str:
    per_second: dict[str, float] = result["images_per_second"]  # type: ignore[assignment]
    lines = [
        "| metric | cipherfeed | peer (Pillow resize + encode) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| photos to all variants per second, one worker ({result['megapixels']} MP JPEG) | {per_second['ours']} | "
        f"{per_second['peer']} | {result['ratio']} | >= {TARGET} | {'yes' if result['met'] else '**no**'} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.megapixels <= 0 or args.repeats < 1:
        parser.error("--megapixels must be positive and --repeats at least 1")
    result = measure(args.megapixels, args.repeats)
    text = table(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "media.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "media.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

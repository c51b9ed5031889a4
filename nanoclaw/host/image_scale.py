"""An image someone sent, made into one the model takes, in a tool unit of the group.

Decoding an image is parsing input a stranger chose, so the host never does it: a fresh
tool unit of the group (its sandbox, memory and time limits) runs Pillow on the bytes
(stdin) and writes a JPEG (stdout). The result is turned upright (EXIF orientation), its
longest side is at most LONGEST_SIDE pixels, transparency is laid on white, and nothing of
the original's metadata (camera, place) is kept. The host reads only that output, bounded,
checks it is a JPEG of at most MAX_IMAGE_BYTES, and passes it to the model as data.

The interpreter is `image_scaler_python` in the config: a Python 3 with Pillow, as the
tool units see it (`/usr/bin/python3` with Debian's python3-pil; the NixOS module gives
one from nixpkgs). Run with -I: no environment variable or user site can change it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.sandbox.client import SandboxError

# What the model API takes: 5 MB of base64 per image (3/4 of that in bytes), and it
# scales anything larger than 1568 pixels down itself (so more is only cost).
MAX_IMAGE_BYTES = 5 * 1024 * 1024 * 3 // 4
LONGEST_SIDE = 1568
JPEG_MAGIC = b"\xff\xd8\xff"

# argv: the longest side, the most bytes. Smaller sides and lower qualities are tried until
# the JPEG fits. A decompression bomb (more pixels than any camera makes) is an error, not
# a warning; the unit's memory limit bounds the rest.
SCRIPT = """\
import io, sys, warnings
from PIL import Image, ImageOps
Image.MAX_IMAGE_PIXELS = 100_000_000
warnings.simplefilter("error", Image.DecompressionBombWarning)
side, limit = int(sys.argv[1]), int(sys.argv[2])
image = Image.open(io.BytesIO(sys.stdin.buffer.read()))
image.draft("RGB", (side, side))
image = ImageOps.exif_transpose(image)
if image.mode in ("RGBA", "LA", "PA", "P"):
    image = image.convert("RGBA")
    flat = Image.new("RGB", image.size, "white")
    flat.paste(image, mask=image.getchannel("A"))
    image = flat
image = image.convert("RGB")
for fraction in (1, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1):
    smaller = image.copy()
    smaller.thumbnail((int(side * fraction), int(side * fraction)))
    for quality in (85, 60, 40):
        out = io.BytesIO()
        smaller.save(out, "JPEG", quality=quality)
        if out.tell() <= limit:
            sys.stdout.buffer.write(out.getvalue())
            sys.exit(0)
sys.exit(f"no JPEG of it fits in {limit} bytes")
"""

RunTool = Callable[[str, Sequence[str], bytes], Awaitable[RunResult]]


class NotScaled(Exception):
    """Why the unit gave no image; the text is for the room and the model."""


async def scale(run_tool: RunTool, group: str, python: str, data: bytes) -> bytes:
    """The JPEG the group's tool unit made of `data`."""
    result = await _run(run_tool, group, python, data, MAX_IMAGE_BYTES)
    if result.truncated:  # the group's output limit is lower: now it is known, fit that
        result = await _run(run_tool, group, python, data, len(result.stdout))
    if result.truncated:
        raise NotScaled("the scaled image is larger than the group's output limit")
    if not result.stdout.startswith(JPEG_MAGIC) or len(result.stdout) > MAX_IMAGE_BYTES:
        raise NotScaled("the image scaler gave something other than a JPEG within bounds")
    return result.stdout


async def _run(run_tool: RunTool, group: str, python: str, data: bytes, limit: int) -> RunResult:
    argv = (python, "-I", "-c", SCRIPT, str(LONGEST_SIDE), str(limit))
    try:
        result = await run_tool(group, argv, data)
    except SandboxError as error:
        raise NotScaled(f"could not scale it: {error}") from None
    if not result.ok:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1][:200] if lines else result.result  # Python's error, or systemd's
        raise NotScaled(f"could not read it as an image ({last})")
    return result

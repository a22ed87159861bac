"""Render the icon dataset's items (SVG, image files, grey-scale bitmaps) to RGB PNG bytes."""
from __future__ import annotations

import io
import logging
import multiprocessing as mp

from jest_ds.data.shards import pad_to_square
from jest_ds.datasets.icons import sources as S

log = logging.getLogger("jest_ds.datasets.icons")


def _fit_on_white(img, size: int):
    """RGBA/any PIL image -> RGB ``size``×``size``, aspect kept, centred on white."""
    from PIL import Image

    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = pad_to_square(Image.alpha_composite(bg, img).convert("RGB"))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def _cairo_rgb(tree, size: int):
    """Render a parsed cairosvg tree onto a white ``size``×``size`` surface -> PIL RGB image
    (no PNG encode/decode round trip inside cairo)."""
    import numpy as np
    from cairosvg.surface import PNGSurface
    from PIL import Image

    surf = PNGSurface(tree, None, 96, output_width=size, output_height=size, background_color="white")
    try:
        c = surf.cairo
        c.flush()
        w, h, stride = c.get_width(), c.get_height(), c.get_stride()
        a = np.frombuffer(c.get_data(), np.uint8).reshape(h, stride)[:, : w * 4].reshape(h, w, 4)
        img = Image.fromarray(np.ascontiguousarray(a[:, :, [2, 1, 0]]))  # BGRA (opaque) -> RGB
    finally:
        surf.finish()
    if img.size != (size, size):
        img = _fit_on_white(img, size)
    return img


def render_png(spec: tuple, size: int) -> bytes | None:
    """Render one item's image to RGB PNG bytes (None when it cannot be rendered).

    kinds: ("svg", text) square icon SVG; ("svgfile", path) square SVG file;
    ("file", path) any PNG/SVG file (aspect kept, padded white); ("gray", bytes, w, h).
    """
    import cairosvg
    from cairosvg.parser import Tree
    from PIL import Image

    try:
        kind = spec[0]
        if kind == "svg":
            img = _cairo_rgb(Tree(bytestring=spec[1].encode("utf-8")), size)
        elif kind == "svgfile":
            img = _cairo_rgb(Tree(url=spec[1]), size)
        elif kind == "file":
            path = spec[1]
            if path.endswith(".svg"):
                raw = cairosvg.svg2png(url=path, output_width=4 * size)
                img = Image.open(io.BytesIO(raw))
            else:
                img = Image.open(path)
                img.load()
            img = _fit_on_white(img, size)
        elif kind == "gray":
            _, data, w, h = spec
            img = Image.frombytes("L", (w, h), data).resize((size, size), Image.Resampling.BICUBIC)
            img = img.convert("RGB")
        else:
            raise ValueError(f"unknown render kind {kind!r}")
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    except Exception as e:  # a broken upstream SVG must not stop the build
        log.debug("render failed: %s", e)
        return None


def _render_task(args):
    spec, size = args
    return render_png(spec, size)


def render_all(items: list[S.Item], size: int, workers: int, desc: str, progress: bool) -> list[bytes | None]:
    from tqdm import tqdm

    tasks = [(it.render, size) for it in items]
    bar = tqdm(total=len(tasks), desc=f"render {desc}", unit="img", disable=not progress,
               mininterval=1.0)
    out: list[bytes | None] = []
    if workers > 1 and len(tasks) > 256:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for r in pool.imap(_render_task, tasks, chunksize=64):
                out.append(r)
                bar.update(1)
    else:
        for t in tasks:
            out.append(_render_task(t))
            bar.update(1)
    bar.close()
    return out

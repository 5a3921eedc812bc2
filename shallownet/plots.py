"""Saving a matplotlib figure once: rendered to PNG a single time, the same bytes go to the file and to
TensorBoard (add_figure would render it again)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from shallownet.run_folder import replace_bytes


def save_figure(fig, path: Path, writer=None, tag: str | None = None, dpi: int = 120) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    png = buffer.getvalue()
    replace_bytes(Path(path), png)  # aside, then renamed: never a half-written PNG under its name
    if writer is not None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = struct.unpack(">II", png[16:24])  # the PNG header's IHDR chunk
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), 0)


PAD = 0.1  # inches of margin around every figure: text flush with the edge reads as cut off


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure (no pyplot state, no GUI backend) laid out by constrained layout with PAD."""
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return Figure(figsize=figsize, layout=ConstrainedLayoutEngine(w_pad=PAD, h_pad=PAD))

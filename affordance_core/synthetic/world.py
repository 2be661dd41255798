"""A procedural world of objects made of typed parts, seen alone (ego) or used by a person (exo).

Every object category is an arrangement of parts; every part has a *type* (``PART_TYPES``)
with its own shape family and texture pattern, while colours are drawn per instance from the
same distribution for every part type. Actions (``AFFORDANCES``) map each object to the part
types that afford them, and most objects afford several actions on different parts, so that
recognising the object does not tell where the action happens.

Objects are defined in a canonical frame (x to the right, y down, extent about [-1, 1]) and
placed in the image by a similarity transform (rotation, scale, translation, optional mirror).
Backgrounds, clutter, distractor objects and colour jitter follow one distribution for all
classes, so only object and part cues are informative.

Coordinates of pixel centres are integers (OpenCV convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "EXO_SCALE_BENCHMARK",
    "EXO_SCALE_PRETRAIN",
    "PART_TYPES",
    "OBJECTS",
    "AFFORDANCES",
    "ObjectSpec",
    "Part",
    "Scene",
    "afforded_parts",
    "background_image",
    "list_actions",
    "make_contact_sheet",
    "object_caption",
    "render_scene",
]

PART_TYPES: list[str] = [
    "handle",
    "blade",
    "head",
    "rim",
    "body",
    "spout",
    "seat",
    "bar",
    "wheel",
    "screen",
    "keys",
]
_PART_INDEX = {name: i for i, name in enumerate(PART_TYPES)}

_Poly = np.ndarray  # (N, 2) float64 polygon in canonical object coordinates


@dataclass(frozen=True)
class Part:
    """One part of an object instance, in canonical object coordinates.

    Attributes:
        type: Part type, one of ``PART_TYPES``.
        ops: Polygons drawn in order; ``(poly, True)`` fills, ``(poly, False)`` erases (holes).
        frame: ``(cx, cy, angle, half_length, half_width)`` of the part's own axis, used by
            its texture pattern (angle in radians, lengths in object units).
    """

    type: str
    ops: tuple[tuple[_Poly, bool], ...]
    frame: tuple[float, float, float, float, float]


@dataclass(frozen=True)
class ObjectSpec:
    """An object category.

    Attributes:
        name: Category name, as used in directory names (``snake_case``).
        parts: Part types of the category, in drawing order (later parts on top).
        upright: True if the object keeps a gravity-aligned pose (small rotations only);
            False for hand tools, which appear at any rotation.
        build: Draws one random instance: ``build(rng) -> list[Part]``.
    """

    name: str
    parts: tuple[str, ...]
    upright: bool
    build: Callable[[np.random.Generator], list[Part]] = field(repr=False)


# ---------------------------------------------------------------------------------------------
# Shape primitives (canonical coordinates)


def _ellipse(
    cx: float,
    cy: float,
    a: float,
    b: float,
    angle: float = 0.0,
    t0: float = 0.0,
    t1: float = 2 * math.pi,
    n: int = 48,
) -> _Poly:
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    c, s = math.cos(angle), math.sin(angle)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _rrect(
    cx: float, cy: float, w: float, h: float, angle: float = 0.0, power: float = 6.0, n: int = 64
) -> _Poly:
    """Rounded rectangle as a superellipse of the given exponent (higher = squarer)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = 0.5 * w * np.sign(ct) * np.abs(ct) ** (2 / power)
    y = 0.5 * h * np.sign(st) * np.abs(st) ** (2 / power)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _rod(p0: Sequence[float], p1: Sequence[float], width: float, power: float = 8.0) -> _Poly:
    """Rounded rod from ``p0`` to ``p1``."""
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    return _rrect(
        (x0 + x1) / 2,
        (y0 + y1) / 2,
        length + width * 0.5,
        width,
        math.atan2(y1 - y0, x1 - x0),
        power,
    )


def _rod_frame(
    p0: Sequence[float], p1: Sequence[float], width: float
) -> tuple[float, float, float, float, float]:
    (x0, y0), (x1, y1) = p0, p1
    return (
        (x0 + x1) / 2,
        (y0 + y1) / 2,
        math.atan2(y1 - y0, x1 - x0),
        math.hypot(x1 - x0, y1 - y0) / 2 + width / 4,
        width / 2,
    )


def _ring(
    cx: float, cy: float, a: float, b: float, thick: float, angle: float = 0.0
) -> tuple[tuple[_Poly, bool], ...]:
    return (
        (_ellipse(cx, cy, a, b, angle), True),
        (_ellipse(cx, cy, max(a - thick, 1e-3), max(b - thick, 1e-3), angle), False),
    )


def _poly(*pts: Sequence[float]) -> _Poly:
    return np.asarray(pts, dtype=np.float64)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _fill(*polys: _Poly) -> tuple[tuple[_Poly, bool], ...]:
    return tuple((p, True) for p in polys)


# ---------------------------------------------------------------------------------------------
# Object builders: each returns the parts of one random instance


def _knife(rng: np.random.Generator) -> list[Part]:
    x_joint, w = _u(rng, -0.35, -0.15), _u(rng, 0.16, 0.22)
    hb, tip = _u(rng, 0.13, 0.2), _u(rng, 0.85, 1.0)
    handle = Part(
        "handle",
        _fill(_rod((-0.95, 0.0), (x_joint, 0.0), w)),
        _rod_frame((-0.95, 0.0), (x_joint, 0.0), w),
    )
    blade = _poly(
        (x_joint, -hb),
        (tip * 0.9, -hb * 0.9),
        (tip, -hb * 0.6),
        (tip * 0.55, hb * 0.7),
        (x_joint, hb),
    )
    return [
        handle,
        Part("blade", _fill(blade), ((x_joint + tip) / 2, 0.0, 0.0, (tip - x_joint) / 2, hb)),
    ]


def _scissors(rng: np.random.Generator) -> list[Part]:
    spread, length = _u(rng, 0.1, 0.3), _u(rng, 0.8, 0.95)
    w = _u(rng, 0.08, 0.12)
    blades = tuple(
        (
            _poly(
                (-0.05, -w * sgn * 0.2),
                (length, sgn * spread - w * 0.2),
                (length * 0.95, sgn * spread + w * 0.3),
                (-0.05, w * sgn * 1.2),
            ),
            True,
        )
        for sgn in (-1.0, 1.0)
    )
    hx, hr = _u(rng, -0.6, -0.5), _u(rng, 0.22, 0.28)
    handle_ops: tuple[tuple[_Poly, bool], ...] = ()
    for sgn in (-1.0, 1.0):
        handle_ops += ((_rod((-0.1, 0.0), (hx + hr * 0.6, sgn * hr), 0.12), True),)
        handle_ops += _ring(hx, sgn * hr * 1.1, hr, hr * 0.8, 0.09)
    return [
        Part("blade", blades, (length / 2, 0.0, 0.0, length / 2, spread + w)),
        Part("handle", handle_ops, (hx, 0.0, math.pi / 2, hr * 2, hr)),
    ]


def _axe(rng: np.random.Generator) -> list[Part]:
    end, w = _u(rng, 0.6, 0.75), _u(rng, 0.13, 0.17)
    bw, bh = _u(rng, 0.3, 0.45), _u(rng, 0.55, 0.75)
    blade = _poly(
        (end - 0.18, -0.06),
        (end + 0.08, -0.06),
        (end + bw * 0.6, -bh),
        (end - bw * 0.8, -bh),
        (end - 0.22, -0.2),
    )
    return [
        Part(
            "handle",
            _fill(_rod((-0.95, 0.0), (end, 0.0), w)),
            _rod_frame((-0.95, 0.0), (end, 0.0), w),
        ),
        Part("blade", _fill(blade), (end - 0.05, -bh / 2, math.pi / 2, bh / 2, bw / 2)),
    ]


def _hammer(rng: np.random.Generator) -> list[Part]:
    end, w = _u(rng, 0.45, 0.6), _u(rng, 0.13, 0.18)
    hw, hh = _u(rng, 0.28, 0.38), _u(rng, 0.7, 0.95)
    return [
        Part(
            "handle",
            _fill(_rod((-0.95, 0.0), (end, 0.0), w)),
            _rod_frame((-0.95, 0.0), (end, 0.0), w),
        ),
        Part(
            "head",
            _fill(_rrect(end + hw * 0.3, -0.1, hw, hh, power=8)),
            (end + hw * 0.3, -0.1, math.pi / 2, hh / 2, hw / 2),
        ),
    ]


def _racket(rng: np.random.Generator) -> list[Part]:
    x_joint, w = _u(rng, -0.3, -0.15), _u(rng, 0.12, 0.16)
    a, b = _u(rng, 0.5, 0.58), _u(rng, 0.36, 0.45)
    cx = x_joint + a * 0.92
    head = _fill(
        _ellipse(cx, 0.0, a, b),
        _poly(
            (x_joint - 0.05, -w / 2),
            (cx - a * 0.6, -b * 0.6),
            (cx - a * 0.6, b * 0.6),
            (x_joint - 0.05, w / 2),
        ),
    )
    return [
        Part(
            "handle",
            _fill(_rod((-0.95, 0.0), (x_joint, 0.0), w)),
            _rod_frame((-0.95, 0.0), (x_joint, 0.0), w),
        ),
        Part("head", head, (cx, 0.0, 0.0, a, b)),
    ]


def _container(rng: np.random.Generator, mug: bool) -> list[Part]:
    top, bottom = -0.45, _u(rng, 0.6, 0.8)
    wt = _u(rng, 0.75, 0.85) if mug else _u(rng, 0.9, 1.05)
    wb = wt * (_u(rng, 0.95, 1.0) if mug else _u(rng, 0.6, 0.75))
    body = _poly(
        (-wt / 2, top),
        (wt / 2, top),
        (wb / 2, bottom - 0.06),
        (wb / 2 - 0.06, bottom),
        (-wb / 2 + 0.06, bottom),
        (-wb / 2, bottom - 0.06),
    )
    rb = _u(rng, 0.11, 0.15)
    rim = ((_ellipse(0.0, top, wt / 2, rb), True),)
    hy = (top + bottom) / 2
    if mug:
        hx, ha, hb = (wt + wb) / 4 + 0.12, _u(rng, 0.26, 0.3), _u(rng, 0.33, 0.4)
        handle_ops = (
            (_rrect(hx, hy, 2 * ha, 2 * hb, power=5), True),
            (_rrect(hx, hy, 2 * ha - 0.24, 2 * hb - 0.24, power=5), False),
        )
    else:
        hx, ha, hb = (wt + wb) / 4 + 0.05, _u(rng, 0.2, 0.26), _u(rng, 0.22, 0.28)
        handle_ops = _ring(hx, hy, ha, hb, 0.1)
    return [
        Part("handle", handle_ops, (hx + ha * 0.3, hy, math.pi / 2, hb, ha)),
        Part(
            "body", _fill(body), (0.0, (top + bottom) / 2, math.pi / 2, (bottom - top) / 2, wt / 2)
        ),
        Part("rim", rim, (0.0, top, 0.0, wt / 2, rb)),
    ]


def _bottle(rng: np.random.Generator) -> list[Part]:
    bw, top = _u(rng, 0.6, 0.8), _u(rng, -0.3, -0.15)
    nw, neck_top = _u(rng, 0.2, 0.28), _u(rng, -1.0, -0.9)
    body = _rrect(0.0, (top + 0.95) / 2, bw, 0.95 - top, power=8)
    spout = _poly(
        (-bw / 2, top + 0.12),
        (-nw / 2, top - 0.3),
        (-nw / 2, neck_top),
        (nw / 2, neck_top),
        (nw / 2, top - 0.3),
        (bw / 2, top + 0.12),
    )
    return [
        Part("body", _fill(body), (0.0, (top + 0.95) / 2, math.pi / 2, (0.95 - top) / 2, bw / 2)),
        Part(
            "spout",
            _fill(spout),
            (0.0, (top + neck_top) / 2, math.pi / 2, (top - neck_top) / 2, bw / 2),
        ),
    ]


def _kettle(rng: np.random.Generator) -> list[Part]:
    a, b = _u(rng, 0.5, 0.62), _u(rng, 0.42, 0.52)
    cy = 0.3
    body = _fill(_ellipse(0.0, cy, a, b), _rrect(0.0, cy + b * 0.7, 2 * a * 0.9, b * 0.6))
    tx, ty = _u(rng, 0.88, 0.98), _u(rng, -0.35, -0.15)
    spout = _poly(
        (a * 0.7, cy - 0.02),
        (tx, ty),
        (tx + 0.06, ty - 0.1),
        (tx - 0.12, ty - 0.05),
        (a * 0.75, cy - b * 0.55),
    )
    ha, hb = a * _u(rng, 0.65, 0.8), _u(rng, 0.45, 0.6)
    hy = cy - b * 0.75
    outer = _ellipse(0.0, hy, ha, hb, t0=math.pi, t1=2 * math.pi, n=24)
    inner = _ellipse(0.0, hy, ha - 0.12, hb - 0.12, t0=math.pi, t1=2 * math.pi, n=24)[::-1]
    handle = np.concatenate([outer, inner])
    return [
        Part("handle", _fill(handle), (0.0, hy - hb / 2, 0.0, ha, hb / 2)),
        Part("body", body, (0.0, cy, math.pi / 2, b, a)),
        Part(
            "spout",
            _fill(spout),
            ((a + tx) / 2, (cy + ty) / 2, math.atan2(ty - cy, tx - a), (tx - a) / 1.5, 0.12),
        ),
    ]


def _wine_glass(rng: np.random.Generator) -> list[Part]:
    a, top = _u(rng, 0.33, 0.42), -0.8
    depth = _u(rng, 0.45, 0.6)
    rb = _u(rng, 0.08, 0.11)
    bowl = _ellipse(0.0, top, a, depth, t0=0.0, t1=math.pi, n=32)
    stem_bottom = _u(rng, 0.7, 0.8)
    bar = _fill(
        _rod((0.0, top + depth - 0.05), (0.0, stem_bottom), 0.09),
        _ellipse(0.0, stem_bottom, _u(rng, 0.25, 0.35), 0.07),
    )
    return [
        Part(
            "bar",
            bar,
            (
                0.0,
                (top + depth + stem_bottom) / 2,
                math.pi / 2,
                (stem_bottom - top - depth) / 2 + 0.05,
                0.1,
            ),
        ),
        Part("body", _fill(bowl), (0.0, top + depth / 2, math.pi / 2, depth / 2, a)),
        Part("rim", ((_ellipse(0.0, top, a, rb), True),), (0.0, top, 0.0, a, rb)),
    ]


def _chair(rng: np.random.Generator) -> list[Part]:
    sw, sy, sh = _u(rng, 0.9, 1.1), _u(rng, 0.05, 0.2), _u(rng, 0.18, 0.25)
    x0, x1 = -sw / 2 + 0.06, sw / 2 - 0.06
    back_top = _u(rng, -0.95, -0.8)
    bar = _fill(
        _rod((x1, sy), (x1, 0.95), 0.09),
        _rod((x0, sy), (x0, 0.95), 0.09),
        _rod((x1 + 0.02, sy), (x1 + 0.06, back_top), 0.09),
        _rrect(x1 - 0.04, back_top + 0.2, 0.16, 0.4),
    )
    return [
        Part("bar", bar, (x1, (back_top + 0.95) / 2, math.pi / 2, 0.9, 0.1)),
        Part("seat", _fill(_rrect(0.0, sy, sw, sh, power=8)), (0.0, sy, 0.0, sw / 2, sh / 2)),
    ]


def _bench(rng: np.random.Generator) -> list[Part]:
    sw, sy, sh = _u(rng, 1.8, 1.95), _u(rng, -0.05, 0.1), _u(rng, 0.2, 0.28)
    legs = [_rod((x, sy), (x, _u(rng, 0.5, 0.6)), 0.1) for x in (-sw / 2 + 0.15, sw / 2 - 0.15)]
    bar = _fill(
        *legs,
        _rrect(0.0, sy - _u(rng, 0.45, 0.55), sw * 0.95, 0.16),
        _rod((-sw / 2 + 0.2, sy), (-sw / 2 + 0.2, sy - 0.5), 0.08),
        _rod((sw / 2 - 0.2, sy), (sw / 2 - 0.2, sy - 0.5), 0.08),
    )
    return [
        Part("bar", bar, (0.0, sy, 0.0, sw / 2, 0.5)),
        Part("seat", _fill(_rrect(0.0, sy, sw, sh, power=8)), (0.0, sy, 0.0, sw / 2, sh / 2)),
    ]


def _two_wheeler(rng: np.random.Generator, motor: bool) -> list[Part]:
    r = _u(rng, 0.36, 0.42) if not motor else _u(rng, 0.38, 0.45)
    wx, wy = 0.98 - r, 0.98 - r
    thick = 0.07 if not motor else 0.14
    wheel_ops: tuple[tuple[_Poly, bool], ...] = ()
    for cx in (-wx, wx):
        wheel_ops += _ring(cx, wy, r, r, thick)
        for k in range(3):
            ang = k * math.pi / 3 + _u(rng, 0, 1)
            dx, dy = math.cos(ang) * (r - thick), math.sin(ang) * (r - thick)
            wheel_ops += ((_rod((cx - dx, wy - dy), (cx + dx, wy + dy), 0.035), True),)
    top = wy - _u(rng, 0.55, 0.7)
    seat_x = -wx * _u(rng, 0.2, 0.45)
    head_x = wx * 0.75
    bar_rods = [
        ((-wx, wy), (seat_x, top)),
        ((seat_x, top), (head_x, top)),
        ((head_x, top - 0.2), (wx, wy)),
        ((seat_x, top), (0.0, wy)),
        ((-wx, wy), (0.0, wy)),
    ]
    parts = [Part("wheel", wheel_ops, (0.0, wy, 0.0, wx + r, r))]
    if motor:
        body = _fill(
            _ellipse(0.0, (top + wy) / 2, wx * 0.75, (wy - top) * 0.55),
            _rrect(-wx * 0.4, top + 0.2, 0.9, 0.3),
        )
        parts.append(Part("body", body, (0.0, (top + wy) / 2, 0.0, wx * 0.75, (wy - top) / 2)))
        seat = _rrect(seat_x - 0.05, top - 0.02, _u(rng, 0.6, 0.75), 0.16, power=5)
        seat_frame = (seat_x - 0.05, top - 0.02, 0.0, 0.35, 0.08)
    else:
        parts.append(
            Part(
                "bar",
                _fill(*[_rod(p, q, 0.07) for p, q in bar_rods]),
                (0.0, (top + wy) / 2, 0.0, wx, (wy - top) / 2),
            )
        )
        seat = _rrect(seat_x, top - 0.1, _u(rng, 0.36, 0.44), 0.15, power=5)
        seat_frame = (seat_x, top - 0.1, 0.0, 0.2, 0.075)
        parts[-1] = Part(
            "bar",
            parts[-1].ops + ((_rod((seat_x, top), (seat_x, top - 0.1), 0.06), True),),
            parts[-1].frame,
        )
    hb_y = top - _u(rng, 0.25, 0.35)
    handle = _fill(
        _rod((head_x, top), (head_x + 0.03, hb_y), 0.08),
        _rod((head_x - 0.2, hb_y), (head_x + 0.15, hb_y), 0.1),
    )
    parts.append(Part("handle", handle, (head_x - 0.02, hb_y, 0.0, 0.18, 0.05)))
    parts.append(Part("seat", _fill(seat), seat_frame))
    return parts


def _laptop(rng: np.random.Generator) -> list[Part]:
    w, h = _u(rng, 1.35, 1.55), _u(rng, 0.8, 0.95)
    hinge = _u(rng, 0.05, 0.15)
    depth, slant = _u(rng, 0.45, 0.6), _u(rng, 0.1, 0.2)
    screen = _rrect(0.0, hinge - h / 2, w, h, power=12)
    keys = _poly(
        (-w / 2, hinge),
        (w / 2, hinge),
        (w / 2 + slant, hinge + depth),
        (-w / 2 - slant, hinge + depth),
    )
    return [
        Part("screen", _fill(screen), (0.0, hinge - h / 2, 0.0, w / 2, h / 2)),
        Part("keys", _fill(keys), (0.0, hinge + depth / 2, 0.0, w / 2, depth / 2)),
    ]


def _phone(rng: np.random.Generator) -> list[Part]:
    w, h = _u(rng, 0.9, 1.05), _u(rng, 1.75, 1.9)
    margin = _u(rng, 0.1, 0.14)
    split = _u(rng, 0.05, 0.2)
    screen_h = h / 2 + split - margin * 1.5
    keys_h = h / 2 - split - margin * 2.5
    return [
        Part(
            "body", _fill(_rrect(0.0, 0.0, w, h, power=6)), (0.0, 0.0, math.pi / 2, h / 2, w / 2)
        ),
        Part(
            "screen",
            _fill(_rrect(0.0, -h / 2 + margin + screen_h / 2, w - 2 * margin, screen_h, power=12)),
            (0.0, -h / 2 + margin + screen_h / 2, 0.0, w / 2 - margin, screen_h / 2),
        ),
        Part(
            "keys",
            _fill(_rrect(0.0, split + margin + keys_h / 2, w - 2 * margin, keys_h, power=12)),
            (0.0, split + margin + keys_h / 2, 0.0, w / 2 - margin, keys_h / 2),
        ),
    ]


def _spec(
    name: str,
    upright: bool,
    build: Callable[[np.random.Generator], list[Part]],
) -> ObjectSpec:
    parts = tuple(p.type for p in build(np.random.default_rng(0)))
    return ObjectSpec(name, parts, upright, build)


OBJECTS: dict[str, ObjectSpec] = {
    spec.name: spec
    for spec in (
        _spec("knife", False, _knife),
        _spec("scissors", False, _scissors),
        _spec("axe", False, _axe),
        _spec("hammer", False, _hammer),
        _spec("tennis_racket", False, _racket),
        _spec("cup", True, lambda rng: _container(rng, mug=False)),
        _spec("mug", True, lambda rng: _container(rng, mug=True)),
        _spec("bottle", True, _bottle),
        _spec("kettle", True, _kettle),
        _spec("wine_glass", True, _wine_glass),
        _spec("chair", True, _chair),
        _spec("bench", True, _bench),
        _spec("bicycle", True, lambda rng: _two_wheeler(rng, motor=False)),
        _spec("motorcycle", True, lambda rng: _two_wheeler(rng, motor=True)),
        _spec("laptop", True, _laptop),
        _spec("cell_phone", True, _phone),
    )
}

AFFORDANCES: dict[str, dict[str, list[str]]] = {
    "hold": {
        "knife": ["handle"],
        "scissors": ["handle"],
        "axe": ["handle"],
        "hammer": ["handle"],
        "tennis_racket": ["handle"],
        "cup": ["handle"],
        "mug": ["handle"],
        "bottle": ["body"],
        "kettle": ["handle"],
        "wine_glass": ["bar"],
        "chair": ["bar"],
        "bicycle": ["handle"],
        "motorcycle": ["handle"],
        "cell_phone": ["body"],
    },
    "cut_with": {"knife": ["blade"], "scissors": ["blade"], "axe": ["blade"]},
    "hit": {"hammer": ["head"], "tennis_racket": ["head"]},
    "swing": {"axe": ["handle"], "hammer": ["handle"], "tennis_racket": ["handle"]},
    "drink_with": {"cup": ["rim"], "mug": ["rim"], "bottle": ["spout"], "wine_glass": ["rim"]},
    "pour": {"cup": ["rim"], "bottle": ["spout"], "kettle": ["spout"]},
    "sit_on": {"chair": ["seat"], "bench": ["seat"]},
    "ride": {"bicycle": ["seat"], "motorcycle": ["seat"]},
    "type_on": {"laptop": ["keys"], "cell_phone": ["keys"]},
    "open": {"laptop": ["screen"]},
}


def list_actions(obj: str) -> list[str]:
    """Actions afforded by an object category, in ``AFFORDANCES`` order."""
    _check_object(obj)
    return [a for a, objs in AFFORDANCES.items() if obj in objs]


def afforded_parts(obj: str, action: str) -> list[str]:
    """Part types of ``obj`` that afford ``action``.

    Raises:
        ValueError: if the object is unknown or does not afford the action.
    """
    _check_object(obj)
    if action not in AFFORDANCES or obj not in AFFORDANCES[action]:
        raise ValueError(
            f"object {obj!r} does not afford action {action!r}; "
            f"its actions are {list_actions(obj)}"
        )
    return list(AFFORDANCES[action][obj])


def object_caption(obj: str, *, with_actions: bool = True) -> str:
    """A caption naming the object and (optionally) the actions it affords.

    Object-level text only: it never says which part affords what.
    """
    _check_object(obj)
    noun = obj.replace("_", " ")
    article = "an" if noun[0] in "aeiou" else "a"
    if not with_actions:
        return f"a photo of {article} {noun}"
    acts = [a.replace("_", " ") for a in list_actions(obj)]
    verbs = acts[0] if len(acts) == 1 else ", ".join(acts[:-1]) + " or " + acts[-1]
    return f"a photo of {article} {noun}, which one can {verbs}"


def _check_object(obj: str) -> None:
    if obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}; choose one of {sorted(OBJECTS)}")


# ---------------------------------------------------------------------------------------------
# Textures: every pattern returns a mixing weight in [0, 1] between two instance colours


def _pattern(
    kind: str, s: np.ndarray, t: np.ndarray, sn: np.ndarray, tn: np.ndarray, period: float
) -> np.ndarray:
    """Mixing weight of a part type's texture at local coordinates.

    ``s, t`` are along/across the part axis in object units; ``sn, tn`` the same normalised by
    the part's half extents (about [-1, 1]).
    """
    if kind == "handle":  # transverse grip bands
        return (np.sin(2 * np.pi * s / period) > 0.2).astype(np.float32)
    if kind == "blade":  # bright metal sheen across the blade, dark back edge
        return np.clip(0.5 - 0.6 * tn, 0.0, 1.0) ** 2
    if kind == "head":  # checker / string grid
        return ((np.floor(s / period * 1.5) + np.floor(t / period * 1.5)) % 2).astype(np.float32)
    if kind == "rim":  # light lip around a dark opening
        r = np.sqrt(sn**2 + tn**2)
        return (r < 0.72).astype(np.float32)
    if kind == "body":  # cylindrical shading
        return 0.75 * np.abs(tn) ** 1.5
    if kind == "spout":  # diagonal stripes
        return (np.sin(2 * np.pi * (s + t) / (period * 0.8)) > 0).astype(np.float32)
    if kind == "seat":  # polka dots
        p = period * 1.1
        du, dv = (s / p) % 1.0 - 0.5, (t / p) % 1.0 - 0.5
        return (du**2 + dv**2 < 0.09).astype(np.float32)
    if kind == "bar":  # plain
        return np.zeros_like(s, dtype=np.float32)
    if kind == "wheel":  # concentric rings (tyre, rim)
        return (np.sin(2 * np.pi * np.sqrt(s**2 + t**2) / (period * 0.7)) > 0.3).astype(np.float32)
    if kind == "screen":  # dark glass with a bright frame and a glare
        frame = (np.maximum(np.abs(sn), np.abs(tn)) > 0.85).astype(np.float32)
        return np.maximum(frame, 0.4 * np.clip(1 - np.abs(sn + tn - 0.6) * 3, 0, 1))
    if kind == "keys":  # grid of key caps
        p = period * 0.9
        gu, gv = (s / p) % 1.0, (t / p) % 1.0
        return ((gu < 0.22) | (gv < 0.22)).astype(np.float32)
    raise ValueError(f"no texture for part type {kind!r}")


_CLUTTER_PATTERNS = ["handle", "head", "spout", "seat", "keys", "wheel", "bar", "body"]


def _hsv_colour(
    rng: np.random.Generator,
    s: tuple[float, float] = (0.25, 0.9),
    v: tuple[float, float] = (0.35, 0.95),
) -> np.ndarray:
    h, sat, val = rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, tt = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, tt, p), (q, val, p), (p, val, tt), (p, q, val), (tt, p, val), (val, p, q)][i]
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = _hsv_colour(rng)
    if rng.random() < 0.5:
        b = a * rng.uniform(0.25, 0.55)
    else:
        b = _hsv_colour(rng)
    return a, b


# ---------------------------------------------------------------------------------------------
# Rasterisation


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    scale: float  # pixels per object unit
    angle: float
    flip: bool

    def matrix(self) -> np.ndarray:
        c, s = math.cos(self.angle) * self.scale, math.sin(self.angle) * self.scale
        fx = -1.0 if self.flip else 1.0
        return np.array([[c * fx, -s, self.cx], [s * fx, c, self.cy]], dtype=np.float64)


def _to_pixels(poly: _Poly, m: np.ndarray) -> np.ndarray:
    return poly @ m[:, :2].T + m[:, 2]


_SHIFT = 4


def _raster(ops: Sequence[tuple[_Poly, bool]], m: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) uint8 of a list of fill/erase polygons."""
    buf = np.zeros((size, size), np.uint8)
    for poly, fill in ops:
        pts = np.round(_to_pixels(poly, m) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(buf, [pts], 255 if fill else 0, cv2.LINE_AA, _SHIFT)
    return buf


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` (H, W, 3) or (3,) float into ``img`` float32 in place, by coverage."""
    x0, y0, w, h = cv2.boundingRect(alpha)
    if w == 0:
        return
    y1, x1 = y0 + h, x0 + w
    a = alpha[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    col = colour if colour.ndim == 1 else colour[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + col * a


def _texture(
    kind: str,
    frame: tuple[float, float, float, float, float],
    m: np.ndarray,
    size: int,
    colours: tuple[np.ndarray, np.ndarray],
    period: float,
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Texture colours (h, w, 3) float32 of a part over the pixel box ``(y0, y1, x0, x1)``."""
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    ox = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    oy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    cx, cy, ang, hl, hw = frame
    c, s = math.cos(ang), math.sin(ang)
    u = (ox - cx) * c + (oy - cy) * s
    v = -(ox - cx) * s + (oy - cy) * c
    k = _pattern(kind, u, v, u / max(hl, 1e-3), v / max(hw, 1e-3), period)[..., None]
    a, b = colours
    return (a * (1 - k) + b * k).astype(np.float32)


def _draw_textured(
    img: np.ndarray,
    ops: Sequence[tuple[_Poly, bool]],
    kind: str,
    frame: tuple[float, float, float, float, float],
    m: np.ndarray,
    colours: tuple[np.ndarray, np.ndarray],
    period: float,
) -> np.ndarray:
    size = img.shape[0]
    alpha = _raster(ops, m, size)
    x0, y0, w, h = cv2.boundingRect(alpha)
    if w:
        box = (y0, y0 + h, x0, x0 + w)
        tex = _texture(kind, frame, m, size, colours, period, box)
        full = np.zeros((size, size, 3), np.float32)
        full[box[0] : box[1], box[2] : box[3]] = tex
        _paint(img, alpha, full)
    return alpha


def _draw_object(
    img: np.ndarray, parts: list[Part], pose: _Pose, rng: np.random.Generator
) -> list[np.ndarray]:
    """Draw an object instance; returns each part's anti-aliased coverage (uint8)."""
    m = pose.matrix()
    period = rng.uniform(0.11, 0.16)
    alphas = []
    for part in parts:
        colours = _colour_pair(rng)
        if part.type == "screen":
            colours = (colours[0] * rng.uniform(0.15, 0.35), colours[1])
        alphas.append(_draw_textured(img, part.ops, part.type, part.frame, m, colours, period))
    return alphas


def _extent(parts: list[Part]) -> tuple[np.ndarray, float]:
    """Centre and radius of an object instance in canonical coordinates."""
    pts = np.concatenate([p for part in parts for p, fill in part.ops if fill])
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    return centre, float(np.sqrt(((pts - centre) ** 2).sum(1)).max())


def _place(
    rng: np.random.Generator,
    spec: ObjectSpec,
    parts: list[Part],
    size: int,
    frac: tuple[float, float],
    centre_box: tuple[float, float, float, float],
) -> _Pose:
    """Random similarity pose with the object's bounding circle ``frac`` of the frame wide.

    ``centre_box`` bounds the object's centre as fractions of the frame ``(x0, x1, y0, y1)``.
    """
    c, radius = _extent(parts)
    scale = rng.uniform(*frac) * size / (2 * radius)
    angle = rng.uniform(-0.45, 0.45) if spec.upright else rng.uniform(-math.pi, math.pi)
    flip = bool(rng.random() < 0.5)
    x0, x1, y0, y1 = centre_box
    px, py = rng.uniform(x0, x1) * size, rng.uniform(y0, y1) * size
    pose = _Pose(0.0, 0.0, scale, angle, flip)
    off = _to_pixels(c[None], pose.matrix())[0]
    return _Pose(px - off[0], py - off[1], scale, angle, flip)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cluttered background (size, size, 3) float32 in [0, 255], same law for every class."""
    c0, c1 = _hsv_colour(rng, (0.0, 0.6), (0.3, 0.95)), _hsv_colour(rng, (0.0, 0.6), (0.3, 0.95))
    ang = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(size, dtype=np.float32) / size
    g = np.add.outer(np.float32(math.sin(ang)) * ramp, np.float32(math.cos(ang)) * ramp)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    img = c0 + g[..., None] * (c1 - c0)
    grid = rng.normal(0, rng.uniform(8, 30), (int(rng.integers(3, 9)),) * 2 + (3,))
    img += cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.poisson(5))):
        kind = rng.integers(0, 4)
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        w, h = rng.uniform(0.05, 0.4, 2)
        ang = rng.uniform(0, math.pi)
        if kind == 0:
            poly = _rrect(cx, cy, w, h, ang, power=float(rng.uniform(2, 12)))
        elif kind == 1:
            poly = _ellipse(cx, cy, w / 2, h / 2, ang)
        elif kind == 2:
            poly = _rod(
                (cx, cy),
                (cx + w * math.cos(ang), cy + h * math.sin(ang)),
                float(rng.uniform(0.01, 0.04)),
            )
        else:
            pts = rng.uniform(-0.5, 0.5, (int(rng.integers(3, 6)), 2)) * np.array([w, h])
            poly = np.array([cx, cy]) + pts
        m = np.array([[size, 0, 0], [0, size, 0]], np.float64)
        if rng.random() < 0.5:
            kind_tex = str(rng.choice(_CLUTTER_PATTERNS))
            frame = (float(cx), float(cy), float(ang), float(w / 2), float(h / 2))
            _draw_textured(
                img,
                [(poly, True)],
                kind_tex,
                frame,
                m,
                _colour_pair(rng),
                float(rng.uniform(0.015, 0.04)),
            )
        else:
            _paint(
                img,
                _raster([(poly, True)], m, size) // (1 + int(rng.integers(0, 2))),
                _hsv_colour(rng, (0, 0.8), (0.2, 1.0)),
            )
    return img


def background_image(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A background-only frame: the clutter every scene is drawn on, with no object.

    Args:
        rng: Source of all randomness.
        size: Image side in pixels.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    return np.clip(_background(rng, size), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The person (exo view)

#: Exo object scale of the pretraining scenes (the tiny backbones were pretrained on these).
EXO_SCALE_PRETRAIN = (0.4, 0.55)
#: Exo object scale of the benchmark corpus: closer views, so that the afforded part next to
#: the hand spans a few patches of the 14x14 grid (at the pretraining scale it covers ~1 % of
#: the image, under 3 patches).
EXO_SCALE_BENCHMARK = (0.6, 0.8)

_SKIN = np.array(
    [
        [255, 219, 172],
        [241, 194, 125],
        [224, 172, 105],
        [198, 134, 66],
        [141, 85, 36],
        [92, 60, 40],
    ],
    np.float32,
)


def _ellipse_of_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (2,), semi-axes (2,) and axis directions (2, 2) of a mask's uniform ellipse."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    mu = pts.mean(0)
    cov = np.cov(pts.T) + np.eye(2) * 0.25
    evals, evecs = np.linalg.eigh(cov)
    return mu, 2.0 * np.sqrt(np.maximum(evals, 0.25)), evecs


def _draw_person(
    img: np.ndarray,
    rng: np.random.Generator,
    contact: np.ndarray,
    hand_axes: tuple[float, float],
    hand_angle: float | None,
    side: int,
    pull: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a stylised person whose hand reaches ``contact`` (x, y) pixels.

    The hand is centred ``pull`` pixels back from ``contact`` towards the elbow.

    Returns the person's hard mask and the hand's hard mask, (size, size) bool each.
    """
    size = img.shape[0]
    ident = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    skin = _SKIN[rng.integers(0, len(_SKIN))] * rng.uniform(0.9, 1.05)
    cloth, trousers = _hsv_colour(rng), _hsv_colour(rng, v=(0.15, 0.6))
    tw, th = size * rng.uniform(0.17, 0.22), size * rng.uniform(0.3, 0.38)
    tx = size * (0.5 + side * rng.uniform(0.3, 0.4))
    ty = size * rng.uniform(0.45, 0.6)
    person = np.zeros((size, size), np.uint8)

    def part(poly: _Poly, colour: np.ndarray) -> None:
        a = _raster([(poly, True)], ident, size)
        _paint(img, a, colour)
        np.maximum(person, a, out=person)

    for dx in (-0.25, 0.25):
        part(
            _rod((tx + dx * tw, ty + th * 0.4), (tx + dx * tw * 1.4, ty + th * 1.6), tw * 0.4),
            trousers,
        )
    part(_rrect(tx, ty, tw, th, power=5), cloth)
    head_r = size * rng.uniform(0.06, 0.075)
    part(
        _ellipse(
            tx + rng.uniform(-0.1, 0.1) * tw, ty - th / 2 - head_r * 0.95, head_r * 0.9, head_r
        ),
        skin,
    )
    shoulder = np.array([tx - side * tw * 0.35, ty - th * 0.38])
    reach = contact - shoulder
    dist = float(np.hypot(*reach))
    normal = np.array([reach[1], -reach[0]]) / max(dist, 1e-6)
    if normal[1] < 0:
        normal = -normal  # elbows bend downwards
    elbow = shoulder + reach * 0.5 + normal * dist * rng.uniform(0.1, 0.25)
    arm_w = size * rng.uniform(0.04, 0.05)
    part(_rod(shoulder, elbow, arm_w * 1.15), cloth)
    fore = contact - elbow
    contact = contact - fore / max(float(np.hypot(*fore)), 1e-6) * pull
    wrist = contact - (contact - elbow) / max(float(np.hypot(*(contact - elbow))), 1e-6) * (
        hand_axes[0] * 0.8
    )
    part(_rod(elbow, wrist, arm_w), skin)
    ang = math.atan2(*(contact - elbow)[::-1]) if hand_angle is None else hand_angle
    hand_poly = _ellipse(float(contact[0]), float(contact[1]), hand_axes[0], hand_axes[1], ang)
    hand = _raster([(hand_poly, True)], ident, size)
    _paint(img, hand, skin * 0.97)
    np.maximum(person, hand, out=person)
    return person >= 128, hand >= 128


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    """One rendered image and its dense annotations.

    Attributes:
        image: (size, size, 3) uint8 RGB.
        object_mask: (size, size) bool, visible pixels of the main object.
        part_masks: part type -> (size, size) bool, visible pixels of that part of the main
            object (occluders and the person's arm/hand removed).
        part_instance: (size, size) int16, ``PART_TYPES`` index of the visible part per pixel,
            -1 elsewhere.
        affordance_map: (size, size) float32 in [0, 1] for ``action``: the visible afforded
            part(s) weighted towards their interior and Gaussian-blurred, peak 1, 0 far away;
            None without an action.
        hand_mask: (size, size) bool, the person's hand (exo view), None in the ego view.
        occluded: True if the afforded part was deliberately covered (``occlude_part``).
        obj: Object category.
        action: Action word or None.
        view: ``'ego'`` or ``'exo'``.
        amodal_part_masks: part type -> (size, size) bool, full part extent ignoring occluders.
    """

    image: np.ndarray
    object_mask: np.ndarray
    part_masks: dict[str, np.ndarray]
    part_instance: np.ndarray
    affordance_map: np.ndarray | None
    hand_mask: np.ndarray | None
    occluded: bool
    obj: str
    action: str | None
    view: str = "ego"
    amodal_part_masks: dict[str, np.ndarray] = field(default_factory=dict)


def affordance_heatmap(mask: np.ndarray, sigma: float) -> np.ndarray:
    """GT-style heatmap of a region: interior-weighted, Gaussian-blurred, peak 1.

    Args:
        mask: (H, W) bool region.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        (H, W) float32 in [0, 1]; all zeros for an empty mask.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    m8 = mask.astype(np.uint8)
    d = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
    w = m8.astype(np.float32) * (0.35 + 0.65 * np.sqrt(d / max(float(d.max()), 1e-6)))
    h = cv2.GaussianBlur(w, (0, 0), sigma)
    return (h / max(float(h.max()), 1e-12)).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    obj: str,
    *,
    size: int = 128,
    view: Literal["ego", "exo"] = "ego",
    action: str | None = None,
    occlude_part: bool = False,
    exo_scale: tuple[float, float] = EXO_SCALE_PRETRAIN,
) -> Scene:
    """Render one scene of an object instance.

    Ego: the object alone, large (bounding circle 50-90% of the frame), near the centre, over
    clutter, sometimes partly hidden by a blob. Exo: the object off-centre (bounding circle
    ``exo_scale`` of the frame), with a person whose hand rests on the afforded part of
    ``action`` (on a random part without an action).

    Args:
        rng: Source of all randomness; the same generator state gives the same scene.
        obj: Object category, a key of ``OBJECTS``.
        size: Image side in pixels (>= 32).
        view: ``'ego'`` or ``'exo'``.
        action: Action word afforded by ``obj`` (see ``list_actions``), or None.
        occlude_part: Cover most of the afforded part (exo: with the hand; ego: with a blob).
            Requires ``action``.
        exo_scale: (min, max) fraction of the frame spanned by the exo object's bounding
            circle; ``EXO_SCALE_BENCHMARK`` is the benchmark corpus's larger, close-up scale.

    Returns:
        The scene with image and masks; see ``Scene``.

    Raises:
        ValueError: on an unknown object, view or action, a too small size, or
            ``occlude_part`` without an action.
    """
    _check_object(obj)
    if view not in ("ego", "exo"):
        raise ValueError(f"view must be 'ego' or 'exo', got {view!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    target = afforded_parts(obj, action) if action is not None else None
    if occlude_part and target is None:
        raise ValueError("occlude_part=True needs an action naming the part to occlude")
    spec = OBJECTS[obj]
    img = _background(rng, size)

    if rng.random() < 0.3:  # unlabelled distractor object, small, anywhere
        other = OBJECTS[str(rng.choice(list(OBJECTS)))]
        oparts = other.build(rng)
        _draw_object(
            img, oparts, _place(rng, other, oparts, size, (0.2, 0.3), (0.1, 0.9, 0.1, 0.9)), rng
        )

    parts = spec.build(rng)
    side = 0
    if view == "ego":
        pose = _place(rng, spec, parts, size, (0.5, 0.9), (0.4, 0.6, 0.4, 0.6))
    else:
        side = 1 if rng.random() < 0.5 else -1  # person on the right (+1) or left (-1)
        cx = 0.5 - side * rng.uniform(0.1, 0.2)
        pose = _place(rng, spec, parts, size, exo_scale, (cx, cx, 0.4, 0.6))
    alphas = _draw_object(img, parts, pose, rng)
    amodal = {p.type: a >= 128 for p, a in zip(parts, alphas, strict=True)}
    instance = np.full((size, size), -1, np.int16)
    for p in parts:
        instance[amodal[p.type]] = _PART_INDEX[p.type]

    occluder = np.zeros((size, size), bool)
    hand_mask = None
    if view == "ego":
        blob_p = 1.0 if occlude_part else 0.2
        if rng.random() < blob_p:
            occluder = _ego_blob(img, rng, amodal, target if occlude_part else None, size)
    else:
        tgt = str(rng.choice(target)) if target else str(rng.choice([p.type for p in parts]))
        tmask = amodal[tgt]
        if not tmask.any():
            tmask = instance >= 0
        mu, axes, evecs = _ellipse_of_mask(tmask)
        if occlude_part:
            hand_axes = (
                float(min(axes[1] * 1.2 + 1.5, 0.3 * size)),
                float(min(axes[0] * 1.2 + 1.5, 0.3 * size)),
            )
            contact, angle = mu, math.atan2(evecs[1, 1], evecs[0, 1])
        else:
            d = cv2.distanceTransform(tmask.astype(np.uint8), cv2.DIST_L2, 3)
            ys, xs = np.nonzero(d >= 0.6 * d.max())
            k = int(rng.integers(0, ys.size))
            contact, angle = np.array([xs[k], ys[k]], np.float64), None
            ha = size * rng.uniform(0.045, 0.06)
            hand_axes = (ha, ha * rng.uniform(0.6, 0.75))
        pull = 0.0 if occlude_part else hand_axes[0] * rng.uniform(0.0, 0.5)
        occluder, hand_mask = _draw_person(img, rng, contact, hand_axes, angle, side, pull)

    instance[occluder] = -1
    part_masks = {p.type: instance == _PART_INDEX[p.type] for p in parts}
    affordance_map = None
    if target is not None:
        union = np.zeros((size, size), bool)
        for t in target:
            union |= part_masks[t]
        affordance_map = affordance_heatmap(union, max(1.0, 0.02 * size))

    image = _jitter(img, rng)
    return Scene(
        image=image,
        object_mask=instance >= 0,
        part_masks=part_masks,
        part_instance=instance,
        affordance_map=affordance_map,
        hand_mask=hand_mask,
        occluded=bool(occlude_part),
        obj=obj,
        action=action,
        view=view,
        amodal_part_masks=amodal,
    )


def _ego_blob(
    img: np.ndarray,
    rng: np.random.Generator,
    amodal: dict[str, np.ndarray],
    target: list[str] | None,
    size: int,
) -> np.ndarray:
    """Draw an occluding blob; over the target part if given, else somewhere on the object
    while leaving at least 60% of every part visible. Returns its hard mask."""
    ident = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    if target is not None:
        mu, axes, evecs = _ellipse_of_mask(np.logical_or.reduce([amodal[t] for t in target]))
        poly = _ellipse(
            mu[0],
            mu[1],
            axes[1] * 1.2 + 1.5,
            axes[0] * 1.2 + 1.5,
            math.atan2(evecs[1, 1], evecs[0, 1]),
        )
    else:
        obj_mask = np.logical_or.reduce(list(amodal.values()))
        ys, xs = np.nonzero(obj_mask)
        if ys.size == 0:
            return np.zeros((size, size), bool)
        for _ in range(4):
            k = int(rng.integers(0, ys.size))
            r = size * rng.uniform(0.06, 0.14)
            poly = _ellipse(
                xs[k] + rng.normal(0, r),
                ys[k] + rng.normal(0, r),
                r,
                r * rng.uniform(0.5, 1.0),
                rng.uniform(0, math.pi),
            )
            hard = _raster([(poly, True)], ident, size) >= 128
            if all((m & hard).sum() <= 0.4 * m.sum() for m in amodal.values()):
                break
        else:
            return np.zeros((size, size), bool)
    alpha = _raster([(poly, True)], ident, size)
    tex = str(rng.choice(_CLUTTER_PATTERNS))
    mu = poly.mean(0)
    _draw_textured(
        img,
        [(poly, True)],
        tex,
        (mu[0], mu[1], 0.0, 10.0, 10.0),
        ident,
        _colour_pair(rng),
        size * 0.05,
    )
    return alpha >= 128


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global colour jitter (contrast, saturation, per-channel gain) and sensor noise.

    The three colour operations are linear, so they are folded into one 3x4 colour transform.
    """
    gain = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.85, 1.15)
    contrast, saturation = rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.3)
    sigma = rng.uniform(1.0, 6.0)
    img = img.astype(np.float32, copy=False)
    mean = img.reshape(-1, 3).mean(0).astype(np.float64)
    grey = np.full((3, 3), 1.0 / 3.0)
    sat = grey + saturation * (np.eye(3) - grey)  # grey + s * (x - grey)
    lin = np.diag(gain) @ sat * contrast
    offset = np.diag(gain) @ sat @ (mean * (1.0 - contrast))
    out = cv2.transform(img, np.concatenate([lin, offset[:, None]], 1).astype(np.float32))
    out += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 0.9))
    return np.clip(out, 0, 255).astype(np.uint8)


def make_contact_sheet(images: Sequence[np.ndarray], cols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile images into one sheet.

    Args:
        images: (H, W, 3) uint8 RGB or (H, W) images (float in [0, 1] or uint8), same H, W.
        cols: Tiles per row.
        pad: Pixels of white between tiles.

    Returns:
        (rows * (H + pad), cols * (W + pad), 3) uint8 RGB.
    """
    if not images:
        raise ValueError("make_contact_sheet needs at least one image")
    tiles = []
    for im in images:
        im = np.asarray(im)
        if im.dtype != np.uint8:
            im = (np.clip(im, 0, 1) * 255).astype(np.uint8)
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, 2)
        tiles.append(im)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + pad), cols * (w + pad), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = t
    return sheet

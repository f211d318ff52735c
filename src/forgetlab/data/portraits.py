"""Procedural 64x64 portraits and shape scenes for the embedded synthetic benchmark.

Everything is drawn with ``PIL.ImageDraw`` at twice the output resolution and then
downsampled (cheap anti-aliasing). Features are deliberately big and bold: a tiny vision
tower that sees the image at 32x32 must still tell a blue iris from a green one.

A person's *visual identity* is a :class:`FaceFeatures` tuple (skin, hair colour, hair
style, eye colour, accessory, face shape). The background, pose, scale, colour jitter and
noise are *not* identity: they are set by a :class:`RenderView`, and the benchmark's test
renderings change them.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

#: output side length in pixels.
SIZE = 64
#: drawing is done at SIZE * _SS and downsampled.
_SS = 2

RGB = tuple[int, int, int]

SKIN_TONES: dict[str, RGB] = {
    "pale": (255, 225, 200),
    "peach": (235, 185, 145),
    "tan": (195, 140, 90),
    "dark": (140, 95, 60),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (20, 20, 20),
    "brown": (85, 45, 15),
    "blonde": (245, 215, 90),
    "red": (205, 45, 25),
    "blue": (40, 90, 220),
    "green": (40, 160, 70),
}
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bald", "spiky")
EYE_COLOURS: dict[str, RGB] = {
    "blue": (30, 110, 235),
    "green": (30, 170, 60),
    "brown": (110, 60, 20),
}
ACCESSORIES: tuple[str, ...] = ("none", "glasses", "hat", "earrings", "moustache")
FACE_SHAPES: tuple[str, ...] = ("round", "oval", "square")

#: the values each face feature can take, in a fixed order (field name -> values).
FEATURE_VALUES: dict[str, tuple[str, ...]] = {
    "skin": tuple(SKIN_TONES),
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "eye_colour": tuple(EYE_COLOURS),
    "accessory": ACCESSORIES,
    "face_shape": FACE_SHAPES,
}

#: neutral background of the canonical view (light blue-gray).
CANONICAL_BACKGROUND: RGB = (200, 212, 225)

_OUTLINE: RGB = (60, 40, 30)
_GLASSES: RGB = (10, 10, 10)
_HAT: RGB = (110, 40, 150)
_GOLD: RGB = (255, 200, 0)
_MOUSTACHE: RGB = (45, 30, 20)
_MOUTH: RGB = (150, 40, 40)
_EYE_WHITE: RGB = (250, 250, 250)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SHAPE_BACKGROUNDS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
    "pink": (250, 190, 210),
}
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")


@dataclass(frozen=True)
class FaceFeatures:
    """The visual identity of a portrait: one value per feature of :data:`FEATURE_VALUES`."""

    skin: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    accessory: str
    face_shape: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in FEATURE_VALUES[f.name]:
                raise ValueError(f"face feature {f.name}={value!r} is not one of {list(FEATURE_VALUES[f.name])}")

    def as_dict(self) -> dict[str, str]:
        """The features as a plain ``{name: value}`` dict (field order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def as_index(self) -> tuple[int, ...]:
        """Position of every value in its :data:`FEATURE_VALUES` pool."""
        return tuple(FEATURE_VALUES[f.name].index(getattr(self, f.name)) for f in fields(self))


def feature_distance(a: FaceFeatures, b: FaceFeatures) -> int:
    """Number of face features on which two identities differ (Hamming distance)."""
    return sum(x != y for x, y in zip(a.as_index(), b.as_index(), strict=True))


@functools.cache
def all_feature_combinations() -> tuple[FaceFeatures, ...]:
    """Every possible face, in a fixed order (4*6*4*3*5*3 = 4320 of them)."""
    return tuple(FaceFeatures(*combo) for combo in itertools.product(*FEATURE_VALUES.values()))


@dataclass(frozen=True)
class RenderView:
    """How a portrait is shown: pose, scale, colour jitter, noise, background.

    The default instance is the canonical (neutral) view. ``rotation`` is in degrees,
    ``shift`` in output pixels, ``brightness``/``contrast`` are PIL enhancement factors
    (1 = unchanged), ``noise_std`` is the std of additive gaussian noise in 0..255 units,
    drawn from ``noise_seed``.
    """

    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    noise_std: float = 0.0
    noise_seed: int = 0
    background: RGB = CANONICAL_BACKGROUND

    @property
    def is_canonical(self) -> bool:
        """True for the neutral view (no pose change, jitter or noise; canonical background)."""
        return self == RenderView()


def random_view(rng: np.random.Generator) -> RenderView:
    """A random non-canonical view: mild pose/scale change, mild colour jitter, noise and a
    new background. The jitter is kept small enough that every named colour stays recognisable."""
    return RenderView(
        rotation=float(rng.uniform(-12.0, 12.0)),
        shift=(float(rng.uniform(-4.0, 4.0)), float(rng.uniform(-4.0, 4.0))),
        scale=float(rng.uniform(0.85, 1.08)),
        brightness=float(rng.uniform(0.87, 1.13)),
        contrast=float(rng.uniform(0.85, 1.15)),
        noise_std=float(rng.uniform(2.0, 8.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        background=(
            int(rng.integers(120, 236)),
            int(rng.integers(120, 236)),
            int(rng.integers(120, 236)),
        ),
    )


# --------------------------------------------------------------------------- drawing


class _Canvas:
    """ImageDraw wrapper taking coordinates in output pixels (drawn at _SS x)."""

    def __init__(self, background: RGB) -> None:
        self.image = Image.new("RGB", (SIZE * _SS, SIZE * _SS), background)
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def _box(box: tuple[float, float, float, float]) -> list[float]:
        return [v * _SS for v in box]

    def ellipse(self, box, fill=None, outline=None, width: float = 0) -> None:
        self.draw.ellipse(self._box(box), fill=fill, outline=outline, width=round(width * _SS))

    def rect(self, box, fill=None, outline=None, width: float = 0, radius: float = 0) -> None:
        self.draw.rounded_rectangle(
            self._box(box), radius=radius * _SS, fill=fill, outline=outline, width=round(width * _SS)
        )

    def chord(self, box, start: float, end: float, fill) -> None:
        self.draw.chord(self._box(box), start, end, fill=fill)

    def polygon(self, points, fill) -> None:
        self.draw.polygon([(x * _SS, y * _SS) for x, y in points], fill=fill)

    def line(self, points, fill, width: float) -> None:
        self.draw.line([(x * _SS, y * _SS) for x, y in points], fill=fill, width=round(width * _SS))


_FACE_DIMS: dict[str, tuple[float, float]] = {"round": (34, 34), "oval": (28, 40), "square": (32, 36)}


def _draw_face(c: _Canvas, f: FaceFeatures) -> None:
    cx, cy = 32.0, 37.0
    w, h = _FACE_DIMS[f.face_shape]
    left, right, top, bottom = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    hair = HAIR_COLOURS[f.hair_colour]
    skin = SKIN_TONES[f.skin]

    if f.hair_style == "long":  # hair behind the head, down to the shoulders
        c.rect((left - 5, top - 4, right + 5, min(bottom + 4, SIZE - 1)), fill=hair, radius=8)

    face_box = (left, top, right, bottom)
    if f.face_shape == "square":
        c.rect(face_box, fill=skin, outline=_OUTLINE, width=1, radius=7)
    else:
        c.ellipse(face_box, fill=skin, outline=_OUTLINE, width=1)

    cap = (left - 2, top - 3, right + 2, top + 0.6 * h)
    if f.hair_style in ("short", "long", "spiky"):
        c.chord(cap, 180, 360, fill=hair)
    if f.hair_style == "spiky":
        n, span = 5, (right - 2) - (left + 2)
        for i in range(n):
            x = left + 2 + span * (i + 0.5) / n
            c.polygon([(x - 4, top + 2), (x + 4, top + 2), (x, top - 8)], fill=hair)
    if f.hair_style == "bald":  # a fringe above the ears only
        c.ellipse((left - 3, cy - 9, left + 5, cy + 5), fill=hair)
        c.ellipse((right - 5, cy - 9, right + 3, cy + 5), fill=hair)

    eye_y, eye_dx = cy - 1, 7.0
    for ex in (cx - eye_dx, cx + eye_dx):
        c.ellipse((ex - 5.5, eye_y - 5, ex + 5.5, eye_y + 5), fill=_EYE_WHITE, outline=_OUTLINE, width=0.5)
        c.ellipse((ex - 3.5, eye_y - 3.5, ex + 3.5, eye_y + 3.5), fill=EYE_COLOURS[f.eye_colour])
    c.line([(cx - 6, cy + 13), (cx + 6, cy + 13)], fill=_MOUTH, width=2)

    if f.accessory == "glasses":
        for ex in (cx - eye_dx, cx + eye_dx):
            c.ellipse((ex - 7.5, eye_y - 7, ex + 7.5, eye_y + 7), outline=_GLASSES, width=2)
        c.line([(cx - 1, eye_y), (cx + 1, eye_y)], fill=_GLASSES, width=2)
        c.line([(cx - eye_dx - 7.5, eye_y), (left - 1, eye_y - 1)], fill=_GLASSES, width=2)
        c.line([(cx + eye_dx + 7.5, eye_y), (right + 1, eye_y - 1)], fill=_GLASSES, width=2)
    elif f.accessory == "hat":
        c.rect((left + 3, max(top - 14, 1), right - 3, top + 1), fill=_HAT)
        c.rect((left - 6, top - 1, right + 6, top + 4), fill=_HAT, radius=1)
    elif f.accessory == "earrings":
        for ex in (left - 1, right + 1):
            c.ellipse((ex - 3.5, cy + 4, ex + 3.5, cy + 11), fill=_GOLD, outline=_OUTLINE, width=0.5)
    elif f.accessory == "moustache":
        c.rect((cx - 10, cy + 6.5, cx + 10, cy + 11), fill=_MOUSTACHE, radius=2)


def _affine(image: Image.Image, view: RenderView) -> Image.Image:
    """Rotate by ``view.rotation`` about the centre, scale by ``view.scale`` and shift."""
    side = image.size[0]
    c0 = side / 2
    tx, ty = view.shift[0] * _SS, view.shift[1] * _SS
    theta = math.radians(view.rotation)
    cos, sin = math.cos(theta) / view.scale, math.sin(theta) / view.scale
    # PIL maps every output pixel p to the input pixel A p + b, so we give the inverse map.
    a, b, d, e = cos, sin, -sin, cos
    c = c0 - a * (c0 + tx) - b * (c0 + ty)
    f = c0 - d * (c0 + tx) - e * (c0 + ty)
    return image.transform(
        image.size,
        Image.Transform.AFFINE,
        (a, b, c, d, e, f),
        resample=Image.Resampling.BILINEAR,
        fillcolor=view.background,
    )


def _finish(image: Image.Image, view: RenderView) -> Image.Image:
    """Pose, downsample, colour jitter and noise (each skipped when neutral)."""
    if view.rotation != 0.0 or view.shift != (0.0, 0.0) or view.scale != 1.0:
        image = _affine(image, view)
    image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    if view.brightness != 1.0:
        image = ImageEnhance.Brightness(image).enhance(view.brightness)
    if view.contrast != 1.0:
        image = ImageEnhance.Contrast(image).enhance(view.contrast)
    if view.noise_std > 0:
        rng = np.random.default_rng(view.noise_seed)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, view.noise_std, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image


def render_portrait(features: FaceFeatures, view: RenderView | None = None) -> Image.Image:
    """Draw a 64x64 RGB portrait of ``features`` as seen from ``view`` (canonical if None)."""
    view = view or RenderView()
    canvas = _Canvas(view.background)
    _draw_face(canvas, features)
    return _finish(canvas.image, view)


@dataclass(frozen=True)
class ShapeScene:
    """A perception image: ``count`` shapes of one kind and one colour on a plain background.

    ``layout_seed`` fixes the positions, sizes and the mild noise of the rendering.
    """

    shape: str
    colour: str
    count: int
    background: str
    layout_seed: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {list(SHAPES)}")
        if self.colour not in SHAPE_COLOURS:
            raise ValueError(f"shape colour {self.colour!r} is not one of {list(SHAPE_COLOURS)}")
        if self.background not in SHAPE_BACKGROUNDS:
            raise ValueError(f"background {self.background!r} is not one of {list(SHAPE_BACKGROUNDS)}")
        if not 1 <= self.count <= len(COUNT_WORDS):
            raise ValueError(f"shape count {self.count} is not in 1..{len(COUNT_WORDS)}")


def _draw_shape(c: _Canvas, shape: str, x: float, y: float, r: float, fill: RGB) -> None:
    if shape == "circle":
        c.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        c.rect((x - r * 0.9, y - r * 0.9, x + r * 0.9, y + r * 0.9), fill=fill)
    elif shape == "triangle":
        c.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    else:  # cross
        t = r * 0.38
        c.rect((x - r, y - t, x + r, y + t), fill=fill)
        c.rect((x - t, y - r, x + t, y + r), fill=fill)


def render_shapes(scene: ShapeScene) -> Image.Image:
    """Draw a 64x64 RGB shapes image; each shape sits in its own quadrant so they never overlap."""
    rng = np.random.default_rng(scene.layout_seed)
    canvas = _Canvas(SHAPE_BACKGROUNDS[scene.background])
    cells = rng.permutation(4)[: scene.count]
    for cell in cells:
        r = float(rng.uniform(7.0, 11.0))
        x0, y0 = (cell % 2) * 32, (cell // 2) * 32
        x = x0 + float(rng.uniform(r + 2, 32 - r - 2))
        y = y0 + float(rng.uniform(r + 2, 32 - r - 2))
        _draw_shape(canvas, scene.shape, x, y, r, SHAPE_COLOURS[scene.colour])
    view = RenderView(
        noise_std=float(rng.uniform(0.0, 5.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        background=SHAPE_BACKGROUNDS[scene.background],
    )
    return _finish(canvas.image, view)

"""The anatomy of the procedural hand: bones, soft tissues and their shapes.

Everything is described in a *hand frame*, in millimetres:

* ``x`` points to the radial side (towards the thumb),
* ``y`` points volar (towards the palm side),
* ``z`` points distal (towards the finger tips); ``z = 0`` is the bottom of the field of view.

The phantom places the hand with the arm raised over the head, palm facing
anterior (the usual "superman" position for hand MRI): fingers along +S,
palm in the coronal plane, volar = +A.  Abducting the arm over the head
keeps the palm anterior and carries the thumb from lateral to medial, so the
LEFT hand's thumb points to +R and the RIGHT hand's to -R (towards the
patient's midline).  :mod:`T1ToT2Lib.phantom.render` maps this frame to RAS.

Shapes are signed-distance primitives (negative inside): tapered tubes along
polylines (bones, fingers, tendons, vessels, nerves) and ellipsoids (carpals,
muscle bellies).  A hand is built from a dictionary of a few dozen numbers
(:func:`draw_parameters`), so that left and right hands share one anatomy
and differ only by small seeded variations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

FINGERS = ("index", "middle", "ring", "little")

#: Nominal bone lengths in mm (metacarpal, proximal, middle, distal phalanx).
_BONE_LENGTHS = {
    "thumb": (44.0, 31.0, 0.0, 22.0),
    "index": (66.0, 40.0, 24.0, 18.0),
    "middle": (63.0, 45.0, 28.0, 19.0),
    "ring": (57.0, 42.0, 27.0, 19.0),
    "little": (53.0, 33.0, 19.0, 16.0),
}
#: x of each metacarpal base and head (pre-centring), and finger spread angle in degrees.
_FINGER_LAYOUT = {
    "index": (16.0, 22.0, 6.0),
    "middle": (4.0, 4.0, 0.0),
    "ring": (-8.0, -13.0, -5.0),
    "little": (-18.0, -29.0, -11.0),
}
#: Shift that centres the hand (thumb included) in x.
_X_SHIFT = -5.0
#: Gap between articulating bone ends (cartilage + fluid), mm.
JOINT_GAP = 3.0


@dataclass
class Tube:
    """A tube along a polyline with a radius (and cortex thickness) at each point.

    ``squash`` < 1 flattens the cross-section along y (A-P), e.g. for the forearm.
    """

    points: np.ndarray
    radii: np.ndarray
    cortex: np.ndarray | None = None
    squash: float = 1.0
    name: str = ""

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        self.radii = np.broadcast_to(np.asarray(self.radii, dtype=np.float64), (len(self.points),)).copy()
        if self.cortex is not None:
            self.cortex = np.broadcast_to(np.asarray(self.cortex, dtype=np.float64), (len(self.points),)).copy()

    def bounds(self, margin=0.0):
        reach = self.radii.max() + margin
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach

    def moved(self, transform) -> "Tube":
        return replace(self, points=transform(self.points))

    def sdf(self, z, y, x):
        """Signed distance (and cortex thickness of the nearest segment) on broadcastable z, y, x grids."""
        best = None
        best_cortex = None
        inv_squash = 1.0 / self.squash
        for s in range(len(self.points) - 1):
            a, b = self.points[s], self.points[s + 1]
            ab = b - a
            length2 = float(ab @ ab) or 1e-9
            t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / length2
            np.clip(t, 0.0, 1.0, out=t)
            vx = x - (a[0] + t * ab[0])
            vy = y - (a[1] + t * ab[1])
            vz = z - (a[2] + t * ab[2])
            r = self.radii[s] + t * (self.radii[s + 1] - self.radii[s])
            if self.squash == 1.0:
                d = np.sqrt(vx * vx + vy * vy + vz * vz) - r
            else:
                # Elliptic cross-section (semi-axes r and r * squash): first-order distance
                # estimate k0 (k0 - 1) / k1, so shells keep their thickness all round.
                round2 = vx * vx + vz * vz
                flat2 = vy * vy * (inv_squash * inv_squash)
                k0 = np.sqrt((round2 + flat2) / (r * r))
                k1 = np.sqrt((round2 + flat2 * inv_squash * inv_squash) / (r * r * r * r))
                d = k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)
            if self.cortex is not None:
                c = self.cortex[s] + t * (self.cortex[s + 1] - self.cortex[s])
            if best is None:
                best = d
                best_cortex = c if self.cortex is not None else None
            else:
                closer = d < best
                best = np.where(closer, d, best)
                if self.cortex is not None:
                    best_cortex = np.where(closer, c, best_cortex)
        return best, best_cortex


@dataclass
class Blob:
    """An ellipsoid with semi-axes ``radii`` along the columns of ``rotation``."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    cortex: float | None = None
    name: str = ""

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        self.radii = np.asarray(self.radii, dtype=np.float64)
        self.rotation = np.asarray(self.rotation, dtype=np.float64)

    def bounds(self, margin=0.0):
        # Half-extent of a rotated ellipsoid along each axis.
        half = np.sqrt(((self.rotation * self.radii) ** 2).sum(axis=1)) + margin
        return self.center - half, self.center + half

    def moved(self, transform) -> "Blob":
        centre = transform(self.center[None])[0]
        axes = transform(self.center[None] + self.rotation.T) - centre
        return replace(self, center=centre, rotation=axes.T)

    def sdf(self, z, y, x):
        # Coordinates in the ellipsoid's own axes, then the usual first-order
        # distance estimate k0 (k0 - 1) / k1, which is exact on the surface.
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        r = self.rotation
        u = (dx * r[0, 0] + dy * r[1, 0] + dz * r[2, 0]) / self.radii[0]
        v = (dx * r[0, 1] + dy * r[1, 1] + dz * r[2, 1]) / self.radii[1]
        w = (dx * r[0, 2] + dy * r[1, 2] + dz * r[2, 2]) / self.radii[2]
        k0 = np.sqrt(u * u + v * v + w * w)
        k1 = np.sqrt((u / self.radii[0]) ** 2 + (v / self.radii[1]) ** 2 + (w / self.radii[2]) ** 2)
        d = k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)
        return d, (None if self.cortex is None else np.full_like(d, self.cortex))


@dataclass
class Hand:
    """A hand: primitives grouped by tissue, and the landmarks the analyses use (hand frame, mm)."""

    envelope: list
    muscles: list
    tendons: list
    vessels: list
    nerves: list
    bones: list
    skin_thickness: float
    fat_thickness: float
    landmarks: dict

    def moved(self, transform) -> "Hand":
        move = lambda items: [p.moved(transform) for p in items]  # noqa: E731
        marks = {
            "thumb_metacarpal_profile": [transform(np.asarray(q, float)[None])[0] for q in self.landmarks["thumb_metacarpal_profile"]],
            "occlusion_points": {k: transform(np.asarray(q, float)[None])[0] for k, q in self.landmarks["occlusion_points"].items()},
        }
        return replace(
            self,
            landmarks=marks,
            envelope=move(self.envelope),
            muscles=move(self.muscles),
            tendons=move(self.tendons),
            vessels=move(self.vessels),
            nerves=move(self.nerves),
            bones=move(self.bones),
        )


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "y":  # rotates z towards x
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _in_plane_direction(degrees: float, volar: float = 0.0) -> np.ndarray:
    """Unit direction tilted ``degrees`` from +z towards +x (radial), with a small volar component."""
    a = np.radians(degrees)
    return _unit([np.sin(a), volar, np.cos(a)])


def draw_parameters(rng: np.random.Generator) -> dict:
    """One individual's anatomy: nominal proportions with seeded variation."""
    p = {"scale": 1.0 + 0.03 * rng.standard_normal()}
    for digit, lengths in _BONE_LENGTHS.items():
        p[f"{digit}_lengths"] = [L * (1.0 + 0.02 * rng.standard_normal()) for L in lengths]
        p[f"{digit}_spread"] = 1.5 * rng.standard_normal()
        p[f"{digit}_flexion"] = abs(2.0 * rng.standard_normal())
    p["thumb_abduction"] = 27.0 + 2.0 * rng.standard_normal()
    p["fat_thickness"] = 5.0 * (1.0 + 0.08 * rng.standard_normal())
    p["skin_thickness"] = 1.5
    p["forearm_width"] = 29.0 * (1.0 + 0.03 * rng.standard_normal())
    p["muscle_bulk"] = 1.0 + 0.05 * rng.standard_normal()
    return p


def vary_parameters(p: dict, rng: np.random.Generator) -> dict:
    """The other hand of the same person: small differences in bone lengths, angles and soft tissue."""
    q = dict(p)
    for digit in _BONE_LENGTHS:
        q[f"{digit}_lengths"] = [L * (1.0 + 0.015 * rng.standard_normal()) for L in p[f"{digit}_lengths"]]
        q[f"{digit}_spread"] = p[f"{digit}_spread"] + 1.5 * rng.standard_normal()
        q[f"{digit}_flexion"] = abs(p[f"{digit}_flexion"] + 1.5 * rng.standard_normal())
    q["thumb_abduction"] = p["thumb_abduction"] + 2.5 * rng.standard_normal()
    q["fat_thickness"] = p["fat_thickness"] * (1.0 + 0.10 * rng.standard_normal())
    q["forearm_width"] = p["forearm_width"] * (1.0 + 0.02 * rng.standard_normal())
    q["muscle_bulk"] = p["muscle_bulk"] * (1.0 + 0.05 * rng.standard_normal())
    return q


def _long_bone(start, end, r_end0, r_shaft, r_end1, cortex_shaft, name, squash=1.0, cortex_end=1.0):
    """A tube with flared ends: five points, thin cortex at the ends, thick in the shaft."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    length = np.linalg.norm(axis)
    u = axis / length
    # The caps are hemispheres of the end radius: pull the end points in so the bone spans start..end.
    a, b = start + u * r_end0 * 0.9, end - u * r_end1 * 0.9
    pts = [a, a + (b - a) * 0.18, a + (b - a) * 0.5, a + (b - a) * 0.82, b]
    radii = [r_end0, r_shaft * 1.05, r_shaft, r_shaft * 1.05, r_end1]
    cortex = [cortex_end, cortex_shaft * 0.8, cortex_shaft, cortex_shaft * 0.8, cortex_end]
    return Tube(pts, radii, cortex, squash=squash, name=name)


#: Metacarpal shaft radius of each finger (mm); the thumb's is ``_THUMB_SHAFT``.
_SHAFT = {"index": 3.9, "middle": 4.0, "ring": 3.5, "little": 3.3}
_THUMB_SHAFT = 4.6
#: z of the radius's distal end, of the metacarpal bases, and of the palmar arterial arch (mm).
_RADIUS_END_Z, _MC_BASE_Z, _ARCH_Z = 74.0, 109.5, 128.0
#: Carpal bones: name, centre (pre-scaling x), semi-axes and orientation.
_CARPALS = (
    ("scaphoid", (14, 0, 84), (6.0, 6.0, 9.0), ("y", 40)),
    ("lunate", (1, -1, 82.5), (6.0, 7.0, 5.5), None),
    ("triquetrum", (-11.5, -2, 83.5), (5.0, 6.0, 5.0), None),
    ("pisiform", (-14, 7.5, 84), (3.5, 3.5, 4.0), None),
    ("trapezium", (18, 2, 99.5), (5.5, 6.0, 6.0), ("y", 25)),
    ("trapezoid", (7.5, -1, 100.5), (4.3, 6.0, 5.5), None),
    ("capitate", (-2, 0, 98.5), (5.5, 7.0, 8.0), None),
    ("hamate", (-13.5, 0, 98.0), (5.5, 7.0, 7.5), None),
)


def build_hand(p: dict) -> Hand:
    """Lay out a left hand (in the hand frame) from parameters ``p``."""
    s = p["scale"]

    def X(x):
        return x * s

    bones = _forearm_and_carpal_bones(X)
    digit_chains, t_dir = _digit_chains(p, X)
    bones += _digit_bones(digit_chains)
    envelope = _envelope(p, X, digit_chains)
    muscles = _muscles(p, X, digit_chains, t_dir)
    tendons = _tendons(X, digit_chains)
    vessels, nerves = _vessels_and_nerves(X, digit_chains)
    landmarks = _landmarks(p, X, digit_chains, t_dir)
    hand = Hand(envelope, muscles, tendons, vessels, nerves, bones, p["skin_thickness"], p["fat_thickness"], landmarks)
    return hand.moved(lambda pts: np.asarray(pts, float) + [_X_SHIFT, 0.0, 0.0]) if _X_SHIFT else hand


def _forearm_and_carpal_bones(X) -> list:
    """The ends of radius and ulna, and the two rows of carpals (ellipsoids)."""
    bones = [
        Tube(
            [[X(12), -2, -12], [X(12.5), -2, 40], [X(13.5), -2, 58], [X(14), -1, 66], [X(14), -1, _RADIUS_END_Z - 8]],
            [7.0, 7.0, 9.5, 11.0, 8.0],
            [2.6, 2.4, 1.2, 0.8, 0.6],
            squash=0.75,
            name="radius",
        ),
        Tube(
            [[X(-21), -3, -12], [X(-20.5), -3, 45], [X(-20), -3, 60], [X(-20), -3, 65]],
            [6.0, 5.8, 7.2, 6.0],
            [2.2, 2.0, 0.8, 0.6],
            squash=0.85,
            name="ulna",
        ),
    ]
    for name, centre, radii, turn in _CARPALS:
        c = np.array(centre, float)
        c[0] = X(c[0])
        bones.append(Blob(c, radii, np.eye(3) if turn is None else _rotation(*turn), cortex=1.0, name=name))
    return bones


def _digit_chains(p: dict, X) -> tuple:
    """Joint positions of each digit (base, end of each bone, start of the next), and the thumb metacarpal's direction."""
    digit_chains = {}
    for finger in FINGERS:
        base_x, head_x, spread = _FINGER_LAYOUT[finger]
        lengths = p[f"{finger}_lengths"]
        mc_dir = _unit([X(head_x - base_x), 0.0, lengths[0]])
        base = np.array([X(base_x), 0.0, _MC_BASE_Z])
        finger_dir = _in_plane_direction(spread + p[f"{finger}_spread"], volar=0.0)
        chain = [base, base + mc_dir * lengths[0]]
        d = finger_dir
        for n, length in enumerate(lengths[1:]):
            d = _unit(_rotation("x", p[f"{finger}_flexion"] * (0.5 if n == 0 else 1.0)) @ d)
            start = chain[-1] + d * JOINT_GAP
            chain += [start, start + d * length]
        digit_chains[finger] = chain
    # Thumb: metacarpal from the trapezium, abducted radially and turned a little volar.
    t_len = p["thumb_lengths"]
    t_dir = _in_plane_direction(p["thumb_abduction"], volar=0.06)
    t_base = np.array([X(20.5), 3.0, 106.0])
    thumb = [t_base, t_base + t_dir * t_len[0]]
    d = _unit(_rotation("y", -14.0) @ t_dir)
    for length in (t_len[1], t_len[3]):
        d = _unit(_rotation("x", p["thumb_flexion"]) @ d)
        start = thumb[-1] + d * JOINT_GAP
        thumb += [start, start + d * length]
    digit_chains["thumb"] = thumb
    return digit_chains, t_dir


def _digit_bones(digit_chains: dict) -> list:
    """Metacarpals and phalanges along the digit chains (the thumb has no middle phalanx)."""
    bones = []
    for finger in FINGERS:
        chain, r = digit_chains[finger], _SHAFT[finger]
        bones.append(_long_bone(chain[0], chain[1], 5.0, r, 6.0, 1.6, f"{finger}_metacarpal", squash=0.9))
        phalanx_radii = [(4.8, r * 0.8, 4.5, 1.3), (4.0, r * 0.65, 3.7, 1.0), (3.5, r * 0.55, 3.0, 0.8)]
        for n, (r0, rs, r1, tc) in enumerate(phalanx_radii):
            name = ("proximal", "middle", "distal")[n]
            bones.append(
                _long_bone(chain[2 + 2 * n], chain[3 + 2 * n], r0, rs, r1, tc, f"{finger}_{name}_phalanx", squash=0.85)
            )
    thumb = digit_chains["thumb"]
    bones.append(_long_bone(thumb[0], thumb[1], 5.5, _THUMB_SHAFT, 6.0, 2.0, "thumb_metacarpal", squash=0.9))
    bones.append(_long_bone(thumb[2], thumb[3], 5.0, 3.4, 4.5, 1.3, "thumb_proximal_phalanx", squash=0.85))
    bones.append(_long_bone(thumb[4], thumb[5], 4.2, 2.4, 3.4, 0.9, "thumb_distal_phalanx", squash=0.85))
    return bones


def _envelope(p: dict, X, digit_chains: dict) -> list:
    """The skin surface: forearm, palm, fingers and thumb."""
    s = p["scale"]
    fw = p["forearm_width"] * s
    envelope = [
        Tube([[X(-3), -1, -40], [X(-3), -1, 40], [X(-2), -1, 75]], [fw, fw * 0.97, fw * 0.92], squash=0.62, name="forearm"),
        Tube([[X(-4), 0, 88], [X(-4), 0, 122], [X(-3), 0, 160]], [33.0 * s, 36.0 * s, 35.0 * s], squash=0.40, name="palm"),
    ]
    for finger, widths in zip(FINGERS, ((9.8, 8.2), (10.0, 8.4), (9.6, 8.0), (8.8, 7.4))):
        chain = digit_chains[finger]
        tip = chain[-1] + _unit(chain[-1] - chain[-2]) * 4.0
        envelope.append(Tube([chain[1], chain[3], chain[5], tip], [widths[0] + 1.0, widths[0], widths[1] + 0.4, widths[1]], squash=0.9, name=f"{finger}_finger"))
    thumb = digit_chains["thumb"]
    t_tip = thumb[-1] + _unit(thumb[-1] - thumb[-2]) * 4.0
    envelope.append(Tube([thumb[0] + [-2, 0, -4], thumb[1], thumb[3], t_tip], [13.0, 11.5, 10.5, 9.0], squash=0.9, name="thumb"))
    return envelope


def _muscles(p: dict, X, digit_chains: dict, t_dir) -> list:
    """Forearm bellies, thenar and hypothenar eminences, interossei and the thumb's adductor."""
    s, bulk = p["scale"], p["muscle_bulk"]
    thumb = digit_chains["thumb"]
    muscles = [
        Blob([X(-3), 7.0, 15], [25.0 * bulk * s, 10.0 * bulk, 62.0], name="forearm_flexors"),
        Blob([X(-4), -9.5, 8], [24.0 * bulk * s, 8.0 * bulk, 58.0], name="forearm_extensors"),
        Blob([X(-3), 5.5, 58], [22.0 * s, 3.5, 8.0], name="pronator_quadratus"),
    ]
    thumb_mid = (thumb[0] + thumb[1]) / 2
    thenar_rot = np.column_stack([_unit(np.cross([0, 1, 0], t_dir)), [0, 1, 0], t_dir])
    muscles.append(Blob(thumb_mid + [-5.0, 9.5, -4.0], [11.0 * bulk, 7.0 * bulk, 22.0], _orthonormal(thenar_rot), name="thenar"))
    little = digit_chains["little"]
    hypothenar_centre = (little[0] + little[1]) / 2 + [X(-5.5), 5.5, -6.0]
    muscles.append(Blob(hypothenar_centre, [8.5 * bulk, 7.0 * bulk, 25.0], name="hypothenar"))
    # Interossei between neighbouring metacarpals, and the adductor of the thumb (volar, distal).
    for f1, f2 in zip(FINGERS[:-1], FINGERS[1:]):
        c1, c2 = digit_chains[f1], digit_chains[f2]
        a = (c1[0] + c2[0]) / 2 + [0, -1.0, 8.0]
        b = (c1[1] + c2[1]) / 2 + [0, -1.0, -8.0]
        muscles.append(Tube([a, b], [4.2 * bulk, 3.6 * bulk], name=f"interosseous_{f1}_{f2}"))
    index = digit_chains["index"]
    muscles.append(Tube([digit_chains["middle"][0] + [0, 7.0, 20.0], thumb[2] + [-6.0, 5.0, -2.0]], [5.0 * bulk, 3.5 * bulk], name="adductor_pollicis"))
    muscles.append(Tube([index[0] + [6.0, -3.0, 14.0], index[1] + [5.5, -2.5, -12.0]], [4.0 * bulk, 3.0 * bulk], name="first_dorsal_interosseous"))
    return muscles


def _tendons(X, digit_chains: dict) -> list:
    """Flexor tendons volar (through the carpal tunnel), extensors dorsal."""
    tendons = []
    for finger in FINGERS + ("thumb",):
        chain = digit_chains[finger]
        r = _THUMB_SHAFT if finger == "thumb" else _SHAFT[finger]
        if finger == "thumb":
            flexor = [[X(6), 9.0, 55], [X(12), 9.0, 92], chain[0] + [-1, r + 4.5, 0], chain[1] + [0, r + 3.0, 0], chain[-2] + [0, 4.0, 0], chain[-2] + [0, 3.2, 10.0]]
            extensor = [[X(10), -13.0, 55], [X(18), -9.0, 92], chain[0] + [0, -(r + 3.0), 0], chain[1] + [0, -(r + 2.8), 0], chain[-2] + [0, -3.6, 0]]
        else:
            spread = (chain[0][0] - X(-3)) * 0.35
            flexor = [[X(-3) + spread, 9.5, 52], [X(-3) + spread * 1.3, 9.0, 92], chain[0] + [0, r + 4.0, 8], chain[1] + [0, r + 3.0, 0], chain[2] + [0, 5.0, 0], chain[5] + [0, 3.6, 0], chain[6] + [0, 3.0, 3.0]]
            extensor = [[X(-4) + spread, -14.0, 50], [X(-3) + spread * 1.5, -10.5, 90], chain[0] + [0, -(r + 2.6), 6], chain[1] + [0, -(r + 2.5), 0], chain[3] + [0, -3.6, 0], chain[5] + [0, -3.1, 0]]
        tendons.append(Tube(flexor, [2.6] + [2.4] * (len(flexor) - 3) + [1.8, 1.4], name=f"{finger}_flexor_tendon"))
        tendons.append(Tube(extensor, [2.4] + [2.1] * (len(extensor) - 3) + [1.6, 1.2], name=f"{finger}_extensor_tendon"))
    return tendons


def _vessels_and_nerves(X, digit_chains: dict) -> tuple:
    """Arteries (radial, ulnar and the palmar arch, digital), dorsal and cephalic veins; median and ulnar nerves."""
    arch_z = _ARCH_Z
    vessels = [
        Tube([[X(19), 13.0, -12], [X(20), 12.0, 72], [X(24), 2.0, 92], [X(10), -6.0, 108]], 1.5, name="radial_artery"),
        Tube([[X(-17), 12.0, -12], [X(-16), 11.0, 80], [X(-12), 10.0, 110], [X(-8), 10.5, arch_z], [X(6), 10.5, arch_z + 4], [X(16), 9.5, arch_z + 2]],
             [1.5, 1.4, 1.3, 1.2, 1.1, 1.0], name="ulnar_artery_and_palmar_arch"),
    ]
    for f1, f2 in zip(FINGERS[:-1], FINGERS[1:]):
        web = (digit_chains[f1][1] + digit_chains[f2][1]) / 2
        vessels.append(Tube([[web[0] * 0.9, 10.0, arch_z + 2], web + [0, 8.5, 2.0], web + [0, 7.0, 14.0]], [0.9, 0.8, 0.7], name=f"digital_artery_{f1}_{f2}"))
    for x0 in (8.0, -10.0, -24.0):
        vessels.append(Tube([[X(x0), -15.0, 95], [X(x0 + 2), -14.0, 140], [X(x0 + 3), -12.5, 170]], 1.6, name="dorsal_vein"))
    vessels.append(Tube([[X(22), -12.0, -12], [X(24), -12.5, 60], [X(26), -11.5, 95]], 2.0, name="cephalic_vein"))
    nerves = [
        Tube([[X(-1), 12.0, -12], [X(0), 11.0, 70], [X(1), 11.0, 96], [X(3), 9.5, 118]], [2.4, 2.4, 2.1, 1.8], name="median_nerve"),
        Tube([[X(-14), 11.5, -12], [X(-14), 10.5, 80], [X(-15), 9.5, 100]], [2.0, 1.9, 1.6], name="ulnar_nerve"),
    ]
    return vessels, nerves


def _landmarks(p: dict, X, digit_chains: dict, t_dir) -> dict:
    """The thumb metacarpal's profile line and the occlusion-study points (hand frame)."""
    thumb, middle = digit_chains["thumb"], digit_chains["middle"]
    fw = p["forearm_width"] * p["scale"]
    mc = thumb[0] + 0.5 * (thumb[1] - thumb[0])
    across = _unit(np.cross(t_dir, [0.0, 1.0, 0.0]))  # perpendicular to the shaft, in the palm plane
    half = _THUMB_SHAFT + 3.2
    return {
        "thumb_metacarpal_profile": [mc - across * half, mc + across * half],
        "occlusion_points": {
            "marrow": middle[0] + 0.5 * (middle[1] - middle[0]),
            "muscle": np.array([X(-3), 6.0, 25.0]),  # forearm flexor bellies
            # Dorsal forearm, half-way through the fat layer under the skin.
            "subcutaneous_fat": np.array([X(-3), -1.0 - fw * 0.62 * 0.974 + p["skin_thickness"] + 0.5 * p["fat_thickness"], 30.0]),
            "tendon": middle[0] + 0.5 * (middle[1] - middle[0]) + [0, -(_SHAFT["middle"] + 2.5) * 1.0, 0],
        },
    }


def _orthonormal(m):
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64))
    return u @ vt

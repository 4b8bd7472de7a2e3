"""The procedural hand phantom: paired T1 VIBE and T2 SPACE volumes of a left and a right hand.

No paired hand MRI can be shipped, so the project simulates its own (see
docs/phantom.md):

1. :mod:`T1ToT2Lib.phantom.anatomy` lays out a hand from a few dozen seeded
   numbers; the right hand is the mirrored left hand with small variations in
   bone lengths, angles and soft-tissue thickness.
2. The anatomy is rasterised into a tissue label map on a grid ``SUPERSAMPLE``
   times finer than the output (signed distances of tubes and ellipsoids).
3. Each sequence's signal equation turns labels into signal; averaging the
   fine grid down gives partial-volume edges.
4. Mild tissue texture, a smooth coil bias field, Rician noise and (optionally) a small rigid
   misregistration of the T2 relative to the T1 finish the images.

The property the paper hinges on is kept: subcutaneous fat, fatty marrow and
cortical bone are all dark on water-excitation VIBE, while fat and marrow are
bright on T2 SPACE and cortex stays dark, so one T1 intensity maps to very
different T2 intensities and no one-to-one intensity map can work.

Geometry (RAS): fingers along +S, palm in the coronal plane facing +A, array
order ``(k, j, i) = (S, A, R)``, direction the identity.  The left hand lies
at R < 0 with its thumb towards +R, the right hand at R > 0 with its thumb
towards -R (arms raised over the head, palms anterior).  Every output is
labelled synthetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core import sequence
from ..core.atomic import atomic_path
from ..core.errors import T1ToT2Error
from ..core.volume import Volume, volume_to_sitk

#: Tissue label values (0 = air/background).
TISSUES = {
    "background": 0,
    "skin": 1,
    "subcutaneous_fat": 2,
    "muscle": 3,
    "tendon": 4,
    "vessel": 5,
    "nerve": 6,
    "synovial_fluid": 7,
    "cartilage": 8,
    "cortical_bone": 9,
    "marrow": 10,
}

#: Relaxation times (ms) and proton density of each tissue at 3 T.
#: ``T2star`` is what the VIBE gradient echo sees; ``T2_space`` the apparent T2 on
#: T2 SPACE.  Fat's apparent T2 is long on turbo spin echo (J-coupling is
#: broken up by the echo train), which is what makes fat bright on SPACE.  The
#: variable-flip-angle echo train of SPACE also lengthens the apparent T2 of
#: short-T2 soft tissue (stimulated echoes), so muscle, cartilage, skin and
#: nerve get apparent T2 values about 1.4 times their spin-echo T2 instead of
#: vanishing into the noise at TE 127 ms.  ``fat``: suppressed by water
#: excitation on VIBE.  ``flow``: moving blood (bright inflow on VIBE, flow
#: void on SPACE).
TISSUE_PROPERTIES = {
    "background": {"T1": 1.0, "T2star": 1.0, "T2_space": 1.0, "PD": 0.0, "fat": False, "flow": False},
    "skin": {"T1": 1100.0, "T2star": 40.0, "T2_space": 55.0, "PD": 0.70, "fat": False, "flow": False},
    "subcutaneous_fat": {"T1": 382.0, "T2star": 68.0, "T2_space": 130.0, "PD": 0.90, "fat": True, "flow": False},
    "muscle": {"T1": 1420.0, "T2star": 32.0, "T2_space": 45.0, "PD": 0.80, "fat": False, "flow": False},
    "tendon": {"T1": 725.0, "T2star": 2.0, "T2_space": 13.0, "PD": 0.65, "fat": False, "flow": False},
    # Blood: apparent T1 of inflowing, unsaturated spins on VIBE.
    "vessel": {"T1": 250.0, "T2star": 50.0, "T2_space": 150.0, "PD": 0.90, "fat": False, "flow": True},
    "nerve": {"T1": 1200.0, "T2star": 55.0, "T2_space": 80.0, "PD": 0.75, "fat": False, "flow": False},
    "synovial_fluid": {"T1": 3620.0, "T2star": 767.0, "T2_space": 767.0, "PD": 0.97, "fat": False, "flow": False},
    "cartilage": {"T1": 1240.0, "T2star": 37.0, "T2_space": 50.0, "PD": 0.75, "fat": False, "flow": False},
    "cortical_bone": {"T1": 250.0, "T2star": 0.5, "T2_space": 1.0, "PD": 0.05, "fat": False, "flow": False},
    "marrow": {"T1": 371.0, "T2star": 50.0, "T2_space": 130.0, "PD": 0.90, "fat": True, "flow": False},
}

#: The two sequences of the paper (Siemens 3 T): T1 VIBE with water excitation and T2 SPACE.
VIBE = {"TR": 13.5, "TE": 6.0, "flip_deg": 10.0, "fat_residual": 0.1}
SPACE = {"TR": 1500.0, "TE": 127.0, "flow_void_residual": 0.03}

#: Voxel size (mm, isotropic) of each phantom size.
SIZES = {"small": 1.5, "full": 0.6}
#: Field of view (S, A, R) in mm: 491 x 76 x 223 voxels at 0.6 mm, as the paper's volumes.
FIELD_OF_VIEW_MM = (294.6, 45.6, 133.8)
#: Labels are rasterised on a grid this many times finer, then averaged down (partial volume).
SUPERSAMPLE = 2
#: Where each hand's volume is centred in R (mm): the left hand on the patient's left.
HAND_CENTRE_R = {"left": -150.0, "right": 150.0}
#: Output intensity of the brightest tissue of each sequence, and the Rician noise sigma.
INTENSITY_SCALE = 1000.0
NOISE_SIGMA = 12.0
BIAS_AMPLITUDE = 0.15
TEXTURE_AMPLITUDE = 0.04
#: Largest misregistration of T2 against T1: rotation (degrees) and translation (mm) per axis.
MISREGISTRATION = (1.5, 1.0)

SYNTHETIC_NOTE = "SYNTHETIC: T1ToT2 procedural hand phantom (simulated MRI)"
_SLAB = 16  # output slices rasterised at a time (bounds memory at full size)


# --- signal equations ---------------------------------------------------------
def vibe_signal(T1, T2star, PD, fat=False, flow=False, TR=VIBE["TR"], TE=VIBE["TE"], flip_deg=VIBE["flip_deg"], fat_residual=VIBE["fat_residual"]):
    """Spoiled gradient echo: PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2*); fat scaled by the water-excitation residual."""
    a = np.radians(flip_deg)
    e1 = np.exp(-TR / T1)
    s = PD * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-TE / T2star)
    return s * fat_residual if fat else s


def space_signal(T1, T2, PD, flow=False, TR=SPACE["TR"], TE=SPACE["TE"], flow_void_residual=SPACE["flow_void_residual"], **_):
    """Turbo spin echo: PD (1 - exp(-TR / T1)) exp(-TE / T2); moving blood leaves a flow void."""
    s = PD * (1.0 - np.exp(-TR / T1)) * np.exp(-TE / T2)
    return s * flow_void_residual if flow else s


def tissue_signals(vibe: dict | None = None, space: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Look-up tables label -> noiseless VIBE and SPACE intensity (brightest tissue = INTENSITY_SCALE).

    ``vibe`` / ``space``: sequence parameters (keys of :data:`VIBE` / :data:`SPACE`; default those)."""
    vibe, space = {**VIBE, **(vibe or {})}, {**SPACE, **(space or {})}
    n = max(TISSUES.values()) + 1
    t1, t2 = np.zeros(n, np.float64), np.zeros(n, np.float64)
    for name, label in TISSUES.items():
        p = TISSUE_PROPERTIES[name]
        t1[label] = vibe_signal(p["T1"], p["T2star"], p["PD"], fat=p["fat"], flow=p["flow"], **vibe)
        t2[label] = space_signal(p["T1"], p["T2_space"], p["PD"], flow=p["flow"], **space)
    return (t1 * INTENSITY_SCALE / t1.max()).astype(np.float32), (t2 * INTENSITY_SCALE / t2.max()).astype(np.float32)


# --- grid -----------------------------------------------------------------------
def _check_size(size: str) -> float:
    if size not in SIZES:
        raise T1ToT2Error(f"unknown phantom size {size!r}: use one of {', '.join(SIZES)}")
    return SIZES[size]


def grid_shape(size) -> tuple[int, int, int]:
    """Array shape (k, j, i) = (S, A, R) of a phantom size (or an :class:`Acquisition`)."""
    return as_acquisition(size).shape


def _axes(shape, spacing, factor):
    """Hand-frame coordinates (z, y, x) of the sample centres along each axis, ``factor`` samples per voxel.

    ``spacing``: one voxel size (mm) or one per array axis (k, j, i)."""
    sk, sj, si = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).tolist()
    nk, nj, ni = shape

    def axis(n, first, step):
        return (first - step / 2 + (np.arange(n * factor) + 0.5) * step / factor).astype(np.float32)

    return axis(nk, 0.5 * sk, sk), axis(nj, -(nj - 1) / 2 * sj, sj), axis(ni, -(ni - 1) / 2 * si, si)


def hand_geometry(size, side: str) -> np.ndarray:
    """The ijk_to_ras matrix of one hand's volumes (``size``: a preset name or an :class:`Acquisition`)."""
    acquisition = as_acquisition(size)
    si, sj, sk = acquisition.voxel_mm
    nk, nj, ni = acquisition.shape
    origin = (HAND_CENTRE_R[side] - (ni - 1) / 2 * si, -(nj - 1) / 2 * sj, 0.5 * sk)
    return Volume.from_geometry(np.zeros((1, 1, 1)), (si, sj, sk), origin).ijk_to_ras


def frame_to_ras(points, side: str) -> np.ndarray:
    """Hand frame (x radial, y volar, z distal) to RAS; the right hand is mirrored in R."""
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    sign = 1.0 if side == "left" else -1.0
    return np.column_stack([HAND_CENTRE_R[side] + sign * p[:, 0], p[:, 1], p[:, 2]])


# --- rasterisation ----------------------------------------------------------------
def _box(prim, axes, margin=0.0):
    """Index slices of the samples inside a primitive's bounding box, or None when it misses the slab."""
    lo, hi = prim.bounds(margin)
    out = []
    for axis, a, b in zip(axes, lo[::-1], hi[::-1]):  # bounds are (x, y, z); axes are (z, y, x)
        i0, i1 = np.searchsorted(axis, a), np.searchsorted(axis, b, side="right")
        if i1 <= i0:
            return None
        out.append(slice(int(i0), int(i1)))
    return tuple(out)


def _sdf_in(prim, axes, box):
    z, y, x = (a[s] for a, s in zip(axes, box))
    return prim.sdf(z[:, None, None], y[None, :, None], x[None, None, :])


def _smooth_min(a, b, k):
    """Polynomial smooth minimum: blends the union of two shapes over ``k`` mm (webs, wrist)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def rasterize(hand, axes) -> np.ndarray:
    """Tissue labels (uint8) of ``hand`` at the sample points ``axes`` = (z, y, x)."""
    shape = tuple(len(a) for a in axes)
    T = TISSUES
    envelope = np.full(shape, 1e6, np.float32)
    blend = 6.0
    for prim in hand.envelope:
        box = _box(prim, axes, blend)
        if box is not None:
            envelope[box] = _smooth_min(envelope[box], _sdf_in(prim, axes, box)[0], blend)

    labels = np.zeros(shape, np.uint8)
    labels[envelope <= 0] = T["skin"]
    under_skin = envelope <= -hand.skin_thickness
    labels[under_skin] = T["subcutaneous_fat"]
    deep = envelope <= -(hand.skin_thickness + hand.fat_thickness)

    def paint(prims, label, allowed):
        for prim in prims:
            box = _box(prim, axes)
            if box is not None:
                inside = (_sdf_in(prim, axes, box)[0] <= 0) & allowed[box]
                labels[box][inside] = label

    paint(hand.muscles, T["muscle"], deep)
    paint(hand.tendons, T["tendon"], under_skin)
    paint(hand.vessels, T["vessel"], under_skin)
    paint(hand.nerves, T["nerve"], under_skin)

    # Bones: keep the nearest and second-nearest bone distance; where two bones
    # are both within the joint gap lies a joint (cartilage on each surface, fluid between).
    from .anatomy import JOINT_GAP

    nearest = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    bone = np.zeros(shape, np.uint8)
    reach = JOINT_GAP + 0.6
    for prim in hand.bones:
        box = _box(prim, axes, reach)
        if box is None:
            continue
        d, cortex = _sdf_in(prim, axes, box)
        n, s = nearest[box], second[box]
        s[...] = np.minimum(s, np.maximum(n, d))
        n[...] = np.minimum(n, d)
        b = bone[box]
        b[d <= 0] = T["cortical_bone"]
        b[d <= -cortex] = T["marrow"]
    # Only between surfaces that face each other across a joint gap, not along neighbouring shafts.
    joint = (second <= reach) & (nearest + second <= JOINT_GAP + 1.0) & under_skin & (bone == 0)
    labels[joint] = T["synovial_fluid"]
    labels[joint & (nearest <= 1.0)] = T["cartilage"]
    labels[bone > 0] = bone[bone > 0]
    return labels


def _block_mean(a, f):
    from skimage.measure import block_reduce

    return block_reduce(a, (f, f, f), np.mean).astype(np.float32)


def _block_mode(labels, f):
    """Most frequent label in each f x f x f block (ties go to the lower label)."""
    k, j, i = (n // f for n in labels.shape)
    blocks = labels.reshape(k, f, j, f, i, f)
    best = np.zeros((k, j, i), np.uint8)
    best_count = np.zeros((k, j, i), np.int16)
    for label in np.unique(labels):
        count = (blocks == label).sum(axis=(1, 3, 5), dtype=np.int16)
        better = count > best_count
        best[better], best_count[better] = label, count[better]
    return best


def render_hand(hand, size, progress=None):
    """Labels and noiseless T1/T2 images (k, j, i) of one hand in its hand frame (x along +i).

    ``size``: a preset name or an :class:`Acquisition` (voxel size, field of view, sequence parameters)."""
    acquisition = as_acquisition(size)
    shape = acquisition.shape
    f = SUPERSAMPLE
    z_axis, y_axis, x_axis = _axes(shape, acquisition.spacing_kji, f)
    lut_t1, lut_t2 = tissue_signals(acquisition.vibe, acquisition.space)
    labels = np.zeros(shape, np.uint8)
    t1 = np.zeros(shape, np.float32)
    t2 = np.zeros(shape, np.float32)
    for k0 in range(0, shape[0], _SLAB):
        k1 = min(shape[0], k0 + _SLAB)
        fine = rasterize(hand, (z_axis[k0 * f : k1 * f], y_axis, x_axis))
        labels[k0:k1] = _block_mode(fine, f)
        t1[k0:k1] = _block_mean(lut_t1[fine], f)
        t2[k0:k1] = _block_mean(lut_t2[fine], f)
        if progress:
            progress(k1 - k0)
    return labels, t1, t2


# --- acquisition effects -------------------------------------------------------------
def bias_field(shape, rng, amplitude=BIAS_AMPLITUDE) -> np.ndarray:
    """A smooth multiplicative coil field: exp of a random quadratic polynomial, within about 1 +- amplitude."""
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = u[0][:, None, None], u[1][None, :, None], u[2][None, None, :]
    terms = [x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, y * z, x * z]
    c = rng.uniform(-1.0, 1.0, len(terms))
    log_field = sum(ci * t for ci, t in zip(c, terms))
    log_field = log_field * (amplitude / max(float(np.abs(log_field).max()), 1e-6))
    return np.exp(log_field).astype(np.float32)


def tissue_texture(shape, spacing, rng, amplitude=TEXTURE_AMPLITUDE, scale_mm=1.5) -> np.ndarray:
    """Mild smooth heterogeneity within tissues (multiplicative, mean 1), shared by both sequences of a hand."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), tuple(scale_mm / np.broadcast_to(spacing, (3,))))
    field *= amplitude / max(float(field.std()), 1e-6)
    return 1.0 + field


def rician(signal, sigma, rng) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def random_rigid(rng, limits=MISREGISTRATION):
    """A small random rotation (degrees) and translation (mm) as (rotation matrix, translation) in the hand frame."""
    from scipy.spatial.transform import Rotation

    angles = rng.uniform(-limits[0], limits[0], 3)
    shift = rng.uniform(-limits[1], limits[1], 3)
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix(), shift, angles


def _move_image(image, rotation, shift_mm, spacing):
    """Resample ``image`` (k, j, i) as if the anatomy moved by the rigid transform about the volume centre."""
    from scipy import ndimage

    # Array axes are (z, y, x); the transform is given in (x, y, z).
    perm = [2, 1, 0]
    r = rotation[np.ix_(perm, perm)]
    centre = (np.asarray(image.shape) - 1) / 2.0
    shift_vox = np.asarray(shift_mm)[perm] / np.asarray(spacing, dtype=np.float64)
    # output(p) = input(R^-1 (p - c - t) + c)
    inverse = r.T
    offset = centre - inverse @ (centre + shift_vox)
    return ndimage.affine_transform(image, inverse, offset=offset, order=1, mode="constant", cval=0.0)


# --- acquisition ---------------------------------------------------------------------------
#: Ranges that :func:`random_acquisition` draws from (uniformly): voxel size (mm), Rician noise sigma
#: (multiples of :data:`NOISE_SIGMA`), coil field amplitude, VIBE TR/TE (ms) and flip (degrees), SPACE TR/TE (ms),
#: field of view (S, A, R in mm) and pose (rotation of the hand about its own x, y, z axes, degrees).
#: The sequence ranges are those of 3 T musculoskeletal VIBE (3D spoiled gradient echo) and T2 SPACE protocols.
RANDOM_RANGES = {
    "voxel_mm": (0.5, 1.5),
    "slice_factor": (1.0, 1.6),
    "noise_factor": (0.5, 2.0),
    "bias_amplitude": (0.05, 0.30),
    "vibe_TR": (7.0, 15.0), "vibe_TE": (2.0, 6.0), "vibe_flip_deg": (6.0, 15.0),
    "space_TR": (1000.0, 3000.0), "space_TE": (90.0, 150.0),
    "fov_S": (260.0, 300.0), "fov_A": (48.0, 64.0), "fov_R": (125.0, 150.0),
    "pose_deg": (4.0, 10.0, 15.0),
}


@dataclass
class Acquisition:
    """How a phantom is acquired: grid, noise, coil field, sequence parameters and the hand's pose.

    ``voxel_mm`` is (R, A, S) = along (i, j, k), as :attr:`Volume.spacing`; ``fov_mm`` is (S, A, R);
    ``pose_deg`` rotates the hand about its own x (radial), y (volar) and z (distal) axes, in that
    order, around the centre of the field of view.  Both hands of a subject share one acquisition.
    """

    voxel_mm: tuple = (1.5, 1.5, 1.5)
    noise_sigma: float = NOISE_SIGMA
    bias_amplitude: float = BIAS_AMPLITUDE
    vibe: dict = field(default_factory=lambda: dict(VIBE))
    space: dict = field(default_factory=lambda: dict(SPACE))
    fov_mm: tuple = FIELD_OF_VIEW_MM
    pose_deg: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        self.voxel_mm = tuple(float(v) for v in np.broadcast_to(np.asarray(self.voxel_mm, dtype=np.float64), (3,)))
        self.fov_mm = tuple(float(v) for v in self.fov_mm)
        self.pose_deg = tuple(float(v) for v in self.pose_deg)
        self.vibe, self.space = {**VIBE, **self.vibe}, {**SPACE, **self.space}
        checks = [(all(0.2 <= v <= 5.0 for v in self.voxel_mm), f"voxel size {self.voxel_mm} mm: use 0.2 to 5 mm per axis"),
                  (len(self.fov_mm) == 3 and all(10.0 <= v <= 600.0 for v in self.fov_mm), f"field of view {self.fov_mm} mm: use 10 to 600 mm per axis"),
                  (len(self.pose_deg) == 3 and all(abs(v) <= 90 for v in self.pose_deg), f"pose {self.pose_deg}: use three angles within +-90 degrees"),
                  (0.0 <= self.noise_sigma <= 500.0, f"noise sigma {self.noise_sigma}: use 0 to 500 (intensity units)"),
                  (0.0 <= self.bias_amplitude <= 1.0, f"coil field amplitude {self.bias_amplitude}: use 0 to 1"),
                  (0 < self.vibe["TE"] < self.vibe["TR"] and 0 < self.vibe["flip_deg"] < 90, f"VIBE {self.vibe}: need 0 < TE < TR and a flip in (0, 90) degrees"),
                  (0 < self.space["TE"] < self.space["TR"], f"SPACE {self.space}: need 0 < TE < TR")]
        for ok, message in checks:
            if not ok:
                raise T1ToT2Error(f"phantom acquisition: {message}")

    @classmethod
    def preset(cls, size: str) -> "Acquisition":
        return cls(voxel_mm=(_check_size(size),) * 3)

    @property
    def spacing_kji(self) -> tuple:
        return self.voxel_mm[::-1]

    @property
    def shape(self) -> tuple:
        """Array shape (k, j, i) = (S, A, R)."""
        return tuple(max(1, int(round(f / s))) for f, s in zip(self.fov_mm, self.spacing_kji))

    def record(self) -> dict:
        """The JSON record written to landmarks.json and the volumes' metadata."""
        return {"voxel_mm_RAS": [round(v, 6) for v in self.voxel_mm], "shape_SAR": list(self.shape),
                "noise_sigma": round(self.noise_sigma, 6), "bias_amplitude": round(self.bias_amplitude, 6),
                "vibe": {k: round(float(v), 6) for k, v in self.vibe.items()}, "space": {k: round(float(v), 6) for k, v in self.space.items()},
                "fov_mm_SAR": [round(v, 6) for v in self.fov_mm], "pose_deg_xyz": [round(v, 6) for v in self.pose_deg]}


def as_acquisition(size) -> Acquisition:
    return size if isinstance(size, Acquisition) else Acquisition.preset(size)


#: The least field of view in A and R (mm) of a turned hand.  It holds the robustness matrix's oblique pose (0, 20, 25
#: degrees; at 72 mm in A that palm was cut), not every turn of 20 degrees about all three axes: such a hand can be cut,
#: as by a real field of view.
POSED_FIELD_OF_VIEW_AR = (100.0, 180.0)


def posed(acquisition: Acquisition, pose_deg) -> Acquisition:
    """``acquisition`` with the hand turned by ``pose_deg`` (x, y, z) and its field of view widened to at least
    :data:`POSED_FIELD_OF_VIEW_AR` in A and R."""
    s, a, r = acquisition.fov_mm
    wide = (s, max(a, POSED_FIELD_OF_VIEW_AR[0]), max(r, POSED_FIELD_OF_VIEW_AR[1]))
    return replace(acquisition, pose_deg=tuple(float(v) for v in pose_deg), fov_mm=wide)


def tissue_on_side_faces(labels: np.ndarray) -> int:
    """Tissue voxels on the A and R faces of a hand's label array: where its field of view cuts the hand (the forearm
    leaves through the S faces by design)."""
    inside = np.asarray(labels) > 0
    return int(inside[:, [0, -1]].sum() + inside[:, :, [0, -1]].sum())


def random_acquisition(seed: int, ranges: dict | None = None) -> Acquisition:
    """A randomized acquisition, a pure function of ``seed`` (its own random stream, apart from the anatomy's).

    Voxels: the in-plane size (R, S; the palm lies in the coronal plane) is drawn in ``voxel_mm``, the slice
    thickness (A) is that times ``slice_factor``, clipped to the range.  Pose: uniform within
    +-``pose_deg`` about x, y, z."""
    r = {**RANDOM_RANGES, **(ranges or {})}
    rng = np.random.default_rng([int(seed), 18])
    draw = lambda key: float(rng.uniform(*r[key]))  # noqa: E731
    lo, hi = r["voxel_mm"]
    in_plane = draw("voxel_mm")
    slice_mm = float(np.clip(in_plane * draw("slice_factor"), lo, hi))
    noise = NOISE_SIGMA * draw("noise_factor")
    bias = draw("bias_amplitude")
    vibe = {"TR": draw("vibe_TR"), "TE": draw("vibe_TE"), "flip_deg": draw("vibe_flip_deg")}
    space = {"TR": draw("space_TR"), "TE": draw("space_TE")}
    fov = (draw("fov_S"), draw("fov_A"), draw("fov_R"))
    pose = tuple(float(rng.uniform(-m, m)) for m in r["pose_deg"])
    return Acquisition((in_plane, slice_mm, in_plane), noise, bias, vibe, space, fov, pose)


def _posed(hand, acquisition: Acquisition):
    """The hand rotated by the acquisition's pose about the centre of the field of view (hand frame)."""
    if not any(acquisition.pose_deg):
        return hand
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", acquisition.pose_deg, degrees=True).as_matrix()
    centre = np.array([0.0, 0.0, acquisition.fov_mm[0] / 2.0])
    return hand.moved(lambda pts: (np.asarray(pts, float) - centre) @ rotation.T + centre)


# --- public API --------------------------------------------------------------------------
def _hands(seed, acquisition: Acquisition | None = None):
    from .anatomy import build_hand, draw_parameters, vary_parameters

    rng = np.random.default_rng(seed)
    left = draw_parameters(rng)
    right = vary_parameters(left, rng)
    hands = {"left": build_hand(left), "right": build_hand(right)}
    if acquisition is not None:
        hands = {side: _posed(hand, acquisition) for side, hand in hands.items()}
    return hands, rng


def resolve_acquisition(size: str = "small", seed: int = 0, randomize: bool = False, acquisition: Acquisition | None = None,
                        **overrides) -> Acquisition:
    """The acquisition a phantom is rendered with: ``acquisition`` if given, else the ``size`` preset or (with
    ``randomize``) :func:`random_acquisition` of ``seed``; then ``overrides`` (Acquisition fields; None = keep)."""
    _check_size(size)
    base = acquisition or (random_acquisition(seed) if randomize else Acquisition.preset(size))
    chosen = {k: v for k, v in overrides.items() if v is not None}
    for key in ("vibe", "space"):
        if key in chosen:
            chosen[key] = {**getattr(base, key), **chosen[key]}
    return replace(base, **chosen) if chosen else base


def _render_side(hand, side, acquisition, rng, misregistration, progress):
    """One hand's (labels, T1, T2, noise-free T2, misregistration record), in the hand's array orientation."""
    spacing = acquisition.spacing_kji
    labels, t1, t2 = render_hand(hand, acquisition, progress=progress)
    texture = tissue_texture(t1.shape, spacing, rng)
    t1, t2 = t1 * texture, t2 * texture
    clean_t2 = t2.copy()  # what a perfect synthesis could reach: no coil field, no noise
    t1 = t1 * bias_field(t1.shape, rng, acquisition.bias_amplitude)
    t2 = t2 * bias_field(t2.shape, rng, acquisition.bias_amplitude)
    motion = None
    if misregistration:
        rotation, shift, angles = random_rigid(rng)
        t2 = _move_image(t2, rotation, shift, spacing)
        clean_t2 = _move_image(clean_t2, rotation, shift, spacing)
        motion = {"rotation_deg_xyz": angles.round(4).tolist(), "translation_mm_xyz": shift.round(4).tolist()}
    t1 = rician(t1, acquisition.noise_sigma, rng)
    t2 = rician(t2, acquisition.noise_sigma, rng)
    if side == "right":  # the hand frame's x (radial) is -R for the right hand
        labels, t1, t2, clean_t2 = labels[:, :, ::-1], t1[:, :, ::-1], t2[:, :, ::-1], clean_t2[:, :, ::-1]
    return labels, t1, t2, clean_t2, motion


def make_phantom(size: str = "small", seed: int = 0, misregistration: bool = False, progress: bool = False,
                 acquisition: Acquisition | None = None, randomize: bool = False) -> dict:
    """Simulate both hands: ``{left,right}_{t1,t2,t2_clean,labels}`` volumes, one geometry per hand.

    ``*_t2_clean`` is the T2 as rendered before the coil bias field and the Rician noise (same
    anatomy, partial volume and texture): the "oracle" that shows what a synthesis could reach.

    Labels are float arrays of the integer values in :data:`TISSUES`.  With
    ``misregistration`` the T2 images are rigidly moved (at most
    :data:`MISREGISTRATION`) against the T1 images and labels; the transform
    is recorded in each T2 volume's ``meta["misregistration"]``.

    ``acquisition`` (or, with ``randomize``, :func:`random_acquisition` of ``seed``) replaces the ``size``
    preset's voxel size, field of view, noise, coil field, sequence parameters and pose; it is recorded
    in every volume's ``meta["acquisition"]``.
    """
    acquisition = resolve_acquisition(size, seed, randomize, acquisition)
    hands, rng = _hands(seed, acquisition)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=2 * acquisition.shape[0], desc=f"phantom ({size})", unit="slice")
    out = {}
    try:
        for side in ("left", "right"):
            labels, t1, t2, clean_t2, motion = _render_side(hands[side], side, acquisition, rng, misregistration,
                                                            bar.update if bar else None)
            m = hand_geometry(acquisition, side)
            base = {"synthetic": True, "description": SYNTHETIC_NOTE, "phantom_seed": int(seed), "phantom_size": size, "hand": side,
                    "acquisition": acquisition.record()}
            t1_meta = {**base, "sequence": "T1 VIBE (simulated)", sequence.META_KEY: sequence.checked(acquisition.vibe)}
            out[f"{side}_t1"] = Volume(np.ascontiguousarray(t1), m.copy(), t1_meta)
            t2_meta = {**base, "sequence": "T2 SPACE (simulated)"}
            if motion:
                t2_meta["misregistration"] = motion
            out[f"{side}_t2"] = Volume(np.ascontiguousarray(t2), m.copy(), t2_meta)
            out[f"{side}_t2_clean"] = Volume(np.ascontiguousarray(clean_t2), m.copy(),
                                             {**t2_meta, "sequence": "T2 SPACE (simulated, noise-free, no coil field)"})
            out[f"{side}_labels"] = Volume(np.ascontiguousarray(labels, dtype=np.float32), m.copy(), {**base, "labels": dict(TISSUES)})
    finally:
        if bar is not None:
            bar.close()
    return out


def landmarks(size: str = "small", seed: int = 0, acquisition: Acquisition | None = None) -> dict:
    """RAS points for the analyses, per hand: the thumb metacarpal profile line and occlusion-study points
    (moved with the hand when ``acquisition`` poses it)."""
    _check_size(size)
    hands, _ = _hands(seed, acquisition)
    out = {}
    for side, hand in hands.items():
        marks = hand.landmarks
        out[side] = {
            "thumb_metacarpal_profile": frame_to_ras(marks["thumb_metacarpal_profile"], side).round(3).tolist(),
            "occlusion_points": {k: frame_to_ras(v, side)[0].round(3).tolist() for k, v in marks["occlusion_points"].items()},
        }
    return out


def _write_labelled(volume: Volume, path: Path, note: str) -> Path:
    """Write like :func:`~T1ToT2Lib.io.files.write_volume`, with ``note`` in the file's description (NIfTI ``descrip``)."""
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    image.SetMetaData("ITK_FileNotes", note[:79])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_phantom(outdir, size: str = "small", seed: int = 0, misregistration: bool = False, progress: bool = False,
                  acquisition: Acquisition | None = None, randomize: bool = False) -> dict:
    """Write both hands' T1, T2 and label volumes (NIfTI) and ``landmarks.json`` to ``outdir``.

    Each file is written atomically; the same arguments give byte-identical files.  ``acquisition`` /
    ``randomize`` as in :func:`make_phantom`; the acquisition is recorded in ``landmarks.json``.
    """
    acquisition = resolve_acquisition(size, seed, randomize, acquisition)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise T1ToT2Error(f"'{outdir}' is a file: give a folder for the phantom")
    from ..io.files import write_sidecar

    volumes = make_phantom(size, seed, misregistration, progress=progress, acquisition=acquisition)
    paths = {}
    for name, volume in volumes.items():
        kind = name.split("_", 1)[1]
        if kind == "t2_clean":
            note = f"SYNTHETIC phantom {name} (noise-free T2 SPACE render, no coil field)"
            paths[name] = _write_labelled(volume, outdir / f"{name}.nii.gz", note)
            continue
        note = f"SYNTHETIC phantom {name} ({volume.meta.get('sequence', 'tissue labels')})"
        paths[name] = _write_labelled(volume, outdir / f"{name}.nii.gz", note if kind != "labels" else f"SYNTHETIC phantom {name}")
        if kind == "t1":  # the T1's sequence, where dcm2niix would put it: a BIDS sidecar that read_volume reads
            paths[f"{name}_sidecar"] = write_sidecar(paths[name], volume.meta[sequence.META_KEY], ImageComments=SYNTHETIC_NOTE)
    voxel = acquisition.voxel_mm
    info = {
        "synthetic": True,
        "description": SYNTHETIC_NOTE,
        "size": size,
        "voxel_mm": voxel[0] if len(set(voxel)) == 1 else list(voxel),
        "seed": int(seed),
        "randomized": bool(randomize),
        "acquisition": acquisition.record(),
        "tissues": TISSUES,
        "tissue_properties": TISSUE_PROPERTIES,
        "sequences": {"T1 VIBE": acquisition.vibe, "T2 SPACE": acquisition.space},
        "misregistration": {side: volumes[f"{side}_t2"].meta.get("misregistration") for side in ("left", "right")},
        "landmarks": landmarks(size, seed, acquisition),
    }
    json_path = outdir / "landmarks.json"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    paths["landmarks"] = json_path
    return paths


def write_subjects(outdir, subjects: int, size: str = "small", seed: int = 0, randomize: bool = False,
                   misregistration: bool = False, progress: bool = False, **overrides) -> dict:
    """Write ``subjects`` phantoms (seeds ``seed`` .. ``seed + subjects - 1``) into ``outdir/subject_SEED`` and a
    ``pairs.csv`` (columns t1, t2: every hand of every subject) that ``t1tot2 train --pairs`` reads."""
    import csv
    import io

    if int(subjects) < 1:
        raise T1ToT2Error(f"--subjects {subjects} must be at least 1")
    outdir = Path(outdir)
    paths, rows = {}, []
    for s in range(int(seed), int(seed) + int(subjects)):
        acquisition = resolve_acquisition(size, s, randomize, None, **overrides)
        folder = outdir / f"subject_{s:03d}"
        written = write_phantom(folder, size, s, misregistration, progress, acquisition=acquisition)
        paths.update({f"subject_{s:03d}/{k}": v for k, v in written.items()})
        rows += [(f"{folder.name}/{side}_t1.nii.gz", f"{folder.name}/{side}_t2.nii.gz") for side in ("left", "right")]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("t1", "t2"))
    writer.writerows(rows)
    with atomic_path(outdir / "pairs.csv") as tmp:
        tmp.write_text(text.getvalue())
    paths["pairs"] = outdir / "pairs.csv"
    return paths

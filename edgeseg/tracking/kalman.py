"""A constant-velocity Kalman filter on boxes, run on every track at once.

The state of a track is ``(cx, cy, w, h, vx, vy, vw, vh)``: the box's centre, width and height
and their velocities in pixels per frame. It is the parametrisation of BoT-SORT's
``KalmanFilterXYWH`` rather than SORT's and ByteTrack's ``(cx, cy, aspect, h)``: with the aspect
ratio, the position noise scales with the height alone, so a wide object (a car seen from the
side) gets too little horizontal noise and a thin one (a pedestrian) too much; with width and
height each axis is scaled by its own extent. Noise is proportional to the box size (the weights
of SORT/ByteTrack: 1/20 of the extent for positions, 1/160 for velocities), so a distant small
object and a near big one are tracked with the same relative confidence.

Every function takes and returns stacked arrays: ``means`` (n, 8) and ``covariances`` (n, 8, 8),
so that a frame's prediction of 50 tracks is a handful of numpy calls rather than 50 Python
loops. Nothing here is mutated in place; the tracker stores what is returned.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

#: Position noise: this fraction of the box's width (x, w) or height (y, h), per frame.
STD_WEIGHT_POSITION = 1.0 / 20.0
#: Velocity noise: this fraction of the box's width or height, per frame.
STD_WEIGHT_VELOCITY = 1.0 / 160.0
#: Width and height are kept at least this many pixels, so that a degenerate box (zero width
#: after clipping at the frame's edge) never makes a zero noise and a singular innovation.
MIN_EXTENT = 1.0


def xyxy_to_cxcywh(boxes: npt.ArrayLike) -> Array:
    """(n, 4) x0, y0, x1, y1 -> (n, 4) cx, cy, w, h (w and h at least ``MIN_EXTENT``)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    wh = np.maximum(b[:, 2:] - b[:, :2], MIN_EXTENT)
    return np.concatenate([(b[:, :2] + b[:, 2:]) * 0.5, wh], axis=1)


def cxcywh_to_xyxy(boxes: npt.ArrayLike) -> Array:
    """(n, 4) cx, cy, w, h -> (n, 4) x0, y0, x1, y1."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    half = b[:, 2:] * 0.5
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def _extent(wh: Array) -> Array:
    """(n, 2) w, h -> (n, 4) w, h, w, h: the scale of each of the four box coordinates."""
    wh = np.maximum(wh, MIN_EXTENT)
    return np.concatenate([wh, wh], axis=1)


def initiate(measurements: npt.ArrayLike) -> Tuple[Array, Array]:
    """New tracks from (n, 4) cx, cy, w, h measurements: zero velocity, wide uncertainty.

    The initial standard deviations are SORT's: twice the position noise on the box, ten times
    the velocity noise on the velocities (nothing is known about the motion yet).
    """
    z = np.asarray(measurements, np.float64).reshape(-1, 4)
    means = np.concatenate([z, np.zeros_like(z)], axis=1)
    scale = _extent(z[:, 2:])
    std = np.concatenate([2.0 * STD_WEIGHT_POSITION * scale, 10.0 * STD_WEIGHT_VELOCITY * scale], axis=1)
    covariances = np.zeros((len(z), 8, 8))
    idx = np.arange(8)
    covariances[:, idx, idx] = std**2
    return means, covariances


def transition(dt: float) -> Array:
    """The (8, 8) constant-velocity transition over ``dt`` frames."""
    f = np.eye(8)
    f[np.arange(4), np.arange(4) + 4] = dt
    return f


def predict(means: Array, covariances: Array, dt: float = 1.0) -> Tuple[Array, Array]:
    """Every track moved ``dt`` frames ahead at its velocity.

    The process noise is that of one frame times ``dt`` (a random walk: its variance grows
    linearly with the time elapsed), so that frames dropped upstream (``dt`` > 1) widen the
    uncertainty as much as that many predictions would, to first order.
    """
    if len(means) == 0:
        return means, covariances
    f = transition(dt)
    scale = _extent(means[:, 2:4])
    std = np.concatenate([STD_WEIGHT_POSITION * scale, STD_WEIGHT_VELOCITY * scale], axis=1)
    new_means = means @ f.T
    # a shrinking box's width or height never goes through zero (a lost track predicted for long)
    new_means[:, 2:4] = np.maximum(new_means[:, 2:4], MIN_EXTENT)
    new_covariances = f @ covariances @ f.T
    idx = np.arange(8)
    new_covariances[:, idx, idx] += dt * std**2
    return new_means, new_covariances


def project(means: Array, covariances: Array) -> Tuple[Array, Array]:
    """The predicted measurements (n, 4) and innovation covariances (n, 4, 4)."""
    scale = _extent(means[:, 2:4])
    r = (STD_WEIGHT_POSITION * scale) ** 2
    s = covariances[:, :4, :4].copy()
    idx = np.arange(4)
    s[:, idx, idx] += r
    return means[:, :4].copy(), s


def update(means: Array, covariances: Array, measurements: npt.ArrayLike) -> Tuple[Array, Array]:
    """The tracks corrected by their matched measurements (n, 4) cx, cy, w, h.

    The gain is solved (``S K^T = H P``), not inverted; the covariance update is the short form
    ``P - K S K^T``, symmetrised to keep rounding from making it asymmetric over a long run.
    """
    if len(means) == 0:
        return means, covariances
    z = np.asarray(measurements, np.float64).reshape(-1, 4)
    projected, s = project(means, covariances)
    hp = covariances[:, :4, :]  # H P: the measured rows of the covariance (n, 4, 8)
    gain_t = np.linalg.solve(s, hp)  # K^T (n, 4, 8)
    gain = np.transpose(gain_t, (0, 2, 1))  # K (n, 8, 4)
    innovation = z - projected
    new_means = means + np.einsum("nij,nj->ni", gain, innovation)
    new_covariances = covariances - gain @ s @ gain_t
    new_covariances = 0.5 * (new_covariances + np.transpose(new_covariances, (0, 2, 1)))
    return new_means, new_covariances

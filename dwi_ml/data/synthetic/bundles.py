"""Geometry of synthetic bundles: smooth curved centrelines and streamlines.

All coordinates in this module are in VOXMM space with a corner origin: mm
along the voxel axes, measured from the outer corner of voxel (0, 0, 0), so
the volume spans ``[0, extent_mm]`` on each axis. Whole bundles are built as
arrays; nothing here loops over points.
"""
from dataclasses import dataclass

import numpy as np

from dwi_ml.data.packed import (
    make_array_sequence,
    offsets_from_lengths,
    ranges_to_indices,
)

# Main orientations (in box-normalised coordinates) and the axis each bundle
# bends towards. They differ so that "go straight" is a bad model, and all
# chords pass near the box centre so that the bundles cross there.
_TEMPLATES = (
    ((1., 0., 0.), (0., 1., 0.), 1),   # left-right arc
    ((0., 1., 0.), (0., 0., 1.), 2),   # anterior-posterior S-curve
    ((0., 1., 1.), (1., 0., 0.), 1),   # oblique arc
    ((1., 0., 1.), (0., 1., 0.), 2),
    ((1., 1., 0.), (0., 0., 1.), 1),
    ((0., 0., 1.), (1., 0., 0.), 2),
)
_ARC_BEND = 0.25       # bend amplitude / chord length, one half-wave
_S_CURVE_BEND = 0.12   # bend amplitude / chord length, two half-waves
_NB_DENSE = 2048       # centreline samples for arc length and box fitting


@dataclass(frozen=True)
class Centreline:
    """Centreline ``c(t) = start + t (end - start) + bend sin(pi nb_waves t)``.

    Attributes
    ----------
    start_mm, end_mm : np.ndarray, shape (3,)
        Chord ends, VOXMM corner space.
    bend_mm : np.ndarray, shape (3,)
        Bend vector (perpendicular to the chord before box fitting), mm.
    nb_waves : int
        1 gives an arc, 2 an S-curve.
    """
    start_mm: np.ndarray
    end_mm: np.ndarray
    bend_mm: np.ndarray
    nb_waves: int

    def points(self, t):
        """Centreline points (len(t), 3) in VOXMM corner space, t in [0, 1]."""
        t = np.asarray(t, dtype=np.float64)[:, None]
        wave = np.sin(np.pi * self.nb_waves * t)
        return (self.start_mm + t * (self.end_mm - self.start_mm)
                + wave * self.bend_mm)


def _unit(vector):
    return vector / np.linalg.norm(vector)


def _rotate_about(vector, axis, angle):
    """Rodrigues rotation of ``vector`` about the unit ``axis``."""
    return (vector * np.cos(angle) + np.cross(axis, vector) * np.sin(angle)
            + axis * np.dot(axis, vector) * (1. - np.cos(angle)))


def _template(bundle_idx, template_rng):
    """Orientation, bend axis and wave count of one bundle (before jitter)."""
    if bundle_idx < len(_TEMPLATES):
        direction, bend_axis, nb_waves = _TEMPLATES[bundle_idx]
        return np.array(direction), np.array(bend_axis), nb_waves
    # More bundles than templates: random orientations, the same for every
    # subject since template_rng does not depend on the subject.
    direction = template_rng.normal(size=3)
    bend_axis = template_rng.normal(size=3)
    return direction, bend_axis, 1 + bundle_idx % 2


def fit_in_box(centreline, low_mm, high_mm):
    """Scale and shift a centreline, per axis, so it lies in [low, high].

    Only axes where the curve leaves the box change; the result stays a
    :class:`Centreline`, since a per-axis affine map keeps the curve family.
    """
    dense = centreline.points(np.linspace(0., 1., _NB_DENSE))
    curve_min, curve_max = dense.min(axis=0), dense.max(axis=0)
    span = np.maximum(curve_max - curve_min, 1e-9)
    scale = np.minimum(1., (high_mm - low_mm) / span)
    new_min = np.clip(curve_min, low_mm, high_mm - span * scale)

    def remap(point):
        return (point - curve_min) * scale + new_min

    return Centreline(start_mm=remap(centreline.start_mm),
                      end_mm=remap(centreline.end_mm),
                      bend_mm=centreline.bend_mm * scale,
                      nb_waves=centreline.nb_waves)


def make_centrelines(nb_bundles, extent_mm, margin_mm, rng):
    """Draw the centrelines of one subject.

    Parameters
    ----------
    nb_bundles : int
    extent_mm : np.ndarray, shape (3,)
        Size of the volume in mm (shape * voxel size).
    margin_mm : np.ndarray, shape (3,)
        Distance the centrelines keep from each face of the volume, mm.
    rng : np.random.Generator
        The subject's generator: it jitters position, bend and orientation.

    Returns
    -------
    list of Centreline, in VOXMM corner space.
    """
    template_rng = np.random.default_rng(12345)
    centrelines = []
    for bundle_idx in range(nb_bundles):
        direction, bend_axis, nb_waves = _template(bundle_idx, template_rng)
        direction = _unit(direction + rng.normal(scale=0.08, size=3))
        centre = 0.5 + rng.uniform(-0.08, 0.08, size=3)
        start_mm = (centre - 0.45 * direction) * extent_mm
        end_mm = (centre + 0.45 * direction) * extent_mm
        chord_mm = end_mm - start_mm
        chord_unit = _unit(chord_mm)
        bend_unit = _unit(bend_axis - np.dot(bend_axis, chord_unit) * chord_unit)
        bend_unit = _rotate_about(bend_unit, chord_unit,
                                  rng.uniform(-np.pi / 8, np.pi / 8))
        amplitude = _ARC_BEND if nb_waves == 1 else _S_CURVE_BEND
        amplitude *= rng.uniform(0.8, 1.2) * np.linalg.norm(chord_mm)
        centreline = Centreline(start_mm=start_mm, end_mm=end_mm,
                                bend_mm=amplitude * bend_unit,
                                nb_waves=nb_waves)
        centrelines.append(
            fit_in_box(centreline, margin_mm, extent_mm - margin_mm))
    return centrelines


def make_bundle_streamlines(centreline, nb_streamlines, step_mm, radius_mm, rng):
    """Streamlines of one bundle: its centreline plus smooth random offsets.

    Each streamline covers a random part of the centreline (so lengths
    vary), with points every ``step_mm`` of centreline arc length. Its offset
    from the centreline is smooth, perpendicular to the chord and at most
    ``sqrt(2) * radius_mm`` long. All streamlines run from the chord's start
    towards its end.

    Returns
    -------
    nibabel.streamlines.ArraySequence
        Compact (offsets == cumsum of lengths), float64, VOXMM corner space.
    """
    dense_t = np.linspace(0., 1., _NB_DENSE)
    dense = centreline.points(dense_t)
    arc_mm = np.concatenate(
        [[0.], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])

    first_mm = rng.uniform(0., 0.2, nb_streamlines) * arc_mm[-1]
    last_mm = rng.uniform(0.8, 1.0, nb_streamlines) * arc_mm[-1]
    lengths = np.floor((last_mm - first_mm) / step_mm).astype(np.int64) + 1
    offsets = offsets_from_lengths(lengths)

    # Offset in the plane across the chord, in units of radius_mm: a
    # constant inside a disc of radius 0.7 plus a slow wave of amplitude
    # <= 0.3, so each coordinate stays in [-1, 1].
    disc_radius = 0.7 * np.sqrt(rng.uniform(0., 1., nb_streamlines))
    disc_angle = rng.uniform(0., 2 * np.pi, nb_streamlines)
    per_streamline = np.column_stack([
        first_mm,
        disc_radius * np.cos(disc_angle),
        disc_radius * np.sin(disc_angle),
        rng.uniform(-0.3, 0.3, (nb_streamlines, 2)),   # wave amplitudes
        np.pi * rng.uniform(0.5, 1.5, nb_streamlines),  # wave frequency
        rng.uniform(0., 2 * np.pi, nb_streamlines)])    # wave phase
    # One gather gives every point its streamline's parameters.
    (point_first_mm, constant_1, constant_2, amplitude_1, amplitude_2,
     frequency, phase0) = per_streamline[
        np.repeat(np.arange(nb_streamlines), lengths)].T
    rank = ranges_to_indices(np.zeros(nb_streamlines), lengths)
    t = np.interp(point_first_mm + rank * step_mm, arc_mm, dense_t)

    phase = frequency * t + phase0
    along_1 = constant_1 + amplitude_1 * np.sin(phase)
    along_2 = constant_2 + amplitude_2 * np.cos(phase)
    chord_unit = _unit(centreline.end_mm - centreline.start_mm)
    side_1 = _unit(centreline.bend_mm
                   - np.dot(centreline.bend_mm, chord_unit) * chord_unit)
    side_2 = np.cross(chord_unit, side_1)
    points = centreline.points(t)
    points += radius_mm * (along_1[:, None] * side_1
                           + along_2[:, None] * side_2)
    return make_array_sequence(points, offsets, lengths)

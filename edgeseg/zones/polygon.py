"""Plain-Python checks of zone polygons and lines, run once when the configuration is read.

They use no numpy so that reading a configuration stays cheap, and they are O(n^2) in the
number of points, which is nothing at config time (a zone has at most ``MAX_POINTS`` points).
Each check returns a short reason, or None when the shape is fine; the caller turns it into a
one-line error naming the field.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

Pt = Tuple[float, float]

#: Most points a zone may have; the self-intersection test is quadratic in it.
MAX_POINTS = 256


def distinct_ring(points: Sequence[Pt]) -> List[Pt]:
    """``points`` without consecutive repeats, and without a last point that repeats the first
    (many tools close a polygon that way); the ring is implicitly closed."""
    ring: List[Pt] = []
    for p in points:
        if not ring or p != ring[-1]:
            ring.append(p)
    while len(ring) > 1 and ring[-1] == ring[0]:
        ring.pop()
    return ring


def area(ring: Sequence[Pt]) -> float:
    """Unsigned area of the closed ring (shoelace formula)."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(ring, list(ring[1:]) + [ring[0]]):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2.0


def _cross(o: Pt, a: Pt, b: Pt) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _on_segment(p: Pt, a: Pt, b: Pt) -> bool:
    """``p``, known to be collinear with a-b, lies within the segment's bounding box."""
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_intersect(a: Pt, b: Pt, c: Pt, d: Pt) -> bool:
    """Whether segments a-b and c-d share any point (touching and collinear overlap included)."""
    d1, d2 = _sign(_cross(c, d, a)), _sign(_cross(c, d, b))
    d3, d4 = _sign(_cross(a, b, c)), _sign(_cross(a, b, d))
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True
    return (
        (d1 == 0 and _on_segment(a, c, d))
        or (d2 == 0 and _on_segment(b, c, d))
        or (d3 == 0 and _on_segment(c, a, b))
        or (d4 == 0 and _on_segment(d, a, b))
    )


def self_intersection(ring: Sequence[Pt]) -> Optional[str]:
    """Why the closed ring is not a simple polygon, or None.

    Non-adjacent edges must not meet at all (a polygon touching itself at a point is refused
    too: its inside is ambiguous); adjacent edges must not fold back along each other.
    """
    n = len(ring)
    edges = [(ring[i], ring[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        a, b = edges[i]
        c = edges[(i + 1) % n][1]
        # the turn at b: collinear and pointing back means the outline retraces itself
        if _cross(a, b, c) == 0 and (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0:
            return f"folds back on itself at point {(i + 1) % n} {_fmt(b)}"
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:  # the first and last edges share point 0
                continue
            c0, d0 = edges[j]
            if segments_intersect(a, b, c0, d0):
                return (
                    f"self-intersecting: edge {i} {_fmt(a)}->{_fmt(b)} meets edge {j} {_fmt(c0)}->{_fmt(d0)}"
                )
    return None


def _fmt(p: Pt) -> str:
    return f"({p[0]:g}, {p[1]:g})"


def polygon_problem(points: Sequence[Pt]) -> Optional[str]:
    """Why ``points`` do not make a usable zone polygon (degenerate, zero area, self-intersecting),
    or None."""
    ring = distinct_ring(points)
    if len(ring) < 3:
        return f"a polygon needs at least 3 distinct points, found {len(ring)}"
    if all(_cross(ring[0], ring[1], p) == 0 for p in ring[2:]):
        return "zero area: the points lie on one line"
    # before the area: a bow tie's two halves cancel out in the signed area
    crossing = self_intersection(ring)
    if crossing:
        return crossing
    xs = [p[0] for p in ring]
    ys = [p[1] for p in ring]
    extent = max(max(xs) - min(xs), max(ys) - min(ys))
    if area(ring) <= 1e-9 * extent * extent:
        return "zero area: the points (nearly) lie on one line"
    return None

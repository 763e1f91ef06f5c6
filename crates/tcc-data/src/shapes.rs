//! The shapes, as inside-tests in a unit frame, and their anti-aliased
//! rasterisation. Shapes 0..10 are the ten classes of [`crate::Dataset`];
//! [`crate::Shapes160`] adds shapes 10..20.

use std::f32::consts::PI;

/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Class names of [`crate::Dataset`], by class id: the first shapes.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = {
    let mut names = [""; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        names[i] = SHAPE_NAMES[i];
        i += 1;
    }
    names
};

/// Number of shapes (the first [`NUM_CLASSES`] are `Dataset`'s classes).
pub const NUM_SHAPES: usize = 20;

/// Shape names, by shape id.
pub const SHAPE_NAMES: [&str; NUM_SHAPES] = [
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "horizontal-bars",
    "vertical-bars",
    "diamond",
    "star",
    "half-disk",
    "crescent",
    "pac-man",
    "square-frame",
    "wide-ellipse",
    "tee",
    "arrow",
    "two-dots",
    "ell",
    "chevron",
    "three-dots",
];

/// Largest rotation (radians) away from a shape's base orientation.
/// Orientation-defined shapes (square vs diamond, horizontal vs vertical
/// bars, plus, and the upright letters and arrows) get a small jitter; the
/// others any angle.
pub(crate) fn rotation_range(shape: usize) -> f32 {
    match shape {
        1 | 3 | 7 | 13 | 14 | 15 | 17 | 18 => 15f32.to_radians(),
        5 | 6 => 12f32.to_radians(),
        _ => PI,
    }
}

/// How far (in units of the radius) the farthest point of any shape lies
/// from its centre: the bars' corners, at sqrt(0.85^2 + 0.84^2).
pub(crate) const EXTENT: f32 = 1.2;

/// Whether the point (x, y) of the shape's unit frame (y pointing down;
/// every shape lies within [`EXTENT`] of the origin) is inside `shape`.
pub(crate) fn inside(shape: usize, x: f32, y: f32) -> bool {
    let r2 = x * x + y * y;
    let disk = |cx: f32, cy: f32, r: f32| (x - cx).powi(2) + (y - cy).powi(2) <= r * r;
    let rect =
        |x0: f32, x1: f32, y0: f32, y1: f32| (x0..=x1).contains(&x) && (y0..=y1).contains(&y);
    match shape {
        0 => r2 <= 0.85 * 0.85,
        1 => x.abs() <= 0.68 && y.abs() <= 0.68,
        2 => in_polygon(&TRIANGLE, x, y),
        3 => (x.abs() <= 0.27 && y.abs() <= 0.95) || (y.abs() <= 0.27 && x.abs() <= 0.95),
        4 => (0.5 * 0.5..=0.95 * 0.95).contains(&r2),
        5 => bars(x, y),
        6 => bars(y, x),
        7 => x.abs() / 0.58 + y.abs() / 1.0 <= 1.0,
        8 => in_polygon(&STAR, x, y),
        9 => y >= -0.35 && x * x + (y + 0.35) * (y + 0.35) <= 0.95 * 0.95,
        // A disk with an off-centre disk cut away, opening to the right.
        10 => r2 <= 0.95 * 0.95 && !disk(0.45, 0.0, 0.75),
        // A disk with an 80-degree mouth (tan 40 = 0.84).
        11 => r2 <= 0.92 * 0.92 && !(x > 0.0 && y.abs() < 0.84 * x),
        12 => (0.38..=0.68).contains(&x.abs().max(y.abs())),
        13 => (x / 0.95).powi(2) + (y / 0.4).powi(2) <= 1.0,
        14 => rect(-0.75, 0.75, -0.7, -0.38) || rect(-0.17, 0.17, -0.38, 0.85),
        // Triangular head (apex up) on a shaft.
        15 => {
            let head = (-0.95..=-0.15).contains(&y) && x.abs() <= 0.75 * (y + 0.95);
            head || rect(-0.2, 0.2, -0.15, 0.9)
        }
        16 => disk(0.5, 0.0, 0.42) || disk(-0.5, 0.0, 0.42),
        17 => rect(-0.7, -0.34, -0.8, 0.8) || rect(-0.7, 0.7, 0.44, 0.8),
        // Two thick arms meeting at the top.
        18 => {
            let arm = |ex: f32| segment_distance(x, y, (0.0, -0.55), (ex, 0.6)) <= 0.17;
            arm(0.75) || arm(-0.75)
        }
        19 => disk(0.0, -0.58, 0.33) || disk(0.502, 0.29, 0.33) || disk(-0.502, 0.29, 0.33),
        _ => false,
    }
}

/// Distance from (x, y) to the segment a-b.
fn segment_distance(x: f32, y: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((x - a.0) * dx + (y - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((x - a.0 - t * dx).powi(2) + (y - a.1 - t * dy).powi(2)).sqrt()
}

/// Three horizontal bars.
fn bars(x: f32, y: f32) -> bool {
    x.abs() <= 0.85 && (y.abs() <= 0.17 || (0.5..=0.84).contains(&y.abs()))
}

/// Equilateral triangle, apex up, centroid at the origin.
const TRIANGLE: [(f32, f32); 3] = [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)];

/// Five-pointed star, outer radius 1, inner radius 0.42, a point up.
const STAR: [(f32, f32); 10] = {
    // cos/sin of -90 + 36k degrees, precomputed (const fn has no trig).
    const C: [(f32, f32); 10] = [
        (0.0, -1.0),
        (0.587_785, -0.809_017),
        (0.951_057, -0.309_017),
        (0.951_057, 0.309_017),
        (0.587_785, 0.809_017),
        (0.0, 1.0),
        (-0.587_785, 0.809_017),
        (-0.951_057, 0.309_017),
        (-0.951_057, -0.309_017),
        (-0.587_785, -0.809_017),
    ];
    let mut p = [(0.0, 0.0); 10];
    let mut k = 0;
    while k < 10 {
        let r = if k % 2 == 0 { 1.0 } else { 0.42 };
        p[k] = (C[k].0 * r, C[k].1 * r);
        k += 1;
    }
    p
};

/// Even-odd crossing test.
fn in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Supersampling factor per axis: 4 x 4 sub-pixels per pixel.
pub(crate) const SUPERSAMPLE: usize = 4;

/// Where and how a shape is drawn.
pub(crate) struct Placement {
    /// Centre in pixel units (pixel `i` spans `[i, i + 1)`).
    pub cx: f32,
    pub cy: f32,
    /// Radius of the unit frame in pixels.
    pub radius: f32,
    /// Rotation in radians.
    pub angle: f32,
}

/// Fraction of each pixel of a `size x size` image covered by the shape.
pub(crate) fn coverage(shape: usize, p: &Placement, size: usize) -> Vec<f32> {
    let (sin, cos) = (-p.angle).sin_cos();
    let inv_r = 1.0 / p.radius;
    let step = 1.0 / SUPERSAMPLE as f32;
    // Pixels whose centre is farther than this from the shape's centre hold
    // no sub-sample of it (a sub-sample is within 0.53 pixels of its pixel
    // centre):
    // skipping them changes no value.
    let reach = EXTENT * p.radius + 1.0;
    let mut out = vec![0.0; size * size];
    for py in 0..size {
        for px in 0..size {
            let (ex, ey) = (px as f32 + 0.5 - p.cx, py as f32 + 0.5 - p.cy);
            if ex * ex + ey * ey > reach * reach {
                continue;
            }
            let mut hits = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let dx = px as f32 + (sx as f32 + 0.5) * step - p.cx;
                    let dy = py as f32 + (sy as f32 + 0.5) * step - p.cy;
                    let u = (dx * cos - dy * sin) * inv_r;
                    let v = (dx * sin + dy * cos) * inv_r;
                    hits += inside(shape, u, v) as u32;
                }
            }
            out[py * size + px] = hits as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
        }
    }
    out
}

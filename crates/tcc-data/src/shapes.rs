//! The ten shape classes, as inside-tests in a unit frame, and their
//! anti-aliased rasterisation.

use std::f32::consts::PI;

/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Class names, by class id.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
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
];

/// Largest rotation (radians) away from a class's base orientation.
/// Orientation-defined classes (square vs diamond, horizontal vs vertical
/// bars, plus) get a small jitter; the others any angle.
pub(crate) fn rotation_range(class: usize) -> f32 {
    match class {
        1 | 3 | 7 => 15f32.to_radians(),
        5 | 6 => 12f32.to_radians(),
        _ => PI,
    }
}

/// Whether the point (x, y) of the shape's unit frame (the shape fits the
/// unit disk, y pointing down) is inside shape `class`.
pub(crate) fn inside(class: usize, x: f32, y: f32) -> bool {
    let r2 = x * x + y * y;
    match class {
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
        _ => false,
    }
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
pub(crate) fn coverage(class: usize, p: &Placement, size: usize) -> Vec<f32> {
    let (sin, cos) = (-p.angle).sin_cos();
    let inv_r = 1.0 / p.radius;
    let step = 1.0 / SUPERSAMPLE as f32;
    let mut out = vec![0.0; size * size];
    for py in 0..size {
        for px in 0..size {
            let mut hits = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let dx = px as f32 + (sx as f32 + 0.5) * step - p.cx;
                    let dy = py as f32 + (sy as f32 + 0.5) * step - p.cy;
                    let u = (dx * cos - dy * sin) * inv_r;
                    let v = (dx * sin + dy * cos) * inv_r;
                    hits += inside(class, u, v) as u32;
                }
            }
            out[py * size + px] = hits as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
        }
    }
    out
}

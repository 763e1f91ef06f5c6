//! A small line plot of per-step deviations, drawn straight into a PNG
//! (axes, grid, tick labels and legend in an 8x8 bitmap font).

use std::io::{BufWriter, Write};
use std::path::Path;

use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::{ImageFormat, Rgb, RgbImage};

use crate::EvalError;

/// One line of the plot: a value per step (`None` leaves a gap).
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub values: Vec<Option<f64>>,
}

const W: u32 = 820;
const H: u32 = 500;
const LEFT: i64 = 80;
const RIGHT: i64 = 30;
const TOP: i64 = 50;
const BOTTOM: i64 = 60;

/// Draws `series` against the step index and writes the PNG atomically
/// (temporary file in the same directory, then rename).
pub fn plot_deviation(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), EvalError> {
    let steps = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let ymax_data = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .cloned()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (ymax, tick) = nice_axis(ymax_data);
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1, y0, y1) = (LEFT, W as i64 - RIGHT, H as i64 - BOTTOM, TOP);
    let px = |k: f64| x0 as f64 + k / (steps - 1) as f64 * (x1 - x0) as f64;
    let py = |v: f64| y0 as f64 - v / ymax * (y0 - y1) as f64;

    let grid = Rgb([225, 225, 225]);
    let ink = Rgb([40, 40, 40]);
    let mut v = 0.0;
    while v <= ymax * (1.0 + 1e-9) {
        let y = py(v).round() as i64;
        line(&mut img, x0, y, x1, y, grid);
        let label = format_tick(v, tick);
        text(
            &mut img,
            x0 - 8 - 8 * label.len() as i64,
            y - 4,
            &label,
            ink,
        );
        v += tick;
    }
    let every = steps.div_ceil(20).max(1);
    for k in (0..steps).step_by(every) {
        let x = px(k as f64).round() as i64;
        line(&mut img, x, y0, x, y0 + 4, ink);
        let label = k.to_string();
        text(&mut img, x - 4 * label.len() as i64, y0 + 10, &label, ink);
    }
    line(&mut img, x0, y0, x1, y0, ink);
    line(&mut img, x0, y0, x0, y1, ink);
    text(&mut img, (x0 + x1) / 2 - 16, y0 + 30, "step", ink);
    text(&mut img, 10, 10, title, ink);
    text(&mut img, 10, 26, y_label, Rgb([90, 90, 90]));

    for (i, s) in series.iter().enumerate() {
        let c = Rgb(s.color);
        let mut prev: Option<(i64, i64)> = None;
        for (k, v) in s.values.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() => {
                    let p = (px(k as f64).round() as i64, py(*v).round() as i64);
                    if let Some(q) = prev {
                        thick_line(&mut img, q.0, q.1, p.0, p.1, c);
                    }
                    dot(&mut img, p.0, p.1, c);
                    prev = Some(p);
                }
                _ => prev = None,
            }
        }
        // Legend, top left inside the axes.
        let (lx, ly) = (x0 + 16, y1 + 10 + 16 * i as i64);
        thick_line(&mut img, lx, ly + 4, lx + 24, ly + 4, c);
        text(&mut img, lx + 32, ly, &s.name, ink);
    }

    let io = |e: &dyn std::fmt::Display| EvalError::Io(format!("{}: {e}", path.display()));
    let mut file = tcc_fs::AtomicFile::create(path).map_err(|e| io(&e))?;
    {
        let mut w = BufWriter::new(file.file());
        img.write_to(&mut w, ImageFormat::Png).map_err(|e| io(&e))?;
        w.flush().map_err(|e| io(&e))?;
    }
    file.commit().map_err(|e| io(&e))?;
    Ok(())
}

/// An axis maximum and tick spacing of 1, 2 or 5 times a power of ten.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let p = 10f64.powf(raw.log10().floor());
    let tick = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|t| *t >= raw)
        .unwrap_or(10.0 * p);
    ((max / tick).ceil() * tick, tick)
}

fn format_tick(v: f64, tick: f64) -> String {
    let decimals = (-tick.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham's line.
fn line(img: &mut RgbImage, mut x0: i64, mut y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        put(img, x0, y0, c);
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

fn thick_line(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for (ox, oy) in [(0, 0), (1, 0), (0, 1)] {
        line(img, x0 + ox, y0 + oy, x1 + ox, y1 + oy, c);
    }
}

fn dot(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    for dy in -2..=2 {
        for dx in -2..=2 {
            if dx * dx + dy * dy <= 5 {
                put(img, x + dx, y + dy, c);
            }
        }
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = BASIC_FONTS.get(ch).or_else(|| BASIC_FONTS.get('?'));
        if let Some(rows) = glyph {
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        put(img, x + 8 * i as i64 + col, y + r as i64, c);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ticks_are_round_and_cover_the_data() {
        for max in [0.0123, 0.7, 1.0, 3.3, 42.0] {
            let (top, tick) = nice_axis(max);
            assert!(
                top >= max && top <= max + tick + 1e-12,
                "{max}: {top} {tick}"
            );
            let m = tick / 10f64.powf(tick.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|x| (x - m).abs() < 1e-9),
                "{tick}"
            );
        }
    }
}

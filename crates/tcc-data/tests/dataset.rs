use tcc_data::{
    grid_image, to_u8, write_grid_png, Dataset, Grid, CHANNELS, IMAGE_LEN, IMAGE_SIZE, NUM_CLASSES,
};

const PLANE: usize = IMAGE_SIZE * IMAGE_SIZE;

#[test]
fn samples_are_deterministic_per_index() {
    let a = Dataset::new(7);
    let b = Dataset::new(7);
    assert_eq!(a.sample(123), b.sample(123));
    // An index's sample does not depend on what else was drawn or on the batch.
    let (batch, classes) = a.batch(120, 5);
    assert_eq!(&batch[3 * IMAGE_LEN..4 * IMAGE_LEN], &a.sample(123).0[..]);
    assert_eq!(classes, vec![0, 1, 2, 3, 4]);
    // Other seeds and indices give other images.
    assert_ne!(Dataset::new(8).sample(123).0, a.sample(123).0);
    assert_ne!(a.sample(133).0, a.sample(123).0);
}

#[test]
fn values_in_range_and_not_flat() {
    let (images, _) = Dataset::new(1).batch(0, 50);
    assert_eq!(images.len(), 50 * IMAGE_LEN);
    assert!(images
        .iter()
        .all(|v| (-1.0..=1.0).contains(v) && v.is_finite()));
    for img in images.chunks(IMAGE_LEN) {
        let (lo, hi) = img
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(hi - lo > 0.3, "every image shows a shape with contrast");
        // Anti-aliased: some pixels lie strictly between shape and background.
        let plane = &img[..PLANE];
        let distinct: std::collections::BTreeSet<u32> = plane.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 2, "edges are smooth, not two-valued");
    }
}

#[test]
fn every_class_appears_with_balanced_counts() {
    let (_, classes) = Dataset::new(2).batch(5, 1000);
    let mut counts = [0; NUM_CLASSES];
    classes.iter().for_each(|&c| counts[c] += 1);
    assert_eq!(counts, [100; NUM_CLASSES]);
}

/// Foreground mask of an image: pixels that differ from the corner
/// (background) colour.
fn mask(img: &[f32]) -> Vec<f32> {
    let bg: Vec<f32> = (0..CHANNELS).map(|c| img[c * PLANE]).collect();
    (0..PLANE)
        .map(|p| {
            let d: f32 = (0..CHANNELS)
                .map(|c| (img[c * PLANE + p] - bg[c]).abs())
                .sum();
            (d > 0.05) as u8 as f32
        })
        .collect()
}

/// Shape descriptors of one image's foreground mask, invariant to colour
/// and position.
struct Descriptor {
    /// Area over the area of the disk around the centroid that reaches the
    /// farthest foreground pixel (1 for a disk, 2/pi for a square).
    compactness: f32,
    /// Whether the pixel at the centroid is background (a hole).
    hole: bool,
    /// Bounding box height over width.
    aspect: f32,
    /// ln((1 + variance of row sums) / (1 + variance of column sums)) over the
    /// non-empty rows/columns: > 0 for horizontal stripes.
    stripes: f32,
}

fn describe(img: &[f32]) -> Descriptor {
    let m = mask(img);
    let fg: Vec<(f32, f32)> = (0..PLANE)
        .filter(|&p| m[p] > 0.0)
        .map(|p| ((p % IMAGE_SIZE) as f32 + 0.5, (p / IMAGE_SIZE) as f32 + 0.5))
        .collect();
    let n = fg.len() as f32;
    let (cx, cy) = fg
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x / n, b + y / n));
    let r2 = fg
        .iter()
        .map(|&(x, y)| (x - cx).powi(2) + (y - cy).powi(2))
        .fold(0.0, f32::max);
    let (x0, x1) = fg
        .iter()
        .fold((f32::MAX, 0.0f32), |(l, h), p| (l.min(p.0), h.max(p.0)));
    let (y0, y1) = fg
        .iter()
        .fold((f32::MAX, 0.0f32), |(l, h), p| (l.min(p.1), h.max(p.1)));
    let var = |v: Vec<f32>| {
        let nz: Vec<f32> = v.into_iter().filter(|&s| s > 0.0).collect();
        let mean = nz.iter().sum::<f32>() / nz.len() as f32;
        nz.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / nz.len() as f32
    };
    let rows = (0..IMAGE_SIZE)
        .map(|y| m[y * IMAGE_SIZE..][..IMAGE_SIZE].iter().sum())
        .collect();
    let cols = (0..IMAGE_SIZE)
        .map(|x| (0..IMAGE_SIZE).map(|y| m[y * IMAGE_SIZE + x]).sum())
        .collect();
    Descriptor {
        compactness: n / (std::f32::consts::PI * r2),
        hole: m[cy as usize * IMAGE_SIZE + cx as usize] == 0.0,
        aspect: (y1 - y0 + 1.0) / (x1 - x0 + 1.0),
        stripes: ((var(rows) + 1.0) / (var(cols) + 1.0)).ln(),
    }
}

/// Classes differ in shape, not only in colour: per-class averages of
/// simple mask descriptors separate the look-alike pairs (disk / square,
/// disk / ring, square / diamond, horizontal / vertical bars) with margin.
#[test]
fn classes_differ_in_shape() {
    let data = Dataset::new(3);
    let per_class = 40;
    let mean = |class: usize, f: &dyn Fn(&Descriptor) -> f32| {
        (0..per_class)
            .map(|j| {
                let (img, c) = data.sample((j * NUM_CLASSES + class) as u64);
                assert_eq!(c, class);
                f(&describe(&img))
            })
            .sum::<f32>()
            / per_class as f32
    };
    let compact = |c| mean(c, &|d| d.compactness);
    let holes = |c| mean(c, &|d| d.hole as u8 as f32);
    let aspect = |c| mean(c, &|d| d.aspect);
    let stripes = |c| mean(c, &|d| d.stripes);
    let (disk, square) = (compact(0), compact(1));
    assert!(disk > 0.8, "disk compactness {disk}");
    assert!(
        square < 0.72 && disk - square > 0.15,
        "square {square} vs disk {disk}"
    );
    assert!(holes(4) > 0.95, "ring centre is background: {}", holes(4));
    for c in [0, 1, 7, 9] {
        assert!(holes(c) < 0.05, "class {c} centre is shape: {}", holes(c));
    }
    assert!(aspect(7) > 1.3, "diamond is tall: {}", aspect(7));
    assert!(
        (aspect(1) - 1.0).abs() < 0.1,
        "square is square: {}",
        aspect(1)
    );
    assert!(stripes(5) > 0.7, "horizontal bars: {}", stripes(5));
    assert!(stripes(6) < -0.7, "vertical bars: {}", stripes(6));
}

#[test]
fn grid_layout_and_png_writing() {
    let data = Dataset::new(4);
    let (images, _) = data.batch(0, 7);
    let shape = [7, CHANNELS, IMAGE_SIZE, IMAGE_SIZE];
    let img = grid_image(&images, shape, Grid::new(3)).unwrap();
    // 3 columns, 3 rows, 2 px padding.
    assert_eq!(img.dimensions(), (3 * 34 + 2, 3 * 34 + 2));
    // Pixel (0, 0) of image 4 (row 1, column 1) sits at (36, 36).
    let first = &images[4 * IMAGE_LEN..];
    let want = [0, 1, 2].map(|c| to_u8(first[c * PLANE]));
    assert_eq!(img.get_pixel(36, 36).0, want);
    assert_eq!(img.get_pixel(0, 0).0, [128, 128, 128]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    let scaled = Grid {
        nrow: 4,
        pad: 1,
        scale: 2,
    };
    write_grid_png(&path, &images, shape, scaled).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!(back.dimensions(), (4 * 65 + 1, 2 * 65 + 1));
    assert_eq!(back, grid_image(&images, shape, scaled).unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp files left"
    );

    // Bad input is an error, not a panic, and writes nothing.
    let bad = dir.path().join("bad.png");
    assert!(write_grid_png(&bad, &images[1..], shape, Grid::new(3)).is_err());
    assert!(write_grid_png(&bad, &images, [7, 2, 32, 32], Grid::new(3)).is_err());
    assert!(write_grid_png(&bad, &images, shape, Grid::new(0)).is_err());
    assert!(!bad.exists());
    let err = write_grid_png(
        &dir.path().join("no/such/dir.png"),
        &images,
        shape,
        Grid::new(3),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("dir.png"), "{err}");
}

#[test]
fn byte_conversion_convention() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(0.0), 128);
    assert_eq!(to_u8(5.0), 255);
    assert_eq!(to_u8(f32::NAN), 0);
}

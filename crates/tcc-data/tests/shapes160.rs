//! The 160-class data set and its latent map.

use tcc_data::{haar_fold, haar_unfold, ClassFactors, Shapes160, NUM_SHAPES, SHAPE_NAMES};

const LEN: usize = Shapes160::IMAGE_LEN;
const SIDE: usize = Shapes160::SIZE;

#[test]
fn samples_are_deterministic_per_index() {
    let a = Shapes160::new(7);
    assert_eq!(a.sample(1234), Shapes160::new(7).sample(1234));
    let (batch, classes) = a.batch(1230, 6);
    assert_eq!(&batch[4 * LEN..5 * LEN], &a.sample(1234).0[..]);
    assert_eq!(classes, (1230..1236).map(|i| i % 160).collect::<Vec<_>>());
    assert_ne!(Shapes160::new(8).sample(1234).0, a.sample(1234).0);
    assert_ne!(a.sample(1234 + 160).0, a.sample(1234).0);
    // Not the 10-class data set's stream under another name.
    assert_ne!(
        tcc_data::Dataset::new(7).sample(0).0[..32],
        a.sample(0).0[..32]
    );
}

#[test]
fn classes_are_balanced_and_factors_round_trip() {
    assert_eq!(Shapes160::CLASSES, 160);
    let (_, classes) = Shapes160::new(2).batch(17, 1600);
    let mut counts = [0; 160];
    classes.iter().for_each(|&c| counts[c] += 1);
    assert_eq!(counts, [10; 160]);
    let mut seen = std::collections::HashSet::new();
    for class in 0..160 {
        let f = Shapes160::factors(class);
        assert!(f.shape < NUM_SHAPES);
        assert_eq!(f.class(), class);
        assert!(seen.insert(f));
        assert!(Shapes160::class_name(class).starts_with(SHAPE_NAMES[f.shape]));
    }
    let star = ClassFactors {
        shape: 8,
        large: true,
        dark_on_light: true,
        striped: false,
    };
    assert_eq!(
        Shapes160::class_name(star.class()),
        "star/large/dark-on-light/flat"
    );
}

/// Per-image measurements: foreground pixel count (pixels far from the
/// background level), whether the shape is darker than the background, and
/// the spread of the background pixels.
struct Look {
    area: usize,
    dark_shape: bool,
    background_spread: f32,
}

fn look(img: &[f32]) -> Look {
    // The background level: the median of the border pixels.
    let mut border: Vec<f32> = (0..SIDE)
        .flat_map(|i| {
            [
                img[i],
                img[(SIDE - 1) * SIDE + i],
                img[i * SIDE],
                img[i * SIDE + SIDE - 1],
            ]
        })
        .collect();
    border.sort_by(f32::total_cmp);
    let bg = border[border.len() / 2];
    let fg: Vec<f32> = img
        .iter()
        .copied()
        .filter(|v| (v - bg).abs() > 0.5)
        .collect();
    let mean_fg = fg.iter().sum::<f32>() / fg.len().max(1) as f32;
    Look {
        area: fg.len(),
        dark_shape: mean_fg < bg,
        background_spread: border[border.len() * 95 / 100] - border[border.len() * 5 / 100],
    }
}

/// Every image shows its class's factors: contrast and value range, the
/// polarity, the background, and a size band whose areas do not overlap
/// for the same shape.
#[test]
fn images_show_their_factors() {
    let data = Shapes160::new(3);
    let per_class = 3;
    let mut areas = vec![(usize::MAX, 0usize); 2 * NUM_SHAPES];
    for j in 0..per_class {
        for class in 0..160 {
            let (img, c) = data.sample((j * 160 + class) as u64);
            assert_eq!(c, class);
            assert!(img
                .iter()
                .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
            let f = Shapes160::factors(class);
            let l = look(&img);
            let name = Shapes160::class_name(class);
            assert!(l.area > 40, "{name}: shape area {}", l.area);
            assert_eq!(l.dark_shape, f.dark_on_light, "{name}");
            if f.striped {
                assert!(l.background_spread > 0.2, "{name}: {}", l.background_spread);
            } else {
                assert_eq!(l.background_spread, 0.0, "{name}");
            }
            let band = &mut areas[2 * f.shape + f.large as usize];
            *band = (band.0.min(l.area), band.1.max(l.area));
        }
    }
    for shape in 0..NUM_SHAPES {
        let (small, large) = (areas[2 * shape], areas[2 * shape + 1]);
        assert!(
            small.1 < large.0,
            "{}: small areas {small:?}, large {large:?}",
            SHAPE_NAMES[shape]
        );
    }
}

/// The shapes stay inside the frame: no border pixel is foreground.
#[test]
fn shapes_stay_inside_the_frame() {
    let data = Shapes160::new(4);
    for i in 0..320 {
        let (img, _) = data.sample(i);
        let l = look(&img);
        let corner = img[0];
        // Flat backgrounds: every border pixel is background.
        if l.background_spread == 0.0 {
            for k in 0..SIDE {
                for p in [k, (SIDE - 1) * SIDE + k, k * SIDE, k * SIDE + SIDE - 1] {
                    assert_eq!(img[p], corner, "image {i}: border pixel {p}");
                }
            }
        }
    }
}

#[test]
fn haar_fold_is_orthonormal_and_inverted_by_unfold() {
    let (images, _) = Shapes160::new(5).batch(0, 3);
    let shape = [3, 1, SIDE, SIDE];
    let latents = haar_fold(&images, shape).unwrap();
    assert_eq!(latents.len(), 3 * 4 * 32 * 32);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
    assert!((norm(&latents) - norm(&images)).abs() < 1e-6 * norm(&images));
    let back = haar_unfold(&latents, [3, 4, 32, 32]).unwrap();
    for (a, b) in back.iter().zip(&images) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!(Shapes160::new(5).latent_batch(0, 3).0, latents);
    // Flat regions have no detail: a constant image folds to 2c in channel
    // 0 and zeros elsewhere.
    let flat = haar_fold(&[0.25; 16], [1, 1, 4, 4]).unwrap();
    assert_eq!(flat, [[0.5; 4], [0.0; 4], [0.0; 4], [0.0; 4]].concat());
}

#[test]
fn haar_bad_shapes_are_errors() {
    assert!(haar_fold(&[0.0; 9], [1, 1, 3, 3]).is_err());
    assert!(haar_fold(&[0.0; 15], [1, 1, 4, 4]).is_err());
    assert!(haar_fold(&[0.0; 16], [usize::MAX, 2, 2, 2]).is_err());
    assert!(haar_unfold(&[0.0; 12], [1, 3, 2, 2]).is_err());
    let err = haar_unfold(&[0.0; 8], [1, 4, 2, 2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 4, 2, 2]"), "{err}");
}

/// The fold against an independent numpy implementation
/// (`tools/golden/haar_latent.py`, float64), tolerance 1e-6 absolute.
#[test]
fn haar_fold_matches_numpy_reference() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/haar_latent.safetensors"
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v, t.shape().to_vec())
    };
    let (images, shape) = f32s("images");
    let (want, want_shape) = f32s("latents");
    let shape: [usize; 4] = shape.try_into().unwrap();
    assert_eq!(
        want_shape,
        [shape[0], 4 * shape[1], shape[2] / 2, shape[3] / 2]
    );
    let got = haar_fold(&images, shape).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
    }
}

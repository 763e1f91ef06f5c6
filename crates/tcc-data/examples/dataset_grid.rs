//! Writes a 10 x 10 grid of data set samples, one class per row (disk,
//! square, triangle, plus, ring, horizontal bars, vertical bars, diamond,
//! star, half-disk), upscaled 3x for viewing.
//!
//!     cargo run -p tcc-data --example dataset_grid -- [OUT.png] [SEED]

use std::path::PathBuf;

use tcc_data::{write_grid_png, Dataset, Grid, CHANNELS, IMAGE_LEN, IMAGE_SIZE, NUM_CLASSES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "dataset_grid.png".into()));
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let data = Dataset::new(seed);
    let per_class = 10;
    let mut images = Vec::with_capacity(NUM_CLASSES * per_class * IMAGE_LEN);
    for class in 0..NUM_CLASSES as u64 {
        for j in 0..per_class as u64 {
            // Index j * 10 + class has class `class`.
            let (img, c) = data.sample(j * NUM_CLASSES as u64 + class);
            assert_eq!(c as u64, class);
            images.extend_from_slice(&img);
        }
    }
    let shape = [NUM_CLASSES * per_class, CHANNELS, IMAGE_SIZE, IMAGE_SIZE];
    let grid = Grid {
        nrow: per_class,
        pad: 2,
        scale: 3,
    };
    write_grid_png(&out, &images, shape, grid)?;
    println!("wrote {}", out.display());
    Ok(())
}

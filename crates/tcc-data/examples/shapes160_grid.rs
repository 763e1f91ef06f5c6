//! Writes one sample of each of the 160 classes of `Shapes160` as a PNG
//! grid in class order, 16 per row: two shapes per row, each with its 8
//! styles (small/large x light-on-dark/dark-on-light x flat/striped).
//!
//!     cargo run -p tcc-data --example shapes160_grid -- [OUT.png] [SEED]

use std::path::PathBuf;

use tcc_data::{write_grid_png, Grid, Shapes160};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "shapes160_grid.png".into()));
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let data = Shapes160::new(seed);
    let mut images = Vec::new();
    for class in 0..Shapes160::CLASSES as u64 {
        // Index `class` has class `class`.
        let (img, c) = data.sample(class);
        assert_eq!(c as u64, class);
        images.extend_from_slice(&img);
    }
    let side = Shapes160::SIZE;
    let grid = Grid {
        nrow: 16,
        pad: 2,
        scale: 1,
    };
    write_grid_png(&out, &images, [Shapes160::CLASSES, 1, side, side], grid)?;
    println!("wrote {}", out.display());
    Ok(())
}

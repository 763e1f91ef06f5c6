//! Export `n` training images of the shapes data set as safetensors
//! (`images`: u8 `[n, 3, 32, 32]`, `labels`: i64 `[n]`) for the PyTorch
//! training script `tools/train/train_tiny_dit.py`.
//!
//! `cargo run --release -p tcc-testbed --example export_dataset -- OUT N`

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use tcc_data::{Dataset, IMAGE_LEN, IMAGE_SIZE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (out, n) = match args.as_slice() {
        [_, out, n] => (out.clone(), n.parse::<usize>()?),
        _ => return Err("usage: export_dataset OUT N".into()),
    };
    let data = Dataset::new(tcc_testbed::TRAIN_SEED);
    let (images, labels) = data.batch(0, n);
    let pixels: Vec<u8> = images.iter().map(|&x| tcc_data::to_u8(x)).collect();
    let labels: Vec<u8> = labels
        .iter()
        .flat_map(|&c| (c as i64).to_le_bytes())
        .collect();
    assert_eq!(pixels.len(), n * IMAGE_LEN);
    let tensors = vec![
        (
            "images",
            TensorView::new(Dtype::U8, vec![n, 3, IMAGE_SIZE, IMAGE_SIZE], &pixels)?,
        ),
        ("labels", TensorView::new(Dtype::I64, vec![n], &labels)?),
    ];
    let meta: HashMap<String, String> =
        [("seed".to_string(), tcc_testbed::TRAIN_SEED.to_string())].into();
    safetensors::tensor::serialize_to_file(tensors, Some(meta), std::path::Path::new(&out))?;
    println!("wrote {n} images to {out}");
    Ok(())
}

//! Embeds the shapes160 DiT weights only when they exist: they come from a
//! GPU training run (docs/testbed.md) and are absent until one has been
//! made; without them the model reports that it is not trained.

fn main() {
    let dir = "assets/shapes160/dit";
    println!("cargo::rerun-if-changed={dir}");
    println!("cargo::rustc-check-cfg=cfg(shapes160_weights)");
    let weights = std::path::Path::new(dir).join("diffusion_pytorch_model.safetensors");
    if weights.is_file() {
        println!("cargo::rustc-cfg=shapes160_weights");
    }
}

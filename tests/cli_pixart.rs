//! PixArt-α end to end through the binary, on a tiny random pipeline:
//! prompt -> T5 tokens -> caption embeddings (cached) -> latents (cached
//! plan, caption masks) -> VAE -> PNG; calibration with one row per prompt
//! and priors on the cross branch; clear errors for missing parts.
//!
//! The pipeline is assembled from three committed fixtures: the transformer
//! (tools/golden/tiny_pixart_pipeline.py), the tiny T5 and tokenizer of
//! crates/tcc-text and the tiny VAE of crates/tcc-vae. The last test runs a
//! latent DiT pipeline (DiT-XL/2's layout) through the same VAE.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_bad_input, assert_ok, copy_dir, tcc, tiny_pixart_pipeline};

/// `dir/pipe` with transformer/, text_encoder/, tokenizer/ and vae/, and
/// `dir/NAME.sched` files for it: full computation and FORA N=2 with priors
/// on steps 1 and 3.
fn pipeline(dir: &Path) -> PathBuf {
    let pipe = dir.join("pipe");
    tiny_pixart_pipeline(&pipe);
    let head = "[model]\npath = \"pipe\"\n\n[sampler]\nkind = \"dpm-solver++\"\nsteps = 4\nguidance = 4.5\n";
    std::fs::write(dir.join("full.sched"), head).unwrap();
    std::fs::write(
        dir.join("fora.sched"),
        format!(
            "{head}\n[[cache]]\nrefresh = \"every 2\"\n\n[calibration]\nmethod = \"tcc\"\nsteps = \"1, 3\"\nalpha = 0.5\nsamples = 4\nseed = 0\n"
        ),
    )
    .unwrap();
    pipe
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn prompts_become_images_deterministically_and_embeddings_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(d);
    let cache = d.join("emb");
    let run = |sched: &str, prompts: &[&str], png: &str| {
        let mut args = vec!["sample", sched, "--n", "3", "--grid", png];
        for p in prompts {
            args.extend(["--prompt", p]);
        }
        args.extend(["--embeddings-cache", s(&cache)]);
        let out = assert_ok(&tcc(&args));
        std::fs::read(png).unwrap_or_else(|e| panic!("{png}: {e}\n{out}"))
    };
    let full = s(&d.join("full.sched")).to_string();
    let fora = s(&d.join("fora.sched")).to_string();
    let a = run(
        &full,
        &["a red square", "two blue discs"],
        s(&d.join("a.png")),
    );
    // Two prompts and the null prompt were encoded and cached.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
    let again = run(
        &full,
        &["a red square", "two blue discs"],
        s(&d.join("b.png")),
    );
    assert_eq!(a, again, "same seed and prompts must give the same image");
    let other = run(
        &full,
        &["a green star", "two blue discs"],
        s(&d.join("c.png")),
    );
    assert_ne!(a, other, "the prompt must reach the image");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);
    let cached = run(
        &fora,
        &["a red square", "two blue discs"],
        s(&d.join("d.png")),
    );
    assert_ne!(
        a, cached,
        "FORA reuses branch outputs, so its samples differ"
    );

    // The grid has one column per prompt and holds decoded images: 8x8
    // latents, VAE upscale 8 -> 64x64 pixels, scale 4, 2 px padding.
    let img = image::load_from_memory(&a).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (2 + 2 * (4 * 64 + 2), 2 + 2 * (4 * 64 + 2))
    );
}

#[test]
fn calibration_fits_cross_branch_priors_from_prompt_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(d);
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a red square\n\ntwo blue discs\na green star\n").unwrap();
    let priors = d.join("p.safetensors");
    let out = assert_ok(&tcc(&[
        "calibrate",
        s(&d.join("fora.sched")),
        "--prompts",
        s(&prompts),
        "--out",
        s(&priors),
        "--embeddings-cache",
        s(&d.join("emb")),
    ]));
    assert!(priors.is_file(), "{out}");
    let names = safetensors::SafeTensors::deserialize(&std::fs::read(&priors).unwrap())
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        names.iter().any(|n| n.contains("cross")),
        "no cross-branch prior in {names:?}"
    );
    // The priors apply when sampling with the same plan.
    assert_ok(&tcc(&[
        "sample",
        s(&d.join("fora.sched")),
        "--n",
        "2",
        "--prompts",
        s(&prompts),
        "--priors",
        s(&priors),
        "--embeddings-cache",
        s(&d.join("emb")),
    ]));
}

#[test]
fn missing_pipeline_parts_and_misplaced_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipe = pipeline(d);
    let full = d.join("full.sched");
    let cache = d.join("emb");

    // No prompt for a text-conditional model.
    let err = assert_bad_input(&tcc(&["sample", s(&full), "--n", "1"]));
    assert!(err.contains("--prompt"), "{err}");
    // --class is for class-conditional models.
    let err = assert_bad_input(&tcc(&[
        "sample",
        s(&full),
        "--n",
        "1",
        "--prompt",
        "x",
        "--class",
        "1",
    ]));
    assert!(err.contains("--class"), "{err}");
    // --prompt is for text-conditional models.
    let err = assert_bad_input(&tcc(&["sample", "schedules/full.sched", "--prompt", "x"]));
    assert!(err.contains("class-conditional"), "{err}");

    // One prompt, one sample, with the embeddings cache and `extra`.
    let one = |extra: &[&str]| {
        let mut args = vec!["sample", s(&full), "--n", "1", "--prompt", "x"];
        args.extend(["--embeddings-cache", s(&cache)]);
        args.extend(extra);
        tcc(&args)
    };
    std::fs::remove_dir_all(pipe.join("vae")).unwrap();
    let grid = d.join("g.png");
    let err = assert_bad_input(&one(&["--grid", s(&grid)]));
    assert!(err.contains("vae"), "{err}");
    assert!(!grid.exists());

    std::fs::remove_file(pipe.join("tokenizer/tokenizer.json")).unwrap();
    let err = assert_bad_input(&one(&[]));
    assert!(err.contains("tokenizer"), "{err}");
}

/// The SPEC's PixArt-α preset, on the tiny pipeline instead of the 256px
/// model and with 6 calibration samples instead of 1000, compiles,
/// calibrates (priors on the cross branch, pooled over the unconditional
/// half) and evaluates.
#[test]
fn the_pixart_preset_calibrates_and_evaluates_on_a_tiny_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(d);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let preset = std::fs::read_to_string(root.join("schedules/pixart-fora3-tcc.sched")).unwrap();
    assert!(preset.contains("name = \"pixart-alpha-256\"") && preset.contains("samples = 1000"));
    let sched = d.join("preset.sched");
    std::fs::write(
        &sched,
        preset
            .replace("name = \"pixart-alpha-256\"", "path = \"pipe\"")
            .replace("samples = 1000", "samples = 6"),
    )
    .unwrap();
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a red square\ntwo blue discs\na green star\n").unwrap();
    let cache = d.join("emb");
    let common = ["--prompts", s(&prompts), "--embeddings-cache", s(&cache)];
    let priors = d.join("p.safetensors");
    let mut args = vec!["calibrate", s(&sched), "--out", s(&priors)];
    args.extend(common);
    let out = assert_ok(&tcc(&args));
    assert!(out.contains("step"), "{out}");
    let plot = d.join("plot.png");
    let mut args = vec![
        "eval",
        s(&sched),
        "--priors",
        s(&priors),
        "--n",
        "3",
        "--seeds",
        "7,8",
        "--plot",
        s(&plot),
        "--json",
    ];
    args.extend(common);
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&tcc(&args))).unwrap();
    let names: Vec<&str> = json["report"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["full", "cache", "one-shot", "tcc"]);
    // Cached sampling differs from full computation on every seed set.
    for set in json["report"]["variants"][1]["sets"].as_array().unwrap() {
        assert!(set["rel_l2"].as_f64().unwrap() > 0.0, "{set}");
    }
}

/// DiT-XL/2 is a latent model too: a diffusers DiT pipeline folder
/// (transformer/ + vae/) samples into decoded images through the same VAE,
/// and `--pipeline` supplies the VAE when the weights stand alone.
#[test]
fn a_latent_dit_pipeline_writes_decoded_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dit = root.join("crates/tcc-model/tests/fixtures/dit_tiny/diffusers");
    let vae = root.join("crates/tcc-vae/tests/fixtures/tiny-vae");
    copy_dir(&dit, &d.join("pipe/transformer"));
    copy_dir(&vae, &d.join("pipe/vae"));
    copy_dir(&dit, &d.join("alone"));
    copy_dir(&vae, &d.join("other/vae"));
    let sampler = "[sampler]\nkind = \"ddim\"\nsteps = 3\nguidance = 1.5\n";
    let (in_pipe, alone) = (d.join("pipe.sched"), d.join("alone.sched"));
    std::fs::write(&in_pipe, format!("[model]\npath = \"pipe\"\n\n{sampler}")).unwrap();
    std::fs::write(&alone, format!("[model]\npath = \"alone\"\n\n{sampler}")).unwrap();

    let out = d.join("imgs");
    assert_ok(&tcc(&["sample", s(&in_pipe), "--n", "2", "--out", s(&out)]));
    let first = out.join("000000_class0.png");
    let img = image::open(&first).unwrap_or_else(|e| panic!("{}: {e}", first.display()));
    // 8x8 latents, VAE upscale 8.
    assert_eq!((img.width(), img.height()), (64, 64));

    let out2 = d.join("imgs2");
    let err = assert_bad_input(&tcc(&["sample", s(&alone), "--n", "2", "--out", s(&out2)]));
    assert!(err.contains("--pipeline"), "{err}");
    assert!(!out2.exists());
    let other = d.join("other");
    assert_ok(&tcc(&[
        "sample",
        s(&alone),
        "--n",
        "2",
        "--out",
        s(&out2),
        "--pipeline",
        s(&other),
    ]));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(out2.join("000000_class0.png")).unwrap()
    );
}

#[test]
fn a_quantized_text_encoder_is_made_by_quantize_t5_and_used_by_text_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipe = pipeline(d);
    let full = d.join("full.sched");
    let cache = d.join("emb");
    let run = |dtype: &str, png: &str| {
        tcc(&[
            "sample",
            s(&full),
            "--n",
            "2",
            "--prompt",
            "a red square",
            "--text-dtype",
            dtype,
            "--embeddings-cache",
            s(&cache),
            "--grid",
            png,
        ])
    };
    // Before quantizing: exit 2, and the message says how to make the file.
    let err = assert_bad_input(&run("q8_0", s(&d.join("x.png"))));
    assert!(
        err.contains("model.q8_0.gguf") && err.contains("tcc quantize-t5"),
        "{err}"
    );
    assert!(!d.join("x.png").exists());

    let out = assert_ok(&tcc(&["quantize-t5", s(&pipe)]));
    assert!(out.contains("14 linear weights as q8_0"), "{out}");
    assert!(pipe.join("text_encoder/model.q8_0.gguf").is_file());
    assert_ok(&run("q8_0", s(&d.join("q8.png"))));
    assert_ok(&run("q8_0", s(&d.join("q8-again.png"))));
    assert_ok(&run("f32", s(&d.join("f32.png"))));
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    assert_eq!(read("q8.png"), read("q8-again.png"), "deterministic");
    assert_ne!(
        read("q8.png"),
        read("f32.png"),
        "the quantized encoder's embeddings must reach the image"
    );
    // Prompt + null prompt, once per precision.
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);

    let custom = d.join("t5-q4.gguf");
    let out = assert_ok(&tcc(&[
        "quantize-t5",
        s(&pipe.join("text_encoder")),
        "--type",
        "q4_0",
        "--out",
        s(&custom),
    ]));
    assert!(out.contains("as q4_0"), "{out}");
    assert!(custom.is_file());
    let err = assert_bad_input(&tcc(&["quantize-t5", s(d)]));
    assert!(err.contains("no config.json"), "{err}");
    let nowhere = d.join("no-such-dir/t5.gguf");
    let err = assert_bad_input(&tcc(&["quantize-t5", s(&pipe), "--out", s(&nowhere)]));
    assert!(err.contains("no-such-dir"), "{err}");
}

//! Any bytes as a saerch `.pth` or OpenAI `.pt` file: `checkpoint::load_any` returns a value or
//! an error, never panics, never executes anything; what loads evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topk_sae::checkpoint::{Format, LoadOptions, load_any};

type B = topk_sae::backend::NdArray<f32>;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("topk-sae-fuzz-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("toy_4_64_8.pth");
    std::fs::write(&path, data).unwrap();
    let device = Default::default();
    for format in [Format::Auto, Format::OpenAi] {
        // What loads must also be usable: evaluate it.
        if let Ok(ckpt) = load_any::<B>(&path, &LoadOptions { format, k: None }, &device) {
            let (d_in, d_sae) = (ckpt.model.d_in(), ckpt.model.d_sae());
            if d_in * d_sae <= 1 << 16 {
                let rows = topk_sae::Embeddings::from_vec((0..3 * d_in).map(|i| (i as f32 * 0.61).cos()).collect(), 3, d_in).unwrap();
                let _ = topk_sae::evaluate(&ckpt.model, &rows, &ckpt.normalizer, 2, &device, |_| {});
            }
        }
    }
});

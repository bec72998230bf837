//! Any bytes as a saerch `.pth` or OpenAI `.pt` file: `checkpoint::load_any` returns a value or
//! an error, never panics, never executes anything.
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
        let _ = load_any::<B>(&path, &LoadOptions { format, k: None }, &device);
    }
});

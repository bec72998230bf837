//! The SAELens and sparsify fixture folders with one file replaced by the fuzz input (the first
//! byte picks which): `checkpoint::load_any` returns a value or an error, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use topk_sae::checkpoint::{LoadOptions, load_any};

type B = topk_sae::backend::NdArray<f32>;

const CASES: [(&str, &str, &str); 4] = [
    ("saelens", "cfg.json", "sae_weights.safetensors"),
    ("saelens", "sae_weights.safetensors", "cfg.json"),
    ("sparsify", "cfg.json", "sae.safetensors"),
    ("sparsify", "sae.safetensors", "cfg.json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let (folder, fuzzed, kept) = CASES[which as usize % CASES.len()];
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(folder);
    let dir = std::env::temp_dir().join(format!("topk-sae-fuzz-{folder}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // libFuzzer's timer signal can interrupt a copy (EINTR): copy through read/write, which retry.
    std::fs::write(dir.join(kept), std::fs::read(fixtures.join(kept)).unwrap()).unwrap();
    std::fs::write(dir.join(fuzzed), bytes).unwrap();
    let _ = load_any::<B>(&dir, &LoadOptions::default(), &Default::default());
});

//! The SAELens and sparsify fixture folders with one file replaced by the fuzz input (the first
//! byte picks which): `checkpoint::load_any` returns a value or an error, never panics, and what
//! loads evaluates and exports without panicking.
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
    let device = Default::default();
    // What loads must also be usable: evaluate it and export it back to SAELens.
    if let Ok(ckpt) = load_any::<B>(&dir, &LoadOptions::default(), &device) {
        let (d_in, d_sae) = (ckpt.model.d_in(), ckpt.model.d_sae());
        if d_in * d_sae <= 1 << 16 {
            let rows = topk_sae::Embeddings::from_vec((0..3 * d_in).map(|i| (i as f32 * 0.61).cos()).collect(), 3, d_in).unwrap();
            let _ = topk_sae::evaluate(&ckpt.model, &rows, &ckpt.normalizer, 2, &device, |_| {});
            let _ = topk_sae::checkpoint::export_saelens(dir.join("export"), &ckpt.model, &ckpt.normalizer);
        }
    }
});

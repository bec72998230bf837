//! Any bytes as a `.npy` file: `Embeddings::from_npy` returns a value or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("topk-sae-fuzz-npy-{}.npy", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let _ = topk_sae::Embeddings::from_npy(&path);
});

//! A valid native checkpoint with one file replaced by the fuzz input (the first byte picks
//! which): `checkpoint::load` and `Trainer::resume` return a value or an error, never panic; what
//! loads evaluates and what resumes trains without panicking.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use topk_sae::{Normalizer, TopKSaeConfig, TrainConfig, Trainer};

type B = topk_sae::backend::NdArray<f32>;

const FILES: [&str; 5] = ["meta.json", "config.json", "model.safetensors", "trainer.json", "trainer.safetensors"];

/// A valid training checkpoint, written once; each input works on a copy of it.
fn template() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("topk-sae-fuzz-template-{}", std::process::id()));
        let device = Default::default();
        let data = topk_sae::Embeddings::from_vec((0..64).map(|i| (i as f32 * 0.37).sin()).collect(), 16, 4).unwrap();
        let config = TrainConfig::new(TopKSaeConfig::new(4, 8, 2)).with_batch_size(5);
        let mut trainer = Trainer::<B>::new(config, &data, &device).unwrap();
        let x = data.slice::<B>(0, 5, &device);
        trainer.step(Normalizer::identity().apply(x)).unwrap();
        trainer.save_checkpoint(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("topk-sae-fuzz-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // libFuzzer's timer signal can interrupt a copy (EINTR): copy through read/write, which retry.
    for file in FILES {
        let content = std::fs::read(template().join(file)).unwrap();
        std::fs::write(dir.join(file), content).unwrap();
    }
    std::fs::write(dir.join(FILES[which as usize % FILES.len()]), bytes).unwrap();
    let device = Default::default();
    // What loads must also be usable: evaluate the model with its stored normaliser, and train
    // a resumed run on (short) data; errors are fine, panics are findings.
    if let Ok(ckpt) = topk_sae::checkpoint::load::<B>(&dir, &device) {
        let (d_in, d_sae) = (ckpt.model.d_in(), ckpt.model.d_sae());
        if d_in * d_sae <= 1 << 16 {
            let rows = topk_sae::Embeddings::from_vec((0..3 * d_in).map(|i| (i as f32 * 0.61).cos()).collect(), 3, d_in).unwrap();
            let _ = topk_sae::evaluate(&ckpt.model, &rows, &ckpt.normalizer, 2, &device, |_| {});
            let _ = topk_sae::analysis::encode_corpus(&ckpt.model, &rows, &ckpt.normalizer, 2, &device, |_| {});
        }
    }
    if let Ok(trainer) = Trainer::<B>::resume(&dir, &device) {
        let m = &trainer.config().model;
        if m.d_in * m.d_sae <= 1 << 16 && trainer.config().total_steps(16) <= 64 {
            let data = topk_sae::Embeddings::from_vec((0..16 * m.d_in).map(|i| (i as f32 * 0.37).sin()).collect(), 16, m.d_in).unwrap();
            let _ = trainer.fit(&data, |_| {});
        }
    }
});

//! The everyday types and functions of a first program: `use topk_sae::prelude::*;`.
//!
//! Train ([`train`], [`Trainer`]), save and load ([`Trained::save`], [`checkpoint::load`],
//! [`checkpoint::load_any`]), evaluate ([`evaluate`]), encode ([`encode_corpus`],
//! [`TopKLatents::to_host`]) and steer a search ([`steer_raw`], [`search_normalized`]).

pub use crate::analysis::{
    CorpusCodes, FeatureEdit, Metric, encode_corpus, encode_corpus_with_progress,
    search_normalized, steer_raw,
};
pub use crate::checkpoint::{self, CheckpointPolicy};
pub use crate::data::{Embeddings, NormalizationKind, Normalizer};
pub use crate::error::{Error, Result};
pub use crate::loss::SaeLossConfig;
pub use crate::metrics::{Metrics, evaluate, evaluate_with_progress};
pub use crate::sae::{HostCodes, TopKLatents, TopKSae, TopKSaeConfig};
pub use crate::train::{AdamConfig, TrainConfig, Trained, Trainer, train};

//! The everyday types: `use topk_sae::prelude::*;`.

pub use crate::data::{Embeddings, NormalizationKind, Normalizer};
pub use crate::error::{Error, Result};
pub use crate::loss::SaeLossConfig;
pub use crate::metrics::{Metrics, evaluate};
pub use crate::sae::{TopKSae, TopKSaeConfig};
pub use crate::train::{AdamConfig, TrainConfig, train};

//! Embedding matrices: [`Embeddings`] (validated rows on the host and their batches), `.npy`
//! reading and writing, input normalisation ([`Normalizer`]) and synthetic data sets with known
//! ground truth. Nothing here knows a model.

mod embeddings;
mod normalize;
mod npy;
mod synthetic;

pub use embeddings::Embeddings;
pub(crate) use embeddings::check_finite;
pub use normalize::{NormalizationKind, Normalizer};
pub(crate) use npy::write_npy_f32;
pub use synthetic::{
    FamilySyntheticConfig, Synthetic, SyntheticConfig, SyntheticFamilies, synthetic,
    synthetic_families,
};

//! Embedding matrices: [`Embeddings`] (validated rows on the host and their batches), `.npy`
//! reading and writing, input normalisation ([`Normalizer`]), synthetic data sets with known
//! ground truth, and the texts behind the rows ([`Document`], [`read_documents`]). Nothing here
//! knows a model.

mod embeddings;
mod normalize;
mod npy;
mod synthetic;
mod texts;

pub use embeddings::Embeddings;
pub(crate) use embeddings::check_finite;
pub use normalize::{NormalizationKind, Normalizer};
pub(crate) use npy::write_npy_f32;
pub use synthetic::{
    FamilySyntheticConfig, Synthetic, SyntheticConfig, SyntheticFamilies, synthetic,
    synthetic_families,
};
pub use texts::{DOCUMENT_FIELDS, Document, Documents, read_documents};

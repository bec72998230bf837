//! Input normalisation: fitted on the training rows, kept with the model, applied at inference.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::Embeddings;
use crate::error::{Error, Result};

/// Which input normalisation to fit on the training data and apply again at inference.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
#[non_exhaustive]
pub enum NormalizationKind {
    /// Use the inputs as they are (the reference recipe: its embeddings arrive unit-norm).
    None,
    /// Subtract the training data's mean row.
    Center,
    /// Multiply by one scalar so the mean squared row norm of the training data is `d_in`.
    ScaleToDIn,
}

impl NormalizationKind {
    /// The short name [`str::parse`] reads back: `none`, `center` or `scale`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Center => "center",
            Self::ScaleToDIn => "scale",
        }
    }
}

impl std::str::FromStr for NormalizationKind {
    type Err = Error;

    /// Reads `none`, `center` or `scale`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "center" => Ok(Self::Center),
            "scale" => Ok(Self::ScaleToDIn),
            other => Err(Error::invalid(
                "normalize",
                other,
                "must be none, center or scale",
            )),
        }
    }
}

/// A normalisation fitted on training data. Save it with the model and apply it to every input
/// at inference, or the model sees inputs from another distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Which normalisation this is.
    pub kind: NormalizationKind,
    /// Mean row subtracted by [`NormalizationKind::Center`] (`[d_in]`); empty otherwise.
    pub mean: Vec<f32>,
    /// Factor applied by [`NormalizationKind::ScaleToDIn`]; 1 otherwise.
    pub scale: f32,
}

impl Normalizer {
    /// The identity normalisation.
    pub fn identity() -> Self {
        Self {
            kind: NormalizationKind::None,
            mean: Vec::new(),
            scale: 1.0,
        }
    }

    /// Fits `kind` on `data`.
    pub fn fit(kind: NormalizationKind, data: &Embeddings) -> Self {
        let d_in = data.d_in();
        match kind {
            NormalizationKind::None => Self::identity(),
            NormalizationKind::Center => {
                let mut sum = vec![0.0f64; d_in];
                for row in data.as_slice().chunks_exact(d_in) {
                    sum.iter_mut()
                        .zip(row)
                        .for_each(|(s, v)| *s += f64::from(*v));
                }
                let n = data.rows() as f64;
                Self {
                    kind,
                    mean: sum.into_iter().map(|s| (s / n) as f32).collect(),
                    scale: 1.0,
                }
            }
            NormalizationKind::ScaleToDIn => {
                let sq: f64 = data.as_slice().iter().map(|v| f64::from(*v).powi(2)).sum();
                let mean_sq_norm = sq / data.rows() as f64;
                let scale = if mean_sq_norm > 0.0 {
                    (d_in as f64 / mean_sq_norm).sqrt() as f32
                } else {
                    1.0
                };
                Self {
                    kind,
                    mean: Vec::new(),
                    scale,
                }
            }
        }
    }

    /// Checks that the normaliser fits inputs `d_in` wide and holds usable numbers: a centring
    /// mean of `d_in` finite values, a finite positive scale. A normaliser from
    /// [`Normalizer::fit`] always passes; this is for one read from a file or built by hand.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `normalizer.mean` or `normalizer.scale`.
    pub fn check(&self, d_in: usize) -> Result<()> {
        match self.kind {
            NormalizationKind::Center if self.mean.len() != d_in => Err(Error::invalid(
                "normalizer.mean",
                format!("{} values", self.mean.len()),
                format!("must hold d_in = {d_in} values"),
            )),
            NormalizationKind::Center => match self.mean.iter().position(|m| !m.is_finite()) {
                Some(i) => Err(Error::invalid(
                    "normalizer.mean",
                    format!("entry {i} = {}", self.mean[i]),
                    "must be finite",
                )),
                None => Ok(()),
            },
            NormalizationKind::ScaleToDIn if !(self.scale.is_finite() && self.scale > 0.0) => Err(
                Error::invalid("normalizer.scale", self.scale, "must be finite and > 0"),
            ),
            NormalizationKind::None | NormalizationKind::ScaleToDIn => Ok(()),
        }
    }

    /// Applies the normalisation to row-major rows of width `d_in`, in place.
    ///
    /// # Panics
    /// If the normaliser centres and `d_in` differs from its mean's length ([`Normalizer::check`]
    /// tells beforehand).
    pub fn apply_rows(&self, rows: &mut [f32], d_in: usize) {
        match self.kind {
            NormalizationKind::None => {}
            NormalizationKind::Center => {
                assert_eq!(
                    self.mean.len(),
                    d_in,
                    "normaliser was fitted on d_in = {}",
                    self.mean.len()
                );
                for row in rows.chunks_exact_mut(d_in) {
                    row.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
                }
            }
            NormalizationKind::ScaleToDIn => rows.iter_mut().for_each(|v| *v *= self.scale),
        }
    }

    /// Applies the normalisation to a batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_in]`
    pub fn apply<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.kind {
            NormalizationKind::None => x,
            NormalizationKind::Center => {
                let mean = Tensor::<B, 1>::from_data(self.mean.as_slice(), &x.device());
                x - mean.unsqueeze_dim(0)
            }
            NormalizationKind::ScaleToDIn => x.mul_scalar(self.scale),
        }
    }

    /// Maps a reconstruction made in normalised space back to input space.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_in]`
    pub fn invert<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.kind {
            NormalizationKind::None => x,
            NormalizationKind::Center => {
                let mean = Tensor::<B, 1>::from_data(self.mean.as_slice(), &x.device());
                x + mean.unsqueeze_dim(0)
            }
            NormalizationKind::ScaleToDIn => x.div_scalar(self.scale),
        }
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::identity()
    }
}

//! The top-k sparse autoencoder: [`TopKSaeConfig`], [`TopKSae`] and its outputs.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::ops::engine::{Engine, KernelOptions};
use crate::ops::linalg::matmul;
use crate::ops::sparse::decode_rows;
use crate::ops::topk::PreActivations;
use crate::ops::transfer::{int_to_host, to_host};
use crate::ops::{check_fits_device, device_rows_cap};

/// How the decoder bias `b_dec` is initialised from the training data.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
#[non_exhaustive]
pub enum DecoderBiasInit {
    /// Coordinate-wise median of the first rows (the reference recipe; lower middle for an even
    /// count).
    Median,
    /// Coordinate-wise mean of the first rows.
    Mean,
    /// Geometric median of the first rows (Weiszfeld iterations).
    GeometricMedian,
    /// All zeros (also what [`TopKSaeConfig::init`] uses, since it sees no data).
    Zeros,
}

/// Configuration of a [`TopKSae`]. Required: `d_in`, `d_sae`, `k`; the rest has defaults.
///
/// ```
/// use topk_sae::TopKSaeConfig;
/// let config = TopKSaeConfig::new(384, 3072, 32).with_seed(7);
/// assert!(config.validate().is_ok());
/// assert!(TopKSaeConfig::new(384, 16, 32).validate().is_err()); // k > d_sae
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct TopKSaeConfig {
    /// Input (embedding) dimension.
    pub d_in: usize,
    /// Number of latents (the dictionary size).
    pub d_sae: usize,
    /// Active latents per row; `1 <= k <= d_sae`.
    pub k: usize,
    /// How `b_dec` is initialised by [`TopKSaeConfig::try_init_from_data`].
    #[config(default = "DecoderBiasInit::Median")]
    pub b_dec_init: DecoderBiasInit,
    /// How many leading rows of the data (in file order) initialise `b_dec`.
    #[config(default = 10_000)]
    pub b_dec_init_rows: usize,
    /// Seed of the weight initialisation.
    #[config(default = 0)]
    pub seed: u64,
}

impl TopKSaeConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field: `d_in` or `d_sae` zero, `k` zero or
    /// larger than `d_sae`, `b_dec_init_rows` zero.
    pub fn validate(&self) -> Result<()> {
        if self.d_in == 0 {
            return Err(Error::invalid("d_in", self.d_in, "must be >= 1"));
        }
        if self.d_sae == 0 {
            return Err(Error::invalid("d_sae", self.d_sae, "must be >= 1"));
        }
        if self.k == 0 {
            return Err(Error::invalid("k", self.k, "must be >= 1"));
        }
        if self.k > self.d_sae {
            return Err(Error::invalid(
                "k",
                self.k,
                format!("must be <= d_sae ({})", self.d_sae),
            ));
        }
        if self.b_dec_init_rows == 0 {
            return Err(Error::invalid(
                "b_dec_init_rows",
                self.b_dec_init_rows,
                "must be >= 1",
            ));
        }
        Ok(())
    }

    /// Initialises a model with `b_dec = 0` (no data seen): Xavier-uniform decoder rows scaled to
    /// unit norm, encoder the decoder's transpose, `b_enc = 0`.
    ///
    /// # Errors
    /// The errors of [`TopKSaeConfig::validate`]; [`Error::InvalidConfig`] naming `d_sae` on a
    /// GPU whose largest buffer cannot hold the `[d_in, d_sae]` weights.
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<TopKSae<B>> {
        self.validate()?;
        self.check_fits::<B>(device)?;
        Ok(self.build(vec![0.0; self.d_in], device))
    }

    /// Like [`TopKSaeConfig::try_init`], panicking on an invalid config.
    ///
    /// # Panics
    /// If [`TopKSaeConfig::validate`] fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TopKSae<B> {
        match self.try_init(device) {
            Ok(model) => model,
            Err(e) => panic!("{e}"),
        }
    }

    /// Whether the weights fit in one buffer of `device` ([`check_fits_device`]).
    pub(crate) fn check_fits<B: Backend>(&self, device: &B::Device) -> Result<()> {
        check_fits_device::<B>(
            device,
            "d_sae",
            self.d_sae,
            "the encoder's weights",
            [self.d_in, self.d_sae],
        )
    }

    /// The model with seeded weights (Xavier-uniform decoder rows scaled to unit norm, the
    /// encoder their transpose, `b_enc` zero) and `b_dec`.
    pub(crate) fn build<B: Backend>(&self, b_dec: Vec<f32>, device: &B::Device) -> TopKSae<B> {
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        let bound = (6.0 / (d_in + d_sae) as f64).sqrt() as f32;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut w_dec: Vec<f32> = (0..d_sae * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        for row in w_dec.chunks_exact_mut(d_in) {
            normalize(row);
        }
        let mut w_enc = vec![0.0; d_in * d_sae];
        for (j, row) in w_dec.chunks_exact(d_in).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                w_enc[i * d_sae + j] = w;
            }
        }
        TopKSae::from_parts(
            Tensor::from_data(TensorData::new(w_enc, [d_in, d_sae]), device),
            Tensor::zeros([d_sae], device),
            Tensor::from_data(TensorData::new(w_dec, [d_sae, d_in]), device),
            Tensor::from_data(TensorData::new(b_dec, [d_in]), device),
            self.k,
        )
    }
}

fn normalize(row: &mut [f32]) {
    let norm = row
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > 0.0 {
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
}

/// A top-k sparse autoencoder (SPEC §1).
///
/// `pre = (x - b_dec) @ w_enc + b_enc`; keep each row's `k` largest pre-activations, apply ReLU
/// to them; `x_hat = z @ w_dec + b_dec`. Ties among pre-activations keep the lower latent index.
#[derive(Module, Debug)]
pub struct TopKSae<B: Backend> {
    /// Encoder, `[d_in, d_sae]`; initialised as the transpose of `w_dec`.
    pub w_enc: Param<Tensor<B, 2>>,
    /// Encoder bias, `[d_sae]`; initialised to zero.
    pub b_enc: Param<Tensor<B, 1>>,
    /// Decoder, `[d_sae, d_in]`: row `j` is latent `j`'s unit-norm direction.
    pub w_dec: Param<Tensor<B, 2>>,
    /// Decoder bias, `[d_in]`: subtracted before encoding, added after decoding.
    pub b_dec: Param<Tensor<B, 1>>,
    k: usize,
    /// Which of our GPU kernels this model's operations (and its trainer's) may use; not saved.
    #[module(skip)]
    kernels: KernelOptions,
}

/// The top-k latents of a batch: indices and post-ReLU values, each `[batch, k]`, every row in
/// descending order of pre-activation.
#[derive(Debug, Clone)]
pub struct TopKLatents<B: Backend> {
    /// Latent indices, `[batch, k]`.
    pub indices: Tensor<B, 2, Int>,
    /// Post-ReLU activations, `[batch, k]` (a selected negative pre-activation becomes 0).
    pub values: Tensor<B, 2>,
}

/// What [`TopKSae::forward`] returns.
#[derive(Debug, Clone)]
pub struct SaeOutput<B: Backend> {
    /// Indices of the active latents, `[batch, k]`, descending by pre-activation.
    pub indices: Tensor<B, 2, Int>,
    /// Post-ReLU values of the active latents, `[batch, k]`.
    pub values: Tensor<B, 2>,
    /// Reconstruction `x_hat`, `[batch, d_in]`.
    pub reconstruction: Tensor<B, 2>,
    /// Dense latents `[batch, d_sae]`, only from [`TopKSae::forward_with_latents`].
    pub latents: Option<Tensor<B, 2>>,
}

/// Copies a float tensor to the host as row-major `f32` values.
///
/// # Shapes
/// - `tensor`: any shape → its element count
pub fn to_host_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    to_host(tensor)
}

/// Copies an int tensor (top-k indices, say) to the host as row-major `i64` values, on every
/// backend (burn-ndarray stores `i64`, the GPU backends `i32`; both read back the same).
///
/// # Shapes
/// - `tensor`: any shape → its element count
pub fn int_to_host_vec<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<i64> {
    int_to_host(tensor)
}

/// Host copies of top-k indices and values (row-major `[batch, k]`), indices as `u32`.
fn codes_to_host<B: Backend>(indices: &Tensor<B, 2, Int>, values: &Tensor<B, 2>) -> HostCodes {
    let [rows, k] = indices.dims();
    HostCodes {
        rows,
        k,
        // Indices come from a top-k over `d_sae` latents: non-negative and below `d_sae`.
        indices: int_to_host(indices.clone())
            .into_iter()
            .map(|j| j as u32)
            .collect(),
        values: to_host(values.clone()),
    }
}

/// The top-k latents of a batch on the host, from [`TopKLatents::to_host`] or
/// [`SaeOutput::codes_to_host`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HostCodes {
    /// Rows of the batch.
    pub rows: usize,
    /// Latents per row.
    pub k: usize,
    /// Row-major `[rows, k]` latent indices, each row descending by pre-activation.
    pub indices: Vec<u32>,
    /// Row-major `[rows, k]` post-ReLU values.
    pub values: Vec<f32>,
}

impl HostCodes {
    /// Row `i`'s `(latent, value)` pairs.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        code_row(&self.indices, &self.values, self.k, i)
    }
}

/// Row `i`'s `(latent, value)` pairs of row-major `[rows, k]` codes.
///
/// # Panics
/// If row `i` is past the end.
pub(crate) fn code_row<'a>(
    indices: &'a [u32],
    values: &'a [f32],
    k: usize,
    i: usize,
) -> impl Iterator<Item = (usize, f32)> + 'a {
    let r = i * k..(i + 1) * k;
    indices[r.clone()]
        .iter()
        .map(|&j| j as usize)
        .zip(values[r].iter().copied())
}

impl<B: Backend> TopKLatents<B> {
    /// Copies the indices and values to the host, on every backend.
    ///
    /// # Shapes
    /// - `indices`, `values`: `[batch, k]` → [`HostCodes`] of `batch` rows
    pub fn to_host(&self) -> HostCodes {
        codes_to_host(&self.indices, &self.values)
    }
}

impl<B: Backend> SaeOutput<B> {
    /// Copies the active latents' indices and values to the host, on every backend.
    ///
    /// # Shapes
    /// - `indices`, `values`: `[batch, k]` → [`HostCodes`] of `batch` rows
    pub fn codes_to_host(&self) -> HostCodes {
        codes_to_host(&self.indices, &self.values)
    }
}

impl<B: Backend> TopKSae<B> {
    /// Assembles a model from its four parameters.
    ///
    /// # Shapes
    /// - `w_enc`: `[d_in, d_sae]`, `b_enc`: `[d_sae]`, `w_dec`: `[d_sae, d_in]`, `b_dec`: `[d_in]`
    ///
    /// # Panics
    /// If the shapes disagree or `k` is not in `1..=d_sae`.
    pub fn from_parts(
        w_enc: Tensor<B, 2>,
        b_enc: Tensor<B, 1>,
        w_dec: Tensor<B, 2>,
        b_dec: Tensor<B, 1>,
        k: usize,
    ) -> Self {
        let [d_in, d_sae] = w_enc.dims();
        assert_eq!(b_enc.dims(), [d_sae], "b_enc must be [d_sae] = [{d_sae}]");
        assert_eq!(
            w_dec.dims(),
            [d_sae, d_in],
            "w_dec must be [d_sae, d_in] = [{d_sae}, {d_in}]"
        );
        assert_eq!(b_dec.dims(), [d_in], "b_dec must be [d_in] = [{d_in}]");
        assert!(
            (1..=d_sae).contains(&k),
            "k ({k}) must be in 1..=d_sae ({d_sae})"
        );
        Self {
            w_enc: Param::from_tensor(w_enc),
            b_enc: Param::from_tensor(b_enc),
            w_dec: Param::from_tensor(w_dec),
            b_dec: Param::from_tensor(b_dec),
            k,
            kernels: KernelOptions::default(),
        }
    }

    /// The four parameters' values, for the optimiser's update.
    pub(crate) fn params(&self) -> crate::ops::update::Params<B> {
        crate::ops::update::Params {
            w_enc: self.w_enc.val(),
            b_enc: self.b_enc.val(),
            w_dec: self.w_dec.val(),
            b_dec: self.b_dec.val(),
        }
    }

    /// This model with `params` as its values (the parameter ids kept).
    pub(crate) fn with_params(&self, params: crate::ops::update::Params<B>) -> Self {
        Self {
            w_enc: Param::initialized(self.w_enc.id, params.w_enc),
            b_enc: Param::initialized(self.b_enc.id, params.b_enc),
            w_dec: Param::initialized(self.w_dec.id, params.w_dec),
            b_dec: Param::initialized(self.b_dec.id, params.b_dec),
            k: self.k,
            kernels: self.kernels,
        }
    }

    /// Which of this crate's GPU kernels the model may use ([`KernelOptions::default`] unless
    /// [`TopKSae::with_kernels`] set them): its forward pass, evaluation, corpus encoding and
    /// training all follow them. Other backends run none.
    pub fn kernels(&self) -> KernelOptions {
        self.kernels
    }

    /// This model with `options` deciding which of this crate's GPU kernels it may use (not
    /// saved with it: a loaded model starts from the defaults). Results are the same to float
    /// rounding; only the speed differs.
    ///
    /// ```
    /// # #[cfg(feature = "ndarray")] {
    /// use topk_sae::backend::{KernelOptions, NdArray};
    /// use topk_sae::TopKSaeConfig;
    /// let mut options = KernelOptions::default();
    /// options.loss = true;
    /// let model = TopKSaeConfig::new(8, 32, 4).init::<NdArray<f32>>(&Default::default());
    /// let model = model.with_kernels(options);
    /// assert!(model.kernels().loss);
    /// # }
    /// ```
    #[must_use]
    pub fn with_kernels(mut self, options: KernelOptions) -> Self {
        self.kernels = options;
        self
    }

    /// Input dimension.
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[0]
    }

    /// Number of latents.
    pub fn d_sae(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// Active latents per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The most rows [`TopKSae::forward`] and the encoders take in one call on this model's
    /// device. On burn-wgpu a batch's `[rows, d_sae]` pre-activations must fit in one buffer of
    /// the device (its largest storage binding: 128 MiB on lavapipe, below 4 GiB anywhere), and
    /// a larger batch panics inside cubecl; [`crate::metrics::evaluate`] and
    /// [`crate::analysis::encode_corpus`] keep their chunks within it. `usize::MAX` on other
    /// backends.
    ///
    /// ```
    /// # use topk_sae::TopKSaeConfig;
    /// type B = topk_sae::backend::NdArray<f32>;
    /// let model = TopKSaeConfig::new(16, 64, 4).init::<B>(&Default::default());
    /// assert_eq!(model.max_batch_rows(), usize::MAX);
    /// ```
    pub fn max_batch_rows(&self) -> usize {
        device_rows_cap::<B>(&self.w_enc.device(), self.d_sae())
    }

    /// The same model with another `k` (top-k SAEs are often evaluated at several k).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `k` is 0 or larger than `d_sae`.
    pub fn with_k(mut self, k: usize) -> Result<Self> {
        if k == 0 || k > self.d_sae() {
            return Err(Error::argument(
                "k",
                k,
                format!("must be in 1..=d_sae ({})", self.d_sae()),
            ));
        }
        self.k = k;
        Ok(self)
    }

    /// Checks that `x` is `[batch, d_in]`, for callers that take tensors from elsewhere and
    /// want an error rather than the panic of [`TopKSae::forward`] and the other tensor
    /// methods (the crate's error policy: `lib.rs`, "Errors and panics").
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]`
    ///
    /// # Errors
    /// [`Error::WidthMismatch`] naming both widths, with `tensor` as the data's name.
    pub fn check_width(&self, x: &Tensor<B, 2>) -> Result<()> {
        let [_, width] = x.dims();
        if width == self.d_in() {
            Ok(())
        } else {
            Err(Error::WidthMismatch {
                expected: self.d_in(),
                actual: width,
                source_name: "tensor".into(),
            })
        }
    }

    fn check_input(&self, x: &Tensor<B, 2>) {
        let [_, width] = x.dims();
        assert_eq!(
            width,
            self.d_in(),
            "input must be [batch, d_in] with d_in = {}",
            self.d_in()
        );
    }

    /// Encoder pre-activations `(x - b_dec) @ w_enc + b_enc`.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_sae]`
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn pre_activations(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.check_input(&x);
        self.pre_from_centred(x - self.b_dec.val().unsqueeze_dim(0))
    }

    /// `xc @ w_enc + b_enc` on the device, for `xc = x - b_dec`.
    fn pre_from_centred(&self, xc: Tensor<B, 2>) -> Tensor<B, 2> {
        matmul(xc, self.w_enc.val()).add(self.b_enc.val().unsqueeze_dim(0))
    }

    /// `xc @ w_enc + b_enc` on the host, row-major `[batch, d_sae]`, for `xc = x - b_dec`. The
    /// bias is added on the host: burn-ndarray's broadcast add of a `[batch, d_sae]` matrix cost
    /// as much as the product itself (15 ms at 1024 x 3072).
    pub(crate) fn pre_activations_host(&self, xc: Tensor<B, 2>) -> Vec<f32> {
        let mut pre = to_host(matmul(xc, self.w_enc.val()));
        let bias = to_host(self.b_enc.val());
        for row in pre.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(&bias).for_each(|(p, b)| *p += b);
        }
        pre
    }

    /// Pre-activations for `xc = x - b_dec`, where their top-k will be taken (see
    /// [`PreActivations`]).
    pub(crate) fn pre_activations_for_topk(&self, xc: Tensor<B, 2>) -> PreActivations<B> {
        if crate::ops::topk::has_device_topk::<B>(&self.kernels, &xc.device()) {
            PreActivations::Device(self.pre_from_centred(xc))
        } else {
            let device = xc.device();
            PreActivations::Host(self.pre_activations_host(xc), device)
        }
    }

    /// The `k` active latents of each row: indices and post-ReLU values.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → indices and values `[batch, k]`
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn encode_topk(&self, x: Tensor<B, 2>) -> TopKLatents<B> {
        self.check_input(&x);
        let pre = self.pre_activations_for_topk(x - self.b_dec.val().unsqueeze_dim(0));
        let selected = pre.select(&self.kernels, self.d_sae(), self.k, None);
        TopKLatents {
            indices: selected.indices,
            values: selected.values,
        }
    }

    /// Dense latents `z`: the top-k post-ReLU values scattered into zeros.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_sae]`
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn encode(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let latents = self.encode_topk(x);
        self.densify(latents.indices, latents.values)
    }

    fn densify(&self, indices: Tensor<B, 2, Int>, values: Tensor<B, 2>) -> Tensor<B, 2> {
        let [batch, _] = indices.dims();
        Tensor::zeros([batch, self.d_sae()], &values.device()).scatter(
            1,
            indices,
            values,
            burn::tensor::IndexingUpdateOp::Add,
        )
    }

    /// Decodes dense latents: `z @ w_dec + b_dec`.
    ///
    /// # Shapes
    /// - `z`: `[batch, d_sae]` → `[batch, d_in]`
    pub fn decode(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        matmul(z, self.w_dec.val()).add(self.b_dec.val().unsqueeze_dim(0))
    }

    /// Decodes sparse latents by gathering the `k` decoder rows of each row:
    /// `x_hat[b] = sum_j values[b, j] * w_dec[indices[b, j]] + b_dec`. Never builds a
    /// `[batch, d_sae]` matrix.
    ///
    /// On the CPU backends (burn-ndarray, Flex), an f32 batch with at least `d_sae` active entries
    /// in all (`batch * k >= d_sae`, so it reads about the whole decoder anyway) is decoded by the
    /// host kernels of training and evaluation: one pass per row over its `k` decoder rows,
    /// instead of burn's gather, multiply and sum through a `[batch, k, d_in]` intermediate
    /// (`forward` 2.3-4.3x faster on burn-ndarray, 1.3-2.3x on Flex, at 1,024 rows;
    /// docs/benchmarks.md). Entries whose value is zero are skipped there.
    ///
    /// # Shapes
    /// - `indices`: `[batch, k]`, `values`: `[batch, k]` → `[batch, d_in]`
    ///
    /// # Panics
    /// If `indices` and `values` differ in shape; indices out of `0..d_sae` panic on the host
    /// path above and are undefined behaviour of the backend otherwise (some panic, some read
    /// garbage).
    pub fn decode_sparse(&self, indices: Tensor<B, 2, Int>, values: Tensor<B, 2>) -> Tensor<B, 2> {
        let [batch, k] = indices.dims();
        let device = values.device();
        // The host kernels compute in f32: f64 values keep burn's path.
        if k > 0
            && batch * k >= self.d_sae()
            && values.dtype() == burn::tensor::DType::F32
            && Engine::is_host::<B>()
        {
            assert_eq!(
                values.dims(),
                [batch, k],
                "values must be [batch, k] like indices"
            );
            let d_sae = self.d_sae();
            let indices: Vec<u32> = int_to_host(indices)
                .into_iter()
                .map(|j| match u32::try_from(j) {
                    Ok(j) if (j as usize) < d_sae => j,
                    _ => panic!("latent index {j} is outside 0..{d_sae}"),
                })
                .collect();
            let out = crate::ops::sparse::decode_sparse(
                &to_host(self.w_dec.val()),
                self.d_in(),
                Some(&to_host(self.b_dec.val())),
                &indices,
                &to_host(values),
                k,
            );
            return Tensor::from_data(TensorData::new(out, [batch, self.d_in()]), &device);
        }
        decode_rows(&self.kernels, &self.w_dec.val(), indices, values)
            .add(self.b_dec.val().unsqueeze_dim(0))
    }

    /// Encodes and decodes a batch without building dense latents.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → indices, values `[batch, k]`; reconstruction `[batch, d_in]`
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> SaeOutput<B> {
        let TopKLatents { indices, values } = self.encode_topk(x);
        let reconstruction = self.decode_sparse(indices.clone(), values.clone());
        SaeOutput {
            indices,
            values,
            reconstruction,
            latents: None,
        }
    }

    /// [`TopKSae::forward`], also returning the dense latents `[batch, d_sae]`.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → as [`TopKSae::forward`], plus latents `[batch, d_sae]`
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn forward_with_latents(&self, x: Tensor<B, 2>) -> SaeOutput<B> {
        let mut out = self.forward(x);
        out.latents = Some(self.densify(out.indices.clone(), out.values.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::TestBackend;

    /// Every product goes through `matmul`: it equals the host's product in f64 (to f32
    /// rounding), one output column (its two-column guard) included.
    #[test]
    fn products_equal_the_host_product() {
        let device = Default::default();
        let (m, k, n) = (37usize, 48usize, 70usize);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (a_host, b_host) = (random(m * k), random(k * n));
        let a =
            Tensor::<TestBackend, 2>::from_data(TensorData::new(a_host.clone(), [m, k]), &device);
        let b =
            Tensor::<TestBackend, 2>::from_data(TensorData::new(b_host.clone(), [k, n]), &device);
        // The product in f64 on the host.
        let want: Vec<f64> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .map(|l| f64::from(a_host[i * k + l]) * f64::from(b_host[l * n + j]))
                    .sum()
            })
            .collect();
        let got = to_host(matmul(a.clone(), b.clone()));
        assert_eq!(got.len(), m * n);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0f64, f64::max);
        // Sums of 48 products below 1 in size: f32 rounding left at most 2.0e-6 on
        // burn-ndarray; 1e-5 leaves room for another summation order.
        assert!(worst < 1e-5, "max |diff| {worst:e}");
        // One output column goes through `matmul`'s two-column guard.
        let column = b.clone().slice([0..k, 0..1]);
        let got = to_host(matmul(a, column));
        let worst = (0..m)
            .map(|i| (f64::from(got[i]) - want[i * n]).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-5, "one column: max |diff| {worst:e}");
    }
}

//! Feature families (SPEC §6): a maximum spanning tree over the row-normalised co-occurrence
//! graph, edges oriented from denser to rarer latents, families grown from roots, three rounds.

use std::collections::{BTreeSet, HashMap};

use super::CorpusCodes;
use crate::{Error, Result};

/// Thresholds of the family search; defaults are the paper's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FamilyConfig {
    /// `M_ij = C_ij / (C_ii + 1)` below this is dropped.
    pub min_cooccurrence: f64,
    /// A root starts a family when it has more than this many children in the tree.
    pub min_root_children: usize,
    /// A family is kept when it has more than this many members besides its parent.
    pub min_family_children: usize,
    /// Rounds of (tree, families, remove roots).
    pub rounds: usize,
    /// Families whose child sets overlap with Jaccard above this are duplicates.
    pub max_jaccard: f64,
    /// Latents that fire in fewer than this fraction of documents are left out of the graph.
    /// `0` (the default, as in the paper) keeps every latent. A latent that fired on a handful
    /// of documents has `M_ij = C_ij / (C_ii + 1)` near 1 with whatever fired beside it, so it
    /// joins the family of every parent it met once: rarely-firing latents that fill the last
    /// top-k slot when a document has fewer than `k` features end up in every family.
    #[serde(default)]
    pub min_density: f64,
}

impl Default for FamilyConfig {
    fn default() -> Self {
        Self {
            min_cooccurrence: 0.1,
            min_root_children: 2,
            min_family_children: 3,
            rounds: 3,
            max_jaccard: 0.6,
            min_density: 0.0,
        }
    }
}

impl FamilyConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field: a threshold that is not finite,
    /// `min_density` or `max_jaccard` outside `[0, 1]`, or `rounds == 0` (each of which would
    /// otherwise quietly find no families, or no duplicates).
    pub fn validate(&self) -> Result<()> {
        if !self.min_cooccurrence.is_finite() {
            return Err(Error::invalid(
                "min_cooccurrence",
                self.min_cooccurrence,
                "must be finite",
            ));
        }
        if self.rounds == 0 {
            return Err(Error::invalid("rounds", self.rounds, "must be >= 1"));
        }
        for (field, value) in [
            ("max_jaccard", self.max_jaccard),
            ("min_density", self.min_density),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::invalid(field, value, "must be in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// A family: a parent latent and its descendants in the tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Family {
    /// The root latent.
    pub parent: usize,
    /// Its descendants, ascending.
    pub children: Vec<usize>,
    /// Round (0-based) in which it was found.
    pub round: usize,
    /// The tree below the parent as `(from, to)` edges, denser to rarer.
    pub edges: Vec<(usize, usize)>,
}

/// Co-occurrence counts `C = A^T A` of the one-hot top-k matrix `A` (`[documents, d_sae]`),
/// stored sparse: `C_ii` for every latent, and `C_ij` for the pairs `i < j` that fired together
/// at least once, row by row (compressed sparse rows of the upper triangle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooccurrence {
    counts: Vec<u32>,
    offsets: Vec<usize>,
    partners: Vec<u32>,
    pair_counts: Vec<u32>,
}

impl Cooccurrence {
    /// `C_ii` for every latent: in how many documents it fired.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// `C_ij` (symmetric; `C_ii` when `i == j`); 0 for latents that never fired together.
    ///
    /// # Panics
    /// If `i` or `j` is `>= d_sae`.
    pub fn get(&self, i: usize, j: usize) -> u32 {
        if i == j {
            return self.counts[i];
        }
        let (a, b) = (i.min(j), i.max(j));
        let row = self.offsets[a]..self.offsets[a + 1];
        match self.partners[row.clone()].binary_search(&(b as u32)) {
            Ok(at) => self.pair_counts[row.start + at],
            Err(_) => 0,
        }
    }

    /// The pairs that fired together, `(i, j, C_ij)` with `i < j`, ascending by `(i, j)`.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        (0..self.counts.len()).flat_map(move |i| {
            let row = self.offsets[i]..self.offsets[i + 1];
            self.partners[row.clone()]
                .iter()
                .zip(&self.pair_counts[row])
                .map(move |(&j, &n)| (i as u32, j, n))
        })
    }

    /// How many pairs fired together.
    pub fn pair_count(&self) -> usize {
        self.partners.len()
    }
}

/// Counts co-occurrences (a latent listed twice in one document counts once there).
///
/// Work is `O(documents * k^2)` array increments, latents in parallel: each latent's documents
/// are visited once and its partners counted in a dense scratch row. Memory is the pairs that
/// occur, not `d_sae^2`.
///
/// # Panics
/// If an index of `codes` is `>= d_sae` (codes from [`super::encode_corpus`] or
/// [`CorpusCodes::load_npy`] never are).
pub fn cooccurrence(codes: &CorpusCodes) -> Cooccurrence {
    use rayon::prelude::*;
    let (d_sae, k) = (codes.d_sae, codes.k);
    // Each document's distinct latents, ascending.
    let mut rows: Vec<u32> = Vec::with_capacity(codes.rows * k);
    let mut row_starts = Vec::with_capacity(codes.rows + 1);
    row_starts.push(0);
    let mut counts = vec![0u32; d_sae];
    let mut row: Vec<u32> = Vec::with_capacity(k);
    for doc in 0..codes.rows {
        row.clear();
        row.extend_from_slice(&codes.indices[doc * k..(doc + 1) * k]);
        row.sort_unstable();
        row.dedup();
        for &i in &row {
            counts[i as usize] += 1;
        }
        rows.extend_from_slice(&row);
        row_starts.push(rows.len());
    }
    // The documents of each latent (inverted lists), by a counting sort.
    let mut doc_starts = vec![0usize; d_sae + 1];
    for (i, &n) in counts.iter().enumerate() {
        doc_starts[i + 1] = doc_starts[i] + n as usize;
    }
    let mut fill = doc_starts.clone();
    let mut docs = vec![0u32; rows.len()];
    for doc in 0..codes.rows {
        for &i in &rows[row_starts[doc]..row_starts[doc + 1]] {
            docs[fill[i as usize]] = doc as u32;
            fill[i as usize] += 1;
        }
    }
    let per_latent: Vec<(Vec<u32>, Vec<u32>)> = (0..d_sae)
        .into_par_iter()
        .map_init(
            || (vec![0u32; d_sae], Vec::new()),
            |(scratch, touched), i| {
                for &doc in &docs[doc_starts[i]..doc_starts[i + 1]] {
                    let row = &rows[row_starts[doc as usize]..row_starts[doc as usize + 1]];
                    // Partners above `i` only: the row is ascending.
                    let above = row.partition_point(|&j| j as usize <= i);
                    for &j in &row[above..] {
                        if scratch[j as usize] == 0 {
                            touched.push(j);
                        }
                        scratch[j as usize] += 1;
                    }
                }
                touched.sort_unstable();
                let n: Vec<u32> = touched
                    .iter()
                    .map(|&j| std::mem::take(&mut scratch[j as usize]))
                    .collect();
                (std::mem::take(touched), n)
            },
        )
        .collect();
    let mut offsets = Vec::with_capacity(d_sae + 1);
    offsets.push(0);
    let total = per_latent.iter().map(|p| p.0.len()).sum();
    let (mut partners, mut pair_counts) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for (p, n) in per_latent {
        partners.extend(p);
        pair_counts.extend(n);
        offsets.push(partners.len());
    }
    Cooccurrence {
        counts,
        offsets,
        partners,
        pair_counts,
    }
}

/// Finds feature families as in SPEC §6 (latents below `min_density` left out first, none by
/// default): `M_ij = C_ij / (C_ii + 1)`, entries below
/// `min_cooccurrence` dropped, the rest exponentiated (monotone, so the tree is the same),
/// symmetrised as `max(M_ij, M_ji)`; a maximum spanning forest (Kruskal, ties by index);
/// edges oriented from the denser latent (larger `C_ii`) to the rarer; every root (no parent)
/// with more than `min_root_children` children starts a family of all its descendants, kept when
/// they number more than `min_family_children`; the roots are removed and the search repeats
/// (`rounds` times). Finally a family whose children overlap an earlier-found (or, in the same
/// round, larger) family's with Jaccard above `max_jaccard` is dropped as a duplicate.
///
/// # Errors
/// The errors of [`FamilyConfig::validate`].
pub fn families(codes: &CorpusCodes, config: &FamilyConfig) -> Result<Vec<Family>> {
    config.validate()?;
    let c = cooccurrence(codes);
    let freq = |i: u32| f64::from(c.counts()[i as usize]);
    // Undirected candidate edges with weight max(M_ij, M_ji).
    let mut edges: Vec<(f64, u32, u32)> = c
        .pairs()
        .filter_map(|(i, j, n)| {
            let n = f64::from(n);
            let m = (n / (freq(i) + 1.0)).max(n / (freq(j) + 1.0));
            (m >= config.min_cooccurrence).then(|| (m.exp(), i, j))
        })
        .collect();
    edges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let min_count = config.min_density * codes.rows as f64;
    let mut removed: BTreeSet<u32> = (0..codes.d_sae as u32)
        .filter(|&i| freq(i) < min_count)
        .collect();
    let mut found: Vec<Family> = Vec::new();
    for round in 0..config.rounds {
        let tree = spanning_forest(codes.d_sae, &edges, &removed);
        // Orient: parent is the denser endpoint (ties: lower index).
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut has_parent: BTreeSet<u32> = BTreeSet::new();
        for &(a, b) in &tree {
            let (p, ch) = if (freq(a), std::cmp::Reverse(a)) >= (freq(b), std::cmp::Reverse(b)) {
                (a, b)
            } else {
                (b, a)
            };
            children.entry(p).or_default().push(ch);
            has_parent.insert(ch);
        }
        let mut roots: Vec<u32> = children
            .iter()
            .filter(|(p, ch)| !has_parent.contains(p) && ch.len() > config.min_root_children)
            .map(|(p, _)| *p)
            .collect();
        roots.sort_unstable();
        let mut this_round = Vec::new();
        for &root in &roots {
            let (members, tree_edges) = descendants(root, &children);
            if members.len() > config.min_family_children {
                this_round.push(Family {
                    parent: root as usize,
                    children: members.iter().map(|&m| m as usize).collect(),
                    round,
                    edges: tree_edges
                        .iter()
                        .map(|&(a, b)| (a as usize, b as usize))
                        .collect(),
                });
            }
        }
        if roots.is_empty() {
            break;
        }
        removed.extend(roots);
        this_round.sort_by(|a, b| {
            b.children
                .len()
                .cmp(&a.children.len())
                .then(a.parent.cmp(&b.parent))
        });
        for fam in this_round {
            let duplicate = found
                .iter()
                .any(|f| jaccard(&f.children, &fam.children) > config.max_jaccard);
            if !duplicate {
                found.push(fam);
            }
        }
    }
    Ok(found)
}

fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    let a: BTreeSet<_> = a.iter().collect();
    let b: BTreeSet<_> = b.iter().collect();
    let union = a.union(&b).count();
    if union == 0 {
        0.0
    } else {
        a.intersection(&b).count() as f64 / union as f64
    }
}

/// Kruskal's maximum spanning forest over `edges` (sorted by descending weight), skipping
/// removed nodes.
fn spanning_forest(
    n: usize,
    edges: &[(f64, u32, u32)],
    removed: &BTreeSet<u32>,
) -> Vec<(u32, u32)> {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    let mut tree = Vec::new();
    for &(_, a, b) in edges {
        if removed.contains(&a) || removed.contains(&b) {
            continue;
        }
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra as usize] = rb;
            tree.push((a, b));
        }
    }
    tree
}

fn descendants(root: u32, children: &HashMap<u32, Vec<u32>>) -> (Vec<u32>, Vec<(u32, u32)>) {
    let mut members = Vec::new();
    let mut edges = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &ch in children.get(&p).map_or(&[][..], Vec::as_slice) {
            members.push(ch);
            edges.push((p, ch));
            stack.push(ch);
        }
    }
    members.sort_unstable();
    (members, edges)
}

/// Union-find root of `x`, with path halving.
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        parent[x as usize] = parent[parent[x as usize] as usize];
        x = parent[x as usize];
    }
    x
}

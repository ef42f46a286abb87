//! ZeRO stages 1, 2 and 3 (Rajbhandari et al.; DeepSpeed's `stage` 1, 2 and 3) over the SAEs'
//! latents: each rank owns an equal slice of the latents (rows of `W_enc` and `W_dec`, entries
//! of `b_enc` and the thresholds) and keeps AdamW's moments for its slice only; stage 2 also
//! keeps only its slice of the step's gradients between micro-batches; stage 3 also keeps only
//! its slice of the parameters between steps, and gathers them whole for the next step's
//! forward and backward passes (the frozen model's forward pass runs in between, without them).
//! Each step the gradients are reduce-scattered, every rank steps its slice (gradient clipping
//! sums the squared norm over the ranks) and the parameters are all-gathered (stage 3: at the
//! start of the next step). `b_dec`, `d_in` values, is stepped whole on every rank. Every
//! per-latent operation of the step (the decoder's parallel component, its unit norm, AdamW)
//! works row by row, so stepping slices is stepping the whole.

use std::borrow::Cow;
use std::ops::Range;

use sae_core::Params;

use crate::adamw::Moments;
use crate::collective::Collective;
use crate::error::Result;
use crate::storage::Storage;

/// What a rank keeps of the training state only for its own latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The optimiser's moments.
    One,
    /// The moments and the step's gradients.
    Two,
    /// The moments, the gradients and, between steps, the parameters.
    Three,
}

/// The latents one rank steps, and the optimiser state it keeps for them.
#[derive(Debug)]
pub struct Partition<T> {
    /// This rank's latents.
    latents: Range<usize>,
    /// Latents per rank (the collectives pad every slice to it).
    per_rank: usize,
    /// Latents of all the ranks.
    total: usize,
    /// AdamW's moments of this rank's slice, from the first step on.
    pub moments: Option<Moments<T>>,
    /// Stage 2 and 3: this rank's slice of the step's gradients, summed over the ranks so far.
    pub grads: Option<Params<T>>,
    /// Stage 3, between steps: this rank's slice of the parameters (the whole ones are
    /// released).
    pub params: Option<Params<T>>,
    /// What the rank keeps for its slice only.
    pub stage: Stage,
}

/// Values per latent of parameter `name` (`None` for `b_dec`, which is not split).
fn width(name: &str, d: usize) -> Option<usize> {
    match name {
        "w_enc" | "w_dec" => Some(d),
        "b_dec" => None,
        _ => Some(1),
    }
}

impl<T: Storage> Partition<T> {
    /// Rank `rank`'s slice of `latents` latents over `ranks` ranks, for ZeRO `stage`;
    /// `moments`, whole (from a checkpoint), are cut to it.
    pub fn new(
        (rank, ranks): (usize, usize),
        latents: usize,
        moments: Option<&Moments<T>>,
        (d, stage): (usize, Stage),
    ) -> Self {
        let per_rank = latents.div_ceil(ranks);
        let start = (rank * per_rank).min(latents);
        let mut part = Partition {
            latents: start..((rank + 1) * per_rank).min(latents),
            per_rank,
            total: latents,
            moments: None,
            grads: None,
            params: None,
            stage,
        };
        part.moments = moments.map(|m| Moments {
            exp_avg: part.slice(&m.exp_avg, d),
            exp_avg_sq: part.slice(&m.exp_avg_sq, d),
        });
        part
    }

    /// This rank's slice of whole `params`.
    pub fn slice(&self, params: &Params<T>, d: usize) -> Params<T> {
        let cut = |name: &str, v: &T| -> Result<T> {
            Ok(match width(name, d) {
                Some(w) => v.range(self.latents.start * w..self.latents.end * w),
                None => v.range(0..v.count()),
            })
        };
        params.try_map_named(cut).expect("slicing cannot fail")
    }

    /// This rank's slice of the sum over the ranks of whole `grads` (`b_dec` whole).
    pub fn reduce_scatter(
        &self,
        collective: &dyn Collective,
        grads: &Params<T>,
        d: usize,
    ) -> Result<Params<T>> {
        grads.try_map_named(|name, g| {
            let Some(w) = width(name, d) else {
                let mut values = g.to_vec();
                collective.all_reduce(&mut values)?;
                return Ok(g.like(values));
            };
            let send = self.padded(g, w, collective.ranks());
            let mut part = vec![0.0; self.per_rank * w];
            collective.reduce_scatter(&send, &mut part)?;
            part.truncate(self.latents.len() * w);
            Ok(g.like(part))
        })
    }

    /// Sets `whole` to every rank's slice `part` gathered (`b_dec` is whole already).
    pub fn all_gather(
        &self,
        collective: &dyn Collective,
        part: &Params<T>,
        whole: &mut Params<T>,
        d: usize,
    ) -> Result<()> {
        let ranks = collective.ranks();
        for ((name, whole), (_, part)) in whole.iter_mut().zip(part.iter()) {
            let Some(w) = width(name, d) else {
                *whole = part.range(0..part.count());
                continue;
            };
            let mine = self.padded(part, w, 1);
            let padded = ranks * self.per_rank * w;
            match whole.as_host_mut() {
                // Straight into the parameters when the slices fill them exactly.
                Some(values) if values.len() == padded => collective.all_gather(&mine, values)?,
                _ => {
                    let mut values = vec![0.0; padded];
                    collective.all_gather(&mine, &mut values)?;
                    values.truncate(whole.count());
                    *whole = whole.like(values);
                }
            }
        }
        Ok(())
    }

    /// The whole parameters, gathered from every rank's slice `part` (stage 3).
    pub fn gather_params(
        &self,
        collective: &dyn Collective,
        part: &Params<T>,
        d: usize,
    ) -> Result<Params<T>> {
        part.try_map_named(|name, p| {
            let Some(w) = width(name, d) else {
                return Ok(p.range(0..p.count()));
            };
            let mut values = vec![0.0; collective.ranks() * self.per_rank * w];
            collective.all_gather(&self.padded(p, w, 1), &mut values)?;
            values.truncate(self.total * w);
            Ok(p.like(values))
        })
    }

    /// The whole moments on rank 0, gathered from every rank's slice (for a checkpoint);
    /// `None` on the other ranks.
    pub fn gather_moments(&self, collective: &dyn Collective, d: usize) -> Result<Option<Moments>> {
        let Some(m) = &self.moments else {
            return Ok(None);
        };
        let root = collective.rank() == 0;
        let gather = |part: &Params<T>| {
            part.try_map_named(|name, p| -> Result<Vec<f32>> {
                let Some(w) = width(name, d) else {
                    return Ok(p.to_vec());
                };
                let mut whole = vec![
                    0.0;
                    if root {
                        collective.ranks() * self.per_rank * w
                    } else {
                        0
                    }
                ];
                collective.gather(&self.padded(p, w, 1), &mut whole, 0)?;
                whole.truncate(self.total * w);
                Ok(whole)
            })
        };
        let moments = Moments {
            exp_avg: gather(&m.exp_avg)?,
            exp_avg_sq: gather(&m.exp_avg_sq)?,
        };
        Ok(root.then_some(moments))
    }

    /// `values` (this rank's slice when `parts` is 1, else the whole of `parts` slices) padded
    /// with zeros to `parts` full slices of `w` values per latent: borrowed when it needs no
    /// padding and is on the host.
    fn padded<'a>(&self, values: &'a T, w: usize, parts: usize) -> Cow<'a, [f32]> {
        let len = parts * self.per_rank * w;
        match values.as_host() {
            Some(host) if host.len() == len => Cow::Borrowed(host),
            _ => {
                let mut owned = values.to_vec();
                owned.resize(len, 0.0);
                Cow::Owned(owned)
            }
        }
    }

    /// Adds `grads` (this rank's slice, summed over the ranks) to the step's so far (stage 2).
    pub fn add_grads(&mut self, grads: Params<T>) {
        self.grads = Some(match self.grads.take() {
            None => grads,
            Some(mut sum) => {
                for ((_, s), (_, g)) in sum.iter_mut().zip(grads.iter()) {
                    s.add(g);
                }
                sum
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Single;

    #[test]
    fn one_rank_owns_every_latent() {
        let params = Params {
            w_enc: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            b_enc: Some(vec![7.0, 8.0, 9.0]),
            w_dec: vec![0.5; 6],
            b_dec: vec![1.0, 1.0],
            threshold: None,
        };
        let part = Partition::<Vec<f32>>::new((0, 1), 3, None, (2, Stage::One));
        assert_eq!(part.slice(&params, 2), params);
        let summed = part.reduce_scatter(&Single, &params, 2).unwrap();
        assert_eq!(summed, params);
        let mut whole = params.zeros_like();
        part.all_gather(&Single, &summed, &mut whole, 2).unwrap();
        assert_eq!(whole, params);
        // Rank 1 of 2 owns latent 2 (latents 0 and 1 are rank 0's).
        let second = Partition::<Vec<f32>>::new((1, 2), 3, None, (2, Stage::Three));
        let sliced = second.slice(&params, 2);
        assert_eq!(
            (sliced.w_enc, sliced.b_enc),
            (vec![5.0, 6.0], Some(vec![9.0]))
        );
        assert_eq!(sliced.b_dec, params.b_dec);
    }
}

//! The frozen model's side of a ZeRO-3 run: its weight slices travel over the run's
//! collective ([`sae_models::shard`]).

use std::rc::Rc;
use std::sync::Arc;

use sae_models::{ShardExchange, Shards};
use send_wrapper::SendWrapper;

use super::Collective;

/// The run's collective as the model's [`ShardExchange`]. A model must be movable between
/// threads (a Burn module is `Send`), but the collective is used on the thread that created it
/// only (MPI runs `Funneled`): [`SendWrapper`] checks that at each use.
struct OverCollective {
    collective: SendWrapper<Rc<dyn Collective>>,
    rank: usize,
    ranks: usize,
}

impl OverCollective {
    fn collective(&self) -> Result<&dyn Collective, String> {
        if self.collective.valid() {
            Ok(self.collective.as_ref())
        } else {
            Err("a model whose weights are shared between ranks runs on the thread that loaded it only".into())
        }
    }
}

impl ShardExchange for OverCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<(), String> {
        (self.collective()?)
            .all_gather_bytes(send, recv)
            .map_err(|e| e.to_string())
    }

    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), String> {
        (self.collective()?)
            .broadcast(buf, root)
            .map_err(|e| e.to_string())
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> Result<(), String> {
        (self.collective()?)
            .reduce_scatter(send, recv)
            .map_err(|e| e.to_string())
    }
}

/// The model's weights shared between the ranks of `collective` (ZeRO-3).
pub fn model_shards(collective: &Rc<dyn Collective>) -> Shards {
    Shards::new(Arc::new(OverCollective {
        rank: collective.rank(),
        ranks: collective.ranks(),
        collective: SendWrapper::new(Rc::clone(collective)),
    }))
}

//! The trainer's data parallelism (DDP, ZeRO-1, ZeRO-2, ZeRO-3) in one process: two ranks as two
//! threads joined by a collective over shared memory, each training on its half of every
//! batch, against one trainer on whole batches; with the state on the host and on the device
//! (flex runs the device path's tensor operations). `sae-cli/tests/distributed.rs` runs the
//! same over MPI, in processes.

use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use sae_core::parity::max_rel_diff;
use sae_core::{HookKind, HookPoint, HostParams, Sae, SaeConfig};
use sae_train::collective::Collective;
use sae_train::config::OptimConfig;
use sae_train::{HookTrainer, Strategy, Trainer};

type AB = Autodiff<Flex>;
const D: usize = 12;
const ROWS: usize = 40;
const STEPS: u64 = 3;

/// Ranks as threads: each collective puts every rank's values in a shared slot, waits for the
/// others, and reads what it needs.
#[derive(Debug)]
struct Threads {
    rank: usize,
    ranks: usize,
    shared: Arc<(Barrier, Mutex<Vec<Vec<f64>>>)>,
}

impl Threads {
    fn group(ranks: usize) -> Vec<Threads> {
        let shared = Arc::new((Barrier::new(ranks), Mutex::new(vec![Vec::new(); ranks])));
        (0..ranks)
            .map(|rank| Threads {
                rank,
                ranks,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Publishes `values`, then returns every rank's, in rank order.
    fn exchange(&self, values: Vec<f64>) -> Vec<Vec<f64>> {
        let (barrier, slots) = &*self.shared;
        slots.lock().unwrap()[self.rank] = values;
        barrier.wait();
        let all = slots.lock().unwrap().clone();
        barrier.wait();
        all
    }

    fn summed(&self, values: &[f32]) -> Vec<f32> {
        let all = self.exchange(values.iter().map(|&v| f64::from(v)).collect());
        (0..values.len())
            .map(|i| all.iter().map(|r| r[i] as f32).sum())
            .collect()
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_reduce(&self, buf: &mut [f32]) -> sae_train::Result<()> {
        let sum = self.summed(buf);
        buf.copy_from_slice(&sum);
        Ok(())
    }

    fn all_reduce_f64(&self, buf: &mut [f64]) -> sae_train::Result<()> {
        let all = self.exchange(buf.to_vec());
        for (i, v) in buf.iter_mut().enumerate() {
            *v = all.iter().map(|r| r[i]).sum();
        }
        Ok(())
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> sae_train::Result<()> {
        let sum = self.summed(send);
        recv.copy_from_slice(&sum[self.rank * recv.len()..][..recv.len()]);
        Ok(())
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> sae_train::Result<()> {
        let all = self.exchange(send.iter().map(|&v| f64::from(v)).collect());
        for (out, v) in recv.iter_mut().zip(all.concat()) {
            *out = v as f32;
        }
        Ok(())
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> sae_train::Result<()> {
        let all = self.exchange(send.iter().map(|&v| f64::from(v)).collect());
        for (out, v) in recv.iter_mut().zip(all.concat()) {
            *out = v as u8;
        }
        Ok(())
    }

    fn gather(&self, send: &[f32], recv: &mut [f32], root: usize) -> sae_train::Result<()> {
        let mut all = vec![0.0; send.len() * self.ranks];
        self.all_gather(send, &mut all)?;
        if self.rank == root {
            recv.copy_from_slice(&all);
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> sae_train::Result<()> {
        let all = self.exchange(buf.iter().map(|&v| f64::from(v)).collect());
        for (out, v) in buf.iter_mut().zip(&all[root]) {
            *out = *v as u8;
        }
        Ok(())
    }

    fn barrier(&self) -> sae_train::Result<()> {
        self.exchange(Vec::new());
        Ok(())
    }

    fn seconds(&self) -> f64 {
        0.0
    }
}

fn batch(step: u64) -> Vec<f32> {
    let device = Default::default();
    <Flex as burn::tensor::backend::Backend>::seed(&device, 100 + step);
    let x = Tensor::<Flex, 2>::random([ROWS, D], Distribution::Normal(0.0, 1.0), &device);
    x.into_data().to_vec::<f32>().unwrap()
}

fn rows(values: &[f32], range: std::ops::Range<usize>) -> Tensor<Flex, 2> {
    let part = values[range.start * D..range.end * D].to_vec();
    Tensor::from_data(
        burn::tensor::TensorData::new(part, [range.len(), D]),
        &Default::default(),
    )
}

/// Trains `STEPS` steps from `start` on rows `part` of every batch; the losses and the final
/// parameters.
fn train(
    start: (&SaeConfig, &HostParams),
    optim: &OptimConfig,
    part: std::ops::Range<usize>,
    on_device: bool,
    parallel: Option<(Threads, Strategy)>,
) -> (Vec<f64>, HostParams) {
    let sae = Sae::<AB>::from_host_params(start.0.clone(), start.1, &Default::default()).unwrap();
    let hook = HookTrainer::new("h".into(), sae)
        .on_device(on_device)
        .unwrap();
    let mut trainer = Trainer::from_parts(vec![hook], 0, false, optim);
    if let Some((threads, strategy)) = parallel {
        let collective: Rc<dyn Collective> = Rc::new(threads);
        trainer = trainer.with_collective(collective, strategy).unwrap();
    }
    let mut losses = Vec::new();
    for step in 0..STEPS {
        trainer
            .accumulate(vec![rows(&batch(step), part.clone())])
            .unwrap();
        losses.push(trainer.finish_step().unwrap()[0].loss);
    }
    // ZeRO-3 keeps a slice of the parameters between steps.
    trainer.gather_params().unwrap();
    (losses, trainer.hooks[0].params().into_owned())
}

#[test]
fn two_ranks_of_every_strategy_train_as_one_trainer_on_whole_batches() {
    let config = SaeConfig {
        aux_k: Some(4),
        dead_tokens_threshold: 30,
        ..SaeConfig::sparsify_topk(3, 50)
    };
    let optim = OptimConfig {
        lr: Some(1e-2),
        grad_clip: Some(0.5),
        ..OptimConfig::default()
    };
    let point = HookPoint::new("h", D, HookKind::Residual);
    let start = Trainer::<AB>::new(&[point], &config, &optim, &Default::default()).unwrap();
    let params = start.hooks[0].params().into_owned();
    for on_device in [false, true] {
        let (losses, whole) = train((&config, &params), &optim, 0..ROWS, on_device, None);
        for strategy in [
            Strategy::Ddp,
            Strategy::Zero1,
            Strategy::Zero2,
            Strategy::Zero3,
        ] {
            let ranks: Vec<_> = std::thread::scope(|scope| {
                let threads = Threads::group(2)
                    .into_iter()
                    .enumerate()
                    .map(|(rank, threads)| {
                        let (config, params, optim) = (&config, &params, &optim);
                        // Uneven parts: 17 and 23 rows.
                        let part = if rank == 0 { 0..17 } else { 17..ROWS };
                        scope.spawn(move || {
                            train(
                                (config, params),
                                optim,
                                part,
                                on_device,
                                Some((threads, strategy)),
                            )
                        })
                    });
                threads
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .collect()
            });
            for (rank, (got, params)) in ranks.iter().enumerate() {
                let what = format!("{strategy:?}, device {on_device}, rank {rank}");
                let err = max_rel_diff(
                    &got.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                    &losses.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                );
                assert!(err < 1e-5, "{what}: losses {got:?} vs {losses:?}");
                for ((name, g), (_, w)) in params.iter().zip(whole.iter()) {
                    let err = max_rel_diff(g, w);
                    assert!(err < 1e-5, "{what}: {name} differs by {err}");
                }
            }
        }
    }
}

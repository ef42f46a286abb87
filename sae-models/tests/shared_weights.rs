//! ZeRO-3's shared weights ([`sae_models::shard`]): ranks (threads here, joined by an exchange
//! over shared memory) that each keep a slice of every weight matrix, and run each projection
//! by every rank's slice in turn, compute what one process with the whole model computes, each
//! on its own tokens.
//!
//! Within 1e-6 relative, not bit for bit: a slice is multiplied on its own, and flex's f32
//! matmul may round a product of fewer rows differently (3e-7 measured on these models).

use std::sync::{Arc, Barrier, Mutex};

use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookedModule, TensorFile};
use sae_models::qwen2_vl::{Qwen2Vl, VlInput};
use sae_models::{DecoderLm, LmInput, LoadScope, ShardExchange, Shards};

mod common;

use common::{B, Record, fixture, ints, max_rel_diff, qwen2_vl_input, values};

/// Ranks as threads: each exchange puts every rank's bytes in a shared slot, waits for the
/// others, and reads what it needs.
struct Threads {
    rank: usize,
    ranks: usize,
    shared: Arc<(Barrier, Mutex<Vec<Vec<u8>>>)>,
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

    /// Publishes `bytes`, then returns every rank's, in rank order.
    fn exchange(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let (barrier, slots) = &*self.shared;
        slots.lock().unwrap()[self.rank] = bytes.to_vec();
        barrier.wait();
        let all = slots.lock().unwrap().clone();
        barrier.wait();
        all
    }
}

impl ShardExchange for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather_bytes(&self, send: &[u8], recv: &mut [u8]) -> Result<(), String> {
        recv.copy_from_slice(&self.exchange(send).concat());
        Ok(())
    }

    fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<(), String> {
        let all = self.exchange(buf);
        buf.copy_from_slice(&all[root]);
        Ok(())
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) -> Result<(), String> {
        let all = self.exchange(bytemuck::cast_slice(send));
        let n = recv.len();
        for (i, out) in recv.iter_mut().enumerate() {
            *out = (all.iter())
                .map(|bytes| {
                    bytemuck::pod_read_unaligned::<f32>(&bytes[(self.rank * n + i) * 4..][..4])
                })
                .sum();
        }
        Ok(())
    }
}

/// Runs `job(rank's scope, rank)` on `ranks` threads, each rank's scope sharing the weights
/// with the others; the results in rank order.
fn on_ranks<T: Send>(ranks: usize, job: impl Fn(LoadScope, usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = Threads::group(ranks)
            .into_iter()
            .map(|threads| {
                let job = &job;
                scope.spawn(move || {
                    let rank = threads.rank;
                    let shards = Shards::new(Arc::new(threads));
                    job(LoadScope::whole(true).sharded(shards), rank)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// Asserts that a rank's logits and hooks are the whole model's, within float rounding.
fn assert_same(logits: &[f32], record: &Record, want: &[f32], want_record: &Record, what: &str) {
    assert_eq!(logits.len(), want.len(), "{what}: logits");
    let err = max_rel_diff(logits, want);
    assert!(err < 1e-6, "{what}: logits differ by {err}");
    let hooks = |r: &Record| r.0.keys().cloned().collect::<Vec<_>>();
    assert_eq!(hooks(record), hooks(want_record), "{what}: hook points");
    for (path, got) in &record.0 {
        assert_eq!(got.len(), want_record.0[path].len(), "{what}: {path}");
        let err = max_rel_diff(got, &want_record.0[path]);
        assert!(err < 1e-6, "{what}: {path} differs by {err}");
    }
}

/// Logits and every hook's output of `model` on `ids`.
fn run(model: &DecoderLm<B>, ids: &[i64]) -> (Vec<f32>, Record) {
    let mut record = Record::default();
    let out = model.forward_hooked(LmInput::from_ids(ids, &Default::default()), &mut record);
    (values(out.logits.unwrap()), record)
}

#[test]
fn ranks_sharing_a_decoder_compute_what_the_whole_decoder_computes() {
    // qwen2_tiny has its own head, llama_tiny's is tied to the embedding; in f32 and in bf16
    // (slices kept in the dtype computed in).
    for (dir, dtype) in [
        ("qwen2_tiny", DType::F32),
        ("llama_tiny", DType::F32),
        ("qwen2_tiny", DType::BF16),
    ] {
        let path = fixture(dir);
        let reference = TensorFile::open(path.join("reference.safetensors")).unwrap();
        let ids = ints(&reference, "inputs.input_ids");
        // Each rank its own tokens, of different lengths.
        let parts = [
            ids.clone(),
            ids[..ids.len() / 2].to_vec(),
            ids[1..].to_vec(),
        ];
        for ranks in [2, 3] {
            let got = on_ranks(ranks, |scope, rank| {
                let model =
                    DecoderLm::<B>::load_scoped(&path, dtype, &scope, &Default::default()).unwrap();
                run(&model, &parts[rank])
            });
            let whole = DecoderLm::<B>::load_as(&path, dtype, &Default::default()).unwrap();
            for (rank, (logits, record)) in got.into_iter().enumerate() {
                let (want, want_record) = run(&whole, &parts[rank]);
                let what = format!("{dir} {dtype:?}, rank {rank} of {ranks}");
                assert_same(&logits, &record, &want, &want_record, &what);
            }
        }
    }
}

#[test]
fn ranks_sharing_a_vision_language_model_compute_what_the_whole_model_computes() {
    // The vision tower is gathered at load (every rank keeps it), the text layers as they run.
    let path = fixture("qwen2_vl_tiny");
    let reference = TensorFile::open(path.join("reference.safetensors")).unwrap();
    let device = Default::default();
    let input = || qwen2_vl_input::<B>(&reference, &device);
    let text = || {
        let ids: Vec<i64> = ints(&reference, "inputs.input_ids")[..5].to_vec();
        VlInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 5]), &device),
            attention_mask: None,
            images: None,
        }
    };
    let forward = |model: &Qwen2Vl<B>, rank: usize| {
        let mut record = Record::default();
        let x = if rank == 0 { input() } else { text() };
        let out = model.forward_hooked(x, &mut record).unwrap();
        (values(out.logits.unwrap()), record)
    };
    let got = on_ranks(2, |scope, rank| {
        let model = Qwen2Vl::<B>::load_scoped(&path, DType::F32, &scope, &Default::default());
        forward(&model.unwrap(), rank)
    });
    let whole = Qwen2Vl::<B>::load_as(&path, DType::F32, &device).unwrap();
    for (rank, (logits, record)) in got.into_iter().enumerate() {
        let (want, want_record) = forward(&whole, rank);
        assert_same(
            &logits,
            &record,
            &want,
            &want_record,
            &format!("rank {rank}"),
        );
    }
}

//! A training run end to end: load the frozen model and the data, train the SAEs step by step
//! (metrics to `metrics.jsonl` and TensorBoard, a progress bar), checkpoint every `save_every`
//! steps and at the end, and write the trained SAEs and the loss curves to the run folder.
//! [`resume`] continues a run from its last checkpoint exactly.
//!
//! A data-parallel run is one process per device, each calling [`train`] (or [`resume`]) with
//! the job's [`Collective`]: every rank reads its part of each batch and trains the same SAEs
//! ([`crate::trainer`]); rank 0 alone writes the run folder.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use sae_activations::{
    TokenFilter, dataset_scope, hook_rows, lm_input, sequence_batching, vision_input,
};
use sae_core::{FolderLock, HookPoint, HookedModule, Recorder, SaeAutodiffBackend, SaeConfig};
use sae_data::{Batch, Dataset, Kind, Loader, LoaderCursor, StreamConfig};
use sae_models::{AnyModel, Tokenizer};

use crate::adamw::Moments;
use crate::checkpoint::{self, State};
use crate::collective::{Collective, model_shards, per_rank};
use crate::config::{Strategy, TrainConfig};
use crate::error::{Result, TrainError, io};
use crate::interrupt::{self, Signal};
use crate::log::metrics::{METRICS_FILE, MetricsLog, StepRecord};
use crate::log::plot::{Series, write_svg};
use crate::log::tensorboard::EventWriter;
use crate::trainer::Trainer;

/// The run's saved configuration.
pub const CONFIG_FILE: &str = "config.toml";
/// The trained SAEs (PEFT adapter layout), written when the run reaches its last step.
pub const SAE_DIR: &str = "sae";
/// Loss and FVU curves.
pub const CURVES_FILE: &str = "curves.svg";

/// The loader a run of `config` reads `dataset` with (its batching, order and batch size) for
/// a model of `model_context` positions, from the start or from `cursor`: the batches the run
/// trains on, in order. With `shard = (rank, ranks)`, rank `rank`'s part of each batch of
/// `ranks` devices.
pub fn data_loader<'a>(
    config: &TrainConfig,
    dataset: &'a Dataset,
    tokenizer: &'a Tokenizer,
    model_context: usize,
    cursor: Option<LoaderCursor>,
    (rank, ranks): (usize, usize),
) -> Result<Loader<'a>> {
    let data = &config.data;
    let batching = sequence_batching(
        dataset.kind(),
        data.context,
        data.max_len,
        data.truncate,
        model_context,
    )?;
    let stream = StreamConfig {
        seed: config.train.seed,
        shuffle: data.shuffle,
        epochs: None,
        ..StreamConfig::default()
    };
    let loader = Loader::new(
        dataset,
        tokenizer,
        stream,
        batching,
        config.train.batch_size * ranks,
        cursor,
    )?;
    Ok(loader.with_shard(rank, ranks)?)
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Steps done.
    pub step: u64,
    /// The run reached `train.steps` (else it stopped at `stop_at`).
    pub finished: bool,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// The last step's metrics.
    pub last: Option<StepRecord>,
    /// The signal that stopped the run early (after a checkpoint), see [`crate::interrupt`].
    pub interrupted: Option<Signal>,
    /// Each rank's peak resident memory in MiB (Linux; empty elsewhere).
    pub peak_mib: Vec<f64>,
}

/// Starts a new run in `config.out` on the ranks of `collective` ([`Single`] for one device);
/// refuses a folder that already holds one, or that another process writes. The saved
/// configuration names the model and data by absolute paths, so the run resumes from any
/// working directory.
///
/// [`Single`]: crate::collective::Single
pub fn train<B: SaeAutodiffBackend>(
    mut config: TrainConfig,
    device: &B::Device,
    collective: Rc<dyn Collective>,
) -> Result<RunSummary> {
    let run_dir = config.out.clone();
    let writer = collective.rank() == 0;
    let _lock = writer.then(|| FolderLock::acquire(&run_dir)).transpose()?;
    let saved = run_dir.join(CONFIG_FILE);
    if writer && saved.exists() {
        return Err(TrainError::BadCheckpoint {
            path: run_dir,
            message: "already holds a run; continue it with --resume, or choose another --out"
                .into(),
        });
    }
    config.make_paths_absolute().map_err(io(&run_dir))?;
    // Everything that can refuse the run (model, hook points, data, SAE settings) does so
    // before the folder is written: a failed start leaves nothing that blocks the retry.
    let toml = config.to_toml();
    let session = Session::<B>::open(config, None, device, collective)?;
    if writer {
        std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
        sae_core::tensor_file::write_atomic(&saved, toml.as_bytes())?;
    }
    session.run()
}

/// Continues the run in `run_dir` from its last checkpoint with its saved configuration, to
/// the end or to `stop_at` (the saved run's own `stop_at` applied to its first part only).
/// Refuses a run that another process is training. On another number of ranks than it was
/// trained on, the run keeps its global batch (`train.batch_size` x devices): each rank's
/// batch becomes the global batch over the new number of ranks.
pub fn resume<B: SaeAutodiffBackend>(
    run_dir: &Path,
    stop_at: Option<u64>,
    device: &B::Device,
    collective: Rc<dyn Collective>,
) -> Result<RunSummary> {
    let saved = run_dir.join(CONFIG_FILE);
    if !saved.is_file() {
        return Err(TrainError::BadCheckpoint {
            path: run_dir.to_path_buf(),
            message: format!("is not a run folder (no {CONFIG_FILE})"),
        });
    }
    let writer = collective.rank() == 0;
    let _lock = writer.then(|| FolderLock::acquire(run_dir)).transpose()?;
    let mut config = TrainConfig::load(&saved, &[])?;
    config.out = run_dir.to_path_buf();
    config.checkpoint.stop_at = stop_at;
    let ranks = collective.ranks();
    if config.parallel.devices != ranks {
        let parallel = &config.parallel;
        let global = config.train.batch_size * parallel.devices;
        if !global.is_multiple_of(ranks) {
            return Err(TrainError::Invalid(format!(
                "the run was trained on {} devices with a global batch of {global} sequences, which {ranks} devices cannot share equally",
                parallel.devices
            )));
        }
        tracing::info!(
            "resuming a run of {} devices on {ranks}: {} sequences per device",
            parallel.devices,
            global / ranks
        );
        config.train.batch_size = global / ranks;
        config.parallel.devices = ranks;
        if writer {
            sae_core::tensor_file::write_atomic(&saved, config.to_toml().as_bytes())?;
        }
    }
    if writer {
        checkpoint::remove_partial(run_dir)?;
    }
    let latest = checkpoint::latest(run_dir)?;
    Session::<B>::open(config, latest, device, collective)?.run()
}

/// Everything a run holds while it trains.
struct Session<B: AutodiffBackend> {
    config: TrainConfig,
    model: AnyModel<B::InnerBackend>,
    dataset: Dataset,
    points: Vec<HookPoint>,
    trainer: Trainer<B>,
    cursor: Option<LoaderCursor>,
    tokens: u64,
    elapsed_s: f64,
    device: B::Device,
    /// Rank 0 writes the run folder.
    writer: bool,
}

impl<B: SaeAutodiffBackend> Session<B> {
    /// Loads the model and data, and the trainer (fresh, or from `checkpoint`).
    fn open(
        config: TrainConfig,
        checkpoint: Option<PathBuf>,
        device: &B::Device,
        collective: Rc<dyn Collective>,
    ) -> Result<Self> {
        let (ranks, parallel) = (collective.ranks(), &config.parallel);
        if parallel.devices != ranks {
            return Err(TrainError::Invalid(format!(
                "parallel.devices = {}, but the job has {ranks} processes: one process per device (sae train --devices N starts them)",
                parallel.devices
            )));
        }
        let name = &config.model.name;
        let points =
            (config.target_modules).resolve(&AnyModel::<B::InnerBackend>::hook_points_of(name)?)?;
        let dataset = Dataset::open(&config.data.path)?;
        // The pass stops after the deepest target: nothing after it is loaded, nor the vision
        // tower for a dataset of texts.
        let paths = points.iter().map(|p| p.path.as_str());
        let scope = dataset_scope::<B::InnerBackend>(name, paths, &dataset)?;
        // ZeRO-3: the ranks share the model's large weights, each layer gathered as it runs.
        let scope = if ranks > 1 && parallel.strategy == Strategy::Zero3 {
            scope.sharded(model_shards(&collective))
        } else {
            scope
        };
        tracing::info!(through = scope.last(), "loading model {name}");
        let model = AnyModel::<B::InnerBackend>::load_scoped(
            name,
            config.model.dtype.into(),
            &scope,
            device,
        )?;
        // Refuses contexts longer than the model's now, before any work.
        let data = &config.data;
        sequence_batching(
            dataset.kind(),
            data.context,
            data.max_len,
            data.truncate,
            model.context(),
        )?;
        check_token_filter(&config, &dataset, model.tokenizer())?;
        let (trainer, cursor, tokens, elapsed_s) = match &checkpoint {
            Some(dir) => {
                tracing::info!("resuming from {}", dir.display());
                let (trainer, state) = checkpoint::load::<B>(dir, &config.train, device)?;
                let paths: Vec<&str> = points.iter().map(|p| p.path.as_str()).collect();
                let saved: Vec<&str> = state.hooks.iter().map(|h| h.path.as_str()).collect();
                if paths != saved {
                    return Err(TrainError::BadCheckpoint {
                        path: dir.clone(),
                        message: format!(
                            "holds SAEs for {saved:?}, but the configuration targets {paths:?}"
                        ),
                    });
                }
                for (hook, point) in state.hooks.iter().zip(&points) {
                    let edited = changed_keys(&hook.config, &config.sae.sized_for(point));
                    if !edited.is_empty() {
                        return Err(TrainError::BadCheckpoint {
                            path: dir.clone(),
                            message: format!(
                                "holds SAEs trained with other settings than config.toml's: {} changed since; a run keeps its SAE settings (start a new run to change them)",
                                edited.join(", ")
                            ),
                        });
                    }
                }
                for (hook, point) in trainer.hooks.iter().zip(&points) {
                    let d_in = hook.d_in();
                    if d_in != point.width {
                        return Err(TrainError::BadCheckpoint {
                            path: dir.clone(),
                            message: format!(
                                "its SAE for {} reads {d_in} inputs, but the model's {} is {} wide: is this the run's model?",
                                point.path, point.path, point.width
                            ),
                        });
                    }
                }
                (trainer, Some(state.cursor), state.tokens, state.elapsed_s)
            }
            None => (
                Trainer::new(&points, &config.sae, &config.train, device)?,
                None,
                0,
                0.0,
            ),
        };
        let writer = collective.rank() == 0;
        let trainer = trainer.with_collective(collective, config.parallel.strategy)?;
        Ok(Session {
            config,
            model,
            dataset,
            points,
            trainer,
            cursor,
            tokens,
            elapsed_s,
            device: device.clone(),
            writer,
        })
    }

    /// Trains to the end (or `stop_at`).
    fn run(mut self) -> Result<RunSummary> {
        let run_dir = self.config.out.clone();
        let total = self.config.train.steps;
        let end = self.config.checkpoint.stop_at.unwrap_or(total).min(total);
        if self.trainer.step >= end {
            tracing::warn!(
                "the run is already at step {} (this part ends at step {end}): nothing to train",
                self.trainer.step
            );
        }
        let mut metrics = if self.writer {
            Some(MetricsLog::open(&run_dir, self.trainer.step)?)
        } else {
            None
        };
        let board_dir = run_dir.join("tensorboard");
        let mut board = if self.config.log.tensorboard && self.writer {
            let mut board = EventWriter::create(&board_dir).map_err(io(&board_dir))?;
            // A resumed run does again the steps after its checkpoint: TensorBoard drops what
            // earlier event files logged of them.
            (board.add_session_start(self.trainer.step as i64 + 1)).map_err(io(&board_dir))?;
            Some(board)
        } else {
            None
        };
        let filter = self.token_filter();
        let collective = self.trainer.collective();
        let mut loader = data_loader(
            &self.config,
            &self.dataset,
            self.model.tokenizer(),
            self.model.context(),
            self.cursor.take(),
            (collective.rank(), collective.ranks()),
        )?;
        if let Some(images) = self.model.image_tokens() {
            loader = loader.with_image_tokens(images);
        }
        let paths: Vec<String> = self.points.iter().map(|p| p.path.clone()).collect();
        let bar = progress_bar(
            self.config.log.progress && self.writer,
            self.trainer.step,
            end,
        );
        let mut last = None;
        let mut newest = checkpoint::latest(&run_dir)?;
        let mut interrupted = self.stop_requested()?;
        while self.trainer.step < end && interrupted.is_none() {
            let start = Instant::now();
            let in_collectives = self.trainer.collective().seconds();
            let mut rows = 0;
            for _ in 0..self.config.train.grad_acc_steps {
                let batch = loader
                    .next_batch()?
                    .ok_or_else(|| TrainError::NoData(self.config.data.path.clone()))?;
                let acts = self.activations(&batch, &paths, &filter)?;
                rows += acts.iter().map(|a| a.dims()[0]).sum::<usize>();
                self.trainer.accumulate(acts)?;
            }
            let mut all_rows = [rows as f64];
            self.trainer.collective().all_reduce_f64(&mut all_rows)?;
            if all_rows[0] == 0.0 {
                return Err(TrainError::Invalid(format!(
                    "step {}: every token of the batch is left out of the loss (train.skip_first_tokens, exclude_tokens, exclude_special_tokens): a step must see tokens",
                    self.trainer.step + 1
                )));
            }
            let per_hook = self.trainer.finish_step()?;
            let seconds = start.elapsed().as_secs_f64();
            self.elapsed_s += seconds;
            let step = self.trainer.step;
            let mut record = StepRecord::new(step, &paths, per_hook, seconds);
            record.elapsed_s = self.elapsed_s;
            let collective = self.trainer.collective();
            if collective.ranks() > 1 {
                record.collective_s = Some(collective.seconds() - in_collectives);
            }
            self.tokens += record.metrics.tokens;
            if let Some(metrics) = &mut metrics {
                metrics.append(&record)?;
            }
            if let Some(board) = &mut board {
                let scalars = record.scalars();
                let tagged: Vec<(&str, f32)> =
                    scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
                board
                    .add_scalars(step as i64, &tagged)
                    .map_err(io(&board_dir))?;
            }
            bar.set_message(format!(
                "loss {:.4}  fvu {:.4}  l0 {:.1}  dead {:.1}%  {:.0} tok/s",
                record.metrics.loss,
                record.metrics.fvu,
                record.metrics.l0,
                record.metrics.dead_pct,
                record.tokens_per_s
            ));
            bar.inc(1);
            let save_every = self.config.checkpoint.save_every;
            interrupted = self.stop_requested()?;
            if step == end
                || (save_every > 0 && step.is_multiple_of(save_every))
                || interrupted.is_some()
            {
                // Every rank takes part (ZeRO gathers the moments, ZeRO-3 the parameters
                // too); rank 0 writes.
                self.trainer.gather_params()?;
                let moments = self.trainer.whole_moments()?;
                if self.writer {
                    let dir = self.save_checkpoint(&run_dir, &loader, moments)?;
                    bar.suspend(|| tracing::info!("step {step}: checkpoint {}", dir.display()));
                    newest = Some(dir);
                    draw_curves(&run_dir)?;
                }
                self.trainer.release_params();
            }
            last = Some(record);
            if interrupted.is_some() {
                break;
            }
        }
        bar.finish_and_clear();
        let finished = self.trainer.step >= total;
        if finished {
            // ZeRO-3: the whole SAEs, from every rank's slice (every rank takes part).
            self.trainer.gather_params()?;
        }
        if finished && self.writer {
            let sae_dir = run_dir.join(SAE_DIR);
            sae_core::folder::write_dir_atomically(&sae_dir, |tmp| {
                checkpoint::save_adapter(&self.trainer, &self.config, tmp)
            })?;
            tracing::info!("trained SAEs in {}", sae_dir.display());
            // `sae/` is a PEFT adapter: say which of its SAEs SAE Made Easy could not attach.
            for warning in self.points.iter().filter_map(sae_core::formats::not_linear) {
                tracing::warn!("{warning} (`sae/` holds its SAE all the same)");
            }
        }
        Ok(RunSummary {
            run_dir,
            step: self.trainer.step,
            finished,
            checkpoint: newest,
            last,
            interrupted,
            peak_mib: self.peak_mib()?,
        })
    }

    /// Every rank's peak resident memory, in MiB (empty off Linux).
    fn peak_mib(&self) -> Result<Vec<f64>> {
        let collective = self.trainer.collective();
        match sae_core::memory::peak_resident_mib() {
            Some(mine) => per_rank(collective, mine),
            None => Ok(Vec::new()),
        }
    }

    /// The stop signal that any rank received (all ranks stop after the same step).
    fn stop_requested(&self) -> Result<Option<interrupt::Signal>> {
        let mine = interrupt::requested().map_or(0.0, |s| f64::from(s.0));
        // Any rank's signal; the largest number when they differ.
        let signal = (per_rank(self.trainer.collective(), mine)?.into_iter()).fold(0.0, f64::max);
        Ok((signal > 0.0).then_some(interrupt::Signal(signal as i32)))
    }

    /// Writes the checkpoint of the step just done, `loader` being where the data is.
    fn save_checkpoint(
        &self,
        run_dir: &Path,
        loader: &Loader,
        moments: Vec<Option<Moments>>,
    ) -> Result<PathBuf> {
        let state = State {
            step: self.trainer.step,
            initialised: self.trainer.initialised,
            tokens: self.tokens,
            elapsed_s: self.elapsed_s,
            cursor: loader.cursor(),
            hooks: checkpoint::hook_states(&self.trainer),
        };
        checkpoint::save(run_dir, &self.trainer, moments, &state, &self.config)
    }

    /// Which tokens the loss sees.
    fn token_filter(&self) -> TokenFilter {
        let t = &self.config.train;
        TokenFilter::new(
            self.model.tokenizer(),
            t.exclude_special_tokens,
            &t.exclude_tokens,
            t.skip_first_tokens,
        )
    }

    /// The frozen model's activations at every hook point: for the language model's, the
    /// tokens that count; for the vision tower's, every patch.
    fn activations(
        &self,
        batch: &Batch,
        paths: &[String],
        filter: &TokenFilter,
    ) -> Result<Vec<Tensor<B::InnerBackend, 2>>> {
        let mut recorder = Recorder::paths(paths, true);
        match &self.model {
            AnyModel::Text(lm) => {
                lm.model
                    .forward_hooked(lm_input(batch, &self.device), &mut recorder);
            }
            AnyModel::Vision(vlm) => {
                vlm.model
                    .forward_hooked(vision_input(batch, &self.device), &mut recorder)?;
            }
        }
        let tokens = filter.select(&batch.input_ids, &batch.attention_mask, batch.seq_len);
        recorder
            .outputs(paths)
            .into_iter()
            .zip(&self.points)
            .map(|(out, point)| {
                let x = out.ok_or_else(|| {
                    TrainError::Unsupported(format!(
                        "the model never reached hook point {}",
                        point.path
                    ))
                })?;
                Ok(hook_rows(x, point, &tokens))
            })
            .collect()
    }
}

/// Refuses loss filters that leave no token, or name tokens the model does not have.
fn check_token_filter(
    config: &TrainConfig,
    dataset: &Dataset,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let t = &config.train;
    if let Some(&id) = t
        .exclude_tokens
        .iter()
        .find(|&&id| tokenizer.token(id).is_none())
    {
        return Err(TrainError::Invalid(format!(
            "train.exclude_tokens: token id {id} is not in the model's vocabulary"
        )));
    }
    let longest = match dataset.kind() {
        Kind::Text => config.data.context,
        Kind::Chat => config.data.max_len,
    };
    if t.skip_first_tokens >= longest {
        return Err(TrainError::Invalid(format!(
            "train.skip_first_tokens = {} leaves no token of sequences of at most {longest}: nothing would be trained",
            t.skip_first_tokens
        )));
    }
    Ok(())
}

/// The `sae.*` keys whose values differ between two SAE configurations.
fn changed_keys(saved: &SaeConfig, now: &SaeConfig) -> Vec<String> {
    let as_map = |c: &SaeConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (saved, now) = (as_map(saved), as_map(now));
    (saved.iter())
        .filter(|(key, value)| now.get(*key) != Some(*value))
        .map(|(key, value)| {
            let now = now.get(key).map_or("nothing".into(), |v| v.to_string());
            format!("sae.{key} (was {value}, now {now})")
        })
        .collect()
}

/// The console progress bar (hidden when `show` is off or stderr is not a terminal).
fn progress_bar(show: bool, done: u64, end: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(end);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_position(done);
    bar
}

/// Draws the loss and FVU curves of `metrics.jsonl` to `curves.svg`.
fn draw_curves(run_dir: &Path) -> Result<()> {
    let metrics = run_dir.join(METRICS_FILE);
    let [loss, fvu]: [Vec<(f64, f64)>; 2] =
        crate::log::metrics::series(&metrics, &["loss", "fvu"])?
            .try_into()
            .expect("one series per field");
    let path = run_dir.join(CURVES_FILE);
    write_svg(
        &path,
        &[
            (
                "loss",
                vec![Series {
                    name: "loss",
                    points: &loss,
                }],
            ),
            (
                "FVU",
                vec![Series {
                    name: "fvu",
                    points: &fvu,
                }],
            ),
        ],
    )
    .map_err(io(&path))
}

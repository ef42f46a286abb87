//! `sae train` as scripts call it: a run's outputs, exact resume (after `--stop-at` and after
//! SIGKILL), and bad input that must stop a run cleanly without losing what it wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{dataset, fails, fixture, losses, losses_or_empty, ok, run_args, s, spawn_run, strs};

fn state_bytes(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(
        run.join("checkpoints")
            .join(format!("step-{step:08}"))
            .join("state.safetensors"),
    )
    .unwrap()
}

#[test]
fn a_run_writes_metrics_checkpoints_logs_and_the_sae() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    let run = dir.path().join("run");
    let out = common::sae_with(&strs(&run_args(&model, &data, &run, "6")), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Neither hook point is a linear layer: SAE Made Easy could not load `sae/`, and it says so.
    for path in ["model.layers.0.mlp", "model.layers.1"] {
        assert!(
            stderr.contains(&format!("{path} is not a linear layer")),
            "{stderr}"
        );
    }
    assert_eq!(summary["step"], 6);
    assert_eq!(summary["finished"], true);

    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        for key in [
            "loss",
            "fvu",
            "l0",
            "dead_pct",
            "auxk",
            "lr",
            "grad_norm",
            "tokens_per_s",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
        // k = 4 latents per token, and 64 tokens per step for each of the two SAEs.
        assert!(r["l0"].as_f64().unwrap() <= 4.0);
        assert_eq!(r["tokens"], 64);
        assert_eq!(r["hooks"].as_object().unwrap().len(), 2);
    }

    // The trained SAEs load as a PEFT adapter with both hook points.
    let sae = sae_core::formats::load(&run.join("sae")).unwrap();
    assert_eq!(sae.layout, sae_core::Layout::Peft);
    let paths: Vec<&String> = sae.saes.keys().collect();
    assert_eq!(paths, ["model.layers.0.mlp", "model.layers.1"]);
    assert!(sae.saes.values().all(|s| s.num_latents() == 256));

    // They record the model they were trained on, and say so when loaded onto another one.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("sae/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let recorded = config["base_model_name_or_path"].as_str().unwrap();
    assert_eq!(
        Path::new(recorded).canonicalize().unwrap(),
        model.canonicalize().unwrap()
    );
    let copy = dir.path().join("copy");
    copy_tree(&model, &copy);
    for (onto, warned) in [(&model, false), (&copy, true)] {
        let out = common::sae_with(
            &[
                "activations",
                "--model",
                s(onto),
                "--sae",
                s(&run.join("sae")),
                "--text",
                "hi",
                "--out",
                s(&dir.path().join("a.safetensors")),
            ],
            &[],
        );
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains(&format!(
                "were trained on {recorded}, not on {}",
                copy.display()
            )),
            warned,
            "{stderr}"
        );
    }

    // Checkpoints at 5 and at the end; TensorBoard holds one loss per step; the curves exist.
    assert!(
        run.join("checkpoints/step-00000005/adapter/adapter_config.json")
            .is_file()
    );
    assert!(run.join("checkpoints/step-00000006/state.json").is_file());
    let board = std::fs::read_dir(run.join("tensorboard"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let scalars = sae_train::log::tensorboard::read_scalars(&board).unwrap();
    let logged: Vec<(i64, f32)> = scalars
        .iter()
        .filter(|(_, tag, _)| tag == "train/loss")
        .map(|(step, _, v)| (*step, *v))
        .collect();
    let expected: Vec<(i64, f32)> = losses(&run)
        .iter()
        .map(|&(step, loss)| (step as i64, loss as f32))
        .collect();
    assert_eq!(logged, expected);
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));

    // A second run into the same folder is refused and leaves it as it was.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let stderr = fails(&strs(&run_args(&model, &data, &run, "6")));
    assert!(stderr.contains("already holds a run"), "{stderr}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
}

#[test]
fn resumed_runs_equal_the_uninterrupted_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    // A long run (so that SIGKILL finds it training), compared over its first 30 steps.
    let steps = "20000";
    let reference = dir.path().join("reference");
    ok(&strs(
        &[
            run_args(&model, &data, &reference, steps),
            vec!["--stop-at".into(), "30".into()],
        ]
        .concat(),
    ));
    let expected = losses(&reference);
    assert_eq!(expected.len(), 30);

    // Stopped at 13 (a checkpoint between the save points), then resumed to 30. Started with
    // the data and the run folder relative to its working directory, resumed from another.
    let chunked = dir.path().join("chunked");
    let relative = [
        run_args(&model, Path::new("data"), Path::new("chunked"), steps),
        vec!["--stop-at".into(), "13".into()],
    ]
    .concat();
    in_dir(dir.path(), &strs(&relative));
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    in_dir(
        &elsewhere,
        &["train", "--resume", "../chunked", "--stop-at", "30"],
    );
    assert_eq!(losses(&chunked), expected);
    assert_eq!(state_bytes(&chunked, 30), state_bytes(&reference, 30));

    // Terminated with SIGTERM once past step 12: the step in progress ends, a checkpoint is
    // written, exit status 143 and a line saying how to resume; the resumed run is exact.
    let terminated = dir.path().join("terminated");
    let child = spawn_run(&run_args(&model, &data, &terminated, steps), 12);
    let (code, stderr) = terminate(child);
    assert_eq!(code, Some(143), "{stderr}");
    let done = losses(&terminated).len() as u64;
    assert!(
        stderr.contains(&format!(
            "stopped by SIGTERM after step {done}, with a checkpoint; continue with: sae train --resume {}",
            terminated.display()
        )),
        "{stderr}"
    );
    assert!((12..30).contains(&done), "stopped at {done}");
    let saved = terminated.join(format!("checkpoints/step-{done:08}/state.json"));
    assert!(saved.is_file(), "no checkpoint at step {done}");
    ok(&["train", "--resume", s(&terminated), "--stop-at", "30"]);
    assert_eq!(losses(&terminated), expected);

    // Killed with SIGKILL once it is past step 12, then resumed from its last checkpoint.
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(strs(&run_args(&model, &data, &killed, steps)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while losses_or_empty(&killed).len() < 12 {
        assert!(Instant::now() < deadline, "the run never reached step 12");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    ok(&["train", "--resume", s(&killed), "--stop-at", "30"]);
    assert_eq!(losses(&killed), expected);
    assert_eq!(state_bytes(&killed, 30), state_bytes(&reference, 30));
    // Its TensorBoard logs show each step once, the redone steps replacing the killed run's:
    // as our reader sees them, and as TensorBoard's own does when a Python with it is named.
    let board = killed.join("tensorboard");
    let logged: Vec<(i64, f32)> = sae_train::log::tensorboard::read_run(&board)
        .unwrap()
        .into_iter()
        .filter(|(_, tag, _)| tag == "train/loss")
        .map(|(step, _, v)| (step, v))
        .collect();
    let metrics: Vec<(i64, f32)> = expected
        .iter()
        .map(|&(s, l)| (s as i64, l as f32))
        .collect();
    assert_eq!(logged, metrics);
    if let Ok(python) = std::env::var("SAE_TEST_PYTHON") {
        let script = "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\nacc = EventAccumulator(sys.argv[1])\nacc.Reload()\nprint(' '.join(str(e.step) for e in acc.Scalars('train/loss')))";
        let out = Command::new(python)
            .args(["-c", script, s(&board)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let steps: Vec<i64> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(steps, (1..=30).collect::<Vec<i64>>());
    }
}

/// Runs `sae args...` in `dir`, which must succeed.
fn in_dir(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sae {args:?} failed: {stderr}");
}

/// Sends SIGTERM to `child`; its exit code and stderr.
fn terminate(child: std::process::Child) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Several devices need the `mpi` feature: a build without it says which feature and which
// packages, before anything is written.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_devices_without_the_mpi_feature_say_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    let run = dir.path().join("run");
    let mut args = run_args(&model, &data, &run, "2");
    args.extend(["--devices".into(), "2".into()]);
    let stderr = fails(&strs(&args));
    assert!(
        stderr.contains("`mpi` feature") && stderr.contains("openmpi-bin"),
        "{stderr}"
    );
    assert!(!run.exists());
}

// A run folder belongs to one run: while one trains, a second `sae train` into it and a
// `--resume` of it are refused by name, and the run goes on undisturbed.
#[test]
fn a_second_writer_of_a_run_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    let run = dir.path().join("run");
    let child = spawn_run(&run_args(&model, &data, &run, "20000"), 2);
    let in_use = format!("{} is in use by process {}", run.display(), child.id());
    let stderr = fails(&strs(&run_args(&model, &data, &run, "20000")));
    assert!(stderr.contains(&in_use), "{stderr}");
    let stderr = fails(&["train", "--resume", s(&run)]);
    assert!(stderr.contains(&in_use), "{stderr}");
    let before = losses(&run).len();
    let (code, stderr) = terminate(child);
    assert_eq!(code, Some(143), "the run was disturbed: {stderr}");
    assert!(losses(&run).len() > before, "the run stopped training");
}

#[test]
fn unknown_keys_and_impossible_values_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "target_modules = [\"model.layers.1\"]\n[model]\nname = \"m\"\n[data]\npath = \"d\"\n[train]\nlearning_rate = 0.1\n",
    )
    .unwrap();
    let stderr = fails(&["train", "--config", s(&config)]);
    assert!(stderr.contains("unknown field `learning_rate`"), "{stderr}");
    let stderr = fails(&["train", "--config", s(&config), "--set", "sae.kk=3"]);
    assert!(stderr.contains("kk"), "{stderr}");
    let stderr = fails(&["train", "--model", "m", "--data", "d"]);
    assert!(
        stderr.contains("missing field `target_modules`"),
        "{stderr}"
    );
    // Values that cannot work: a clip of 0 or below would stop or reverse the gradient; a
    // wrong type names its key; a count beyond TOML's integers is not wrapped around.
    for (flags, message) in [
        (["--steps", "0"], "train.steps must be at least 1"),
        (["--stop-at", "0"], "checkpoint.stop_at must be at least 1"),
        (
            ["--set", "train.grad_clip=0"],
            "train.grad_clip must be a positive number",
        ),
        (
            ["--set", "train.grad_clip=-1"],
            "train.grad_clip must be a positive number",
        ),
        (
            ["--set", "sae.k=\"4\""],
            "sae.k: invalid type: string \"4\", expected usize",
        ),
        (
            ["--steps", "18446744073709551615"],
            "train.steps = 18446744073709551615 is too large",
        ),
        (
            ["--set", "parallel.timeout_s=0"],
            "parallel.timeout_s must be a positive number",
        ),
        (["--devices", "0"], "parallel.devices must be at least 1"),
    ] {
        let mut args = vec!["train", "--model", "m", "--data", "d", "--hook", "x"];
        args.extend(flags);
        let stderr = fails(&args);
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}

#[test]
fn a_refused_start_leaves_nothing_and_the_retry_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    let out = dir.path().join("run");
    let with = |flag: &str, value: &str| {
        let mut args = run_args(&model, &data, &out, "2");
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
        args
    };
    // The fixture's context is 2048 positions (config.json's max_position_embeddings).
    let stderr = fails(&strs(&with("--context", "4096")));
    assert!(
        stderr.contains("contexts of 4096 tokens do not fit the model, whose context is 2048"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run writes nothing");
    let stderr = fails(&strs(&with("--k", "300")));
    assert!(stderr.contains("k = 300 must be in 1..=256"), "{stderr}");
    assert!(!out.exists(), "a refused run writes nothing");
    // 10^10 latents over 64 inputs: terabytes of training state, refused before allocating.
    let stderr = fails(&strs(&with("--num-latents", "10000000000")));
    assert!(
        stderr.contains("the SAEs' training state needs at least 38147.0 GiB"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run writes nothing");
    // Loss filters that leave nothing to train on, or name tokens the model does not have.
    let set = |pair: &str| [with("--steps", "2"), vec!["--set".into(), pair.into()]].concat();
    let stderr = fails(&strs(&set("train.skip_first_tokens=100000")));
    assert!(
        stderr.contains(
            "train.skip_first_tokens = 100000 leaves no token of sequences of at most 32"
        ),
        "{stderr}"
    );
    let stderr = fails(&strs(&set("train.exclude_tokens=[5, 1000000000]")));
    assert!(
        stderr
            .contains("train.exclude_tokens: token id 1000000000 is not in the model's vocabulary"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run writes nothing");
    ok(&strs(&run_args(&model, &data, &out, "2")));
    assert_eq!(losses(&out).len(), 2);

    // Evaluation settings that cannot make a batch are refused by name.
    let sae = out.join("sae");
    for (flag, value, message) in [
        ("--batches", "0", "an evaluation needs at least 1 batch"),
        ("--batch-size", "0", "0 sequences of at most 32 tokens"),
        ("--context", "0", "2 sequences of at most 0 tokens"),
        ("--context", "4096", "whose context is 2048 positions"),
    ] {
        let mut args = vec![
            "eval",
            "--model",
            s(&model),
            "--sae",
            s(&sae),
            "--data",
            s(&data),
        ];
        args.extend(["--batch-size", "2", "--context", "32"]);
        let at = args.iter().position(|a| *a == flag).unwrap_or(args.len());
        if at < args.len() {
            args[at + 1] = value;
        } else {
            args.extend([flag, value]);
        }
        let stderr = fails(&args);
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
    }

    // The run's SAE settings are fixed: an edited sae.k in config.toml is refused, not ignored.
    let config = out.join("config.toml");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("k = 4\n"), "{saved}");
    std::fs::write(&config, saved.replace("k = 4\n", "k = 8\n")).unwrap();
    let stderr = fails(&["train", "--resume", s(&out), "--stop-at", "2"]);
    assert!(stderr.contains("sae.k (was 4, now 8)"), "{stderr}");
    std::fs::write(&config, saved).unwrap();

    // Weights that are not finite numbers are refused at load: in the trained SAEs, and in a
    // checkpoint's training state.
    let adapter = out.join("sae/adapter_model.safetensors");
    let name = "base_model.model.model.layers.1.sae_W_dec";
    poison(&adapter, name);
    let stderr = fails(&["inspect", s(&out.join("sae"))]);
    assert!(
        stderr
            .contains("(the w_dec of the SAE for model.layers.1) contains NaN or infinite values"),
        "{stderr}"
    );
    poison(
        &out.join("checkpoints/step-00000002/state.safetensors"),
        "model.layers.1.w_dec",
    );
    let stderr = fails(&["train", "--resume", s(&out), "--stop-at", "2"]);
    assert!(
        stderr.contains("model.layers.1.w_dec holds NaN or infinite values"),
        "{stderr}"
    );
}

#[test]
fn non_finite_activations_stop_the_run_and_keep_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    // A copy of the tiny model whose weights go bad between the two parts of the run.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let source = fixture("sae-models", "qwen2_tiny");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let run = dir.path().join("run");
    ok(&strs(
        &[
            run_args(&model, &data, &run, "20"),
            vec!["--stop-at".into(), "5".into()],
        ]
        .concat(),
    ));
    poison(
        &model.join("model.safetensors"),
        "model.layers.0.mlp.down_proj.weight",
    );
    let checkpoint =
        std::fs::read(run.join("checkpoints/step-00000005/state.safetensors")).unwrap();
    let stderr = fails(&["train", "--resume", s(&run)]);
    assert!(
        stderr.contains("step 6: the activations at model.layers.0.mlp is not finite"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoints/step-00000005/state.safetensors")).unwrap(),
        checkpoint
    );
    assert_eq!(losses(&run).len(), 5);

    // A learning rate that makes the SAE blow up is named as such, not as bad activations.
    let diverged = dir.path().join("diverged");
    let args = [
        run_args(&source, &data, &diverged, "20"),
        vec!["--lr".into(), "1e30".into()],
    ]
    .concat();
    let stderr = fails(&strs(&args));
    assert!(
        stderr.contains("diverged (its weights are no longer finite numbers): lower train.lr"),
        "{stderr}"
    );
}

#[test]
fn resuming_with_a_model_of_another_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = dir.path().join("model");
    let run = dir.path().join("run");
    let source = fixture("sae-models", "qwen2_tiny");
    let args = [
        run_args(&source, &data, &run, "20"),
        vec!["--stop-at".into(), "5".into()],
    ]
    .concat();
    ok(&strs(&args));
    // The same hook paths on a narrower model: the saved SAEs read 64 inputs.
    narrowed_model(&model);
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(s(&source), s(&model))).unwrap();
    let stderr = fails(&["train", "--resume", s(&run)]);
    assert!(
        stderr.contains(
            "its SAE for model.layers.0.mlp reads 64 inputs, but the model's model.layers.0.mlp is 32 wide"
        ),
        "{stderr}"
    );
    // The narrowed model itself runs: the refusal is about the checkpoint.
    ok(&[
        "activations",
        "--model",
        s(&model),
        "--text",
        "hi",
        "--out",
        s(&dir.path().join("a.safetensors")),
    ]);
}

/// Rewrites one f32 tensor of a safetensors file with infinities.
fn poison(file: &Path, name: &str) {
    rewrite(file, |n, shape, data| {
        if n == name {
            data.clear();
            let count: usize = shape.iter().product();
            data.extend((0..count).flat_map(|_| f32::INFINITY.to_le_bytes()));
        }
    });
}

/// Rewrites every tensor of a safetensors file of f32 tensors by `edit(name, shape, bytes)`.
fn rewrite(file: &Path, edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<u8>)) {
    let bytes = std::fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let (mut shape, mut data) = (t.shape().to_vec(), t.data().to_vec());
            edit(&n, &mut shape, &mut data);
            (n, t.dtype(), shape, data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The tiny Qwen2 fixture cut from 64 to 32 hidden units (2 attention heads of 16), in `dir`.
fn narrowed_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let source = fixture("sae-models", "qwen2_tiny");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["hidden_size"] = 32.into();
    json["num_attention_heads"] = 2.into();
    std::fs::write(&config, json.to_string()).unwrap();
    // Every dimension of 64 (the hidden size, and 4 heads x 16) keeps its first 32 entries.
    rewrite(&dir.join("model.safetensors"), |_, shape, data| {
        let old = shape.clone();
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let kept: Vec<f32> = (0..values.len())
            .filter(|&flat| {
                let mut rest = flat;
                old.iter().rev().all(|&dim| {
                    let index = rest % dim;
                    rest /= dim;
                    dim != 64 || index < 32
                })
            })
            .map(|flat| values[flat])
            .collect();
        shape.iter_mut().filter(|d| **d == 64).for_each(|d| *d = 32);
        *data = kept.iter().flat_map(|v| v.to_le_bytes()).collect();
    });
}

/// A tmpfs of `size` mounted at `dir` for the test's lifetime (needs root, as CI runs here).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let model = fixture("sae-models", "qwen2_tiny");
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "6m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    // Checkpoints (about 1 MB each) every step fill the 6 MiB disk after a few steps.
    let run = disk.0.join("run");
    let mut args = run_args(&model, &data, &run, "200");
    args.extend(
        [
            "--set",
            "checkpoint.save_every=1",
            "--set",
            "log.tensorboard=false",
        ]
        .map(String::from),
    );
    let stderr = fails(&strs(&args));
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // Every checkpoint left is complete and loads; no temporary folder is left behind.
    let checkpoints = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    for c in &checkpoints {
        let name = c.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("step-"), "left behind: {name}");
        sae_core::TensorFile::open(c.join("state.safetensors")).unwrap();
        sae_core::formats::load(&c.join("adapter")).unwrap();
    }
    // With room again, the run resumes from its last checkpoint and matches a run that never
    // stopped.
    let last = checkpoints
        .iter()
        .map(|c| c.file_name().unwrap().to_owned())
        .max()
        .unwrap();
    let last_step: u64 = last.to_string_lossy()["step-".len()..].parse().unwrap();
    let moved = dir.path().join("run");
    copy_tree(&run, &moved);
    drop(disk);
    let stop = (last_step + 3).to_string();
    ok(&["train", "--resume", s(&moved), "--stop-at", &stop]);
    let reference = dir.path().join("reference");
    let mut args = run_args(&model, &data, &reference, "200");
    args.extend(["--set", "checkpoint.save_every=1", "--stop-at", &stop].map(String::from));
    ok(&strs(&args));
    assert_eq!(losses(&moved), losses(&reference));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

//! Data-parallel `sae train` over MPI, as a user starts it (`--devices N`, which runs the ranks
//! under OpenMPI's `mpirun`): the same loss curve on 1, 2 and 4 processes for one global batch,
//! one checkpoint format whatever the number of devices (resume on another number), and a job
//! that ends in time when one of its ranks dies or hangs. Built with the `mpi` feature only:
//! `cargo test -p sae-cli --features mpi --test distributed` (needs openmpi-bin).
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    dataset, fixture, losses_or_empty, max_rel_diff, ok, photo_questions, run_args, s, spawn_run,
    strs,
};
use sae_core::formats;

const STEPS: &str = "6";

/// A run of `STEPS` steps of the global batch of 4 sequences on `devices` processes.
fn args(data: &Path, out: &Path, devices: usize) -> Vec<String> {
    args_with(data, out, devices, "ddp")
}

/// [`args`] with the data-parallel `strategy`.
fn args_with(data: &Path, out: &Path, devices: usize, strategy: &str) -> Vec<String> {
    let model = fixture("sae-models", "qwen2_tiny");
    let mut args = run_args(&model, data, out, STEPS);
    let per_device = 4 / devices;
    args.extend([
        "--set".into(),
        format!("train.batch_size={per_device}"),
        "--devices".into(),
        devices.to_string(),
        "--parallel".into(),
        strategy.into(),
    ]);
    args
}

/// Every step's metrics that must not depend on the number of devices (not the timings).
fn curve(run: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut values = Vec::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = &record["step"];
        for key in [
            "loss",
            "fvu",
            "l0",
            "dead_pct",
            "auxk",
            "grad_norm",
            "tokens",
        ] {
            values.push((format!("step {step} {key}"), record[key].as_f64().unwrap()));
        }
        for (hook, metrics) in record["hooks"].as_object().unwrap() {
            for key in ["loss", "fvu", "l0"] {
                let v = metrics[key].as_f64().unwrap();
                values.push((format!("step {step} {hook} {key}"), v));
            }
        }
    }
    values
}

/// `got` equals `expected` within 1e-5 relative, value by value.
fn same_curve(got: &[(String, f64)], expected: &[(String, f64)], what: &str) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: another number of values"
    );
    for ((name, g), (_, e)) in got.iter().zip(expected) {
        let err = (g - e).abs() / e.abs().max(1e-12);
        assert!(err < 1e-5, "{what}: {name} is {g}, one process gives {e}");
        if std::env::var_os("SAE_TEST_SHOW").is_some() {
            eprintln!("{what}: {name} {err:e}");
        }
    }
}

#[test]
fn every_strategy_on_2_and_4_processes_follows_the_one_process_curve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let one = dir.path().join("one");
    ok(&strs(&args(&data, &one, 1)));
    let expected = curve(&one);
    let reference = formats::load(&one.join("sae")).unwrap();
    let strategies = ["ddp", "zero1", "zero2", "zero3"];
    let runs = strategies.map(|strategy| [2, 4].map(|devices| (strategy, devices)));
    for (strategy, devices) in runs.into_iter().flatten() {
        let run = dir.path().join(format!("{strategy}-{devices}"));
        let stdout = ok(&strs(&args_with(&data, &run, devices, strategy)));
        // One summary, from rank 0.
        let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(summary["step"], 6);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("devices = {devices}")), "{config}");
        assert!(
            config.contains(&format!("strategy = \"{strategy}\"")),
            "{config}"
        );
        let devices = format!("{strategy} on {devices} processes");
        same_curve(&curve(&run), &expected, &devices);
        // The checkpoints hold the same state: moments gathered from the ranks under ZeRO.
        let state = |run: &Path| {
            let file = run.join("checkpoints/step-00000005/state.safetensors");
            sae_core::TensorFile::open(file).unwrap()
        };
        let (got, reference_state) = (state(&run), state(&one));
        for name in reference_state.names() {
            let (g, e) = (got.get(&name).unwrap(), reference_state.get(&name).unwrap());
            assert_eq!(g.shape, e.shape, "{devices}: {name}");
            if name.ends_with("exp_avg") || name.ends_with("exp_avg_sq") {
                let err = max_rel_diff(&g.to_f32(), &e.to_f32());
                assert!(err < 1e-4, "{devices}: {name} differs by {err}");
            }
        }
        // The same adapter: same files, tensors and config, whatever the number of devices.
        let sae = formats::load(&run.join("sae")).unwrap();
        assert_eq!(sae.layout, reference.layout);
        for (path, expected) in &reference.saes {
            let got = &sae.saes[path];
            assert_eq!(got.config, expected.config);
            for ((name, g), (_, e)) in got.params().iter().zip(expected.params().iter()) {
                let err = max_rel_diff(g, e);
                assert!(
                    err < 1e-4,
                    "{devices} processes: {path} {name} differs by {err}"
                );
            }
        }
    }
}

#[test]
fn ddp_zero2_and_zero3_on_2_and_4_processes_on_a_vision_language_model_follow_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = photo_questions(dir.path());
    let model = fixture("sae-models", "qwen2_vl_tiny");
    let run = |devices: usize, strategy: &str| {
        let out = dir.path().join(format!("{strategy}-{devices}"));
        let (per_device, devices) = ((4 / devices).to_string(), devices.to_string());
        ok(&[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--hook",
            "model.visual.blocks.1",
            "--hook",
            "model.language_model.layers.0",
            "--k",
            "4",
            "--num-latents",
            "64",
            "--batch-size",
            &per_device,
            "--steps",
            "2",
            "--devices",
            &devices,
            "--parallel",
            strategy,
            "--out",
            s(&out),
        ]);
        curve(&out)
    };
    let one = run(1, "ddp");
    for (devices, strategy) in [
        (2, "ddp"),
        (2, "zero2"),
        (2, "zero3"),
        (4, "ddp"),
        (4, "zero3"),
    ] {
        same_curve(
            &run(devices, strategy),
            &one,
            &format!("{strategy} on {devices} processes"),
        );
    }
}

#[test]
fn a_zero3_run_of_2_processes_resumes_on_1_with_the_same_curve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let one = dir.path().join("one");
    ok(&strs(&args(&data, &one, 1)));
    let run = dir.path().join("two");
    let mut first = args_with(&data, &run, 2, "zero3");
    first.extend(["--stop-at".into(), "3".into()]);
    ok(&strs(&first));
    assert_eq!(losses_or_empty(&run).len(), 3);
    ok(&["train", "--resume", s(&run), "--devices", "1"]);
    same_curve(&curve(&run), &curve(&one), "2 processes, then 1");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("devices = 1") && config.contains("batch_size = 4"),
        "{config}"
    );
}

/// The process ids of the ranks of the job writing `run` (from their environment).
fn ranks_of(run: &Path) -> Vec<(usize, u32)> {
    let mut ranks = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(environ)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read(entry.path().join("environ")),
        ) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(s(run)) || cmdline.starts_with("mpirun") {
            continue;
        }
        let rank = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            ranks.push((rank, pid));
        }
    }
    ranks.sort();
    ranks
}

/// Starts a long run on 2 processes (`sae train --devices 2`, stderr piped) in `dir` and
/// returns once it is past its checkpoint of step 5, with its run folder.
fn start_long_job(dir: &Path, timeout_s: u32) -> (std::process::Child, PathBuf) {
    let data = dataset(dir);
    let run = dir.join("run");
    let mut long = args(&data, &run, 2);
    long.extend([
        "--steps".into(),
        "100000".into(),
        "--set".into(),
        format!("parallel.timeout_s={timeout_s}"),
    ]);
    // The last --steps wins over run_args' own.
    let at = long.iter().position(|a| a == "--steps").unwrap();
    long.drain(at..at + 2);
    (spawn_run(&long, 6), run)
}

/// Starts a long run on 2 processes, waits for its first checkpoint, sends `signal` to rank 1 and
/// returns how long the job took to end after it, its exit status and its stderr.
fn signal_a_rank(signal: &str, timeout_s: u32) -> (Duration, Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, run) = start_long_job(dir.path(), timeout_s);
    let ranks = ranks_of(&run);
    assert_eq!(
        ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 1],
        "{ranks:?}"
    );
    let pid = ranks[1].1.to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let sent = Instant::now();
    let limit = Duration::from_secs(u64::from(timeout_s) + 60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > limit {
            child.kill().ok();
            Command::new("kill").args(["-KILL", &pid]).status().ok();
            panic!(
                "the job still ran {} s after {signal} to rank 1",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = sent.elapsed();
    // Whatever happened, nothing of the job may be left behind.
    let quiet = Stdio::null;
    (Command::new("kill")
        .args(["-KILL", &pid])
        .stderr(quiet())
        .status())
    .ok();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    // The checkpoint written before stays complete.
    let first = run.join("checkpoints/step-00000005");
    assert!(first.join("state.json").is_file(), "{}", first.display());
    sae_core::formats::load(&first.join("adapter")).unwrap();
    (took, status.code(), stderr)
}

#[test]
fn a_killed_rank_ends_the_job_within_30_s() {
    let (took, code, stderr) = signal_a_rank("-KILL", 300);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(stderr.contains("rank 1"), "mpirun names the rank: {stderr}");
}

#[test]
fn a_stopped_rank_ends_the_job_after_the_timeout() {
    let (took, code, stderr) = signal_a_rank("-STOP", 5);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("rank 0: ") && stderr.contains("waited more than 5 s"),
        "{stderr}"
    );
}

// Preemption (Slurm, Kubernetes) or Ctrl-C: SIGTERM to `sae train --devices 2` reaches the
// ranks as SIGUSR1 through mpirun; they finish the step, rank 0 writes a checkpoint, the job
// exits as a process that SIGTERM ended, and the run resumes from where it stopped.
#[test]
fn sigterm_to_a_job_of_2_processes_stops_it_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (child, run) = start_long_job(dir.path(), 300);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGUSR1 after step"), "{stderr}");
    let last = losses_or_empty(&run).last().unwrap().0;
    let checkpoint = run.join(format!("checkpoints/step-{last:08}"));
    assert!(
        checkpoint.join("state.json").is_file(),
        "no checkpoint at step {last}"
    );
    let next = (last + 2).to_string();
    ok(&[
        "train",
        "--resume",
        s(&run),
        "--stop-at",
        &next,
        "--devices",
        "1",
    ]);
    assert_eq!(losses_or_empty(&run).last().unwrap().0, last + 2);
}

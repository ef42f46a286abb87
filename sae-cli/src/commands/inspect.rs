//! `sae inspect`: print an SAE checkpoint's layout, configuration and tensors.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sae_core::TensorFile;
use serde_json::json;

/// Print an SAE checkpoint: layout, each SAE's configuration and shape, and every tensor's
/// dtype and shape.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  sae inspect runs/sae
  sae inspect --sae sparsify-run --json")]
pub struct Args {
    /// Checkpoint folder (layout detected).
    #[arg(value_name = "DIR", required_unless_present = "sae")]
    dir: Option<PathBuf>,
    /// The same, as a flag.
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    sae: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.or(args.sae).expect("clap requires one");
    let checkpoint = super::load_checkpoint(&dir)?;
    let files = safetensors_files(&dir);
    let saes: Vec<_> = checkpoint
        .saes
        .iter()
        .map(|(hook, sae)| json!({"hook": hook, "d_in": sae.d_in, "num_latents": sae.num_latents(), "config": sae.config}))
        .collect();
    let tensors: Vec<_> = files
        .iter()
        .filter_map(|f| TensorFile::open(f).ok().map(|t| (f, t.describe())))
        .flat_map(|(f, desc)| {
            let file = f.strip_prefix(&dir).unwrap_or(f).display().to_string();
            desc.into_iter().map(move |(name, dtype, shape)| json!({"file": file, "name": name, "dtype": dtype, "shape": shape}))
        })
        .collect();
    if args.json {
        let out = json!({"layout": checkpoint.layout, "target_modules": checkpoint.target_modules, "saes": saes, "tensors": tensors});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("layout: {}", checkpoint.layout);
    if let Some(t) = &checkpoint.target_modules {
        println!("target_modules: {t}");
    }
    for (hook, sae) in &checkpoint.saes {
        let c = &sae.config;
        println!(
            "sae {hook}: {:?}, d_in {}, {} latents, k {}, relu {}, encoder bias {}, unit-norm decoder {}",
            c.architecture,
            sae.d_in,
            sae.num_latents(),
            c.k,
            c.relu,
            c.encoder_bias,
            c.normalize_decoder
        );
    }
    for t in &tensors {
        println!(
            "  {}: {} {} {}",
            t["file"].as_str().unwrap_or(""),
            t["name"].as_str().unwrap_or(""),
            t["dtype"].as_str().unwrap_or(""),
            t["shape"]
        );
    }
    Ok(())
}

/// Every `.safetensors` file in `dir` and its sub-folders (two levels), sorted.
fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.is_dir() && depth < 2 {
                stack.push((path, depth + 1));
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

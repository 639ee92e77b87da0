//! Writes a Llama-shaped model folder with random weights as safetensors shards, streaming (one
//! 8 MiB buffer; a 7B folder is never held in memory), for memory and speed checks at sizes the
//! tests cannot ship:
//!
//!     cargo run --release --example synthetic_model -- --shape llama2-7b --dtype bf16 --out DIR
//!
//! Shapes: smollm2-135m, llama-0.5b, llama2-7b (`peft::models::synthetic::NAMED`); dtypes: f32,
//! bf16, f16. Then e.g. `peft train --model DIR --gradient-checkpointing ...` (the folder has no
//! tokenizer: train on a tokenizer-free text set or copy one in; SmolLM2's uses ids < 49152).

use std::path::PathBuf;

use peft::models::synthetic::NAMED;
use peft::models::synthetic_shards::write_sharded_llama;
use safetensors::Dtype;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    shape: String,
    dtype: Dtype,
    out: PathBuf,
    layers_per_shard: usize,
}

fn parse() -> Res<Args> {
    let mut args = std::env::args().skip(1);
    let (mut shape, mut dtype, mut out, mut per) = (None, Dtype::BF16, None, 4usize);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--shape" => shape = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--layers-per-shard" => per = value()?.parse()?,
            "--dtype" => {
                dtype = match value()?.as_str() {
                    "f32" => Dtype::F32,
                    "bf16" => Dtype::BF16,
                    "f16" => Dtype::F16,
                    other => {
                        return Err(format!("--dtype {other}: expected f32, bf16 or f16").into())
                    }
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(Args {
        shape: shape.ok_or("--shape is required")?,
        dtype,
        out: out.ok_or("--out is required")?,
        layers_per_shard: per,
    })
}

fn main() -> Res<()> {
    let args = parse()?;
    let names: Vec<&str> = NAMED.iter().map(|(n, _, _)| *n).collect();
    let (_, shape, tied) = NAMED
        .iter()
        .find(|(n, _, _)| *n == args.shape)
        .ok_or(format!("--shape {}: expected one of {names:?}", args.shape))?;
    let start = std::time::Instant::now();
    let bytes = write_sharded_llama(
        &args.out,
        (*shape, *tied),
        args.dtype,
        args.layers_per_shard,
        0x9E37_79B9_7F4A_7C15,
    )?;
    eprintln!(
        "{}: {} parameters, {:.2} GB written to {} in {:.0} s",
        args.shape,
        shape.parameters(*tied),
        bytes as f64 / 1e9,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

//! `peft inspect`: the config summary, parameter count and every module path users can target.

use peft::models::ModelDir;

use super::common::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object instead of a table (default: off).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: super::train_memory::MemoryArgs,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let dir = ModelDir::open(&args.model.model)?;
    if args.memory.memory {
        return super::train_memory::print_estimate(
            &dir,
            args.model.base_dtype,
            args.model.quantize_base,
            &args.memory,
        );
    }
    let modules = dir.module_paths();
    let adapters = if args.model.adapter.is_empty() {
        Vec::new()
    } else {
        args.model.load()?.adapters
    };
    if args.json {
        let adapters: Vec<_> = adapters
            .iter()
            .map(|(path, config, report)| {
                serde_json::json!({
                    "path": path, "peft_type": config.peft_type.as_str(), "matched": report.matched,
                    "trainable_params": report.trainable, "all_params": report.total,
                })
            })
            .collect();
        let out = serde_json::json!({
            "model_type": dir.model_type(), "parameters": dir.num_parameters(), "modules": modules, "adapters": adapters,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "model: {} ({})",
        args.model.model.display(),
        dir.model_type()
    );
    for (key, value) in dir.summary() {
        println!("  {key:<26} {value}");
    }
    println!("parameters: {}", dir.num_parameters());
    println!("\n{:<48} {:<10} {:>8} {:>8}", "module", "kind", "in", "out");
    for m in &modules {
        println!("{:<48} {:<10} {:>8} {:>8}", m.path, m.kind, m.d_in, m.d_out);
    }
    for (path, config, report) in &adapters {
        println!(
            "\nadapter {} ({}): {} module(s)",
            path.display(),
            config.peft_type.as_str(),
            report.matched.len()
        );
        for m in &report.matched {
            println!("  {m}");
        }
        println!("{report}");
    }
    Ok(())
}
